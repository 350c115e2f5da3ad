"""``rrg eval --predictions`` with every model-based metric, each from a tiny random model in its real layout.

RadGraph: the radgraph_tiny checkpoints (radgraph package's own classes); BERTScore: a RobertaModel +
BPE tokenizer (``save_pretrained``) serving as both conventions' model (17 layers: ReXrank reads layer 5,
LLaVA-Rad layer 17); SembScore: the published CheXbert layout (tests/chexbertkit.py); GREEN: a
LlamaForCausalLM.  One configured run and one bare run share the predictions file.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launcher.cli import main
from tests.chexbertkit import make_chexbert
from tests.metrickit import copy_radgraph, make_green_lm, make_roberta
from trainer.evaluation.metric_suite import MODEL_KEYS, RADGRAPH_KEYS, ROUGE_KEYS

STUDIES = [
    ("s1", "No acute cardiopulmonary process.", "No acute cardiopulmonary process."),
    ("s2", "Mild cardiomegaly. Small left pleural effusion.", "Mild cardiomegaly. No pleural effusion."),
    ("s3", "Right pneumothorax is unchanged. No edema.", "Stable right pneumothorax, no edema."),
    ("s4", "The lungs are clear. Heart size is normal.", "Possible left lower lobe opacity, atelectasis."),
    ("s5", "Small bilateral pleural effusions with atelectasis.", "Bilateral effusions and atelectasis."),
    ("s6", "Pulmonary edema with cardiomegaly.", ""),
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    rg_dir, enc_dir = copy_radgraph(tmp / "radgraph")
    rob = make_roberta(tmp / "roberta", layers=17)
    ckpt, tok_dir, _ = make_chexbert(tmp / "chexbert")
    green = make_green_lm(tmp / "green")
    preds = tmp / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "reference": r, "generated": g}) + "\n" for i, r, g in STUDIES))
    overrides = [f"eval.radgraph.model_dir={rg_dir}", f"eval.radgraph.encoder_dir={enc_dir}",
                 f"eval.bertscore.model_dir={rob}", f"eval.bertscore_llava_rad.model_dir={rob}",
                 f"eval.semb.checkpoint={ckpt}", f"eval.semb.tokenizer={tok_dir}", f"eval.green.model_dir={green}",
                 "eval.green.max_length=1024", "eval.green.batch_size=3"]
    common = ["--predictions", str(preds), "--no-meteor", "--bootstrap", "40"]
    assert main(["eval", *overrides, *common, "--out", str(tmp / "full")]) == 0
    assert main(["eval", *common, "--out", str(tmp / "bare")]) == 0
    read = lambda d: (json.loads((tmp / d / "metrics.json").read_text()),  # noqa: E731
                      [json.loads(x) for x in (tmp / d / "predictions.jsonl").read_text().splitlines()],
                      (tmp / d / "report.html").read_text())
    return read("full"), read("bare")


@pytest.mark.slow
def test_every_metric_key_with_interval_and_per_study_values(scored):
    (m, preds, html), _ = scored
    keys = MODEL_KEYS + ROUGE_KEYS + ("radcliq_v1_inv",)
    for key in keys:
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
        assert f"{key}_status" not in m
    for avg in ("micro", "macro"):
        for k in ("14", "5"):
            assert f"ce_plus_{avg}_f1_{k}" in m and f"ce_plus_{avg}_f1_{k}_ci_low" in m
    assert "ce_plus_" in m["convention"] and "uncertain" in m["convention"]
    assert m["radcliq_v1_inv"] == pytest.approx(1 / m["radcliq_v1"])
    assert m["radcliq_v1_radgraph_model"] == "radgraph"
    assert len(preds) == len(STUDIES)
    for p in preds:
        assert set(keys) - {"radcliq_v1_inv"} <= set(p["scores"]), p["id"]
        assert isinstance(p["green_analysis"], str)
    for key in MODEL_KEYS:  # the corpus figure is the mean of the per-study values
        assert m[key] == pytest.approx(sum(p["scores"][key] for p in preds) / len(preds)), key
    same, empty = preds[0]["scores"], preds[-1]["scores"]
    assert all(same[k] == 1.0 for k in RADGRAPH_KEYS) and same["bertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    assert same["semb_score"] == pytest.approx(1.0) and same["rouge_1"] == 1.0
    assert all(empty[k] == 0.0 for k in RADGRAPH_KEYS)  # an empty candidate scores 0 (F1RadGraph)
    assert empty["bertscore_llava_rad_f1"] == 0.0 and empty["bertscore_f1"] < 0  # rescaled below the baseline
    assert len({round(p["scores"]["bertscore_f1"], 6) for p in preds}) >= 4, "scores must differ across studies"
    for label in ("RadGraph partial (F1-RadGraph)", "BERTScore F1 (ReXrank)", "1/RadCliQ-v1", "GREEN", "CE+ micro F1 (14)"):
        assert label in html
    assert 'class="meta scores"' in html  # per-study values on the study cards


@pytest.mark.slow
def test_unconfigured_metrics_are_listed_not_zero(scored):
    _, (m, preds, html) = scored
    assert m["radgraph_partial_f1_status"] == "not computed: eval.radgraph.model_dir is unset"
    assert m["bertscore_f1_status"] == "not computed: eval.bertscore.model_dir is unset"
    assert m["semb_score_status"] == "not computed: eval.semb.checkpoint is unset"
    assert m["green_status"] == "not computed: eval.green.model_dir is unset"
    assert m["radcliq_v1_status"].startswith("not computed: needs RadGraph, BERTScore and SembScore")
    for key in MODEL_KEYS + ("radcliq_v1_inv",):
        assert key not in m, key
    assert all(isinstance(m[k], float) for k in ROUGE_KEYS)  # no model needed
    assert set(preds[0]["scores"]) == set(ROUGE_KEYS)
    assert "not computed: eval.radgraph.model_dir is unset" in html
