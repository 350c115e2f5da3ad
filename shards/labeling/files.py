"""Report files in, label tables out: ``rrg label`` and the readers scoring uses.

Input is JSONL with a ``report`` field or plain text with one report per line.  Bad input
is a :class:`LabelInputError` with one line naming the file, the line and the field; nothing
is written until every report is labelled (the CSV and its summary are written atomically).
Reports longer than ``max_chars`` are truncated and counted in the summary
(``<out>.summary.json``: labeler, label set, reports, truncated, wall and CPU seconds, reports/s).
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from typing import Optional

from configs.atomic import atomic_write_json, atomic_write_text
from shards.labeling.engine import VALUE_NAMES
from shards.labeling.registry import (DEFAULT_MAX_CHARS, LabelInputError, Truncation, label_set_of,
                                      resolve_labeler)


def read_jsonl_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-empty line; LabelInputError for a missing file or a bad line."""
    try:
        f = open(path, encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise LabelInputError(f"{path}: cannot read: {err.strerror or err}") from None
    rows = []
    with f:
        try:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise LabelInputError(f"{path}:{n}: not a JSON object ({err.msg}, column {err.colno})") from None
                if not isinstance(row, dict):
                    raise LabelInputError(f"{path}:{n}: not a JSON object (got {type(row).__name__})")
                rows.append((n, row))
        except UnicodeDecodeError as err:
            raise LabelInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    return rows


def text_field(path: str, n: int, row: dict, field: str) -> str:
    """``row[field]`` as a string, or LabelInputError naming file, line and field (null is not "None")."""
    if field not in row:
        raise LabelInputError(f"{path}:{n}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise LabelInputError(f"{path}:{n}: field '{field}' is {kind}, expected a string")
    return value


def read_reports(path: str, truncation: Optional[Truncation] = None) -> list[str]:
    """JSONL with a ``report`` field, or plain text with one report per line."""
    trunc = truncation or Truncation()
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        raise LabelInputError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise LabelInputError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if first.lstrip().startswith("{"):
        return [trunc.cut(text_field(path, n, row, "report"), f"{path}:{n}") for n, row in read_jsonl_rows(path)]
    with open(path, encoding="utf-8") as f:
        return [trunc.cut(line.strip(), f"{path}:{n}") for n, line in enumerate(f, start=1) if line.strip()]


def _cell(v) -> str:
    return "" if v is None else f"{v:.1f}"


def explain_lines(labeler, report: str, index: int) -> list[str]:
    """``rrg label --explain``: per label, the value, the mention that fired and the rule that applied."""
    if not hasattr(labeler, "explain"):
        raise LabelInputError(f"labeler '{type(labeler).__name__}' cannot explain its labels (rule labelers can)")
    labels, trace = labeler.explain(report)
    out = [f"report {index}: {report[:100]}{'...' if len(report) > 100 else ''}"]
    for name, value in labels.items():
        hits = [(s, m) for s, m in trace if m.label == name]
        if not hits:
            why = "rule: no pathology positive or uncertain" if value is not None else "not mentioned"
            out.append(f"  {name:<27} {VALUE_NAMES[value]:<9} {why}")
            continue
        for s, m in hits:
            out.append(f"  {name:<27} {VALUE_NAMES[m.value]:<9} '{m.text}' <- {m.rule}  [{s[:80]}]")
    return out


def label_file(path: str, out_csv: str, labeler=None, explain: bool = False,
               max_chars: int = DEFAULT_MAX_CHARS) -> dict:
    """``rrg label``: CSV with ``Reports`` + the label set's columns (1.0/0.0/-1.0/empty); returns the summary."""
    lab = resolve_labeler(labeler)
    names = list(label_set_of(lab).labels)
    trunc = Truncation(max_chars=max_chars)
    reports = read_reports(path, trunc)
    t0, c0 = time.perf_counter(), time.process_time()
    labels = lab(reports)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if explain:
        for i, rep in enumerate(reports):
            print("\n".join(explain_lines(lab, rep, i)))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["Reports"] + names)
    for rep, row in zip(reports, labels):
        w.writerow([rep] + [_cell(row.get(n)) for n in names])
    rate = len(reports) / max(seconds, 1e-9)
    per_core = len(reports) / max(cpu, 1e-9)  # CPU time: what one core does, whatever the machine's load
    summary = {"input": path, "labeler": type(lab).__name__, "label_set": label_set_of(lab).name,
               "reports": len(reports), "truncated": trunc.count, "max_chars": max_chars,
               "seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4), "reports_per_s": round(rate, 1),
               "reports_per_cpu_s": round(per_core, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    atomic_write_text(out_csv, buf.getvalue())
    atomic_write_json(out_csv + ".summary.json", summary)
    if trunc.count:
        print(f"rrg label: {trunc.summary()}")
    print(f"rrg label: {len(reports)} reports in {seconds:.2f} s: {rate:,.0f} reports/s wall, "
          f"{per_core:,.0f} reports/s per CPU-second (one core) -> {out_csv}")
    return summary
