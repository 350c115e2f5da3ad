"""``rrg eval``: generation over Ray workers, baselines, ablation, HTML; scoring files; in-training eval."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainkit import ROOT, TINY, step_losses, torchrun

FAST_EVAL = ["eval.bootstrap=50", "eval.meteor=false", "eval.max_new_tokens=24", "eval.batch_size=4"]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> tuple[str, Path]:
    """A tiny model trained for a few steps (with in-training evaluation every 4 steps).

    At tiny.yaml's lr (1e-3) the model still emits only the most frequent token after 8 steps, a
    lone space, for every study: every prediction is empty, and any two predictions files are equal
    whatever the workers did. At 5e-3 it has learned the reports' opening and what it writes depends
    on the image ("FINDINGS:", "FINDINGS::", "" ...), so a study's text given to another id shows."""
    out = tmp_path_factory.mktemp("eval_run")
    torchrun(2, [f"data.shards_dir={shards}", f"output_dir={out}", "eval.every_steps=4", "eval.subset=8",
                 "train.lr=5e-3", *FAST_EVAL])
    return str(shards), out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_in_training_evaluation_is_logged(trained):
    _, out = trained
    evals = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [4, 8]
    assert {"ce_macro_f1_5", "bleu_4", "rouge_l"} <= set(evals[0]["eval"])
    assert sorted(step_losses(out)) == list(range(1, 9)), "evaluation disturbed the training steps"


@pytest.mark.slow
def test_eval_one_and_two_workers_give_the_same_predictions(trained, tmp_path):
    shards, out = trained
    common = ["eval", TINY, f"data.shards_dir={shards}", f"output_dir={out}", *FAST_EVAL, "--checkpoint", "latest"]
    cli(*common, "cluster.num_workers=1", "--out", str(tmp_path / "w1"))
    cli(*common, "cluster.num_workers=2", "--out", str(tmp_path / "w2"), "--image-ablation", "shuffle")
    one, two = (tmp_path / "w1" / "predictions.jsonl").read_text(), (tmp_path / "w2" / "predictions.jsonl").read_text()
    preds = read_jsonl(tmp_path / "w1" / "predictions.jsonl")
    # the files are worth comparing only if the generations depend on the study: all-empty (or all-equal)
    # ones would match whatever the workers did with their slices
    assert len({p["generated"] for p in preds}) > 1, {p["generated"] for p in preds}
    assert one == two
    manifest = json.loads(Path(shards, "manifest.json").read_text())
    assert len(preds) == manifest["splits"]["test"] == len({p["id"] for p in preds}), "gaps or duplicates"
    assert all(set(p) >= {"id", "reference", "generated", "ref_labels", "gen_labels"} for p in preds)

    metrics = json.loads((tmp_path / "w2" / "metrics.json").read_text())
    for key in ("bleu_4", "rouge_l", "cider", "ce_macro_f1_5", "ce_macro_f1_5_ci_low", "ce_macro_f1_5_ci_high",
                "baseline_label_prior_ce_macro_f1_5", "baseline_retrieval_bleu_4", "ablation_shuffle_ce_macro_f1_5",
                "ablation_shuffle_drop_bleu_4", "meteor_status"):
        assert key in metrics, key
    assert metrics["ce_macro_f1_5_ci_low"] <= metrics["ce_macro_f1_5"] <= metrics["ce_macro_f1_5_ci_high"]
    shuffled = read_jsonl(tmp_path / "w2" / "predictions_shuffle.jsonl")
    assert [p["id"] for p in shuffled] == [p["id"] for p in preds]
    html = (tmp_path / "w2" / "report.html").read_text()
    assert "shuffle (each study gets another study" in html and "label_prior" in html and html.count('class="card') >= 1


@pytest.mark.slow
def test_eval_on_an_exported_model_dir(trained, tmp_path):
    shards, out = trained
    cli("eval", TINY, f"data.shards_dir={shards}", f"output_dir={out}", *FAST_EVAL, "cluster.num_workers=1",
        "--checkpoint", "latest", "--out", str(tmp_path / "ck"))
    model_dir = tmp_path / "ck" / "model"
    assert (model_dir / "lm" / "config.json").is_file()
    cli("eval", TINY, f"data.shards_dir={shards}", f"output_dir={out}", *FAST_EVAL, "cluster.num_workers=1",
        "--model-dir", str(model_dir), "--out", str(tmp_path / "md"))
    assert (tmp_path / "ck" / "predictions.jsonl").read_text() == (tmp_path / "md" / "predictions.jsonl").read_text()
    assert len({p["generated"] for p in read_jsonl(tmp_path / "ck" / "predictions.jsonl")}) > 1  # study-dependent text


def test_score_predictions_file_and_label_commands(tmp_path):
    rows = [
        {"id": "a", "reference": "Mild cardiomegaly. No pleural effusion.", "generated": "Mild cardiomegaly. No effusion."},
        {"id": "b", "reference": "Small left pleural effusion.", "generated": "No acute cardiopulmonary abnormality."},
        {"id": "c", "reference": "Lungs are clear. No pneumothorax.", "generated": "Lungs are clear. No pneumothorax."},
    ]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli("eval", "--predictions", str(preds), "--out", str(tmp_path / "scored"), "--bootstrap", "20")
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert metrics["n"] == 3 and 0 < metrics["bleu_1"] < 1 and "bleu_1_ci_low" in metrics

    reports = tmp_path / "reports.jsonl"
    reports.write_text("".join(json.dumps({"report": r["reference"]}) + "\n" for r in rows))
    cli("label", str(reports), "--out", str(tmp_path / "labels.csv"))
    table = list(csv.DictReader(open(tmp_path / "labels.csv")))
    assert [t["Cardiomegaly"] for t in table] == ["1.0", "", ""]
    assert [t["Pleural Effusion"] for t in table] == ["0.0", "1.0", ""]
    assert table[2]["Pneumothorax"] == "0.0"


@pytest.mark.slow
def test_in_training_evaluation_under_zero3_does_not_hang(shards, tmp_path):
    # 21 validation studies over 2 ranks: uneven slices, padded to equal batch counts; synced generation
    out = tmp_path / "z3"
    torchrun(2, [f"data.shards_dir={shards}", f"output_dir={out}", "train.zero_stage=3", "eval.every_steps=4",
                 "eval.subset=12", *FAST_EVAL], timeout=300)
    evals = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["step"] for e in evals] == [4, 8]


@pytest.mark.slow
def test_eval_with_chexbert_labels_model_and_both_baselines(trained, tmp_path):
    from shards.labeling import CheXbertLabeler
    from tests.chexbertkit import make_chexbert

    shards, out = trained
    ckpt, tok, _ = make_chexbert(tmp_path / "chexbert")
    cli("eval", TINY, f"data.shards_dir={shards}", f"output_dir={out}", *FAST_EVAL, "cluster.num_workers=1",
        "eval.labeler=chexbert", f"eval.labeler_args.checkpoint={ckpt}", f"eval.labeler_args.tokenizer={tok}",
        "--checkpoint", "latest", "--out", str(tmp_path / "cx"))
    metrics = json.loads((tmp_path / "cx" / "metrics.json").read_text())
    for prefix in ("", "baseline_label_prior_", "baseline_retrieval_"):
        assert metrics[f"{prefix}labeler"] == "CheXbertLabeler", prefix
        assert metrics[f"{prefix}label_set"] == "chexpert" and f"{prefix}ce_macro_f1_5" in metrics
    preds = read_jsonl(tmp_path / "cx" / "predictions.jsonl")
    lab = CheXbertLabeler(checkpoint=str(ckpt), tokenizer=str(tok))
    assert [p["ref_labels"] for p in preds] == lab([p["reference"] for p in preds])
    assert [p["gen_labels"] for p in preds] == lab([p["generated"] for p in preds])
