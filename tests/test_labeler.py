"""Rule-based CheXpert-14 labeler: exact labels on realistic sentences and reports."""
import csv
import json

import pytest

from configs.labelsets import CHEXPERT_LABELS
from shards.labeling import LABELERS, CheXbertLabeler, LabelInputError, label_file, label_report

# (report, expected non-blank labels); every other label must be blank.
CASES = [
    ("No acute cardiopulmonary abnormality.", {"No Finding": 1.0}),
    ("IMPRESSION: No acute cardiopulmonary process.", {"No Finding": 1.0}),
    ("Stable mild cardiomegaly.", {"Cardiomegaly": 1.0}),
    ("Patchy opacity at the left base may represent atelectasis.", {"Lung Opacity": 1.0, "Atelectasis": -1.0}),
    ("No pleural effusion or pneumothorax.", {"No Finding": 1.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
    ("Heart size is normal.", {"No Finding": 1.0, "Cardiomegaly": 0.0}),
    ("Normal heart size.", {"No Finding": 1.0, "Cardiomegaly": 0.0}),
    ("The cardiac silhouette is within normal limits.", {"No Finding": 1.0, "Cardiomegaly": 0.0}),
    ("The heart is not enlarged.", {"No Finding": 1.0, "Cardiomegaly": 0.0}),
    ("Heart size is top-normal.", {"No Finding": 1.0, "Cardiomegaly": 0.0}),
    ("The heart is mildly enlarged.", {"Cardiomegaly": 1.0}),
    ("Right IJ central venous catheter tip in the SVC.", {"No Finding": 1.0, "Support Devices": 1.0}),
    ("ET tube terminates 4 cm above the carina.", {"No Finding": 1.0, "Support Devices": 1.0}),
    ("Dual-chamber pacemaker leads in the right atrium and ventricle.", {"No Finding": 1.0, "Support Devices": 1.0}),
    ("Old healed left rib fractures.", {"Fracture": 1.0}),
    ("Acute displaced fracture of the right clavicle.", {"Fracture": 1.0}),
    ("Lungs are clear.", {"No Finding": 1.0}),
    ("No focal consolidation, effusion, or pneumothorax.",
     {"No Finding": 1.0, "Consolidation": 0.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
    ("No effusion, small right pneumothorax.", {"Pleural Effusion": 0.0, "Pneumothorax": 1.0}),
    ("Possible small effusion, no pneumothorax.", {"Pleural Effusion": -1.0, "Pneumothorax": 0.0}),
    ("Atelectasis versus pneumonia at the right base.", {"Atelectasis": -1.0, "Pneumonia": -1.0}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1.0}),
    ("Cannot exclude early pneumonia.", {"Pneumonia": -1.0}),
    ("Findings are suspicious for pneumonia.", {"Pneumonia": -1.0}),
    ("Bilateral pleural effusions have resolved.", {"No Finding": 1.0, "Pleural Effusion": 0.0}),
    ("Interval removal of the right chest tube.", {"No Finding": 1.0, "Support Devices": 0.0}),
    ("Enlarged cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": 1.0}),
    ("Widened mediastinum, concerning for aortic injury.", {"Enlarged Cardiomediastinum": 1.0}),
    ("Mild pulmonary vascular congestion.", {"Edema": 1.0}),
    ("No pericardial effusion.", {"No Finding": 1.0}),
    ("Kerley B lines are present.", {"Edema": 1.0}),  # septal (Kerley B) lines: interstitial edema
    ("Right lower lobe consolidation, concerning for pneumonia.", {"Consolidation": 1.0, "Pneumonia": -1.0}),
    ("Apical pleural thickening.", {"Pleural Other": 1.0}),
    ("A 5 mm nodule in the right upper lobe.", {"Lung Lesion": 1.0}),
    ("Blunting of the right costophrenic angle.", {"Pleural Effusion": -1.0}),  # CheXpert: uncertain alone
    ("Left hydropneumothorax.", {"Pleural Effusion": 1.0, "Pneumothorax": 1.0}),
    ("Lungs are clear without focal consolidation; no evidence of pulmonary edema.",
     {"No Finding": 1.0, "Consolidation": 0.0, "Edema": 0.0}),
    ("Opacity likely represents atelectasis rather than pneumonia.",
     {"Lung Opacity": 1.0, "Atelectasis": -1.0, "Pneumonia": 0.0}),
    # multi-sentence aggregation: positive beats uncertain beats negative
    ("FINDINGS: No pleural effusion. IMPRESSION: Small left pleural effusion.", {"Pleural Effusion": 1.0}),
    ("Possible right effusion. No left effusion.", {"Pleural Effusion": -1.0}),
    ("FINDINGS: Sternotomy wires are intact. Heart size is normal. Lungs are clear. No pneumothorax. "
     "IMPRESSION: No acute cardiopulmonary process.",
     {"No Finding": 1.0, "Support Devices": 1.0, "Cardiomegaly": 0.0, "Pneumothorax": 0.0}),
    ("IMPRESSION: 1. Moderate cardiomegaly. 2. Mild interstitial edema. 3. Bibasilar atelectasis.",
     {"Cardiomegaly": 1.0, "Edema": 1.0, "Atelectasis": 1.0}),
    ("Low lung volumes with bibasilar atelectasis; heart size is difficult to assess.", {"Atelectasis": 1.0}),
]


def _expected(partial):
    return {name: partial.get(name) for name in CHEXPERT_LABELS}


@pytest.mark.parametrize("report,expected", CASES, ids=[c[0][:40] for c in CASES])
def test_labels_exact(report, expected):
    assert label_report(report) == _expected(expected)


def test_enough_cases_and_empty_report():
    assert len(CASES) >= 40
    assert label_report("") == {name: None for name in CHEXPERT_LABELS}


def test_registry_and_chexbert_missing_path(tmp_path):
    assert "rrg" in LABELERS and "chexbert" in LABELERS
    out = LABELERS.get("rrg")()(["Stable mild cardiomegaly."])
    assert out[0]["Cardiomegaly"] == 1.0
    with pytest.raises(LabelInputError, match="not found"):
        CheXbertLabeler(str(tmp_path / "nope"))


def test_label_file_jsonl_and_text(tmp_path):
    src = tmp_path / "reports.jsonl"
    src.write_text("\n".join(json.dumps({"report": r}) for r, _ in CASES[:5]) + "\n")
    out = tmp_path / "out" / "labels.csv"
    label_file(str(src), str(out))
    rows = list(csv.reader(open(out)))
    assert rows[0] == ["Reports"] + CHEXPERT_LABELS
    assert len(rows) == 6
    for row, (report, expected) in zip(rows[1:], CASES[:5]):
        assert row[0] == report
        assert row[1:] == ["" if v is None else f"{v:.1f}" for v in _expected(expected).values()]
    txt = tmp_path / "reports.txt"
    txt.write_text("Pneumonia cannot be excluded.\nHeart size is normal.\n")
    label_file(str(txt), str(tmp_path / "t.csv"))
    rows = list(csv.reader(open(tmp_path / "t.csv")))
    assert rows[1][1 + CHEXPERT_LABELS.index("Pneumonia")] == "-1.0"
    assert rows[2][1 + CHEXPERT_LABELS.index("Cardiomegaly")] == "0.0"
