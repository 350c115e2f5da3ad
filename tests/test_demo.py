"""The synthetic phantom dataset: determinism, pixel/mask/label agreement, balance, splits."""
from __future__ import annotations

import copy
import re
from collections import defaultdict

import numpy as np
import pytest

from shards.demo import (DEMO_MASK_CHANNELS, FINDINGS, PATHOLOGIES, build_study, demo_entry, label_frequencies,
                         make_study, sample_findings)
from configs.labelsets import CHEXPERT_5, CHEXPERT_LABELS

PATHOLOGY_LABEL = {"cardiomegaly": "Cardiomegaly", "pleural_effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax",
                   "consolidation": "Consolidation", "atelectasis": "Atelectasis", "edema": "Edema"}
LL, RL, HEART, MED, DIA, RIBS, VERT, ABD = range(8)


@pytest.fixture(scope="module")
def small_studies():
    """400 studies at 64 px (labels and text do not depend on the image size)."""
    return [make_study(i, seed=0, image_size=64, two_view_fraction=0.0) for i in range(400)]


def _index_with(predicate, start=0, seed=0):
    for i in range(start, start + 500):
        f = sample_findings(np.random.default_rng([seed, i, 2]))
        if predicate(f):
            return i, f
    raise AssertionError("no index matched")


# ----------------------------------------------------------------------------- determinism & structure
def test_determinism_and_independence():
    a, b = make_study(17, seed=3), make_study(17, seed=3)
    assert np.array_equal(a.views[0].image, b.views[0].image)
    assert np.array_equal(a.masks, b.masks)
    assert (a.report, a.labels, a.topics, a.patient_id, a.split) == (b.report, b.labels, b.topics, b.patient_id, b.split)
    c, d = make_study(18, seed=3), make_study(17, seed=4)
    assert not np.array_equal(a.views[0].image, c.views[0].image)
    assert not np.array_equal(a.views[0].image, d.views[0].image)
    # generating other indices in between does not change a study (no hidden global state)
    for i in range(5):
        make_study(i)
    assert np.array_equal(make_study(17, seed=3).views[0].image, a.views[0].image)


def test_study_structure():
    s = make_study(4, image_size=256)
    assert s.study_id == "demo-000004"
    assert s.views[0].image.dtype == np.uint8 and s.views[0].image.shape == (256, 256)
    assert s.views[0].position in ("PA", "AP")
    assert s.masks.dtype == bool and s.masks.shape == (len(DEMO_MASK_CHANNELS), 256, 256)
    assert s.mask_channels == DEMO_MASK_CHANNELS
    assert set(s.labels) == set(CHEXPERT_LABELS)
    assert all(v in (1.0, 0.0, -1.0, None) for v in s.labels.values())
    assert " ".join(t["text"] for t in s.topics) == f"{s.findings} {s.impression}"
    assert {t["topic"] for t in s.topics} <= {"heart", "mediastinum", "lungs", "pleura", "devices", "bones", "impression"}
    assert s.topics[-1]["topic"] == "impression"
    assert set(s.meta["findings"]) <= set(FINDINGS)
    assert s.report.startswith("FINDINGS: ") and "\nIMPRESSION: " in s.report


def test_two_view_fraction_and_lateral():
    studies = [make_study(i, image_size=64) for i in range(200)]
    two = [s for s in studies if len(s.views) == 2]
    assert 0.15 < len(two) / len(studies) < 0.35
    assert all(s.views[1].position == "LATERAL" and s.views[1].image.shape == (64, 64) for s in two)
    assert all(s.meta["view_positions"] == [v.position for v in s.views] for s in studies)
    assert all(len(s.views) == 1 for s in (make_study(i, image_size=64, two_view_fraction=0.0) for i in range(30)))


# ----------------------------------------------------------------------------- masks and pixels
def test_masks_align_with_image():
    for i in range(40):
        s = make_study(i, image_size=256, two_view_fraction=0.0)
        img, m = s.views[0].image.astype(float), s.masks
        assert all(m[c].sum() > 200 for c in range(len(DEMO_MASK_CHANNELS))), i
        assert not (m[LL] & m[RL]).any() and not (m[HEART] & (m[LL] | m[RL])).any()
        cols = np.flatnonzero(m[RL].any(0)).mean(), np.flatnonzero(m[LL].any(0)).mean()
        assert cols[0] < 128 < cols[1]  # patient's right lung on the image left
        assert abs(np.flatnonzero(m[VERT].any(0)).mean() - 128) < 12  # the spine is central
        assert np.flatnonzero(m[ABD].any(1)).mean() > np.flatnonzero((m[LL] | m[RL]).any(1)).max() - 30
        assert img[m[RIBS] & ~m[HEART]].mean() > img[(m[LL] | m[RL]) & ~m[RIBS]].mean()  # ribs are bony
        if s.meta["normal"]:
            lung = img[m[LL] | m[RL]].mean()
            assert lung + 40 < img[m[HEART]].mean() and lung + 40 < img[m[DIA]].mean(), i


def test_cardiomegaly_widens_heart():
    idx, f = _index_with(lambda f: "cardiomegaly" not in f)
    with_cm = copy.deepcopy(f)
    with_cm["cardiomegaly"] = {"ctr": 0.62, "severity": "moderate", "uncertain": False}
    a, b = build_study(idx, 0, f, 256), build_study(idx, 0, with_cm, 256)
    assert a.meta["ctr"] < 0.48 and b.meta["ctr"] > 0.57
    assert b.masks[HEART].sum() > 1.3 * a.masks[HEART].sum()
    assert a.labels["Cardiomegaly"] in (0.0, None) and b.labels["Cardiomegaly"] == 1.0


def _base_mean(study, ch):
    img, m = study.views[0].image.astype(float), study.masks[ch]
    rows = np.flatnonzero(m.any(1))
    low = m.copy()
    low[: rows[0] + int(0.8 * (rows[-1] - rows[0]))] = False
    return img[low].mean()


def test_effusion_brightens_its_lung_base():
    idx, f = _index_with(lambda f: not f.get("pleural_effusion"))
    eff = copy.deepcopy(f)
    eff["pleural_effusion"] = {"sizes": {"left": "moderate"}, "levels": {"left": 0.12}, "uncertain": False}
    a, b = build_study(idx, 0, f, 256), build_study(idx, 0, eff, 256)
    assert _base_mean(b, LL) > _base_mean(a, LL) + 25
    assert abs(_base_mean(b, RL) - _base_mean(a, RL)) < 1.0
    assert b.labels["Pleural Effusion"] == 1.0 and "left pleural effusion" in b.report.lower()


def test_pneumothorax_darkens_apex_and_consolidation_brightens():
    idx, f = _index_with(lambda f: not (f.get("pneumothorax") or f.get("consolidation") or f.get("edema")))
    ptx = copy.deepcopy(f)
    ptx["pneumothorax"] = {"side": "right", "size": "moderate", "depth": 0.07, "uncertain": False}
    cons = copy.deepcopy(f)
    cons["consolidation"] = {"side": "left", "zone": "mid", "radius": 0.07, "uncertain": False}
    a, b, c = (build_study(idx, 0, x, 256) for x in (f, ptx, cons))
    img_a, img_b, img_c = (s.views[0].image.astype(float) for s in (a, b, c))
    rim = a.masks[RL].copy()
    rim[int(0.4 * 256):] = False  # upper lung zone
    diff = img_b - img_a
    assert (diff[rim] < -15).mean() > 0.15  # a dark air rim appears at the apex/lateral edge
    assert np.abs(diff[a.masks[LL]]).max() == 0  # the other lung is untouched
    assert (img_c - img_a)[a.masks[LL]].max() > 60 and np.abs(img_c - img_a)[a.masks[RL]].max() == 0


def test_devices_draw_bright_lines():
    idx, f = _index_with(lambda f: "support_devices" not in f)
    dev = copy.deepcopy(f)
    dev["support_devices"] = {"devices": ["ett"], "ett_carina_cm": 4, "ett_tip_y": 0.28, "cvc_tip_y": 0.38, "ecg": []}
    a, b = build_study(idx, 0, f, 256), build_study(idx, 0, dev, 256)
    diff = b.views[0].image.astype(float) - a.views[0].image.astype(float)
    assert (diff > 40).sum() > 60 and (diff > 40)[int(0.3 * 256):].sum() == 0  # a line ending above the carina
    assert b.labels["Support Devices"] == 1.0 and "endotracheal tube" in b.report.lower()


# ----------------------------------------------------------------------------- labels vs report
# An independent, deliberately naive sentence-level reading of the report with the CheXpert labeler's
# mention phrases: negation cue before a mention -> 0, hedge cue before it (or "is suspected") -> -1.
MENTIONS = {"Cardiomegaly": r"cardiomegaly|heart size|the heart|cardiac silhouette",
            "Enlarged Cardiomediastinum": r"mediastinal silhouette|contour| mediastinum",
            "Lung Opacity": r"opaci", "Edema": r"edema", "Consolidation": r"consolidat", "Pneumonia": r"pneumonia",
            "Atelectasis": r"atelecta|collapse", "Pneumothorax": r"pneumothora", "Pleural Effusion": r"effusion|pleural fluid",
            "Fracture": r"fracture", "Support Devices": r"tube|catheter| line |lines", "_finding": r"blunt|volume loss"}
NEG = re.compile(r"\bno\b|\bwithout\b")
NEG_SENTENCE = re.compile(r"\bnormal\b|unremarkable|not enlarged|within normal limits")
HEDGE = re.compile(r"\bmay\b|possible|concerning for")


def _naive_labels(report: str) -> dict:
    seen = defaultdict(list)
    for sent in re.split(r"(?<=\.)\s+", report.replace("FINDINGS: ", "").replace("IMPRESSION: ", "").lower()):
        for label, pat in MENTIONS.items():
            for m in re.finditer(pat, f" {sent} "):
                before = f" {sent} "[: m.start()]
                if NEG.search(before) or NEG_SENTENCE.search(sent):
                    seen[label].append(0.0)
                elif HEDGE.search(before) or "is suspected" in sent:
                    seen[label].append(-1.0)
                else:
                    seen[label].append(1.0)
    out = {k: None for k in CHEXPERT_LABELS}
    for k, v in seen.items():
        if k != "_finding":
            out[k] = 1.0 if 1.0 in v else (-1.0 if -1.0 in v else 0.0)
    finding = any(x != 0.0 for k, v in seen.items() if k != "Support Devices" for x in v)
    out["No Finding"] = None if finding else 1.0
    return out


def test_labels_agree_with_report_text(small_studies):
    for s in small_studies:
        assert s.labels == _naive_labels(s.report), (s.study_id, s.report)


def test_labels_agree_with_ground_truth(small_studies):
    for s in small_studies:
        f, lab = s.meta["findings"], s.labels
        for name, label in PATHOLOGY_LABEL.items():
            if name in f:
                assert lab[label] == (-1.0 if f[name]["uncertain"] else 1.0), (s.study_id, name)
            else:
                assert lab[label] in (0.0, None), (s.study_id, name)
        assert lab["No Finding"] == (1.0 if s.meta["normal"] else None)
        assert lab["Support Devices"] == (1.0 if "support_devices" in f else None)
        if any(k in f for k in ("consolidation", "atelectasis", "edema")):
            assert lab["Lung Opacity"] == 1.0
        if s.meta["normal"]:
            assert all(v in (0.0, None) for k, v in lab.items() if k not in ("No Finding", "Support Devices"))
            assert sum(v == 0.0 for v in lab.values()) >= 2  # negatives are stated, not just omitted
        n_words = len(f"{s.findings} {s.impression}".split())
        assert 20 <= n_words <= 75, (s.study_id, n_words)


def test_label_balance(small_studies):
    n = len(small_studies)
    for name in PATHOLOGIES:
        frac = sum(name in s.meta["findings"] for s in small_studies) / n
        assert 0.25 <= frac <= 0.55, (name, frac)
    normal = sum(s.meta["normal"] for s in small_studies) / n
    assert 0.12 <= normal <= 0.28
    freqs = label_frequencies(small_studies)
    for label in CHEXPERT_5 + ["Pneumothorax"]:
        assert 0.25 <= freqs[label]["pos"] + freqs[label]["unc"] <= 0.55, (label, freqs[label])
    unc = sum(freqs[k]["unc"] for k in ["Pleural Effusion", "Pneumothorax", "Consolidation", "Atelectasis", "Edema"])
    pos = sum(freqs[k]["pos"] + freqs[k]["unc"] for k in ["Pleural Effusion", "Pneumothorax", "Consolidation", "Atelectasis", "Edema"])
    assert 0.04 <= unc / pos <= 0.2
    assert 0.2 <= freqs["Support Devices"]["pos"] <= 0.5
    # a constant guess per label cannot be right much more often than the base rate
    assert all(freqs[k]["neg"] + freqs[k]["blank"] < 0.8 for k in CHEXPERT_5)


# ----------------------------------------------------------------------------- patients and splits
def test_patients_never_cross_splits():
    split_of, members = {}, defaultdict(list)
    for i in range(900):
        pid, split = demo_entry(i, seed=1)
        assert split_of.setdefault(pid, split) == split
        members[pid].append(i)
    sizes = [len(v) for v in members.values()]
    assert min(sizes) == 1 and max(sizes) == 3
    assert all(v == list(range(v[0], v[0] + len(v))) for v in members.values())  # consecutive blocks
    counts = {k: sum(s == k for s in split_of.values()) / len(split_of) for k in ("train", "validate", "test")}
    assert 0.7 < counts["train"] < 0.9 and counts["validate"] > 0.04 and counts["test"] > 0.04
    for i in (0, 5, 77, 311):
        s = make_study(i, seed=1, image_size=64)
        assert (s.patient_id, s.split) == demo_entry(i, seed=1)
    assert demo_entry(3, seed=0) != demo_entry(3, seed=1) or demo_entry(4, seed=0) != demo_entry(4, seed=1)


def test_same_patient_shares_anatomy():
    pid = demo_entry(0)[0]
    mates = [i for i in range(1, 3) if demo_entry(i)[0] == pid]
    if mates:
        assert make_study(0, image_size=64).meta["anatomy"] == make_study(mates[0], image_size=64).meta["anatomy"]
    others = [i for i in range(6, 12) if demo_entry(i)[0] != pid]
    assert make_study(0, image_size=64).meta["anatomy"] != make_study(others[0], image_size=64).meta["anatomy"]
