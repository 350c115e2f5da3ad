"""Clinical-efficacy scores, bootstrap intervals, baselines and the predictions-file scorer.

``score_predictions_file(path, out_dir)`` reads JSONL lines ``{"reference", "generated"[, "id"]}``
and writes ``out_dir/labels.csv`` (id, then ``ref_``/``gen_`` + each CheXpert label) and
``out_dir/metrics.json`` with flat keys:

* ``n``; ``bleu_1`` .. ``bleu_4``, ``rouge_l``, ``cider`` (pycocoevalcap conventions, see
  :mod:`trainer.nlg`); ``meteor`` or, without java, ``meteor_status`` = "not computed: java not found";
* ``ce_{micro,macro}_{precision,recall,f1}_{14,5}``: clinical efficacy of generated-report
  labels against reference-report labels (14 = CHEXPERT_LABELS, 5 = CHEXPERT_5);
  ``ce_f1_<label>`` per-label F1 over the 14;
* ``<key>_ci_low`` / ``<key>_ci_high``: percentile 95% bootstrap interval (``bootstrap`` resamples
  of examples, seed 0) for every NLG and ``ce_`` micro/macro key; BLEU and CIDEr are recomputed
  corpus-level on each resample (CIDEr's document frequencies from the resampled references);
* ``convention``: the label convention below, spelled out.

Convention: the positive class is 1.0; 0.0, blank and -1.0 (uncertain) are negative unless
``uncertain_as="positive"``.  Micro sums TP/FP/FN over labels and examples; macro averages the
per-label scores over all requested labels, a label with no true or predicted positives scoring
0 (sklearn ``zero_division=0``).
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np

from configs.labelsets import CHEXPERT_5, CHEXPERT_LABELS
from trainer import nlg
from trainer.bootstrap import metric_dists, percentile_ci
from trainer.labeler import LABELERS

CONVENTION = ("positive = 1.0; 0.0, blank and -1.0 (uncertain) count as negative; micro sums TP/FP/FN over "
              "labels and examples; macro averages per-label scores, zero_division=0; labels from the rrg "
              "rule-based CheXpert labeler on reference and generated reports")


def _pos(v, uncertain_as: str) -> bool:
    return v == 1.0 or (uncertain_as == "positive" and v == -1.0)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def _ce_from_counts(counts: np.ndarray, avg: str) -> tuple[float, float, float]:
    """(precision, recall, f1) from a (label, tp/fp/fn) count table."""
    if avg == "micro":
        return _prf(*(int(x) for x in counts.sum(axis=0)))
    per = np.array([_prf(*(int(x) for x in row)) for row in counts])
    return tuple(float(x) for x in per.mean(axis=0))


def clinical_scores(ref_labels: Sequence[dict], hyp_labels: Sequence[dict], labels: Sequence[str] = CHEXPERT_LABELS,
                    uncertain_as: str = "negative") -> dict:
    """Micro/macro precision, recall, F1 and per-label F1 (see the module docstring for the convention)."""
    if uncertain_as not in ("negative", "positive"):
        raise ValueError("uncertain_as must be 'negative' or 'positive'")
    counts = {name: [0, 0, 0] for name in labels}
    for ref, hyp in zip(ref_labels, hyp_labels):
        for name in labels:
            r, h = _pos(ref.get(name), uncertain_as), _pos(hyp.get(name), uncertain_as)
            counts[name][0] += r and h
            counts[name][1] += h and not r
            counts[name][2] += r and not h
    per = {name: _prf(*c) for name, c in counts.items()}
    micro = _prf(*(sum(c[i] for c in counts.values()) for i in range(3)))
    out = {f"micro_{k}": micro[i] for i, k in enumerate(("precision", "recall", "f1"))}
    out.update({f"macro_{k}": float(np.mean([v[i] for v in per.values()])) for i, k in
                enumerate(("precision", "recall", "f1"))})
    out["per_label_f1"] = {name: v[2] for name, v in per.items()}
    return out


def bootstrap_ci(records: Sequence, metric_fn: Callable[[list], float], n: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of ``metric_fn`` over ``n`` resamples (with replacement) of ``records``."""
    rng = np.random.default_rng(seed)
    vals = [metric_fn([records[i] for i in rng.integers(0, len(records), len(records))]) for _ in range(n)]
    low, high = np.percentile(vals, [2.5, 97.5])
    return float(low), float(high)


def label_prior_baseline(train_labels: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """``n`` hypothesis label sets, each label drawn independently from its training distribution."""
    rng = np.random.default_rng(seed)
    out: list[dict] = [{} for _ in range(n)]
    for name in CHEXPERT_LABELS:
        dist = Counter(lab.get(name) for lab in train_labels)
        values = list(dist)
        probs = np.array([dist[v] for v in values], dtype=float) / sum(dist.values())
        for row, k in zip(out, rng.choice(len(values), size=n, p=probs)):
            row[name] = values[k]
    return out


def retrieval_baseline(train_reports: Sequence[str], train_features: Optional[np.ndarray] = None,
                       query_features: Optional[np.ndarray] = None, n_queries: Optional[int] = None) -> list[str]:
    """Nearest training report by cosine similarity of features, or the most common training report."""
    if train_features is None or query_features is None:
        common = Counter(train_reports).most_common(1)[0][0]
        return [common] * (n_queries if n_queries is not None else 1)
    t = np.asarray(train_features, dtype=np.float64)
    q = np.asarray(query_features, dtype=np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return [train_reports[i] for i in (q @ t.T).argmax(axis=1)]


def score(records: Sequence[dict], bootstrap: int = 1000, labeler: str = "rrg", meteor: bool = True,
          meteor_language: str = "en") -> dict:
    """Flat metrics dict for ``records`` = dicts {id, reference, generated, [ref_labels], [gen_labels]}."""
    records = list(records)
    if not records:
        raise ValueError("no records to score")
    lab = LABELERS.get(labeler)()
    for key, field in (("ref_labels", "reference"), ("gen_labels", "generated")):
        missing = [r for r in records if r.get(key) is None]
        for r, labels in zip(missing, lab([r[field] for r in missing])):
            r[key] = labels
    refs = [[nlg.tokenize(r["reference"])] for r in records]
    hyps = [nlg.tokenize(r["generated"]) for r in records]
    bstats = [nlg.bleu_stats(r, h) for r, h in zip(refs, hyps)]
    rouge = nlg.rouge_l(refs, hyps)
    counts = nlg._CiderCounts(refs, hyps, 4)
    idx = list(range(len(records)))

    def nlg_fn(key: str) -> Callable[[list], float]:
        if key.startswith("bleu_"):
            return lambda ix: nlg.bleu_from_stats([bstats[i] for i in ix])[int(key[-1]) - 1]
        if key == "rouge_l":
            return lambda ix: float(np.mean([rouge[i] for i in ix]))
        return lambda ix: float(np.mean(nlg.cider_d(refs, hyps, index=ix, counts=counts)))

    fns: dict[str, Callable[[list], float]] = {k: nlg_fn(k) for k in
                                               ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider")}
    scorer = None
    if meteor and nlg.java_available():
        scorer = nlg.shared_meteor(meteor_language)  # one JVM for the whole evaluation
        mstats = scorer.stats(refs, hyps)
        fns["meteor"] = lambda ix: scorer.aggregate([mstats[i] for i in ix])[0]
    cubes: dict[str, np.ndarray] = {}
    for suffix, names in (("14", CHEXPERT_LABELS), ("5", CHEXPERT_5)):
        r = np.array([[_pos(rec["ref_labels"].get(n), "negative") for n in names] for rec in records])
        h = np.array([[_pos(rec["gen_labels"].get(n), "negative") for n in names] for rec in records])
        cube = np.stack([r & h, h & ~r, r & ~h], axis=-1).astype(np.int64)  # (example, label, tp/fp/fn)
        cubes[suffix] = cube
        for avg in ("micro", "macro"):
            for j, m in enumerate(("precision", "recall", "f1")):
                fns[f"ce_{avg}_{m}_{suffix}"] = lambda ix, cube=cube, avg=avg, j=j: _ce_from_counts(
                    cube[ix].sum(axis=0), avg)[j]
    out: dict = {"n": len(records), "convention": CONVENTION}
    if scorer is not None:
        out["meteor_language"] = meteor_language
    for key, fn in fns.items():
        out[key] = fn(idx)
    if bootstrap:  # per-study statistics resampled in numpy (trainer/bootstrap.py), same draws as bootstrap_ci
        dists = metric_dists(len(records), bootstrap, bleu=bstats, rouge=rouge, cider=counts, cubes=cubes,
                             meteor=fns.get("meteor"), seed=0)
        for key in fns:
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = percentile_ci(dists[key])
    if scorer is None:
        out["meteor_status"] = "not computed: java not found" if meteor else "not computed: disabled"
        if meteor:
            print(nlg.METEOR_MISSING)
    per = clinical_scores([r["ref_labels"] for r in records], [r["gen_labels"] for r in records])["per_label_f1"]
    out.update({f"ce_f1_{name.lower().replace(' ', '_')}": v for name, v in per.items()})
    return out


def score_predictions_file(path: str, out_dir: str, bootstrap: int = 1000) -> dict:
    """``rrg eval --predictions``: score a JSONL file, write metrics.json and labels.csv, return the metrics."""
    records = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                row = json.loads(line)
                records.append({"id": row.get("id", i), "reference": row["reference"],
                                "generated": row["generated"]})
    metrics = score(records, bootstrap=bootstrap)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id"] + [f"ref_{n}" for n in CHEXPERT_LABELS] + [f"gen_{n}" for n in CHEXPERT_LABELS])
        for r in records:
            w.writerow([r["id"]] + ["" if r[k][n] is None else r[k][n]
                                    for k in ("ref_labels", "gen_labels") for n in CHEXPERT_LABELS])
    return metrics
