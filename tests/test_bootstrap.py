"""Fast (numpy, per-study statistics) bootstrap distributions equal the naive re-scoring, same seed."""
from __future__ import annotations

import numpy as np

from trainer.evaluation import nlg
from trainer.evaluation.bootstrap import metric_dists
from trainer.evaluation.scoring import _ce_from_counts, score

WORDS = ("the heart size is normal no focal consolidation pleural effusion or pneumothorax mild "
         "cardiomegaly left lower lobe opacity small right atelectasis . ,").split()


def corpus(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    sent = lambda: " ".join(rng.choice(WORDS, rng.integers(0, 30)))  # noqa: E731
    refs = [[sent()] + ([sent()] if i % 5 == 0 else []) for i in range(n)]  # some studies with two references
    hyps = [sent() for _ in range(n)]
    hyps[2] = ""  # an empty generation
    hyps[3] = refs[3][0]  # a perfect one
    cube = rng.integers(0, 2, (n, 14, 3))
    return refs, hyps, cube


def naive_dists(refs, hyps, cube, resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Each resample re-scored the toolkit's way in plain Python (what bootstrap_ci did per metric)."""
    bstats = [nlg.bleu_stats(r, h) for r, h in zip(refs, hyps)]
    rouge = nlg.rouge_l(refs, hyps)
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for _ in range(resamples):
        ix = list(rng.integers(0, len(refs), len(refs)))
        for k, v in enumerate(nlg.bleu_from_stats([bstats[i] for i in ix])):
            out.setdefault(f"bleu_{k + 1}", []).append(v)
        out.setdefault("rouge_l", []).append(float(np.mean([rouge[i] for i in ix])))
        out.setdefault("cider", []).append(float(np.mean(nlg.cider_d(refs, hyps, index=ix))))  # df recomputed
        for avg in ("micro", "macro"):
            for j, name in enumerate(("precision", "recall", "f1")):
                out.setdefault(f"ce_{avg}_{name}_14", []).append(_ce_from_counts(cube[ix].sum(axis=0), avg)[j])
    return {k: np.array(v) for k, v in out.items()}


def test_fast_bootstrap_equals_naive_to_1e9():
    refs, hyps, cube = corpus(40)
    fast = metric_dists(len(refs), 60, bleu=[nlg.bleu_stats(r, h) for r, h in zip(refs, hyps)],
                        rouge=nlg.rouge_l(refs, hyps), cider=nlg._CiderCounts(refs, hyps, 4), cubes={"14": cube})
    naive = naive_dists(refs, hyps, cube, 60)
    assert set(naive) <= set(fast) and len(naive) == 12
    for key, values in naive.items():
        assert values.std() > 0, key  # resamples really differ
        np.testing.assert_allclose(fast[key], values, rtol=0, atol=1e-9, err_msg=key)


def test_score_intervals_come_from_the_same_draws():
    recs = [{"id": i, "reference": r, "generated": g} for i, (r, g) in enumerate(
        [("No acute process. Heart size normal.", "No acute process."),
         ("Small left pleural effusion.", "Left effusion is small."),
         ("Mild cardiomegaly with edema.", "Cardiomegaly."),
         ("Right lower lobe opacity, pneumonia.", "No acute process."),
         ("Lines and tubes in place.", "Tubes in place, no pneumothorax.")] * 3)]
    m = score(recs, bootstrap=200, meteor=False)
    refs = [[nlg.tokenize(r["reference"])] for r in recs]
    hyps = [nlg.tokenize(r["generated"]) for r in recs]
    cider = naive_dists(refs, hyps, np.zeros((len(recs), 14, 3), int), 200)["cider"]
    low, high = np.percentile(cider, [2.5, 97.5])
    assert abs(m["cider_ci_low"] - low) < 1e-9 and abs(m["cider_ci_high"] - high) < 1e-9
    assert m["cider_ci_low"] < m["cider"] < m["cider_ci_high"]
