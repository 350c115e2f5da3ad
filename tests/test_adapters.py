"""Real-dataset adapters: shards built (real Ray tasks) from fixture trees in the official layouts.

Each test checks the exact studies, view positions, sections, labels, splits
and the skip summary kept beside the manifest; malformed input must fail with
the file and row named.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from cluster.ray_util import RayTaskPool, ensure_ray
from tests import fixture_trees_other as other
from shards.adapter_kit import AdapterError, findings_impression
from shards.adapters import make_adapter
from shards.config import BuildConfig, DataConfig, SourceConfig
from tests.fixture_trees import make_mimic
from shards.manifest import iter_json_records, load_manifest
from shards.writer import BUILD_SUMMARY, build_from_config

SIZE = 32
POOL = None  # the writer's tasks run on a real local Ray (the pool the CLI hands it)


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    import ray

    temp = f"/tmp/rr-ds-{os.getpid()}"
    ensure_ray(num_cpus=2, temp_dir=temp)
    global POOL
    POOL = RayTaskPool()
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def build(tmp_path: Path, adapter: str, args: dict, **kw) -> tuple[dict, dict, dict]:
    """Build; return ({study_id: record}, build_summary, manifest extra)."""
    cfg = DataConfig(source=SourceConfig(adapter, args),
                     build=BuildConfig(image_size=SIZE, samples_per_shard=2, progress=False,
                                       **{"max_skip_fraction": 0.7, **kw}))  # the fixtures are mostly quirks
    manifest = build_from_config(cfg, seed=3, out_dir=str(tmp_path / "shards"), pool=POOL)
    manifest = load_manifest(manifest.root)
    records = {r["study_id"]: r for split in manifest.splits for r in iter_json_records(manifest, split)}
    summary = json.loads((Path(manifest.root) / BUILD_SUMMARY).read_text())
    assert summary["studies"] == len(records) == sum(manifest.splits.values())
    return records, summary, manifest.extra


def positions(rec: dict) -> list[str]:
    return [v["position"] for v in rec["views"]]


def shapes(rec: dict) -> list[list[int]]:
    return [v["source_shape"][:2] for v in rec["views"]]


def assert_every_image_counted(recs: dict, summary: dict, source_images: int, in_skipped_studies: int) -> None:
    """Each distinct source image is a stored view, a ``view_`` count (kept studies), or in a skipped study."""
    stored = sum(len(r["views"]) for r in recs.values())
    views_left_out = sum(n for r, n in summary["skipped"]["counts"].items() if r.startswith("view_"))
    assert stored + views_left_out + in_skipped_studies == source_images, (stored, views_left_out)


def test_mimic_cxr_jpg(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    recs, summary, extra = build(tmp_path, "mimic_cxr_jpg", {"root": str(root)})
    assert sorted(recs) == ["s50000001", "s50000002", "s50000004", "s50000006", "s50000008"]
    assert {k: positions(r) for k, r in recs.items()} == {
        "s50000001": ["PA", "LATERAL"], "s50000002": ["AP"], "s50000004": ["AP"], "s50000006": ["PA"],
        "s50000008": ["PA", "AP"]}
    assert recs["s50000008"]["meta"]["dicom_ids"] == ["d082pa-0000-aaaa", "d081ap-0000-aaaa"]
    assert {k: r["split"] for k, r in recs.items()} == {"s50000001": "train", "s50000002": "train",
                                                         "s50000004": "validate", "s50000006": "test",
                                                         "s50000008": "train"}
    one, two, six = recs["s50000001"], recs["s50000002"], recs["s50000006"]
    assert one["report"]["findings"] == "The heart is enlarged. Mild interstitial edema."
    assert one["report"]["impression"] == "Cardiomegaly with mild edema."
    assert (two["report"]["findings"], two["meta"]["sections"]) == ("", "impression_only")
    assert two["report"]["text"] == "IMPRESSION: No acute cardiopulmonary process."  # kept, not dropped
    assert (six["report"]["findings"], six["meta"]["sections"]) == ("No pneumothorax. Normal heart size.",
                                                                    "last_paragraph")
    assert recs["s50000008"]["report"]["findings"] == "Endotracheal tube in place."
    assert {k: v for k, v in one["labels"].items() if v is not None} == {"Cardiomegaly": 1.0, "Edema": -1.0}
    assert {k: v for k, v in two["labels"].items() if v is not None} == {"No Finding": 1.0, "Pneumothorax": 0.0}
    assert all(v is None for k in ("s50000004", "s50000006", "s50000008") for v in recs[k]["labels"].values())
    assert len(one["labels"]) == 14 and one["label_set"] == "chexpert"
    # StudyDate/StudyTime: study 2 precedes study 1 for patient 10000001 (the ids say otherwise)
    chrono = {k: (r["meta"]["study_date"], r["meta"]["study_time"], r["meta"]["study_order"], r["meta"]["prior_study_id"])
              for k, r in recs.items()}
    assert chrono == {"s50000001": ("21800105", "093000", 1, "s50000002"), "s50000002": ("21800102", "101500", 0, None),
                      "s50000004": ("21800104", "120000", 0, None), "s50000006": ("21800106", "120000", 0, None),
                      "s50000008": ("21800108", "120000", 0, None)}
    assert one["meta"]["dicom_rows_columns"] == [[60, 48], [60, 48]] and shapes(one) == [[60, 48], [60, 48]]
    assert recs["s50000004"]["meta"]["dicom_rows_columns"] == [None]  # blank Rows/Columns
    assert summary["skipped"]["counts"] == {"missing_image": 1, "missing_report": 1, "no_frontal": 1,
                                            "not_in_split": 1, "row_duplicate": 1, "unreadable_image": 1,
                                            "view_missing_image": 1, "view_other_position": 1,
                                            "view_over_max_views": 1}
    assert summary["skipped_studies"] == 5 and extra["skipped"] == summary["skipped"]["counts"]
    ex = summary["skipped"]["examples"]
    assert "metadata.csv.gz, row 10" in ex["row_duplicate"][0] and "s50000010" in ex["unreadable_image"][0]
    assert "study 50000003" in ex["no_frontal"][0] and "s50000007.txt" in ex["missing_report"][0]
    assert "study 50000001" in ex["view_other_position"][0] and "XTABLE LATERAL" in ex["view_other_position"][0]
    assert "study 50000008" in ex["view_over_max_views"][0] and "LATERAL view d080lateral" in ex["view_over_max_views"][0]
    assert "s50000004/d040pa-0000-aaaa.jpg" in ex["view_missing_image"][0]
    # 15 distinct images: studies 3, 5, 7, 9 and 10 (one image each) were skipped whole
    assert_every_image_counted(recs, summary, source_images=15, in_skipped_studies=5)


def test_mimic_views_all_keeps_other_positions(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    recs, summary, _ = build(tmp_path, "mimic_cxr_jpg", {"root": str(root), "views": "all", "max_views": 3})
    assert positions(recs["s50000001"]) == ["PA", "LATERAL", "XTABLE LATERAL"]
    assert positions(recs["s50000003"]) == ["LATERAL"]  # views: all keeps a lateral-only study
    assert "view_other_position" not in summary["skipped"]["counts"]
    recs, summary, _ = build(tmp_path / "f", "mimic_cxr_jpg", {"root": str(root), "views": "frontal_only"})
    assert positions(recs["s50000001"]) == ["PA"] and positions(recs["s50000008"]) == ["PA", "AP"]
    assert summary["skipped"]["counts"]["view_lateral_excluded"] == 2  # s1's and s8's laterals
    assert_every_image_counted(recs, summary, source_images=15, in_skipped_studies=5)


def test_mimic_malformed_study_date_names_file_and_row(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    path = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    with gzip.open(path, "rt") as f:
        text = f.read()
    with gzip.open(path, "wt") as f:
        f.write(text.replace("21800104", "2180-01-04", 1))
    with pytest.raises(AdapterError, match=r"metadata.csv.gz, row 6: StudyDate/StudyTime must be YYYYMMDD"):
        make_adapter("mimic_cxr_jpg", {"root": str(root)}, seed=0)


def test_padchest(tmp_path):
    root = other.make_padchest(tmp_path / "pc")
    recs, summary, extra = build(tmp_path, "padchest", {"root": str(root), "known_unreadable": "known_unreadable.txt"})
    assert sorted(recs) == ["s1", "s10", "s12", "s2", "s5", "s7"]
    assert {k: positions(r) for k, r in recs.items()} == {"s1": ["PA", "LATERAL"], "s2": ["AP"], "s5": ["AP"],
                                                         "s7": ["PA"], "s10": ["PA"], "s12": ["PA", "AP"]}
    assert recs["s12"]["meta"]["image_ids"] == ["s12_pa.png", "s12_ap.png"]
    assert {k: {n for n, v in r["labels"].items() if v == 1.0} for k, r in recs.items()} == {
        "s1": {"cardiomegaly", "pleural effusion"}, "s2": {"normal"}, "s5": {"atelectasis"}, "s7": {"support devices"},
        "s10": {"pleural effusion"}, "s12": {"cardiomegaly"}}  # s10: costophrenic angle blunting
    assert all(r["label_set"] == "padchest" and len(r["labels"]) == 11 for r in recs.values())
    assert all(v in (0.0, 1.0) for r in recs.values() for v in r["labels"].values())
    assert {k: (r["report"]["findings"], r["report"]["impression"]) for k, r in recs.items()} == {
        "s1": (other.SPANISH[0], ""), "s2": (other.SPANISH[1], ""), "s5": (other.SPANISH[3], ""),
        "s7": (other.SPANISH[2], ""), "s10": (other.SPANISH[7], ""), "s12": (other.SPANISH[6], "")}
    assert recs["s1"]["report"]["findings"] == "cardiomegalia. derrame pleural izquierdo pequeño."
    assert [v["source_dtype"] for v in recs["s1"]["views"]] == ["uint16", "uint8"]  # 16-bit and 8-bit PNGs
    by_patient = defaultdict(set)
    for r in recs.values():
        by_patient[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())  # patient-hash split
    assert {k: r["split"] for k, r in recs.items()} == PADCHEST_SPLITS
    assert summary["skipped"]["counts"] == {"empty_report": 1, "missing_image": 1, "no_frontal": 1, "no_labels": 1,
                                            "row_duplicate": 1, "unreadable_image": 2, "view_known_unreadable": 1,
                                            "view_other_position": 1, "view_over_max_views": 1,
                                            "view_unreadable_image": 1}
    assert summary["skipped_studies"] == 6
    ex = summary["skipped"]["examples"]
    assert "s10_l.png: unreadable_image (LATERAL" in ex["view_unreadable_image"][0]
    assert any("s11_pa.png" in e and "no frontal left" in e for e in ex["unreadable_image"])
    assert "COSTAL view s12_costal.png" in ex["view_other_position"][0]
    assert "ImageID s5_pa.png" in ex["view_known_unreadable"][0]
    assert summary["label_set"] == extra["label_set"] == "padchest"
    # 19 distinct images; skipped whole: s3, s4, s6, s8, s9 (one each) and s11 (two)
    assert_every_image_counted(recs, summary, source_images=19, in_skipped_studies=7)


PADCHEST_SPLITS = {"s1": "train", "s2": "train", "s5": "validate", "s7": "train", "s10": "train", "s12": "train"}


def test_padchest_known_unreadable_is_optional_and_a_missing_file_is_named(tmp_path):
    root = other.make_padchest(tmp_path / "pc")
    (root / "known_unreadable.txt").unlink()  # what a download looks like
    adapter = make_adapter("padchest", {"root": str(root)}, seed=0)
    assert [v.position for v in adapter.load(2).views] == ["PA", "AP"]  # s5: its PA is not listed now
    assert "view_known_unreadable" not in adapter.skips().counts
    listed = make_adapter("padchest", {"root": str(root), "known_unreadable": ["s5_pa.png", "s7_pa.png"]}, seed=0)
    assert [v.position for v in listed.load(2).views] == ["AP"]
    assert listed.skips().counts["known_unreadable"] == 1  # s7: its only image is listed
    with pytest.raises(AdapterError, match=r"padchest: known_unreadable: no such file .*/pc/known_unreadable\.txt"):
        make_adapter("padchest", {"root": str(root), "known_unreadable": "known_unreadable.txt"}, seed=0)
    with pytest.raises(AdapterError, match=r"padchest: images_root: no such folder .*/pc/images"):
        make_adapter("padchest", {"root": str(root), "images_root": "images"}, seed=0)
    with pytest.raises(AdapterError, match=r"data.source.args.root: no such folder .*/nowhere"):
        make_adapter("padchest", {"root": str(tmp_path / "nowhere")}, seed=0)


def test_chexpert_plus(tmp_path):
    root = other.make_chexpert_plus(tmp_path / "cxp")
    recs, summary, _ = build(tmp_path, "chexpert_plus", {"root": str(root)})
    s1, s2, v3, s5 = ("train/patient00001/study1", "train/patient00001/study2", "valid/patient00003/study1",
                      "train/patient00005/study1")
    assert sorted(recs) == sorted([s1, s2, v3, s5])
    assert {k: positions(r) for k, r in recs.items()} == {s1: ["PA", "LATERAL"], s2: ["AP"], v3: ["PA"], s5: ["AP"]}
    assert recs[s1]["meta"]["images"] == [f"{s1}/view1_frontal.png", f"{s1}/view2_lateral.png"]
    assert {k: r["split"] for k, r in recs.items()} == {s1: "train", s2: "train", v3: "validate", s5: "train"}
    assert {k: (r["report"]["findings"], r["report"]["impression"], r["meta"]["sections"]) for k, r in recs.items()} == {
        s1: ("Heart is enlarged.", "Cardiomegaly.", "sections"), s2: ("", "No acute process.", "impression_only"),
        v3: ("Small effusion.", "Effusion.", "sections"), s5: ("Lines and tubes unchanged.", "", "last_paragraph")}
    # labels: report_fixed.json; findings_fixed.json and impression_fixed.json in meta
    assert {k: v for k, v in recs[s1]["labels"].items() if v is not None} == {"Cardiomegaly": 1.0, "Edema": 0.0}
    assert {k: v for k, v in recs[s2]["labels"].items() if v is not None} == {"No Finding": 1.0}
    assert all(v is None for k in (v3, s5) for v in recs[k]["labels"].values())
    side = {k: {sec: None if lab is None else {n: v for n, v in lab.items() if v is not None}
                for sec, lab in r["meta"]["chexbert_labels"].items()} for k, r in recs.items()}
    assert side == {s1: {"findings": {"Cardiomegaly": 1.0}, "impression": {"Cardiomegaly": 1.0, "Pleural Effusion": -1.0}},
                    s2: {"findings": None, "impression": {"No Finding": 1.0}},
                    v3: {"findings": None, "impression": None}, s5: {"findings": None, "impression": None}}
    assert recs[s1]["meta"]["images"][0].endswith("view1_frontal.png") and recs[v3]["meta"]["images"][0].endswith(".jpg")
    assert summary["skipped"]["counts"] == {"missing_image": 1, "no_frontal": 1, "row_duplicate": 1,
                                            "view_over_max_views": 1}
    assert "view3_lateral.png" in summary["skipped"]["examples"]["view_over_max_views"][0]
    # 8 distinct images; skipped whole: patient00002 and patient00004 (one each)
    assert_every_image_counted(recs, summary, source_images=8, in_skipped_studies=2)


def test_chexpert_plus_labels_from_impression(tmp_path):
    root = other.make_chexpert_plus(tmp_path / "cxp")
    adapter = make_adapter("chexpert_plus", {"root": str(root), "labels_from": "impression"}, seed=0)
    study = adapter.load(0)
    assert {k: v for k, v in study.labels.items() if v is not None} == {"Cardiomegaly": 1.0, "Pleural Effusion": -1.0}
    assert sorted(study.meta["chexbert_labels"]) == ["findings", "report"] and study.meta["labels_from"] == "impression"
    (root / "chexbert_labels" / "findings_fixed.json").unlink()
    (root / "chexbert_labels" / "impression_fixed.json").unlink()
    only = make_adapter("chexpert_plus", {"root": str(root)}, seed=0).load(0)
    assert "chexbert_labels" not in only.meta and only.labels["Cardiomegaly"] == 1.0
    with pytest.raises(AdapterError, match=r"chexpert_plus: labels_json: no such file .*/cxp/mine\.json"):
        make_adapter("chexpert_plus", {"root": str(root), "labels_json": "mine.json"}, seed=0)


def test_iu_xray(tmp_path):
    root = other.make_iu_xray(tmp_path / "iu")
    recs, summary, _ = build(tmp_path, "iu_xray", {"root": str(root)})
    assert sorted(recs) == ["CXR1", "CXR10", "CXR11", "CXR13", "CXR2", "CXR3", "CXR6"]
    # Open-i's captions are per study: only per-image ones (CXR6) are used; the rest comes from the pixels,
    # and what they cannot tell apart (CXR13, two plain gradients) stays UNKNOWN in XML order
    assert {k: positions(r) for k, r in recs.items()} == {
        "CXR1": ["FRONTAL", "LATERAL"], "CXR2": ["FRONTAL"], "CXR3": ["FRONTAL"], "CXR6": ["PA", "LATERAL"],
        "CXR10": ["FRONTAL", "LATERAL"], "CXR11": ["FRONTAL", "LATERAL"], "CXR13": ["UNKNOWN", "UNKNOWN"]}
    iu = other.iu_image_id
    assert {k: r["meta"]["image_ids"] for k, r in recs.items()} == {
        "CXR1": [iu(1, 1), iu(1, 0)], "CXR2": [iu(2, 0)], "CXR3": [iu(3, 0)], "CXR6": [iu(6, 1), iu(6, 0)],
        "CXR10": [iu(10, 0), iu(10, 1)], "CXR11": [iu(11, 1), iu(11, 0)], "CXR13": [iu(13, 0), iu(13, 1)]}
    assert {k: r["meta"]["view_sources"] for k, r in recs.items()} == {
        "CXR1": ["content"] * 2, "CXR2": ["content"], "CXR3": ["content"], "CXR6": ["caption"] * 2,
        "CXR10": ["content"] * 2, "CXR11": ["content"] * 2, "CXR13": ["unknown"] * 2}
    assert summary["view_sources"] == {"caption": 2, "content": 8, "unknown": 2}  # what stays unknown, counted
    assert shapes(recs["CXR1"]) == [[48, 44], [48, 48]] and shapes(recs["CXR6"]) == [[48, 44], [48, 48]]
    sections = {k: (r["report"]["findings"], r["report"]["impression"], r["meta"]["indication"],
                    r["meta"]["comparison"], r["meta"]["sections"]) for k, r in recs.items() if k in IU_SPLITS}
    assert sections == {"CXR1": ("The lungs are clear.", "No acute disease.", "Cough.", "None.", "sections"),
                        "CXR2": ("", "Normal chest.", "Pain.", "", "impression_only"),
                        "CXR3": ("Mild cardiomegaly.", "No acute disease.", "Cough.", "None.", "sections"),
                        "CXR6": ("Small right effusion.", "Effusion.", "Cough.", "None.", "sections")}
    assert recs["CXR2"]["report"]["text"] == "IMPRESSION: Normal chest."
    assert all(r["labels"] == {} and r["patient_id"] == k for k, r in recs.items())  # no labels, a patient per report
    assert {k: r["split"] for k, r in recs.items() if k in IU_SPLITS} == IU_SPLITS  # patient-hash split (seed 3)
    assert summary["skipped"]["counts"] == {"empty_report": 1, "missing_image": 1, "no_frontal": 2, "no_image": 1,
                                            "view_missing_image": 1, "view_over_max_views": 1}
    assert summary["skipped_studies"] == 5
    ex = summary["skipped"]["examples"]
    assert ex["view_missing_image"][0].endswith(f"NLMCXR_png/{iu(3, 1)}.png")
    assert sorted(e.split("ecgen-radiology/")[1].split(":")[0] for e in ex["no_frontal"]) == ["12.xml", "7.xml"]
    assert any("from the image content" in e for e in ex["no_frontal"])  # CXR12: "Chest XXXX and lateral", one L
    assert "4.xml" in ex["missing_image"][0] and "5.xml" in ex["empty_report"][0] and "8.xml" in ex["no_image"][0]
    assert f"LATERAL view {iu(6, 2)}" in ex["view_over_max_views"][0]
    # 19 images; skipped whole: CXR4 (two), CXR5, CXR7 and CXR12 (one each); CXR8 has none
    assert_every_image_counted(recs, summary, source_images=19, in_skipped_studies=5)


IU_SPLITS = {"CXR1": "train", "CXR2": "train", "CXR3": "train", "CXR6": "validate"}


def loaded(adapter) -> dict:
    """study id -> Study for every planned study the adapter's load() keeps."""
    from shards.adapter_kit import SkipStudy

    out = {}
    for i in range(len(adapter.entries())):
        try:
            study = adapter.load(i)
        except SkipStudy:
            continue
        out[study.study_id] = study
    return out


def test_iu_xray_study_level_captions_are_not_view_labels(tmp_path):
    """Open-i patterns (de-identified, one caption per study): the study-level caption never makes a
    frontal + lateral pair "lateral-only"; with the pixel cue turned off the pair is kept as UNKNOWN."""
    from shards.adapter_iu_xray import caption_position, study_caption_positions

    exam, redacted, both = other.IU_EXAM, other.IU_REDACTED, other.IU_BOTH
    assert caption_position(redacted) == "UNKNOWN"  # the old reading: "LATERAL" (no frontal word), study dropped
    assert study_caption_positions([redacted, redacted]) == ["UNKNOWN", "UNKNOWN"]
    assert study_caption_positions([both, both]) == study_caption_positions([exam, exam]) == ["UNKNOWN"] * 2
    assert study_caption_positions(["Lateral", "Lateral"]) == ["UNKNOWN", "UNKNOWN"]  # shared: says nothing
    assert study_caption_positions(["PA", "Lateral"]) == ["PA", "LATERAL"]  # per image: trusted
    assert study_caption_positions(["Lateral"]) == ["LATERAL"] and study_caption_positions([exam]) == ["UNKNOWN"]
    root = other.make_iu_xray(tmp_path / "iu")
    adapter = make_adapter("iu_xray", {"root": str(root), "view_from_content": False}, seed=0)
    by_id = loaded(adapter)
    assert [v.position for v in by_id["CXR10"].views] == ["UNKNOWN", "UNKNOWN"]  # kept, in XML order
    assert [v.position for v in by_id["CXR12"].views] == ["UNKNOWN"]  # one image: kept, nothing says lateral
    assert adapter.skips().counts["no_frontal"] == 1  # CXR7 only: its caption names its one image


def test_iu_xray_projections_file_gives_frontal_and_lateral(tmp_path):
    root = other.make_iu_xray(tmp_path / "iu")
    adapter = make_adapter("iu_xray", {"root": str(root), "projections": "indiana_projections.csv"}, seed=0)
    by_id = loaded(adapter)
    iu = other.iu_image_id
    assert [(v.position, os.path.basename(v.path)) for v in by_id["CXR1"].views] == [
        ("FRONTAL", f"{iu(1, 1)}.png"), ("LATERAL", f"{iu(1, 0)}.png")]  # the file's Frontal is view 0
    assert by_id["CXR1"].meta["view_sources"] == ["projections", "projections"]
    assert [v.position for v in by_id["CXR2"].views] == ["FRONTAL"] and [v.position for v in by_id["CXR6"].views] == [
        "PA", "LATERAL"]
    with pytest.raises(AdapterError, match=r"iu_xray: projections: no such file .*/iu/nope\.csv"):
        make_adapter("iu_xray", {"root": str(root), "projections": "nope.csv"}, seed=0)


def test_view_content_cue_separates_phantom_frontals_from_laterals():
    """The pixel cue on rrg's phantoms: every frontal is decided frontal and every lateral lateral, alone
    or paired (thresholds have margin on both sides); a pair of look-alikes stays undecided."""
    import numpy as np

    from shards.demo_image import render_frontal, render_lateral, sample_anatomy
    from tests.fixture_trees import radiograph
    from shards.viewclass import classify, mediastinum_contrast

    fr, la = [], []
    for seed in range(100, 120):
        an = sample_anatomy(np.random.default_rng(seed))
        fr.append(mediastinum_contrast(render_frontal(an, {}, 128, np.random.default_rng(seed))[0]))
        la.append(mediastinum_contrast(render_lateral(an, {}, 128, np.random.default_rng(seed))))
    assert classify(fr, alone=True) == ["FRONTAL"] * 20 and classify(la, alone=True) == ["LATERAL"] * 20
    assert all(classify([l, f], alone=False) == ["LATERAL", "FRONTAL"] for f, l in zip(fr, la))
    g = [mediastinum_contrast(radiograph(64, 60, s)) for s in (1, 2)]
    assert classify(g, alone=False) == ["UNKNOWN", "UNKNOWN"]


def test_r2gen_json(tmp_path):
    recs, summary, _ = build(tmp_path, "r2gen_json", {"root": str(other.make_r2gen(tmp_path / "r2"))})
    assert {k: (r["split"], r["patient_id"], positions(r), r["meta"]["image_path"], r["meta"]["study_id"])
            for k, r in recs.items()} == {
        "m1": ("train", "1", ["UNKNOWN", "UNKNOWN"], ["p1/s101/a.jpg", "p1/s101/b.jpg"], "101"),
        "m2": ("train", "1", ["UNKNOWN"], ["p1/s102/a.jpg"], "102"),
        "m3": ("validate", "2", ["UNKNOWN"], ["p2/s103/a.jpg"], "103"),
        "m6": ("train", "5", ["UNKNOWN", "UNKNOWN"], ["p5/s106/a.jpg", "p5/s106/b.jpg"], "106")}
    assert shapes(recs["m6"]) == [[48, 48], [48, 44]]  # view 0 is the file's first path
    assert {k: (r["report"]["findings"], r["report"]["impression"], r["report"]["text"]) for k, r in recs.items()} == {
        "m1": ("the heart is normal . lungs clear .", "", "FINDINGS: the heart is normal . lungs clear ."),
        "m2": ("no effusion .", "", "FINDINGS: no effusion ."),
        "m3": ("small effusion .", "", "FINDINGS: small effusion ."),
        "m6": ("stable cardiomegaly .", "", "FINDINGS: stable cardiomegaly .")}
    assert all(r["labels"] == {} for r in recs.values())
    assert summary["skipped"]["counts"] == {"empty_report": 1, "missing_image": 1, "row_duplicate": 1,
                                            "view_missing_image": 1, "view_over_max_views": 1}
    assert summary["skipped_studies"] == 2
    ex = summary["skipped"]["examples"]
    assert "annotation.json, val[0]" in ex["view_missing_image"][0] and "missing.jpg" in ex["view_missing_image"][0]
    assert "annotation.json, test[0]" in ex["missing_image"][0] and "test[1]" in ex["empty_report"][0]
    assert "test[2] (id m1)" in ex["row_duplicate"][0] and "p5/s106/c.jpg" in ex["view_over_max_views"][0]
    # 10 distinct images (the duplicated m1 not counted again); skipped whole: m4 and m5 (one each)
    assert_every_image_counted(recs, summary, source_images=10, in_skipped_studies=2)


def test_skip_limit_stops_the_build_and_keeps_the_summary(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    with pytest.raises(Exception, match="max_skip_fraction"):
        build(tmp_path, "mimic_cxr_jpg", {"root": str(root)}, max_skip_fraction=0.2)
    summary = json.loads((tmp_path / "shards" / BUILD_SUMMARY).read_text())
    assert summary["skipped_studies"] == 5


@pytest.mark.parametrize("name,make,where", [
    ("mimic_cxr_jpg", make_mimic, "mimic-cxr-2.0.0-metadata.csv.gz, row 17: column 'subject_id'"),
    ("padchest", other.make_padchest, "160K_01.02.19.csv, row 21: column 'Labels' is not a Python list literal"),
    ("chexpert_plus", other.make_chexpert_plus, "df_chexpert_plus_240401.csv.gz, row 10: 26 fields"),
    ("iu_xray", other.make_iu_xray, "ecgen-radiology/9.xml: not well-formed XML"),
    ("r2gen_json", other.make_r2gen, "annotation.json, test[3]: needs 'id'"),
])
def test_malformed_input_names_file_and_row(tmp_path, name, make, where):
    root = make(tmp_path / name, malformed=True)
    with pytest.raises(AdapterError) as err:
        make_adapter(name, {"root": str(root)}, seed=0)
    assert where in str(err.value)


def test_padchest_list_columns_are_never_evaluated(tmp_path):
    root = other.make_padchest(tmp_path / "pc")
    csv_path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    text = csv_path.read_text().replace("['normal']", "__import__('os').getcwd()", 1)
    csv_path.write_text(text)
    with pytest.raises(AdapterError, match="not a Python list literal"):
        make_adapter("padchest", {"root": str(root)}, seed=0)


def test_report_section_fallbacks():
    assert findings_impression("FINDINGS: a.\nIMPRESSION: b.") == ("a.", "b.", "sections")
    assert findings_impression("INDICATION: x.\n IMPRESSION: b.") == ("", "b.", "impression_only")
    assert findings_impression("FINAL REPORT\n\n first.\n\n last one.") == ("last one.", "", "last_paragraph")
    assert findings_impression("  \n") == ("", "", "empty")


@pytest.mark.parametrize("name", ["mimic_cxr_jpg", "padchest", "iu_xray", "r2gen_json", "chexpert_plus"])
def test_shipped_dataset_configs_load_and_construct_their_adapter(tmp_path, name):
    from trainer.config import load_config

    makers = {"mimic_cxr_jpg": make_mimic, "padchest": other.make_padchest, "iu_xray": other.make_iu_xray,
              "r2gen_json": other.make_r2gen, "chexpert_plus": other.make_chexpert_plus}
    root = makers[name](tmp_path / name)
    path = Path(__file__).resolve().parent.parent / "configs" / "datasets" / f"{name}.yaml"
    cfg = load_config(path, [f"data.source.args.root={root}"])  # the README's command line
    assert cfg.data.source.adapter == name and cfg.data.shards_dir == f"data/{name}/shards"
    adapter = make_adapter(name, dict(cfg.data.source.args), seed=cfg.seed)
    assert len(adapter.entries()) >= 3
