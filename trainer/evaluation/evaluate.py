"""``rrg eval``: generate reports with Ray workers, score them, compare with baselines, write a report.

Outputs in ``--out`` (default ``<output_dir>/eval/<split>-<checkpoint>``):

* ``predictions.jsonl`` — one line per study: id, reference, generated, ref_labels, gen_labels
  (sorted by study id, so the file does not depend on the number of workers);
  ``predictions_<ablation>.jsonl`` for ``--image-ablation black|shuffle``;
* ``metrics.json`` — flat keys: the model's (see trainer/evaluation/scoring.py), then
  ``baseline_label_prior_<key>`` and ``baseline_retrieval_<key>`` (same split, same scorer),
  ``ablation_<name>_<key>`` and ``ablation_<name>_drop_<key>`` (model minus ablated);
* ``<variant>_<key>`` for each of the family's ``eval_variants`` (e.g. LLaVA-TA's
  ``selection_all|predicted|oracle``, LVMed-R2's ``reflection_off|on``, each with ``<variant>_oracle_inputs``
  and ``<variant>_family_options``; ``family_options`` is the headline run's ``eval.family_options``) and the family's
  ``extra_scores`` hooks (trainer/eval_hooks.py, e.g. topic-level scores), in the same run;
* ``timings.json`` — wall seconds per phase (shards + export, generation, scoring, baselines,
  ablations + variants, report), also printed as the last summary line;
* ``report.html`` — metric table with intervals and baselines, per-label F1 chart, studies.

Baselines: *label prior* draws each study's labels from the training split's label
distribution (as the configured labeler reads the training reports): clinical scores only.
One labeler (``eval.labeler`` + ``eval.labeler_args``) is built per evaluation and labels the
model's, both baselines' and the ablations' reports, on the label set it declares.
*Retrieval* answers with the training report of the most similar training image
(cosine similarity of 32x32 grayscale thumbnails).
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from configs.schema import ConfigError
from trainer.evaluation.eval_hooks import card_html, extra_scores, sections_html
from trainer.evaluation.scoring import clinical_scores, label_prior_baseline, retrieval_baseline, score, score_predictions_file

__all__ = ["run_eval", "score_predictions_file", "InTrainingEvaluator"]

HEADLINE = ("ce_macro_f1_5", "ce_micro_f1_5", "ce_macro_f1_14", "ce_plus_macro_f1_5", "bleu_1", "bleu_4", "rouge_l",
            "cider", "meteor", "radgraph_partial_f1", "bertscore_f1", "semb_score", "radcliq_v1_inv", "green")
THUMB = 32


class _Laps:
    """Wall seconds per phase of an evaluation (``lap(name)`` closes the phase; kept in timings.json)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._t, 2)
        self._t = now


def _resolve_model(cfg, checkpoint: Optional[str], model_dir: Optional[str], out: Optional[str]) -> tuple[Path, Path]:
    """(export directory to evaluate, output directory); a checkpoint is consolidated into ``<out>/model`` once."""
    if model_dir:
        model = Path(model_dir).resolve()
        return model, Path(out) if out else Path(cfg.output_dir) / "eval" / f"{cfg.eval.split}-{model.name}"
    from trainer.checkpoint import CheckpointManager
    from trainer.export import export_checkpoint

    point = CheckpointManager(cfg.checkpoint_dir, rank=0, world_size=1, keep_last=1,
                              trusted=cfg.checkpoint.trust).resolve(
        "latest" if checkpoint in (None, "latest") else checkpoint)
    out_dir = Path(out) if out else Path(cfg.output_dir) / "eval" / f"{cfg.eval.split}-{point.path.name}"
    model = out_dir / "model"
    if not (model / "rrg_model.json").is_file():
        export_checkpoint(cfg, point, model)
    return model, out_dir


def _thumbs(cfg, split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(study ids, thumbnails (n, THUMB*THUMB), report texts) of a split, read with the streaming reader."""
    from PIL import Image

    from shards.reader import make_loader

    def build(s):
        im = Image.fromarray(s.images[0]).convert("L").resize((THUMB, THUMB), Image.BILINEAR)
        return {"id": s.record.get("study_id", s.key), "thumb": np.asarray(im, np.float32).ravel(), "report": s.report}

    loader = make_loader(cfg.data, split, rank=0, world_size=1, batch_size=64, seed=cfg.seed, builder=build,
                         collate=lambda items: {"items": items}, mode="eval")
    ids, thumbs, reports = [], [], []
    for batch in loader:
        for item, w in zip(batch["items"], batch["sample_weight"].tolist()):
            if w > 0:
                ids.append(item["id"]), thumbs.append(item["thumb"] - item["thumb"].mean()), reports.append(item["report"])
    return ids, np.stack(thumbs), reports


def make_eval_labeler(cfg):
    """The configured labeler (``eval.labeler`` + ``eval.labeler_args``), built once per evaluation."""
    from shards.labeling import make_labeler

    return make_labeler(cfg.eval.labeler, cfg.eval.labeler_args, "eval.labeler")


def _baselines(cfg, records: list[dict], bootstrap: int, labeler, suite=None) -> dict[str, dict]:
    from shards.labeling import label_set_of

    _, train_thumbs, train_reports = _thumbs(cfg, cfg.data.train_split)
    ids, test_thumbs, _ = _thumbs(cfg, cfg.eval.split)
    order = {i: k for k, i in enumerate(ids)}
    prior = label_prior_baseline(labeler(train_reports), len(records), seed=cfg.seed,
                                 labels=label_set_of(labeler).labels)
    prior_records = [{**r, "generated": "", "gen_labels": p} for r, p in zip(records, prior)]
    prior_metrics = score(prior_records, bootstrap=bootstrap, labeler=labeler, meteor=False)
    prior_metrics = {k: v for k, v in prior_metrics.items()
                     if k.startswith("ce_") or k in ("n", "convention", "label_set", "labeler")}
    retrieved = retrieval_baseline(train_reports, train_thumbs, test_thumbs[[order[r["id"]] for r in records]])
    retrieval_records = [{"id": r["id"], "reference": r["reference"], "ref_labels": r["ref_labels"], "generated": g}
                         for r, g in zip(records, retrieved)]
    return {"label_prior": prior_metrics,
            "retrieval": score(retrieval_records, bootstrap=bootstrap, labeler=labeler, meteor=cfg.eval.meteor,
                               meteor_language=cfg.eval.meteor_language, suite=suite)}


def _report_samples(cfg, records: list[dict], limit: int = 16) -> list[dict]:
    from shards.reader import make_loader

    wanted = {r["id"]: r for r in records[:limit]}

    def build(s):
        sid = s.record.get("study_id", s.key)
        if sid not in wanted:
            return {"id": None}
        return {"id": sid, "image": s.images[0], "masks": s.masks, "mask_channels": list(s.mask_channels)}

    loader = make_loader(cfg.data, cfg.eval.split, rank=0, world_size=1, batch_size=32, seed=cfg.seed,
                         builder=build, collate=lambda items: {"items": items}, mode="eval")
    found = {}
    for batch in loader:
        for item in batch["items"]:
            if item["id"] in wanted:
                found[item["id"]] = item
        if len(found) == len(wanted):
            break
    return [{**wanted[i], **found.get(i, {"image": None, "masks": None, "mask_channels": []})} for i in wanted]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in ("id", "reference", "generated", "trace", "ref_labels", "gen_labels",
                                                  "scores", "green_analysis") if k in r} | {k: v for k, v in r.items() if k.endswith("_fallback")}) + "\n")


def fallback_counts(records: list[dict]) -> dict[str, int]:
    """``<x>_fallback`` flags a family set on its generations, counted (e.g. chains without a final report)."""
    keys = sorted({k for r in records for k in r if k.endswith("_fallback")})
    return {f"{k}_count": sum(bool(r.get(k)) for r in records) for k in keys}


def eval_attention_plan(cfg, requested: str) -> dict[str, str]:
    """The attention kernels of the evaluation workers (same device and dtype rule as generate_slice)."""
    import torch

    from modeling.attention import plan_attention

    device = torch.device("cuda") if cfg.cluster.use_gpu and torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" and device.type == "cuda" else torch.float32
    return plan_attention(requested, device, dtype).as_dict()


def run_eval(cfg, *, pool, checkpoint: Optional[str] = None, model_dir: Optional[str] = None,
             out: Optional[str] = None, image_ablation: Optional[str] = None,
             narrative_bias: bool = False, compare: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Generate on ``cfg.cluster.num_workers`` model replicas (tasks on ``pool``), score, write outputs.

    ``compare``: name -> another run's predictions.jsonl on the same studies, scored with the same labeler
    and bootstrap and written as ``compare_<name>_<metric>`` (and a report column), e.g. direct SFT.

    ``narrative_bias``: also run the narrative-bias probe (trainer/evaluation/narrative.py) for
    K = 1..``eval.narrative_bias.max_k``; its rows go to ``metrics.json["narrative_bias"]``."""
    from trainer.evaluation.generate import generate_slice
    from trainer.prepare import ensure_shards, worker_env
    from trainer.evaluation.report_html import write_report

    lap = _Laps()
    ensure_shards(cfg, pool)
    cfg.data.shards_dir = str(Path(cfg.data.shards_dir).resolve())
    model, out_dir = _resolve_model(cfg, checkpoint, model_dir, out)
    lap("shards + model export")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = out_dir.name

    from modeling.family import build_family, read_model_json
    from trainer.evaluation.generate import gen_config

    family = build_family(read_model_json(str(model))[1])
    ablations = (image_ablation,) if image_ablation else ()
    for kind in ablations:
        if kind not in family.ablations:
            raise ConfigError("--image-ablation", f"family '{family.name}' has no ablation '{kind}'; "
                              f"it has {sorted(family.ablations)}")
    oracle = family.oracle_inputs(gen_config(cfg))
    if narrative_bias and "black" not in family.ablations:
        raise ConfigError("--narrative-bias", f"family '{family.name}' has no 'black' ablation")
    narrative_k = cfg.eval.narrative_bias.max_k if narrative_bias else 0
    world = cfg.cluster.num_workers
    parts = [part for _, part in pool.map_unordered(
        generate_slice, [(str(model), cfg.to_dict(), r, world, ablations, narrative_k) for r in range(world)],
        num_cpus=cfg.cluster.cpus_per_worker, num_gpus=1 if cfg.cluster.use_gpu else 0, env=worker_env(cfg))]
    runs = {k: sorted((p for part in parts for p in part[k]), key=lambda r: r["id"]) for k in parts[0]}
    ids = [r["id"] for r in runs["model"]]
    if len(set(ids)) != len(ids):
        raise RuntimeError("evaluation produced duplicate studies")
    lap("generation")

    labeler = make_eval_labeler(cfg)
    from trainer.evaluation.metric_suite import MetricSuite

    suite = MetricSuite.from_eval(cfg.eval, device="cuda" if cfg.cluster.use_gpu and _cuda() else "cpu")
    metrics = score(runs["model"], bootstrap=cfg.eval.bootstrap, labeler=labeler, meteor=cfg.eval.meteor,
                    meteor_language=cfg.eval.meteor_language, suite=suite)
    _write_jsonl(out_dir / "predictions.jsonl", runs["model"])
    lap("scoring")
    baselines = _baselines(cfg, runs["model"], cfg.eval.bootstrap, labeler, suite)
    lap("baselines")
    flat = dict(metrics)
    flat["family"] = family.name
    flat["attention"] = eval_attention_plan(cfg, family.cfg.attention)  # the kernels generation ran on
    flat["family_options"] = dict(cfg.eval.family_options)  # the generation switches of the headline run
    flat.update(fallback_counts(runs["model"]))
    flat["oracle_inputs"] = oracle  # fields beyond the image the model read at evaluation ([] = none)
    if oracle:
        print(f"rrg: note: this evaluation reads oracle inputs {oracle}: not comparable with image-only systems",
              flush=True)
    for bname, bm in baselines.items():
        flat.update({f"baseline_{bname}_{k}": v for k, v in bm.items() if k != "convention"})
    ablation_metrics = {}
    for aname in ablations:
        am = score(runs[aname], bootstrap=cfg.eval.bootstrap, labeler=labeler, meteor=cfg.eval.meteor,
                   meteor_language=cfg.eval.meteor_language, suite=suite)
        _write_jsonl(out_dir / f"predictions_{aname}.jsonl", runs[aname])
        ablation_metrics[f"{aname} ({family.ablations[aname]})"] = am
        for k, v in am.items():
            if isinstance(v, float) and not k.endswith(("_ci_low", "_ci_high")):
                flat[f"ablation_{aname}_{k}"] = v
                if isinstance(metrics.get(k), float):
                    flat[f"ablation_{aname}_drop_{k}"] = metrics[k] - v
    flat.update(extra_scores(family, runs["model"]))
    variant_metrics = _score_variants(cfg, family, runs, labeler, out_dir, flat, suite)
    for cname, cpath in (compare or {}).items():
        cm = _score_compare(cname, cpath, runs["model"], cfg, labeler, suite)
        flat.update({f"compare_{cname}_{k}": v for k, v in cm.items() if isinstance(v, (int, float))})
        variant_metrics[f"compare_{cname}"] = cm
    lap("ablations + variants")
    narrative_rows = _score_narrative(runs, narrative_k, labeler, suite, out_dir, flat)
    if narrative_k:
        lap("narrative bias")
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=1, sort_keys=True))
    samples = [{**s, "card_html": card_html(family, s)} for s in _report_samples(cfg, runs["model"])]
    report = write_report(out_dir, metrics=metrics, baselines=baselines, ablations=ablation_metrics,
                          samples=samples, variants=variant_metrics, narrative=narrative_rows,
                          extra_html=sections_html(family, {v: runs[v] for v in variant_metrics if v in runs} or
                                                   {"model": runs["model"]}),
                          title=f"rrg evaluation: {cfg.name}, {cfg.eval.split} split, {name}")
    _print_summary(metrics, baselines, {**ablation_metrics, **variant_metrics})
    lap("report")
    (out_dir / "timings.json").write_text(json.dumps(lap.seconds, indent=1))
    print("rrg: eval time: " + ", ".join(f"{k} {v:.1f} s" for k, v in lap.seconds.items()), flush=True)
    print(f"rrg: predictions: {out_dir / 'predictions.jsonl'}\nrrg: metrics: {out_dir / 'metrics.json'}\n"
          f"rrg: report: {report}", flush=True)
    return flat


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _score_narrative(runs: dict, max_k: int, labeler, suite, out_dir: Path, flat: dict) -> list[dict]:
    """Score each K's real / black completions (no bootstrap, no METEOR) into ``flat["narrative_bias"]``."""
    if not max_k:
        return []
    from trainer.evaluation.narrative import ORACLE_NOTE, rows_from_scores

    scored = {}
    with open(out_dir / "predictions_narrative_bias.jsonl", "w") as fh:
        for k in range(1, max_k + 1):
            pair = []
            for kind in ("real", "black"):
                recs = runs.get(f"narrative_{k}_{kind}", [])
                if not recs:
                    break
                pair.append(score(recs, bootstrap=0, labeler=labeler, meteor=False, suite=suite))
                for r in recs:
                    fh.write(json.dumps({"k": k, "image": kind, **{x: r[x] for x in ("id", "reference", "generated")
                                                                    if x in r}}) + "\n")
            if len(pair) == 2:
                scored[k] = tuple(pair)
    rows = rows_from_scores(scored)
    flat["narrative_bias"] = rows
    flat["narrative_bias_oracle_inputs"] = [ORACLE_NOTE]
    print(f"rrg: note: --narrative-bias reads an oracle input ({ORACLE_NOTE})", flush=True)
    for r in rows:
        print(f"rrg: narrative bias K={r['k']} (n={r['n']}): ce_macro_f1_5 real {r.get('ce_macro_f1_5_real', float('nan')):.3f}"
              f" black {r.get('ce_macro_f1_5_black', float('nan')):.3f} gain {r.get('gain_ce_macro_f1_5', float('nan')):+.3f}",
              flush=True)
    return rows


def _score_variants(cfg, family, runs: dict, labeler, out_dir: Path, flat: dict, suite=None) -> dict[str, dict]:
    """Score each of ``family.eval_variants`` into ``flat`` as ``<variant>_<key>`` (+ its oracle inputs)."""
    from trainer.evaluation.generate import gen_config

    out = {}
    for vname, variant in family.eval_variants(gen_config(cfg)).items():
        vm = score(runs[vname], bootstrap=cfg.eval.bootstrap, labeler=labeler, meteor=cfg.eval.meteor,
                   meteor_language=cfg.eval.meteor_language, suite=suite)
        vm.update({k: v for k, v in extra_scores(family, runs[vname]).items() if not isinstance(v, dict)})
        vm.update(fallback_counts(runs[vname]))
        _write_jsonl(out_dir / f"predictions_{vname}.jsonl", runs[vname])
        flat.update({f"{vname}_{k}": v for k, v in vm.items() if isinstance(v, (int, float))})  # CIs too
        flat[f"{vname}_oracle_inputs"] = family.oracle_inputs(variant)
        flat[f"{vname}_family_options"] = dict(variant.options)
        out[vname] = vm
    return out


def _score_compare(name: str, path: str, records: list[dict], cfg, labeler, suite=None) -> dict:
    """Another run's predictions on exactly this run's studies, scored like this run."""
    from shards.labeling.files import read_jsonl_rows
    from trainer.evaluation.reflection_stats import report_collapse

    by_id = {str(r.get("id")): r for _, r in read_jsonl_rows(path)}
    missing = [r["id"] for r in records if str(r["id"]) not in by_id]
    if missing:
        raise ConfigError("--compare", f"{name}: {path} lacks {len(missing)} of this run's studies "
                          f"(e.g. {missing[:3]}): it must come from the same split")
    recs = [{"id": r["id"], "reference": r["reference"], "ref_labels": r.get("ref_labels"),
             "generated": by_id[str(r["id"])].get("generated", "")} for r in records]
    recs = [{k: v for k, v in x.items() if v is not None} for x in recs]
    out = score(recs, bootstrap=cfg.eval.bootstrap, labeler=labeler, meteor=cfg.eval.meteor,
                meteor_language=cfg.eval.meteor_language, suite=suite)
    out.update(report_collapse(recs))
    return out


def _print_summary(metrics: dict, baselines: dict[str, dict], ablations: dict[str, dict]) -> None:
    cols = {"model": metrics, **{f"baseline:{k}": v for k, v in baselines.items()}, **ablations}
    print(f"{'metric':<16}" + "".join(f"{c:>22}" for c in cols))
    for key in HEADLINE:
        cells = []
        for m in cols.values():
            v = m.get(key)
            cells.append(f"{v:.3f} [{m.get(key + '_ci_low', float('nan')):.2f},{m.get(key + '_ci_high', float('nan')):.2f}]"
                         if isinstance(v, float) else "-")
        print(f"{key:<16}" + "".join(f"{c:>22}" for c in cells))


class InTrainingEvaluator:
    """Every ``eval.every_steps``: generate on a fixed validation subset, log the metrics.

    All ranks generate their share (same number of batches on every rank; ZeRO-3
    uses synced_gpus), predictions are gathered on rank 0 as JSON, and rank 0
    scores them in a background thread so the other ranks are held up only for
    the generation itself.
    """

    def __init__(self, cfg, *, strategy, family, tokenizer, logger, rank: int, world_size: int):
        self.cfg, self.strategy, self.family, self.tokenizer = cfg, strategy, family, tokenizer
        self.logger, self.rank, self.world_size = logger, rank, world_size
        self._thread: Optional[threading.Thread] = None
        self._labeler = None  # built on first use, on rank 0 only

    def __call__(self, step: int) -> None:
        from trainer.evaluation.generate import eval_loader, gen_config, generate_batches
        from trainer.distributed import gather_json

        cfg, strategy = self.cfg, self.strategy
        per_rank_batches = max(1, -(-cfg.eval.subset // (self.world_size * cfg.eval.batch_size)))
        gen = gen_config(cfg, synced_gpus=cfg.train.zero_stage == 3)
        loader = eval_loader(cfg, self.family, self.tokenizer, rank=self.rank, world_size=self.world_size,
                             split=cfg.data.eval_split, gen=gen)
        batches = (b for _, b in zip(range(per_rank_batches), loader))
        with strategy.evaluating() as model:
            preds = list(generate_batches(model, self.family, self.tokenizer, batches, gen,
                                          device=strategy.device, dtype=strategy.dtype))
            from trainer import chaos

            chaos.point("eval", step, self.rank)  # generated, not yet gathered or scored (trainer/chaos.py)
        gathered = gather_json(preds)
        if self.rank == 0:
            if self._thread is not None:
                self._thread.join()
            records = [p for part in gathered for p in part]
            self._thread = threading.Thread(target=self._score, args=(step, records), daemon=True)
            self._thread.start()

    def _score(self, step: int, records: list[dict]) -> None:
        if self._labeler is None:
            self._labeler = make_eval_labeler(self.cfg)
        m = score(records, bootstrap=0, labeler=self._labeler, meteor=False)
        self.logger.log_eval(step, {k: m[k] for k in HEADLINE if isinstance(m.get(k), float)}, samples=records[:8])

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
