"""Reflection statistics of LVMed-R2 chains (the ``reflection_stats`` score hook and ``reflection_rows`` row hook).

A generated chain reflects when it holds a ``Reflection:`` line (paper format: "Looking at the <organ>
again, ..."; compact: "<organ> again, corrected:").  Per reflection: the organ, the perception line the
chain wrote for that organ before the reflection (its *claim*), the line after it (its *correction*), and
the reference's conditions for that organ (the ontology classifier over the reference report, the same
rule that built the training chains; an organ the reference does not describe counts as normal).

metrics.json keys (prefixed ``reflection_on_`` / ``reflection_off_`` for the family's eval variants):
``reflection_fires``/``reflection_fires_rate`` (studies with >= 1 reflection), ``reflection_count``,
``reflection_multi`` (studies reflecting more than once), ``reflection_organ_<organ>``,
``reflection_changes_finding`` (correction's conditions differ from the claim's),
``reflection_normal_to_abnormal`` / ``reflection_abnormal_to_normal`` / ``reflection_abnormal_to_abnormal``,
``reflection_change_right`` / ``reflection_change_right_rate`` (changes whose corrected normal/abnormal status
matches the reference), ``reflection_claim_right`` (the claim already matched: the change made it wrong or kept
it), and ``generated_distinct_reports`` / ``generated_top_report_share`` (collapse to one report) /
``generated_top_findings_share`` beside ``reference_top_findings_share`` (collapse to one set of findings).
"""
from __future__ import annotations

import html
import re
from collections import Counter
from typing import Any, Optional

from shards.passes.reasoning.chain import perception_lines
from shards.passes.reasoning.ontology import NORMAL, ONTOLOGY

_PERCEPT = re.compile(r"^- ([A-Za-z]+) \(([^)]*)\)")
_REFLECT = re.compile(r"^Reflection:\s*(?:Looking at the\s+)?([A-Za-z]+)\b")


def _conds(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _status(conds: Optional[list[str]]) -> str:
    return "normal" if not conds or conds == [NORMAL] else "abnormal"


def parse_reflections(trace: str) -> list[dict[str, Any]]:
    """Every reflection of one chain: {organ, claim (conditions or None), correction (conditions or None)}."""
    lines = (trace or "").splitlines()
    out = []
    for j, line in enumerate(lines):
        m = _REFLECT.match(line.strip())
        if not m:
            continue
        organ = m.group(1).lower()
        claim = correction = None
        for prev in reversed(lines[:j]):
            p = _PERCEPT.match(prev.strip())
            if p and p.group(1).lower() == organ:
                claim = _conds(p.group(2))
                break
        for nxt in lines[j + 1:]:
            n = _PERCEPT.match(nxt.strip())
            if n and n.group(1).lower() == organ:
                correction = _conds(n.group(2))
                break
            if _REFLECT.match(nxt.strip()) or not nxt.strip():
                break
        out.append({"organ": organ, "claim": claim, "correction": correction})
    return out


def reference_conditions(reference: str) -> dict[str, list[str]]:
    return {organ: conds for organ, conds, _ in perception_lines(reference or "")}


def reflection_stats(records: list[dict]) -> dict[str, Any]:
    """The module docstring's keys over records with ``trace`` (chain) and ``reference``."""
    n = len(records)
    stats: Counter = Counter()
    organs: Counter = Counter()
    for r in records:
        refl = parse_reflections(r.get("trace") or "")
        stats["reflection_fires"] += bool(refl)
        stats["reflection_multi"] += len(refl) > 1
        ref = reference_conditions(r.get("reference", ""))
        for x in refl:
            stats["reflection_count"] += 1
            organs[x["organ"]] += 1
            claim, corr = x["claim"], x["correction"]
            if corr is None or claim is None or sorted(corr) == sorted(claim):
                continue
            stats["reflection_changes_finding"] += 1
            direction = f"{_status(claim)}_to_{_status(corr)}"
            stats[f"reflection_{direction}"] += 1
            truth = _status(ref.get(x["organ"]))
            stats["reflection_change_right"] += _status(corr) == truth
            stats["reflection_claim_right"] += _status(claim) == truth
    out: dict[str, Any] = {k: int(stats[k]) for k in (
        "reflection_fires", "reflection_multi", "reflection_count", "reflection_changes_finding",
        "reflection_normal_to_abnormal", "reflection_abnormal_to_normal", "reflection_abnormal_to_abnormal",
        "reflection_change_right", "reflection_claim_right")}
    out["reflection_fires_rate"] = out["reflection_fires"] / n if n else 0.0
    changes = out["reflection_changes_finding"]
    out["reflection_change_right_rate"] = out["reflection_change_right"] / changes if changes else 0.0
    out.update({f"reflection_organ_{o}": int(organs[o]) for o in ONTOLOGY if organs[o]})
    out.update(report_collapse(records))
    return out


def report_collapse(records: list[dict]) -> dict[str, Any]:
    """How many distinct reports the run wrote, and the share of studies given the most common one.

    With labels on every record, also collapse by content, not wording: the share of studies whose
    generated report has the most common set of positive labels (``generated_top_findings_share``; two
    phrasings of "normal" count once), beside the same share over the references (what a model that is
    right on every study would get)."""
    reports = Counter((r.get("generated") or "").strip() for r in records)
    out = {"generated_distinct_reports": len(reports),
           "generated_top_report_share": max(reports.values()) / len(records) if records else 0.0}
    for side, key in (("generated", "gen_labels"), ("reference", "ref_labels")):
        labels = [r.get(key) for r in records]
        if records and all(isinstance(x, dict) for x in labels):
            sets = Counter(tuple(sorted(k for k, v in x.items() if v == 1)) for x in labels)
            out[f"{side}_top_findings_share"] = max(sets.values()) / len(records)
    return out


def reflection_rows_html(sample: dict, limit: int = 3) -> str:
    """A study card's reflections (claim -> correction) beside the reference's conditions for that organ."""
    refl = parse_reflections(sample.get("trace") or "")[:limit]
    if not refl:
        return ""
    ref = reference_conditions(sample.get("reference", ""))
    rows = "".join(
        f"<tr><td>{html.escape(x['organ'])}</td><td>{html.escape(', '.join(x['claim'] or ['?']))}</td>"
        f"<td>{html.escape(', '.join(x['correction'] or ['?']))}</td>"
        f"<td>{html.escape(', '.join(ref.get(x['organ'], [NORMAL])))}</td></tr>" for x in refl)
    return ('<table class="metrics reflections"><tr><th>reflection on</th><th>chain said</th><th>corrected to</th>'
            f"<th>reference</th></tr>{rows}</table>")


def reflection_section_html(name: str, records: list[dict], limit: int = 6) -> str:
    """A report.html section: the first ``limit`` studies of a run that reflect, each beside its reference."""
    shown = [r for r in records if parse_reflections(r.get("trace") or "")][:limit]
    if not shown:
        return f"<h2>Reflections ({html.escape(name)})</h2><p class=\"meta\">no generated chain reflects</p>"
    cards = "".join(
        f"<div class=\"card\"><p class=\"meta\">{html.escape(str(r.get('id')))}</p>{reflection_rows_html(r)}"
        f"<p><b>reference</b>: {html.escape(r.get('reference', ''))}</p>"
        f"<p><b>generated</b>: {html.escape(r.get('generated', ''))}</p></div>" for r in shown)
    return f"<h2>Reflections ({html.escape(name)})</h2>{cards}"
