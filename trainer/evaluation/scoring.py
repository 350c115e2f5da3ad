"""Clinical-efficacy scores, bootstrap intervals, baselines and the predictions-file scorer.

``score_predictions_file(path, out_dir)`` reads JSONL lines ``{"reference", "generated"[, "id"]}``
and writes ``out_dir/labels.csv`` (id, then ``ref_``/``gen_`` + each CheXpert label) and
``out_dir/metrics.json`` with flat keys:

* ``n``; ``bleu_1`` .. ``bleu_4``, ``rouge_l``, ``cider`` (pycocoevalcap conventions, see
  :mod:`trainer.evaluation.nlg`); ``meteor`` or, without java, ``meteor_status`` = "not computed: java not found";
* ``ce_{micro,macro}_{precision,recall,f1}_{14,5}``: clinical efficacy of generated-report
  labels against reference-report labels (14 = CHEXPERT_LABELS, 5 = CHEXPERT_5);
  ``ce_f1_<label>`` per-label F1 over the 14; ``labeler`` (its class name).  The labels come from the configured labeler
  (``labeler=``: a registry name or an instance, see :mod:`shards.labeling`) and are scored on
  the label set it declares: for another set (``padchest``) the suffixes are its sizes
  (``_11`` all labels, ``_5`` its headline five) and ``label_set`` names it;
* ``<key>_ci_low`` / ``<key>_ci_high``: percentile 95% bootstrap interval (``bootstrap`` resamples
  of examples, seed 0) for every NLG and ``ce_`` micro/macro key; BLEU and CIDEr are recomputed
  corpus-level on each resample (CIDEr's document frequencies from the resampled references);
* ``ce_plus_{micro,macro}_{precision,recall,f1}_{14,5}``: the same with uncertain (-1.0) counted positive
  (LLaVA-Rad's "+" columns, CheXbert "U-ones");
* with a :class:`~trainer.evaluation.metric_suite.MetricSuite` (``suite=``): ``rouge_1``, ``rouge_2``,
  ``rouge_l_f1`` and every configured model metric (``radgraph_*_f1``, ``bertscore_*``, ``semb_score``,
  ``radcliq_v1`` + ``radcliq_v1_inv``, ``green``) as means of per-study values, each with its interval;
  an unconfigured one as ``<key>_status`` ("not computed: eval.X.model_dir is unset"); every record
  gets ``scores`` = its per-study values (written to predictions.jsonl);
* ``convention``: the label conventions below, spelled out.

Convention: the positive class is 1.0; 0.0, blank and -1.0 (uncertain) are negative unless
``uncertain_as="positive"``.  Micro sums TP/FP/FN over labels and examples; macro averages the
per-label scores over all requested labels, a label with no true or predicted positives scoring
0 (sklearn ``zero_division=0``).
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np

from configs.atomic import atomic_write_text
from configs.labelsets import CHEXPERT_LABELS, LabelSet
from shards.labeling import LabelInputError, Truncation, check_reports, label_set_of, resolve_labeler
from shards.labeling.registry import DEFAULT_MAX_CHARS
from shards.labeling.files import read_jsonl_rows, text_field
from trainer.evaluation import nlg
from trainer.evaluation.bootstrap import metric_dists, percentile_ci

CONVENTION = ("ce_*: positive = 1.0; 0.0, blank and -1.0 (uncertain) count as negative; ce_plus_*: 1.0 and -1.0 "
              "(uncertain) count as positive (the '+' variants); micro sums TP/FP/FN over labels and examples; macro "
              "averages per-label scores, zero_division=0; labels from the {labeler} labeler ({label_set} label set) "
              "on reference and generated reports")


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


def label_prior_baseline(train_labels: Sequence[dict], n: int, seed: int = 0,
                         labels: Optional[Sequence[str]] = None) -> list[dict]:
    """``n`` hypothesis label sets, each label drawn independently from its training distribution."""
    rng = np.random.default_rng(seed)
    out: list[dict] = [{} for _ in range(n)]
    for name in labels or (list(train_labels[0]) if train_labels else CHEXPERT_LABELS):
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


def label_records(records: list[dict], labeler) -> None:
    """Fill ``ref_labels`` / ``gen_labels`` where missing, with ``labeler`` (an instance)."""
    for key, field in (("ref_labels", "reference"), ("gen_labels", "generated")):
        missing = [r for r in records if r.get(key) is None]
        texts = check_reports([r[field] for r in missing], f"'{field}' of the records")
        for r, labels in zip(missing, labeler(texts)):
            r[key] = labels


def _ce_keys(label_set: LabelSet) -> list[tuple[str, Sequence[str]]]:
    if label_set.name == "chexpert":
        return [("14", label_set.labels), ("5", label_set.headline)]
    return [(str(len(label_set.labels)), label_set.labels), (str(len(label_set.headline)), label_set.headline)]


def score(records: Sequence[dict], bootstrap: int = 1000, labeler="rrg", meteor: bool = True,
          meteor_language: str = "en", suite=None) -> dict:
    """Flat metrics dict for ``records`` = dicts {id, reference, generated, [ref_labels], [gen_labels]}.

    ``labeler``: a registry name or a labeler instance (built once by the caller and reused for the
    model and both baselines); CE keys follow the label set it declares.
    """
    records = list(records)
    if not records:
        raise ValueError("no records to score")
    lab = resolve_labeler(labeler)
    label_set = label_set_of(lab)
    label_records(records, lab)
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
    scorer = meteor_dist = None
    if meteor and nlg.java_available():
        scorer = nlg.shared_meteor(meteor_language)  # one JVM for the whole evaluation
        mstats = scorer.stats(refs, hyps)
        fns["meteor"] = lambda ix: scorer.aggregate([mstats[i] for i in ix])[0]
        meteor_dist = functools.partial(scorer.resample_scores, mstats)
    cubes: dict[str, np.ndarray] = {}
    for suffix, names in _ce_keys(label_set):
        for unc in ("negative", "positive"):
            r = np.array([[_pos(rec["ref_labels"].get(n), unc) for n in names] for rec in records])
            h = np.array([[_pos(rec["gen_labels"].get(n), unc) for n in names] for rec in records])
            cube = np.stack([r & h, h & ~r, r & ~h], axis=-1).astype(np.int64)  # (example, label, tp/fp/fn)
            infix = suffix if unc == "negative" else f"plus_{suffix}"
            cubes[infix] = cube
            for avg in ("micro", "macro"):
                for j, m in enumerate(("precision", "recall", "f1")):
                    key = f"ce_{avg}_{m}_{suffix}" if unc == "negative" else f"ce_plus_{avg}_{m}_{suffix}"
                    fns[key] = lambda ix, cube=cube, avg=avg, j=j: _ce_from_counts(cube[ix].sum(axis=0), avg)[j]
    per_study: dict[str, list[float]] = {}
    status: dict[str, str] = {}
    if suite is not None:
        per_study, status = suite.per_study(records)
        for r_i, rec in enumerate(records):
            rec["scores"] = {k: v[r_i] for k, v in per_study.items()}
        for key, values in per_study.items():
            fns[key] = lambda ix, values=values: float(np.mean([values[i] for i in ix]))
    out: dict = {"n": len(records), "label_set": label_set.name, "labeler": type(lab).__name__,
                 "convention": CONVENTION.format(labeler=type(lab).__name__, label_set=label_set.name)}
    if scorer is not None:
        out["meteor_language"] = meteor_language
    for key, fn in fns.items():
        out[key] = fn(idx)
    if "radcliq_v1" in per_study:  # ReXrank ranks by 1 / mean(RadCliQ-v1)
        out["radcliq_v1_inv"] = 1.0 / out["radcliq_v1"] if out["radcliq_v1"] else float("nan")
        out["radcliq_v1_radgraph_model"] = suite.radgraph_model_type
    out.update({f"{k}_status": v for k, v in status.items()})
    if bootstrap:  # per-study statistics resampled in numpy (evaluation/bootstrap.py), same draws as bootstrap_ci
        dists = metric_dists(len(records), bootstrap, bleu=bstats, rouge=rouge, cider=counts, cubes=cubes,
                             meteor=meteor_dist, seed=0, means=per_study)
        if "radcliq_v1" in per_study:
            dists["radcliq_v1_inv"] = 1.0 / dists["radcliq_v1"]
        for key in list(fns) + (["radcliq_v1_inv"] if "radcliq_v1" in per_study else []):
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = percentile_ci(dists[key])
    if scorer is None:
        out["meteor_status"] = "not computed: java not found" if meteor else "not computed: disabled"
        if meteor:
            print(nlg.METEOR_MISSING)
    per = clinical_scores([r["ref_labels"] for r in records], [r["gen_labels"] for r in records],
                          labels=label_set.labels)["per_label_f1"]
    out.update({f"ce_f1_{name.lower().replace(' ', '_')}": v for name, v in per.items()})
    return out


def read_predictions(path: str, truncation: Optional[Truncation] = None) -> list[dict]:
    """Rows ``{id, reference, generated}`` of a predictions JSONL, or of a ReXrank prediction JSON
    (:mod:`trainer.evaluation.rexrank`); LabelInputError names file, line (or study) and field.

    Texts longer than the truncation's ``max_chars`` are cut and counted (one pathological line
    must not stall labelling, BLEU or the METEOR subprocess).
    """
    from trainer.evaluation.rexrank import is_rexrank_file, read_rexrank

    trunc = truncation or Truncation()
    if os.path.isfile(path) and is_rexrank_file(path):
        records = read_rexrank(path)
        for r in records:
            r["reference"] = trunc.cut(r["reference"], f"{path}:{r['id']}")
            r["generated"] = trunc.cut(r["generated"], f"{path}:{r['id']}")
        return records
    records = []
    for n, row in read_jsonl_rows(path):
        records.append({"id": row.get("id", n - 1),
                        "reference": trunc.cut(text_field(path, n, row, "reference"), f"{path}:{n}"),
                        "generated": trunc.cut(text_field(path, n, row, "generated"), f"{path}:{n}")})
    if not records:
        raise LabelInputError(f"{path}: no predictions in the file")
    return records


def score_predictions_file(path: str, out_dir: str, bootstrap: int = 1000, labeler="rrg", meteor: bool = True,
                           max_chars: int = DEFAULT_MAX_CHARS, suite=None) -> dict:
    """``rrg eval --predictions``: score a JSONL (or ReXrank JSON) file; write metrics.json, labels.csv,
    predictions.jsonl (per-study labels and scores) and report.html; return the metrics.

    The whole file is read and checked before anything is written (no partial output).
    """
    trunc = Truncation(max_chars=max_chars)
    records = read_predictions(path, trunc)
    if trunc.count:
        print(f"rrg: {trunc.summary()}")
    lab = resolve_labeler(labeler)
    names = list(label_set_of(lab).labels)
    metrics = score(records, bootstrap=bootstrap, labeler=lab, meteor=meteor, suite=suite)
    metrics["truncated_texts"] = trunc.count
    os.makedirs(out_dir, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id"] + [f"ref_{n}" for n in names] + [f"gen_{n}" for n in names])
    for r in records:
        w.writerow([r["id"]] + ["" if r[k].get(n) is None else r[k][n]
                                for k in ("ref_labels", "gen_labels") for n in names])
    atomic_write_text(os.path.join(out_dir, "labels.csv"), buf.getvalue())
    atomic_write_text(os.path.join(out_dir, "predictions.jsonl"), "".join(
        json.dumps({k: r[k] for k in ("id", "reference", "generated", "ref_labels", "gen_labels", "scores",
                                      "green_analysis") if k in r}) + "\n" for r in records))
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True))
    from trainer.evaluation.report_html import write_report

    write_report(out_dir, metrics=metrics, baselines={}, ablations={}, samples=records[:16],
                 title=f"rrg evaluation of {os.path.basename(path)}")
    return metrics
