"""Clinical scores, bootstrap, baselines and the predictions-file scorer."""
import csv
import json
import random

import numpy as np
import pytest

from configs.labelsets import CHEXPERT_5, CHEXPERT_LABELS
from trainer.evaluation.evaluate import score_predictions_file as reexported
from trainer.evaluation.scoring import (bootstrap_ci, clinical_scores, label_prior_baseline, retrieval_baseline, score,
                                        score_predictions_file)

REPORTS = [
    "Heart size is normal. No pleural effusion or pneumothorax.",
    "Stable mild cardiomegaly. Small left pleural effusion.",
    "Patchy opacity at the left base, likely atelectasis.",
    "Right lower lobe consolidation, concerning for pneumonia.",
    "Moderate right pneumothorax. Right chest tube in place.",
    "Mild pulmonary edema and bilateral pleural effusions.",
    "No acute cardiopulmonary process.",
    "Bibasilar atelectasis. Mild cardiomegaly.",
    "Old healed left rib fractures. Lungs are clear.",
    "Endotracheal tube 4 cm above the carina. Left lower lobe consolidation.",
]


def _lab(**kw):
    return {n: kw.get(n.replace(" ", "_")) for n in CHEXPERT_LABELS}


def test_clinical_scores_convention():
    ref = [_lab(Cardiomegaly=1.0, Edema=1.0), _lab(Cardiomegaly=0.0, Atelectasis=-1.0), _lab(Edema=1.0)]
    hyp = [_lab(Cardiomegaly=1.0), _lab(Cardiomegaly=1.0, Atelectasis=1.0), _lab(Edema=-1.0)]
    s = clinical_scores(ref, hyp, CHEXPERT_5)
    # positives: ref Cardiomegaly x1, Edema x2; hyp Cardiomegaly x2, Atelectasis x1 (uncertain ref = negative)
    assert s["micro_precision"] == pytest.approx(1 / 3) and s["micro_recall"] == pytest.approx(1 / 3)
    assert s["per_label_f1"]["Cardiomegaly"] == pytest.approx(2 / 3)
    assert s["per_label_f1"]["Consolidation"] == 0.0  # no positives anywhere: zero_division=0
    assert s["macro_f1"] == pytest.approx((2 / 3) / 5)
    u = clinical_scores(ref, hyp, CHEXPERT_5, uncertain_as="positive")
    assert u["per_label_f1"]["Atelectasis"] == 1.0 and u["per_label_f1"]["Edema"] == pytest.approx(2 / 3)


def test_bootstrap_ci_brackets_the_mean():
    data = list(np.random.default_rng(1).normal(5.0, 1.0, 400))
    low, high = bootstrap_ci(data, lambda xs: float(np.mean(xs)), n=500, seed=0)
    assert low < np.mean(data) < high and 0.1 < high - low < 0.3
    assert bootstrap_ci(data, lambda xs: float(np.mean(xs)), n=500, seed=0) == (low, high)


def test_baselines():
    train = [_lab(Cardiomegaly=1.0)] * 30 + [_lab(Cardiomegaly=0.0)] * 70
    hyp = label_prior_baseline(train, 2000, seed=0)
    rate = np.mean([h["Cardiomegaly"] == 1.0 for h in hyp])
    assert 0.26 < rate < 0.34 and all(h["Edema"] is None for h in hyp)
    reports = ["normal", "cardiomegaly", "normal"]
    assert retrieval_baseline(reports, n_queries=2) == ["normal", "normal"]
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    assert retrieval_baseline(reports, feats, np.array([[0.1, 2.0], [3.0, 0.0]])) == ["cardiomegaly", "normal"]


def _write(path, refs, gens):
    path.write_text("".join(json.dumps({"id": f"s{i}", "reference": r, "generated": g}) + "\n"
                            for i, (r, g) in enumerate(zip(refs, gens))))


def test_predictions_file_perfect_vs_shuffled(tmp_path):
    perfect = tmp_path / "perfect.jsonl"
    _write(perfect, REPORTS, REPORTS)
    m = reexported(str(perfect), str(tmp_path / "p"), bootstrap=100)
    assert score_predictions_file is reexported
    saved = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert set(saved) == set(m) and saved["bleu_1"] == pytest.approx(m["bleu_1"])
    for key in ["bleu_1", "bleu_4", "rouge_l", "ce_micro_f1_14", "ce_micro_f1_5", "ce_macro_precision_5"]:
        assert m[key] == pytest.approx(1.0), key
        assert m[f"{key}_ci_high"] == pytest.approx(1.0)
        if "macro" not in key:  # a resample without some label's positives scores that label 0 (zero_division)
            assert m[f"{key}_ci_low"] == pytest.approx(1.0)
    assert m["n"] == 10 and "convention" in m and m["cider"] > 1.0
    assert ("meteor" in m and m["meteor"] > 0.9) or m["meteor_status"] == "not computed: java not found"

    shuffled = REPORTS[3:] + REPORTS[:3]
    _write(tmp_path / "shuf.jsonl", REPORTS, shuffled)
    s = score_predictions_file(str(tmp_path / "shuf.jsonl"), str(tmp_path / "s"), bootstrap=100)
    for key in ["bleu_1", "bleu_4", "rouge_l", "cider", "ce_micro_f1_14", "ce_macro_f1_5"]:
        assert s[key] < m[key], key
        assert s[f"{key}_ci_low"] <= s[key] <= s[f"{key}_ci_high"], key
    for key, v in s.items():
        if key.startswith(("bleu", "rouge", "ce_", "meteor")) and isinstance(v, float):
            assert 0.0 <= v <= 1.0, key
    rows = list(csv.reader(open(tmp_path / "s" / "labels.csv")))
    assert rows[0][0] == "id" and len(rows) == 11 and len(rows[0]) == 29
    assert rows[1][0] == "s0" and rows[2][1 + CHEXPERT_LABELS.index("Cardiomegaly")] == "1.0"


def test_spanish_records_scored_with_meteor_es_and_padchest_labels():
    """A Spanish (PadChest-style) evaluation: METEOR runs with -l es, CE on the PadChest label set."""
    from trainer.evaluation import nlg

    records = [{"id": "a", "reference": "Derrame pleural izquierdo pequeño. Cardiomegalia leve.",
                "generated": "Derrame pleural izquierdo. Cardiomegalia."},
               {"id": "b", "reference": "Sin hallazgos patológicos significativos.",
                "generated": "Neumotórax derecho."}]
    m = score([dict(r) for r in records], bootstrap=0, labeler="rrg_es", meteor=nlg.java_available(),
              meteor_language="es")
    assert m["label_set"] == "padchest" and "ce_macro_f1_11" in m and "ce_macro_f1_14" not in m
    assert m["ce_f1_cardiomegaly"] == 1.0 and m["ce_f1_pneumothorax"] == 0.0
    if nlg.java_available():  # CI installs Java; the jar's Spanish stemmer matches "patológicos" forms
        assert m["meteor_language"] == "es" and 0.0 < m["meteor"] < 1.0
        en = score([dict(r) for r in records], bootstrap=0, labeler="rrg_es", meteor=True)
        assert en["meteor_language"] == "en" and en["meteor"] != m["meteor"]
