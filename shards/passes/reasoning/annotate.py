"""``rrg annotate reasoning``: the perception-tree asset and the ``reasoning`` overlay (training split only).

Two passes, both one task per training shard on the given pool (the training split is
``data.train_split``, handed in as ``split``):

1. count (organ, condition, sentence) over the training reports -> the ``perception_tree``
   asset (tree.json + the shipped ontology.json; ``reads_splits=[split]``);
2. per training study, the four-module chain and its reflection variant -> the ``reasoning``
   sidecar (``<key>.reasoning.json``), built with ``splits=[split]`` so validation and test
   studies never get an entry.  The backend is a module-level member function: the template one
   here, or the local causal-LM one (shards/passes/reasoning/lm.py, chosen by the CLI).

A summary (entries, reflections, backend counts, malformed LM outputs) is written beside the
sidecar as ``sidecars/reasoning.summary.json``.
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from configs.atomic import atomic_write_json
from shards.passes.reasoning.chain import (build_tree, feasible_directions, perception_lines, plan_reflections,
                                           sentence_counts, template_chain)
from shards.passes.reasoning.config import ReasoningConfig
from shards.passes.reasoning.ontology import ONTOLOGY

TREE_ASSET, SIDECAR = "perception_tree", "reasoning"
VERSION = "1"


def _count_shard(shards_dir: str, file: str, split: str = "train") -> dict[str, Any]:
    """One task: sentence counts of one training shard (JSON-safe: list of [organ, cond, sent, n]) and
    each study's perception (key -> [[organ, [conditions]]], for the reflection plan)."""
    from shards.manifest import load_manifest
    from shards.reader import iter_decoded

    manifest = load_manifest(shards_dir)
    info = next(s for s in manifest.shards if s.file == file)
    samples = list(iter_decoded(manifest, info))
    counts = sentence_counts(s.report for s in samples)
    lines = {s.key: [[o, c] for o, c, _ in perception_lines(s.report)] for s in samples
             if s.record.get("split", split) == split}
    return {"counts": [[*k, n] for k, n in counts.items()], "lines": lines}


def build_perception_tree(shards_dir: str, cfg: ReasoningConfig, pool=None, split: str = "train",
                          plan_out: Optional[dict] = None):
    """Publish the ``perception_tree`` asset from the ``split`` shards (the training split)."""
    from configs.parallel import SerialPool
    from shards.manifest import load_manifest
    from shards.sidecars import write_asset

    root = str(Path(shards_dir).resolve())
    files = [s.file for s in load_manifest(root).shards if s.split == split]
    counts: Counter = Counter()
    lines: dict[str, list] = {}
    for _, res in (pool or SerialPool()).map_unordered(_count_shard, [(root, f, split) for f in files]):
        for organ, cond, sent, n in res["counts"]:
            counts[(organ, cond, sent)] += n
        lines.update(res["lines"])
    tree = build_tree(counts, cfg.max_examples)
    if plan_out is not None:
        plan_out.update(plan_reflections({k: feasible_directions([(o, c, "") for o, c in v], tree)
                                          for k, v in lines.items()}, cfg.reflect_share, cfg.seed))
    files_out = {"tree.json": json.dumps(tree, indent=1, sort_keys=True).encode(),
                 "ontology.json": json.dumps(ONTOLOGY, indent=1).encode()}
    return write_asset(root, TREE_ASSET, files_out, producer={"name": "rrg annotate reasoning", "pass": "tree"},
                       version=VERSION, reads_splits=[split], meta={"max_examples": cfg.max_examples})


def in_split(sample, context: dict) -> bool:
    """Whether a study belongs to the split annotated (``data.train_split``, passed as ``context["split"]``)."""
    return sample.record.get("split", context["split"]) == context["split"]


def planned_chain(sample, context: dict) -> dict[str, Any]:
    """The template entry of one study, reflecting as the annotate-wide plan says (``context["plan"]``:
    key -> direction or None; a study missing from the plan does not reflect)."""
    plan = context.get("plan")
    reflect = plan.get(sample.key) if plan is not None else "any"
    return template_chain(sample.report, context["tree"], context["seed"], sample.key, reflect=reflect,
                          fmt=context.get("format", "paper"))


def template_members(sample, context: dict) -> Optional[dict[str, bytes]]:
    """Sidecar members of one study with the offline template backend."""
    if not in_split(sample, context):
        return None  # belt and braces: the sidecar is built over training shards only
    entry = planned_chain(sample, context)
    entry["backend"] = "template"
    return {f"{SIDECAR}.json": json.dumps(entry).encode()}


def summarize(info) -> dict[str, Any]:
    """Counts over a built ``reasoning`` sidecar (read back from its tars)."""
    stats: Counter = Counter()
    for file in info.shards:
        with tarfile.open(info.path(file), "r:") as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(f".{SIDECAR}.json"):
                    entry = json.loads(tf.extractfile(m).read())
                    stats["entries"] += 1
                    corr = entry.get("corruption")
                    stats["with_reflection"] += corr is not None
                    stats["without_reflection"] += corr is None
                    if corr:
                        stats[f"direction_{corr.get('direction', 'unknown')}"] += 1
                    stats[f"backend_{entry.get('backend', 'template')}"] += 1
                    stats["malformed_lm_output"] += bool(entry.get("malformed"))
    return dict(sorted(stats.items()))


def annotate_reasoning(shards_dir: str, cfg: ReasoningConfig, pool=None, make_members=template_members,
                       split: str = "train") -> dict[str, Any]:
    """Tree asset, then the ``reasoning`` sidecar over the ``split`` shards; returns the summary."""
    from shards.sidecars import build_sidecar

    root = str(Path(shards_dir).resolve())
    plan: dict[str, Any] = {}
    tree_asset = build_perception_tree(root, cfg, pool, split, plan_out=plan)
    context = {"tree": tree_asset.read_json("tree.json"), "seed": cfg.seed, "backend": cfg.backend, "split": split,
               "plan": plan, "format": cfg.format,
               "lm_path": cfg.lm_path, "prompt": cfg.prompt, "max_new_tokens": cfg.max_new_tokens}
    producer = {"name": "rrg annotate reasoning", "backend": cfg.backend, "seed": cfg.seed,
                "reflect_share": cfg.reflect_share, "format": cfg.format,
                "lm_path": cfg.lm_path, "tree_asset": tree_asset.digest()}
    if cfg.backend == "hf_lm":
        producer["prompt"] = cfg.prompt
    info = build_sidecar(root, SIDECAR, kind="annotation", producer=producer, version=VERSION,
                         reads_splits=[split], splits=[split], make_members=make_members, context=context,
                         pool=pool)
    summary = {"sidecar": SIDECAR, "splits": [split], "producer": producer, **summarize(info)}
    atomic_write_json(Path(root) / "sidecars" / f"{SIDECAR}.summary.json", summary)
    return summary

