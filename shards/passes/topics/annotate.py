"""``rrg annotate topics``: the LLaVA-TA topic overlay (a ``topics`` annotation sidecar) + the ontology asset.

Per study of the configured splits (the training split by default: only training reads
reference topics; evaluation never does, except as the declared ``oracle`` input), the
sidecar holds ``topics.json`` = ``{"rows": [{"topic", "sentence"}, ...], "backend", "counts"}``
with rows in ontology order.  Two backends:

* ``rule`` (default, offline): shards/passes/topics/decompose.py;
* ``hf``: any local Hugging Face causal-LM directory, prompted with ``data.passes.topics.prompt``
  (``{report}``, ``{topics}``), greedy.  Its answer must be lines ``topic: sentence`` naming
  ontology topics (blank lines are ignored).  An answer with no such line, a line that is not
  one (prose, a preamble), an unknown topic or a repeated one is *malformed*: the study falls
  back to the rule backend (``backend`` records which one produced each study) and its counts
  say ``malformed: 1`` and ``malformed_lines: n``.  Past ``max_fallback_fraction`` the job stops
  with the count.

Studies are processed on the task pool (Ray tasks from the CLI), one task per shard, through
shards/sidecars.py ``build_sidecar``; provenance (producer, backend, model path, prompt hash,
version, ``reads_splits``) goes into ``sidecar.json``, and a summary of counts is written
beside it (``sidecars/topics.summary.json``): totals of every count, how many studies have each
(``studies_with``) and a few study keys per count (``examples``), so a user sees which reports
lost sentences (comparison, speculation, cross-reference), merged a topic named twice, or needed
the fallback topic.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from configs.atomic import atomic_write_json
from shards.passes.topics import TopicAnnotationError
from shards.passes.topics.config import TopicsConfig
from shards.passes.topics.ontology import BY_NAME, ORDER, write_ontology_asset
from shards.passes.topics.decompose import DROPPED, decompose

SIDECAR_NAME, VERSION = "topics", "1"
_LINE = re.compile(r"^\s*[-*\d.)]*\s*([a-z]+-[a-z_]+)\s*:\s*(\S.*?)\s*$")


def parse_lm_answer(text: str) -> tuple[Optional[list[dict[str, str]]], int]:
    """(rows in ontology order, or None when the answer is malformed; number of lines that do not parse).

    A non-blank line that is not ``topic: sentence`` over an ontology topic, or a topic named twice,
    makes the whole answer malformed (see the module docstring): a partial answer would silently
    lose the report's other sentences."""
    rows: dict[str, str] = {}
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m or m.group(1) not in BY_NAME or m.group(1) in rows:
            bad += 1
            continue
        sentence = m.group(2)
        rows[m.group(1)] = sentence if sentence.endswith(".") else sentence + "."
    if bad or not rows:
        return None, bad
    return [{"topic": t, "sentence": rows[t]} for t in sorted(rows, key=ORDER.__getitem__)], 0


def lm_answer(cfg: TopicsConfig, report: str) -> str:
    from shards.passes.local_lm import LocalLM

    lm = LocalLM.get(cfg.model_path, "data.passes.topics.model_path")
    return lm.complete(cfg.prompt.format(report=report, topics=", ".join(BY_NAME)), cfg.max_new_tokens)


def annotate_report(cfg: TopicsConfig, report: str) -> dict[str, Any]:
    """One study's overlay entry (rows, which backend made them, rule-backend drop counts)."""
    if cfg.backend == "hf":
        rows, bad_lines = parse_lm_answer(lm_answer(cfg, report))
        if rows is not None:
            return {"rows": rows, "backend": "hf", "counts": {}}
        rows, counts = decompose(report)
        return {"rows": rows, "backend": "rule-fallback",
                "counts": {**counts, "malformed": 1, **({"malformed_lines": bad_lines} if bad_lines else {})}}
    rows, counts = decompose(report)
    return {"rows": rows, "backend": "rule", "counts": dict(counts)}


def topic_members(sample, context: dict) -> dict[str, bytes]:
    """build_sidecar task body: the study's own report only."""
    cfg = TopicsConfig(**context)
    return {f"{SIDECAR_NAME}.json": json.dumps(annotate_report(cfg, sample.report), sort_keys=True).encode()}


def summarize(shards_dir: str, examples: int = 5) -> dict[str, Any]:
    """Counts over the published sidecar: backends, rows, every decomposer / parser count (totals, studies
    with it, a few example study keys), rows per topic."""
    from shards.manifest import load_manifest
    from shards.reader import iter_decoded

    manifest = load_manifest(shards_dir)
    studies, rows, backends, counts, topics = 0, 0, Counter(), Counter(), Counter()
    studies_with, keys = Counter(), {}
    covered = set(manifest.sidecars[SIDECAR_NAME].shards)
    for info in manifest.shards:
        if info.file not in covered:
            continue
        for sample in iter_decoded(manifest, info):
            entry = sample.annotations.get(SIDECAR_NAME)
            if entry is None:
                continue
            studies += 1
            rows += len(entry["rows"])
            backends[entry["backend"]] += 1
            counts.update(entry["counts"])
            for k, v in entry["counts"].items():
                if v and k != "sentences":
                    studies_with[k] += 1
                    if len(keys.setdefault(k, [])) < examples:
                        keys[k].append(sample.key)
            topics.update(r["topic"] for r in entry["rows"])
    return {"studies": studies, "rows": rows, "backends": dict(backends), "counts": dict(counts),
            "dropped_sentences": {k: counts[k] for k in DROPPED if counts[k]},
            "studies_with": dict(studies_with), "examples": keys,
            "rows_per_topic": {t: topics[t] for t in sorted(topics, key=ORDER.__getitem__)}}


def annotate_topics(shards_dir: str, cfg: TopicsConfig, pool=None) -> dict[str, Any]:
    """Write the ontology asset and the ``topics`` sidecar; return (and save) the summary."""
    from shards.sidecars import build_sidecar

    if cfg.backend == "hf":
        from shards.passes.local_lm import LocalLM

        LocalLM.get(cfg.model_path, "data.passes.topics.model_path")  # fail here, with one line, before any task starts
    write_ontology_asset(shards_dir)
    producer = {"name": "rrg.topic_annotate", "backend": cfg.backend, "model_path": cfg.model_path or None,
                "prompt_sha256": hashlib.sha256(cfg.prompt.encode()).hexdigest() if cfg.backend == "hf" else None}
    info = build_sidecar(shards_dir, SIDECAR_NAME, kind="annotation", producer=producer, version=VERSION,
                         reads_splits=["train"], splits=list(cfg.splits), make_members=topic_members,
                         context=asdict(cfg), pool=pool)
    summary = {"sidecar": info.root, "splits": list(cfg.splits), **summarize(shards_dir)}
    atomic_write_json(Path(shards_dir) / "sidecars" / f"{SIDECAR_NAME}.summary.json", summary)
    fell_back = summary["backends"].get("rule-fallback", 0)
    if cfg.backend == "hf" and fell_back > cfg.max_fallback_fraction * max(summary["studies"], 1):
        raise TopicAnnotationError(f"{fell_back} of {summary['studies']} studies got a malformed LM answer and fell "
                                   f"back to the rule backend (limit data.passes.topics.max_fallback_fraction="
                                   f"{cfg.max_fallback_fraction}); see {info.root}")
    return summary


def command(args, ctx) -> None:
    """``rrg annotate topics CONFIG``."""
    cfg = ctx.load(args)
    s = annotate_topics(cfg.data.shards_dir, cfg.data.passes.topics, pool=ctx.pool(cfg))
    print(f"topics: {s['studies']} studies ({', '.join(s['splits'])}), backends {s['backends']}, "
          f"sentence counts {s['counts']}, sidecar {s['sidecar']}")
