"""Topic-level scores for per-topic generation (LLaVA-TA), beside the usual report-level ones.

Report level needs nothing new: the family's Generation carries the *raw* reference
(``DecodedSample.report``, never the cleaned topic sentences), and the evaluator scores it as
any other report.  Topic level pairs, for every topic present in the reference, the
reference's sentence for it (the rule decomposer on the raw reference, at scoring time) with
the generated sentence for that topic ("" when the topic was not asked or came back empty):

* NLG per topic: BLEU-4 and ROUGE-L over its pairs (corpus-level, like the report scores);
* clinical per pathology topic: agreement of the CheXpert value the labeler reads for the
  topic's observation in the two sentences (positive vs not), as accuracy and F1 of positive;
* ``topic_macro_*`` averages over topics, ``topic_micro_*`` over all pairs, and
  ``topic_recall`` = share of reference topics the model wrote a sentence for.

The reference side is always the offline ``rule`` decomposer (deterministic, the same for every
checkpoint and selection), also when the training overlay came from the ``hf`` backend; the
metrics say so (``topic_reference_decomposer``), so topic-level figures from runs whose training
topics came from different backends are compared on the same reference topics.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from shards.passes.topics.ontology import BY_NAME, ORDER
from trainer.evaluation import nlg
from shards.labeling import label_report
from trainer.evaluation.scoring import _prf
from shards.passes.topics.decompose import decompose

REFERENCE_DECOMPOSER = "rule"  # what splits the raw references into topics at scoring time


def generated_rows(record: dict) -> dict[str, str]:
    """topic -> generated sentence, from a Generation's ``trace`` (JSON rows) or a ``topics`` list."""
    rows = record.get("topic_rows")
    if rows is None and record.get("trace"):
        rows = json.loads(record["trace"])
    return {r["topic"]: r["sentence"] for r in rows or []}


def topic_scores(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """records: {id, reference (raw report), trace or topic_rows}.  Returns flat + per-topic scores."""
    pairs: dict[str, list[tuple[str, str]]] = {}
    asked = 0
    for rec in records:
        gen = generated_rows(rec)
        for row in decompose(rec["reference"])[0]:
            hyp = gen.get(row["topic"], "")
            asked += bool(hyp)
            pairs.setdefault(row["topic"], []).append((row["sentence"], hyp))
    if not pairs:
        raise ValueError("no reference topics to score (empty references?)")
    per: dict[str, dict[str, float]] = {}
    for topic in sorted(pairs, key=ORDER.__getitem__):
        refs = [[nlg.tokenize(r)] for r, _ in pairs[topic]]
        hyps = [nlg.tokenize(h) for _, h in pairs[topic]]
        rouge = nlg.rouge_l(refs, hyps)
        scores = {"n": len(pairs[topic]), "bleu_4": nlg.bleu(refs, hyps)[3], "rouge_l": float(np.mean(rouge))}
        label = BY_NAME[topic].label
        if label:
            ref_pos = [label_report(r)[label] == 1.0 for r, _ in pairs[topic]]
            hyp_pos = [label_report(h)[label] == 1.0 for _, h in pairs[topic]]
            tp = sum(a and b for a, b in zip(ref_pos, hyp_pos))
            scores["label_accuracy"] = float(np.mean([a == b for a, b in zip(ref_pos, hyp_pos)]))
            scores["label_f1"] = _prf(tp, sum(b and not a for a, b in zip(ref_pos, hyp_pos)),
                                      sum(a and not b for a, b in zip(ref_pos, hyp_pos)))[2]
        per[topic] = scores
    all_pairs = [p for ps in pairs.values() for p in ps]
    out: dict[str, Any] = {"topic_reference_decomposer": REFERENCE_DECOMPOSER,
                           "topic_n_pairs": len(all_pairs), "topic_recall": asked / len(all_pairs)}
    for key in ("bleu_4", "rouge_l", "label_accuracy", "label_f1"):
        vals = [s[key] for s in per.values() if key in s]
        if vals:
            out[f"topic_macro_{key}"] = float(np.mean(vals))
    refs = [[nlg.tokenize(r)] for r, _ in all_pairs]
    hyps = [nlg.tokenize(h) for _, h in all_pairs]
    out["topic_micro_bleu_4"], out["topic_micro_rouge_l"] = nlg.bleu(refs, hyps)[3], float(np.mean(nlg.rouge_l(refs, hyps)))
    out["per_topic"] = per
    return out
