"""Pure-arithmetic parts of the leaderboard metrics against their reference implementations' own values.

Fixtures in tests/data/metrics (provenance in its README.md):

* RadGraph rewards == the radgraph 0.1.18 sdist's ``compute_reward`` on the annotations that sdist ships
  (and == the later lower-casing code with ``case="lower"``, the version trap);
* RadGraph inference on tiny random checkpoints built with the package's own classes == the package's
  own annotations of the same reports (both model types, a report long enough to be folded);
* RadCliQ-v1's constants == the ones inside CXR-Report-Metric's radcliq-v1.pkl, read from its pickle
  opcodes (never unpickled), and the linear model on inputs whose answer follows from the scaler;
* GREEN's parser on the five stored model responses of GREEN's reproducibility test;
* BLEU and ROUGE on RadEval's CPU regression fixture.
"""
from __future__ import annotations

import json
import math
import pickletools
import struct
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "metrics"


# ---------------------------------------------------------------- RadGraph
def test_radgraph_rewards_equal_the_package_on_its_golden_annotations():
    from trainer.evaluation.radgraph import reward

    gold = json.loads((DATA / "radgraph_golden.json").read_text())
    anns = [a["annotation"] for a in gold["annotations"]]
    assert len(anns) >= 7 and len(gold["pairs"]) == len(anns) ** 2
    differ = 0
    for p in gold["pairs"]:
        h, r = anns[p["hyp"]], anns[p["ref"]]
        assert [reward(h, r, lvl) for lvl in ("simple", "partial", "complete")] == p["pypi_0_1_18"], p
        assert [reward(h, r, lvl, case="lower") for lvl in ("simple", "partial", "complete")] == p["head_lowercase"], p
        differ += p["pypi_0_1_18"] != p["head_lowercase"]
    assert differ >= 2, "the upper-cased copies must expose the version trap"
    assert [reward(anns[0], anns[0], lvl) for lvl in ("simple", "partial", "complete")] == [1.0, 1.0, 1.0]


def test_radgraph_combined_is_the_mean_of_entity_and_relation_f1():
    from trainer.evaluation.radgraph import combined, pair_scores

    a = {"entities": {"1": {"tokens": "edema", "label": "OBS-DP", "relations": [["located_at", "2"]]},
                      "2": {"tokens": "pulmonary", "label": "ANAT-DP", "relations": []}}}
    b = {"entities": {"1": {"tokens": "edema", "label": "OBS-DP", "relations": []},
                      "2": {"tokens": "pulmonary", "label": "ANAT-DP", "relations": []}}}
    assert combined(a, a) == 1.0
    assert combined(a, b) == pytest.approx((1.0 + 0.0) / 2)  # entities all match, the one relation is missed
    assert pair_scores(None, a) == {"simple": 0.0, "partial": 0.0, "complete": 0.0, "combined": 0.0}


@pytest.mark.parametrize("model_type", ["radgraph", "radgraph-xl"])
def test_radgraph_inference_equals_the_package_on_a_tiny_checkpoint(model_type):
    from trainer.evaluation.radgraph import RadGraph, RadGraphError

    root = DATA / "radgraph_tiny"
    ref = json.loads((root / "package_annotations.json").read_text())
    rg = RadGraph(str(root / model_type), encoder_dir=str(root / "encoder"))
    assert rg.layout.model_type == model_type
    got = rg(ref["texts"])
    for text, g, r in zip(ref["texts"], got, ref["annotations"][model_type]):
        assert g == r, text
    assert sum(len(a["entities"]) for a in got) > 20 and any(e["relations"] for e in got[2]["entities"].values())
    assert len(ref["texts"][2].split()) > 16, "the long report must be folded into several encoder segments"
    with pytest.raises(RadGraphError, match="eval.radgraph.encoder_dir"):
        RadGraph(str(root / model_type))  # the placeholder encoder name is in no cache: one clear line


# ---------------------------------------------------------------- RadCliQ-v1
def _pickle_float_arrays(path: Path) -> dict[str, tuple]:
    """float64 arrays of a numpy pickle, keyed by the attribute name before them -- opcodes only."""
    out, last_name = {}, None
    for op, arg, _ in pickletools.genops(path.read_bytes()):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE") and (arg.endswith("_") or arg == "coefs"):
            last_name = arg  # an attribute name (mean_, var_, scale_, coefs), not a class or dtype string
        elif op.name in ("SHORT_BINBYTES", "BINBYTES") and len(arg) >= 32 and len(arg) % 8 == 0:
            out[last_name] = struct.unpack(f"<{len(arg) // 8}d", arg)
    return out


def test_radcliq_constants_are_the_published_model():
    from trainer.evaluation import text_metrics as tm

    arrays = _pickle_float_arrays(DATA / "radcliq-v1.pkl")
    assert arrays["mean_"] == tm.RADCLIQ_MEAN
    assert arrays["scale_"] == tm.RADCLIQ_SCALE
    assert arrays["coefs"] == tm.RADCLIQ_COEFS
    assert tm.RADCLIQ_COLUMNS == ("radgraph_combined", "bertscore", "semb_score", "bleu_score")


def test_radcliq_v1_linear_model():
    from trainer.evaluation.text_metrics import RADCLIQ_COEFS, RADCLIQ_MEAN, RADCLIQ_SCALE, radcliq_v1

    assert radcliq_v1(*RADCLIQ_MEAN) == pytest.approx(RADCLIQ_COEFS[4], abs=1e-15)  # at the mean: the intercept
    one_sd = [m + s for m, s in zip(RADCLIQ_MEAN, RADCLIQ_SCALE)]
    assert radcliq_v1(*one_sd) == pytest.approx(sum(RADCLIQ_COEFS), rel=1e-12)
    perfect = radcliq_v1(1.0, 1.0, 1.0, 1.0)
    assert perfect == pytest.approx(sum(c * (1 - m) / s for c, m, s in zip(RADCLIQ_COEFS, RADCLIQ_MEAN, RADCLIQ_SCALE))
                                    + RADCLIQ_COEFS[4])
    assert perfect < radcliq_v1(0.5, 0.5, 0.5, 0.5) < radcliq_v1(0.0, 0.0, 0.0, 0.0)  # lower is better


# ---------------------------------------------------------------- GREEN
def test_green_parser_on_stored_model_responses():
    from trainer.evaluation.green import CATEGORIES, clean_responses, green_score, parse_counts

    rows = json.loads((DATA / "green_responses.json").read_text())["rows"]
    assert len(rows) == 5
    for row in rows:
        text = row["response"]
        assert parse_counts(text, CATEGORIES[0])[1] == row["significant_errors"]
        assert parse_counts(text, CATEGORIES[2])[0] == row["matched_findings"]
        assert green_score(text) == pytest.approx(row["green"])
        assert green_score(clean_responses("<|user|>\nprompt\n<|assistant|>" + text)) == pytest.approx(row["green"])
    assert [round(r["green"], 4) for r in rows] == [0.0, 0.1667, 0.3333, 0.5, 0.25]
    assert green_score("[Clinically Significant Errors]:\nNo errors.\n\n[Matched Findings]:\n3. a; b; c") == 1.0
    numbered = "[Clinically Significant Errors]:\n(1) x: 1.\n(2) y: 2.\n\n[Matched Findings]:\n1. z"
    assert parse_counts(numbered, CATEGORIES[0]) == (3, [1, 2, 0, 0, 0, 0])


# ---------------------------------------------------------------- BLEU and ROUGE (RadEval CPU tier)
def test_bleu_and_rouge_on_radeval_cpu_fixture():
    from trainer.evaluation import nlg
    from trainer.evaluation.text_metrics import rouge_scores

    fx = json.loads((DATA / "radeval_cpu_fixture.json").read_text())
    refs, hyps, exp = fx["refs"], fx["hyps"], fx["expected"]
    stats = [nlg.bleu_stats([r], h) for r, h in zip(refs, hyps)]  # RadEval: raw text split on whitespace
    corpus = nlg.bleu_from_stats(stats)
    assert round(corpus[3], 4) == exp["default"]["bleu"]
    for n in (1, 2, 3):
        assert round(corpus[n - 1], 4) == exp["detailed"][f"bleu_{n}"]
    for s, e in zip(stats, exp["per_sample"]["bleu"]):
        assert nlg.bleu_from_stats([s])[3] == pytest.approx(e, rel=1e-9, abs=1e-20)
    rows = [rouge_scores(r, h) for r, h in zip(refs, hyps)]
    for ours, theirs in (("rouge_1", "rouge1"), ("rouge_2", "rouge2"), ("rouge_l_f1", "rougeL")):
        assert [row[ours] for row in rows] == pytest.approx(exp["per_sample"][theirs], abs=1e-12)
        assert round(sum(row[ours] for row in rows) / len(rows), 4) == exp["default"][theirs]


# ---------------------------------------------------------------- BERTScore arithmetic
def test_bertscore_rescale_and_greedy_matching(tmp_path):
    import torch

    from tests.metrickit import make_roberta
    from trainer.evaluation.text_metrics import BASELINES, BertScorer

    d = make_roberta(tmp_path / "rob", layers=6)
    raw = BertScorer(str(d), model_type="distilroberta-base", rescale_with_baseline=False)
    hyps, refs = ["mild cardiomegaly", "no effusion", ""], ["mild cardiomegaly", "small effusion", "no edema"]
    s = raw.score(hyps, refs)
    assert s["bertscore_f1"][0] == pytest.approx(1.0, abs=1e-5)  # identical texts
    assert s["bertscore_precision"][2] == 0.0 and s["bertscore_f1"][2] == 0.0  # an empty candidate
    # the greedy match, written out for pair 1 (idf off: special tokens weigh 0)
    h, r = raw.encode(hyps[1]), raw.encode(refs[1])
    eh, er = raw._embed(h), raw._embed(r)
    sim = torch.nn.functional.normalize(eh, dim=-1) @ torch.nn.functional.normalize(er, dim=-1).T
    lh, lr = max(len(raw.encode(x)) for x in hyps), max(len(raw.encode(x)) for x in refs)
    padded = torch.zeros(lh, lr)  # bert_score pads each batch; a padded position is similarity 0
    padded[: len(h), : len(r)] = sim
    p = padded.max(dim=1).values[1:len(h) - 1].mean().item()
    rr = padded.max(dim=0).values[1:len(r) - 1].mean().item()
    assert s["bertscore_precision"][1] == pytest.approx(p, abs=1e-5)
    assert s["bertscore_recall"][1] == pytest.approx(rr, abs=1e-5)
    assert s["bertscore_f1"][1] == pytest.approx(2 * p * rr / (p + rr), abs=1e-5)
    resc = BertScorer(str(d), model_type="distilroberta-base").score(hyps, refs)
    b = BASELINES[("distilroberta-base", 5)]
    assert resc["bertscore_f1"][1] == pytest.approx((s["bertscore_f1"][1] - b[2]) / (1 - b[2]), abs=1e-5)
    assert resc["bertscore_f1"][0] == pytest.approx(1.0, abs=1e-4)
    assert math.isfinite(resc["bertscore_f1"][2]) and resc["bertscore_f1"][2] < 0
