"""``rrg bench eval``: the cost of 1,000 bootstrap resamples against one full scoring pass.

Records: the config's evaluation split (``eval.split``), each reference scored against the
next study's reference (a retrieval-like prediction: realistic overlap, realistic lengths).
One run, side by side:

* one full scoring pass: ``score(records, bootstrap=0)`` (labeler, tokenisation, BLEU, ROUGE-L,
  CIDEr-D, METEOR through one JVM, clinical efficacy);
* ``bootstrap`` resamples with the per-study statistics of :mod:`trainer.evaluation.bootstrap`;
* the naive re-scoring of ``naive`` resamples (what the evaluator did before), scaled to
  ``bootstrap`` resamples (it is linear in the number of resamples).
"""
from __future__ import annotations

import copy
import functools
import time

import numpy as np

from trainer.evaluation import nlg
from trainer.evaluation.bootstrap import metric_dists
from trainer.evaluation.scoring import _ce_from_counts, _pos, score
from configs.labelsets import CHEXPERT_5, CHEXPERT_LABELS


def eval_records(cfg) -> list[dict]:
    from shards.manifest import iter_json_records
    from trainer.prepare import ensure_shards

    reports = [r["report"]["text"] for r in iter_json_records(ensure_shards(cfg), cfg.eval.split)]
    return [{"id": i, "reference": r, "generated": reports[(i + 1) % len(reports)]} for i, r in enumerate(reports)]


def _naive_resample(refs, hyps, bstats, rouge, cubes, meteor, ix) -> None:
    nlg.bleu_from_stats([bstats[i] for i in ix])
    float(np.mean([rouge[i] for i in ix]))
    float(np.mean(nlg.cider_d(refs, hyps, index=ix)))
    if meteor is not None:
        meteor(ix)
    for cube in cubes.values():
        for avg in ("micro", "macro"):
            for _ in range(3):  # one call per reported key, as the per-key bootstrap did
                _ce_from_counts(cube[ix].sum(axis=0), avg)


def bench_eval(cfg, bootstrap: int = 1000, naive: int = 30) -> dict[str, float]:
    records = eval_records(cfg)
    use_meteor = cfg.eval.meteor and nlg.java_available()
    lang = cfg.eval.meteor_language
    if use_meteor:
        nlg.shared_meteor(lang)  # JVM start-up is paid once per evaluation, not per pass
    t0 = time.perf_counter()
    scored = copy.deepcopy(records)
    score(scored, bootstrap=0, meteor=use_meteor, meteor_language=lang)
    t_pass = time.perf_counter() - t0

    refs = [[nlg.tokenize(r["reference"])] for r in scored]
    hyps = [nlg.tokenize(r["generated"]) for r in scored]
    bstats = [nlg.bleu_stats(r, h) for r, h in zip(refs, hyps)]
    rouge = nlg.rouge_l(refs, hyps)
    cubes = {}
    for suffix, names in (("14", CHEXPERT_LABELS), ("5", CHEXPERT_5)):
        r = np.array([[_pos(rec["ref_labels"].get(n), "negative") for n in names] for rec in scored])
        h = np.array([[_pos(rec["gen_labels"].get(n), "negative") for n in names] for rec in scored])
        cubes[suffix] = np.stack([r & h, h & ~r, r & ~h], axis=-1).astype(np.int64)
    meteor = None
    if use_meteor:
        scorer = nlg.shared_meteor(lang)
        mstats = scorer.stats(refs, hyps)
        meteor = lambda ix: scorer.aggregate([mstats[i] for i in ix])[0]  # noqa: E731
    meteor_dist = None if meteor is None else functools.partial(scorer.resample_scores, mstats)  # pipelined
    t0 = time.perf_counter()
    metric_dists(len(scored), bootstrap, bleu=bstats, rouge=rouge, cider=nlg._CiderCounts(refs, hyps, 4),
                 cubes=cubes, meteor=meteor_dist)
    t_fast = time.perf_counter() - t0
    t_meteor = 0.0
    if meteor is not None:  # the jar's share of the fast path (it aggregates each resample itself)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        meteor_dist([rng.integers(0, len(scored), len(scored)) for _ in range(bootstrap)])
        t_meteor = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(naive):
        _naive_resample(refs, hyps, bstats, rouge, cubes, meteor, list(rng.integers(0, len(scored), len(scored))))
    t_naive = (time.perf_counter() - t0) / naive * bootstrap

    res = {"studies": len(scored), "pass_s": t_pass, "fast_s": t_fast, "naive_s": t_naive,
           "fast_over_pass": t_fast / t_pass, "naive_over_pass": t_naive / t_pass,
           "eval_speedup": (t_pass + t_naive) / (t_pass + t_fast), "meteor_share_s": t_meteor}
    print(f"{len(scored)} studies of split '{cfg.eval.split}'; METEOR {'on (one JVM)' if use_meteor else 'off'}")
    print(f"one full scoring pass:                 {t_pass:8.2f} s")
    print(f"{bootstrap} resamples, per-study statistics: {t_fast:8.2f} s  = {res['fast_over_pass']:.2f} x one pass "
          f"(goal <= 20){f'; METEOR jar aggregation {t_meteor:.2f} s of it' if use_meteor else ''}")
    print(f"{bootstrap} resamples, naive (from {naive}):    {t_naive:8.2f} s  = {res['naive_over_pass']:.2f} x one pass")
    print(f"scoring with intervals, naive / now:   {res['eval_speedup']:.1f} x faster")
    return res
