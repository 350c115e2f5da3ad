"""The labelers' corpora (tests/data): hand-written sentences and reports with exact label vectors.

* ``labeler_sentences_en.jsonl`` (352) and ``labeler_reports_en.jsonl`` (102): MIMIC / IU X-ray /
  CheXpert styles (terse, dictated, impression-only, numbered lists, devices, comparisons,
  INDICATION sections), each with a full CheXpert-14 vector.  **How the labels were made:** the
  rrg engineers wrote the sentences and their vectors alongside the rules (no radiologist labelled
  them), following how a radiologist reads the sentence under the CheXpert labeler's published
  conventions: its mention definitions (e.g. vascular congestion and septal / Kerley B lines are
  Edema), hedges are uncertain (-1), "unchanged" / "stable" findings are present, resolved ones
  absent; No Finding follows CheXpert's rule.  Rows that had followed the regexes instead ("Kerley B
  lines are present." labelled No Finding only) were corrected and the rules changed to match.  So
  these corpora are regression tests of the rules, not a held-out measurement of their accuracy.
* ``labeler_sentences_es.jsonl`` (161): Spanish PadChest-style sentences with PadChest main labels.

Every line is ``{"text": str, "labels": {label: 1.0 | 0.0 | -1.0 | null}}`` with every label of the set.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs.labelsets import CHEXPERT_LABELS, PADCHEST_LABELS
from shards.labeling import label_report, label_report_es

DATA = Path(__file__).parent / "data"
CORPORA = {"labeler_sentences_en.jsonl": (CHEXPERT_LABELS, label_report, 300),
           "labeler_reports_en.jsonl": (CHEXPERT_LABELS, label_report, 100),
           "labeler_sentences_es.jsonl": (PADCHEST_LABELS, label_report_es, 150)}


def load_corpus(name: str, labels: list[str]) -> list[dict]:
    """Rows of one corpus file, each checked: text, and a value for exactly the label set's labels."""
    rows = []
    for n, line in enumerate((DATA / name).read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        assert set(row) == {"text", "labels"} and isinstance(row["text"], str) and row["text"].strip(), (name, n)
        assert list(row["labels"]) == list(labels), (name, n)
        assert all(v in (1.0, 0.0, -1.0, None) for v in row["labels"].values()), (name, n)
        rows.append(row)
    return rows


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_corpus_loads_and_is_big_enough(name):
    labels, _, minimum = CORPORA[name]
    rows = load_corpus(name, labels)
    assert len(rows) >= minimum
    assert len({r["text"] for r in rows}) == len(rows), "duplicate texts"
    for label in labels:  # every label occurs positive and negative somewhere in each sentence corpus
        values = {r["labels"][label] for r in rows}
        if "sentences" in name:
            assert {1.0, 0.0} <= values or label in ("No Finding", "normal"), (name, label, values)
    if labels is CHEXPERT_LABELS:  # No Finding is CheXpert's rule over the other labels
        for r in rows:
            lab = r["labels"]
            clear = all(lab[n] not in (1.0, -1.0) for n in labels if n not in ("No Finding", "Support Devices"))
            assert lab["No Finding"] == (1.0 if clear else None), r["text"]


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_labeler_matches_every_vector_exactly(name):
    labels, labeler, _ = CORPORA[name]
    wrong = []
    for r in load_corpus(name, labels):
        got = labeler(r["text"])
        if got != r["labels"]:
            wrong.append(f"{r['text'][:90]!r}: " + ", ".join(f"{n} {r['labels'][n]} != {got[n]}" for n in labels
                                                                if got[n] != r["labels"][n]))
    assert not wrong, f"{len(wrong)} mismatches:\n" + "\n".join(wrong[:20])
