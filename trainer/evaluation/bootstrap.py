"""Bootstrap distributions of every corpus metric from per-study sufficient statistics, in numpy.

The naive way re-scores each of 1,000 resampled corpora in Python; here each study's
statistics are computed once and a resample is a vector of multiplicities ``m`` (how often
each study was drawn), so every corpus sum becomes a matrix product ``M @ stats``:

* BLEU-1..4: clipped n-gram matches, guesses and (closest) reference / hypothesis lengths per
  study, summed per resample, then the toolkit's formula (1e-15 / 1e-9 smoothing, brevity penalty);
* ROUGE-L: the mean of per-study scores over the resample;
* clinical efficacy: per-study, per-label TP/FP/FN, summed per resample, then micro/macro P/R/F1;
* CIDEr-D: what depends on the resample is recomputed exactly as the toolkit defines it:
  the document frequency of an n-gram g is the number of *studies in the resampled corpus*
  (a study drawn twice counts twice, as two images would) whose reference set contains g,
  ``df_b(g) = sum_i m_b[i] * [g in refs(i)]``, and ``idf_b(g) = log(N) - log(max(1, df_b(g)))``
  with N the resample size.  Every per-study quantity the toolkit sums over n-grams
  (``||vec_hyp||^2``, ``||vec_ref||^2`` and ``sum_g min(vec_hyp, vec_ref) * vec_ref``) is a
  fixed count times ``idf_b(g)^2`` (the idf is >= 0, so it leaves ``min`` alone), hence a
  sparse matrix of counts times the dense ``idf_b^2``; the length penalty does not depend on
  the resample.
* METEOR: the jar aggregates its own segment statistics (one JVM for the whole evaluation).

The resample indices are drawn exactly as :func:`trainer.evaluation.scoring.bootstrap_ci` draws them
(``default_rng(seed)``, one ``integers(0, n, n)`` per resample), so the distributions equal the
naive implementation's (tests/test_bootstrap.py, to 1e-9).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from trainer.evaluation import nlg


def resample_indices(n: int, resamples: int, seed: int = 0) -> list[np.ndarray]:
    """The studies drawn by each resample: the same draws as ``bootstrap_ci`` makes."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, n) for _ in range(resamples)]


def counts_of(indices: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(resamples, n) multiplicities: how often each study was drawn."""
    return np.stack([np.bincount(ix, minlength=n) for ix in indices]).astype(np.float64)


def resample_counts(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    return counts_of(resample_indices(n, resamples, seed), n)


def bleu_dist(stats: Sequence[nlg.BleuStats], m: np.ndarray, n: int = 4) -> np.ndarray:
    """(B, n) corpus BLEU-1..n per resample (the toolkit's compute_score on summed statistics)."""
    table = np.array([[s.testlen, s.reflen, *s.guess, *s.correct] for s in stats], dtype=np.float64)
    sums = m @ table  # integers: exact
    testlen, reflen = sums[:, 0], sums[:, 1]
    guess, correct = sums[:, 2:2 + n], sums[:, 2 + n:2 + 2 * n]
    prod = np.ones(len(m))
    scores = np.zeros((len(m), n))
    for k in range(n):
        prod = prod * ((correct[:, k] + nlg._TINY) / (guess[:, k] + nlg._SMALL))
        scores[:, k] = prod ** (1.0 / (k + 1))
    ratio = (testlen + nlg._TINY) / (reflen + nlg._SMALL)
    short = ratio < 1
    scores[short] *= np.exp(1 - 1 / ratio[short])[:, None]
    return scores


def mean_dist(values: Sequence[float], m: np.ndarray) -> np.ndarray:
    """(B,) the mean of per-study values over each resample."""
    return m @ np.asarray(values, dtype=np.float64) / m.shape[1]


def _csr(rows: list, cols: list, vals: list, shape: tuple[int, int]) -> torch.Tensor:
    """A float64 sparse (COO, duplicates summed) matrix for sparse @ dense products."""
    idx = torch.tensor([rows, cols], dtype=torch.long).reshape(2, -1)
    return torch.sparse_coo_tensor(idx, torch.tensor(vals, dtype=torch.float64), shape,
                                   check_invariants=True).coalesce()


class CiderStats:
    """Per-study n-gram count matrices of CIDEr-D (see the module docstring), built once."""

    def __init__(self, counts: "nlg._CiderCounts", sigma: float = 6.0):
        self.n_studies, self.n = len(counts.hyp), counts.n
        vocab: dict = {}
        gid = lambda g: vocab.setdefault(g, len(vocab))  # noqa: E731
        pres_r, pres_c = [], []
        hyp_r, hyp_c, hyp_v = [], [], []
        ref_r, ref_c, ref_v = [], [], []
        val_r, val_c, val_v = [], [], []
        pen, owner = [], []  # per (study, reference) row
        for i, (hyp, refs, ref_set) in enumerate(zip(counts.hyp, counts.refs, counts.ref_sets)):
            for g in ref_set:
                pres_r.append(i), pres_c.append(gid(g))
            for g, tf in hyp.items():
                hyp_r.append(i * self.n + len(g) - 1), hyp_c.append(gid(g)), hyp_v.append(tf * tf)
            lh = sum(tf for g, tf in hyp.items() if len(g) == 2)
            for rc in refs:
                row = len(pen)
                lr = sum(tf for g, tf in rc.items() if len(g) == 2)
                pen.append(math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2)))
                owner.append(i)
                for g, tf in rc.items():
                    ref_r.append(row * self.n + len(g) - 1), ref_c.append(gid(g)), ref_v.append(tf * tf)
                    if g in hyp:
                        val_r.append(row * self.n + len(g) - 1), val_c.append(gid(g)), val_v.append(min(hyp[g], tf) * tf)
        self.vocab = len(vocab)
        self.pen, self.owner = np.array(pen), np.array(owner)
        self.refs_per_study = np.bincount(self.owner, minlength=self.n_studies)
        cols = max(1, self.vocab)
        self.presence_t = _csr(pres_c, pres_r, [1.0] * len(pres_r), (cols, self.n_studies))  # (G, studies)
        self.hyp_sq = _csr(hyp_r, hyp_c, hyp_v, (self.n_studies * self.n, cols))
        self.ref_sq = _csr(ref_r, ref_c, ref_v, (len(pen) * self.n, cols))
        self.val = _csr(val_r, val_c, val_v, (len(pen) * self.n, cols))

    def per_study(self, m: np.ndarray) -> np.ndarray:
        """(B, studies) per-study CIDEr-D with the document frequencies of each resample."""
        bsz, n_ref = len(m), len(self.pen)
        df = (self.presence_t @ torch.from_numpy(np.ascontiguousarray(m.T))).numpy()  # (G, B)
        idf2 = (math.log(float(self.n_studies)) - np.log(np.maximum(1.0, df))) ** 2
        idf2 = torch.from_numpy(idf2)
        nh = np.sqrt((self.hyp_sq @ idf2).numpy().reshape(self.n_studies, self.n, bsz))
        nr = np.sqrt((self.ref_sq @ idf2).numpy().reshape(n_ref, self.n, bsz))
        val = (self.val @ idf2).numpy().reshape(n_ref, self.n, bsz)
        denom = nh[self.owner] * nr
        val = np.where(denom != 0, val / np.where(denom != 0, denom, 1.0), val)
        per_ref = val.sum(axis=1) * self.pen[:, None]  # (refs, B)
        per_study = np.zeros((self.n_studies, bsz))
        np.add.at(per_study, self.owner, per_ref)
        return (per_study / self.n / self.refs_per_study[:, None] * 10.0).T

    def dist(self, m: np.ndarray, chunk: int = 100) -> np.ndarray:
        """(B,) corpus CIDEr-D per resample (mean over the resample's studies)."""
        out = []
        for lo in range(0, len(m), chunk):
            mc = m[lo:lo + chunk]
            out.append((mc * self.per_study(mc)).sum(axis=1) / m.shape[1])
        return np.concatenate(out)


def ce_dist(cube: np.ndarray, m: np.ndarray, avg: str) -> np.ndarray:
    """(B, 3) precision, recall, F1 per resample from a (study, label, tp/fp/fn) cube."""
    sums = (m @ cube.reshape(cube.shape[0], -1).astype(np.float64)).reshape(len(m), *cube.shape[1:])
    if avg == "micro":
        sums = sums.sum(axis=1, keepdims=True)
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    p = np.where(tp + fp > 0, tp / np.where(tp + fp > 0, tp + fp, 1), 0.0)
    r = np.where(tp + fn > 0, tp / np.where(tp + fn > 0, tp + fn, 1), 0.0)
    f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return np.stack([p.mean(axis=1), r.mean(axis=1), f.mean(axis=1)], axis=1)


def percentile_ci(values: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def metric_dists(n: int, resamples: int, *, bleu: Sequence, rouge: Sequence[float], cider: "nlg._CiderCounts",
                 cubes: dict[str, np.ndarray], meteor=None, seed: int = 0,
                 means: Optional[dict[str, Sequence[float]]] = None) -> dict[str, np.ndarray]:
    """Every bootstrap distribution ``score`` reports, keyed as in metrics.json.

    ``cubes``: key infix -> (study, label, tp/fp/fn), giving ``ce_{avg}_{metric}_{infix}`` (the infix is the
    label-set suffix, e.g. ``14``, or ``plus`` + suffix for uncertain-as-positive: ``ce_plus_micro_f1_14``);
    ``meteor``: a function of every resample's indices (rows of ``idx``) returning one score per resample
    (the jar aggregates), or None; ``means``: key -> per-study values whose corpus figure is their mean
    (RadGraph, BERTScore, GREEN ...).
    """
    idx = resample_indices(n, resamples, seed)
    m = counts_of(idx, n)
    out: dict[str, np.ndarray] = {}
    b = bleu_dist(bleu, m)
    out.update({f"bleu_{k + 1}": b[:, k] for k in range(b.shape[1])})
    out["rouge_l"] = mean_dist(rouge, m)
    out["cider"] = CiderStats(cider).dist(m)
    if meteor is not None:
        out["meteor"] = np.asarray(meteor(idx), dtype=float)
    for suffix, cube in cubes.items():
        plus = suffix.startswith("plus_")
        for avg in ("micro", "macro"):
            prf = ce_dist(cube, m, avg)
            for j, name in enumerate(("precision", "recall", "f1")):
                key = f"ce_plus_{avg}_{name}_{suffix[5:]}" if plus else f"ce_{avg}_{name}_{suffix}"
                out[key] = prf[:, j]
    for key, values in (means or {}).items():
        out[key] = mean_dist(values, m)
    return out
