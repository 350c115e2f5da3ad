"""Labeler input handling, speed, --explain, label sets in scoring, and the CLI's bad-input errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest

from configs.labelsets import CHEXPERT_LABELS, PADCHEST_LABELS
from shards.labeling import (LabelInputError, Truncation, check_reports, label_file, label_report, make_labeler,
                             read_reports)
from tests.trainkit import ROOT

SENTENCES = ["No focal consolidation, pneumothorax, or large pleural effusion.", "Stable mild cardiomegaly.",
             "Right IJ catheter tip in the SVC.", "Possible small left effusion versus scarring.",
             "Bibasilar opacities, likely atelectasis.", "No change in the small left pleural effusion."]


def rrg(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_labeling_is_linear_in_report_length():
    small = " ".join(SENTENCES * 300)[:100_000]
    big = " ".join(SENTENCES * 3000)[:1_000_000]
    one_sentence = big.replace(".", ",")  # no sentence breaks at all: the worst case for scope search
    t0 = time.process_time()
    small_labels = label_report(small)
    t_small = time.process_time() - t0
    for text in (big, one_sentence):
        t0 = time.process_time()
        labels = label_report(text)
        took = time.process_time() - t0  # CPU time: one core's work, whatever else the machine runs
        assert took < 2.0, f"1 MB report took {took:.2f} s"
        assert took < 25 * max(t_small, 0.01), f"not linear: 100 KB {t_small:.3f} s, 1 MB {took:.3f} s"
        assert labels["Cardiomegaly"] == 1.0 and labels["Support Devices"] == 1.0
    assert small_labels["Pneumothorax"] == 0.0 and small_labels["Pleural Effusion"] == 1.0


def test_null_and_non_string_reports_are_errors_not_text(tmp_path):
    with pytest.raises(LabelInputError, match="item 1: report is null"):
        check_reports(["Heart size is normal.", None])
    with pytest.raises(LabelInputError, match="item 0: report is int"):
        check_reports([3])
    src = tmp_path / "r.jsonl"
    src.write_text('{"report": "Mild cardiomegaly."}\n{"report": null}\n')
    with pytest.raises(LabelInputError, match=r"r\.jsonl:2: field 'report' is null, expected a string"):
        read_reports(str(src))
    src.write_text('{"report": "Mild cardiomegaly."}\n{"text": "x"}\n')
    with pytest.raises(LabelInputError, match=r"r\.jsonl:2: missing field 'report'"):
        read_reports(str(src))


def test_long_reports_are_truncated_and_counted(tmp_path):
    src = tmp_path / "r.jsonl"
    long_report = "Mild cardiomegaly. " + "Lungs are clear. " * 200 + "Large right pneumothorax."
    src.write_text(json.dumps({"report": long_report}) + "\n" + json.dumps({"report": "No effusion."}) + "\n")
    summary = label_file(str(src), str(tmp_path / "out.csv"), max_chars=1000)
    assert summary["truncated"] == 1 and summary["reports"] == 2
    assert json.loads((tmp_path / "out.csv.summary.json").read_text())["truncated"] == 1
    row = next(csv.DictReader(open(tmp_path / "out.csv")))
    assert row["Cardiomegaly"] == "1.0" and row["Pneumothorax"] == ""  # cut before the pneumothorax
    t = Truncation(max_chars=5)
    assert t.cut("abcdefgh", "x:1") == "abcde" and t.count == 1 and "x:1" in t.summary()


def test_cli_label_explain_rate_and_spanish(tmp_path):
    src = tmp_path / "reports.jsonl"
    src.write_text("".join(json.dumps({"report": s}) + "\n" for s in SENTENCES * 1667))  # 10,002 reports
    proc = rrg("label", str(src), "--out", str(tmp_path / "labels.csv"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "10002 reports in" in proc.stdout and "reports/s per CPU-second" in proc.stdout
    summary = json.loads((tmp_path / "labels.csv.summary.json").read_text())
    assert summary["reports"] == 10002 and summary["reports_per_cpu_s"] > 1000, summary

    one = tmp_path / "one.txt"
    one.write_text("No focal consolidation, pneumothorax, or large pleural effusion. Possible small left effusion.\n"
                   "Heart size is normal. No pneumothorax.\n")
    proc = rrg("label", str(one), "--out", str(tmp_path / "one.csv"), "--explain")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any("Pneumothorax" in l and "negative" in l and "'pneumothorax'" in l and "pre-negation 'no'" in l
               for l in lines), proc.stdout
    assert any("Pleural Effusion" in l and "uncertain" in l and "pre-uncertainty 'possible'" in l for l in lines)
    assert any("No Finding" in l and "rule: no pathology positive or uncertain" in l for l in lines)

    es = tmp_path / "es.txt"
    es.write_text("Cardiomegalia leve. Sin derrame pleural.\nNo se descarta neumonía basal derecha.\n")
    proc = rrg("label", str(es), "--out", str(tmp_path / "es.csv"), "--labeler", "rrg_es")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "es.csv")))
    assert list(rows[0])[1:] == PADCHEST_LABELS
    assert rows[0]["cardiomegaly"] == "1.0" and rows[0]["pleural effusion"] == "0.0" and rows[1]["pneumonia"] == "-1.0"

    preds = tmp_path / "preds_es.jsonl"  # a Spanish demo evaluation: CE on PadChest labels
    preds.write_text("".join(json.dumps({"id": str(i), "reference": r, "generated": g}) + "\n" for i, (r, g) in enumerate([
        ("Cardiomegalia leve. Derrame pleural izquierdo.", "Cardiomegalia. Sin derrame pleural."),
        ("Neumotórax derecho con drenaje torácico.", "Neumotórax derecho. Drenaje torácico."),
        ("Sin hallazgos significativos.", "Sin alteraciones.")])))
    proc = rrg("eval", "--predictions", str(preds), "--labeler", "rrg_es", "--out", str(tmp_path / "es_scored"),
               "--bootstrap", "0", "--no-meteor")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads((tmp_path / "es_scored" / "metrics.json").read_text())
    assert m["label_set"] == "padchest" and m["ce_f1_pneumothorax"] == 1.0 and m["ce_f1_pleural_effusion"] == 0.0
    header = next(csv.reader(open(tmp_path / "es_scored" / "labels.csv")))
    assert header[1:] == [f"ref_{n}" for n in PADCHEST_LABELS] + [f"gen_{n}" for n in PADCHEST_LABELS]


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle in err, err


def test_cli_bad_inputs_one_line_no_partial_output(tmp_path):
    out = tmp_path / "labels.csv"
    _one_line_error(rrg("label", str(tmp_path / "missing.jsonl"), "--out", str(out)), "missing.jsonl", "cannot read")
    assert not out.exists()
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"report": "Mild cardiomegaly."}\n{"report": null}\n')
    _one_line_error(rrg("label", str(nulls), "--out", str(out)), "nulls.jsonl:2", "'report'", "null")
    assert not out.exists()

    good = json.dumps({"id": "a", "reference": "Mild cardiomegaly.", "generated": "No effusion."})
    for name, second, needles in (("nonjson", "{not json", ("nonjson.jsonl:2", "not a JSON object")),
                                  ("noref", json.dumps({"id": "b", "generated": "x"}),
                                   ("noref.jsonl:2", "missing field 'reference'")),
                                  ("nullgen", json.dumps({"reference": "x", "generated": None}),
                                   ("nullgen.jsonl:2", "field 'generated' is null"))):
        preds = tmp_path / f"{name}.jsonl"
        preds.write_text(good + "\n" + second + "\n")
        scored = tmp_path / f"scored_{name}"
        _one_line_error(rrg("eval", "--predictions", str(preds), "--out", str(scored), "--bootstrap", "0",
                            "--no-meteor"), *needles)
        assert not scored.exists(), "partial output written"


def test_long_predictions_are_truncated_and_counted(tmp_path):
    from trainer.evaluation.scoring import score_predictions_file

    preds = tmp_path / "p.jsonl"
    huge = "Mild cardiomegaly. " + "Lungs are clear. " * 50_000  # 850 KB on one line
    preds.write_text(json.dumps({"reference": huge, "generated": "Mild cardiomegaly."}) + "\n"
                     + json.dumps({"reference": "No effusion.", "generated": "No effusion."}) + "\n")
    t0 = time.process_time()
    m = score_predictions_file(str(preds), str(tmp_path / "out"), bootstrap=0, meteor=False, max_chars=2000)
    assert m["truncated_texts"] == 1 and m["ce_f1_cardiomegaly"] == 1.0
    assert time.process_time() - t0 < 10


def test_score_uses_the_given_labeler_and_its_label_set():
    from trainer.evaluation.scoring import score

    rows = [{"id": "1", "reference": "Cardiomegalia leve. Derrame pleural izquierdo.", "generated": "Cardiomegalia."},
            {"id": "2", "reference": "Neumotórax derecho.", "generated": "Neumotórax derecho. Sin derrame."},
            {"id": "3", "reference": "Sin hallazgos significativos.", "generated": "Sin hallazgos."}]
    es = score([dict(r) for r in rows], bootstrap=0, labeler=make_labeler("rrg_es"), meteor=False)
    assert es["label_set"] == "padchest" and es["labeler"] == "SpanishRuleLabeler"
    assert es["ce_f1_cardiomegaly"] == 1.0 and es["ce_f1_pneumothorax"] == 1.0 and es["ce_f1_pleural_effusion"] == 0.0
    assert "ce_macro_f1_5" in es and f"ce_micro_f1_{len(PADCHEST_LABELS)}" in es and "ce_micro_f1_14" not in es
    en = score([dict(r) for r in rows], bootstrap=0, labeler="rrg", meteor=False)
    assert en["label_set"] == "chexpert" and en["ce_f1_cardiomegaly"] == 0.0  # English rules find no finding here
    assert set(en) >= {"ce_micro_f1_14", "ce_f1_no_finding"} and "ce_f1_pneumothorax" in en


def test_unknown_eval_labeler_is_a_config_error():
    from configs.schema import ConfigError
    from trainer.config import load_config

    with pytest.raises(ConfigError, match="eval.labeler.*unknown report labeler 'nope'.*rrg_es"):
        load_config(str(ROOT / "configs" / "tiny.yaml"), ["eval.labeler=nope"])
    assert load_config(str(ROOT / "configs" / "tiny.yaml"), ["eval.labeler=rrg_es"]).eval.labeler == "rrg_es"
