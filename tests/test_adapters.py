"""Real-dataset adapters: shards built (real Ray tasks) from fixture trees in the official layouts.

Each test checks the exact studies, view positions, sections, labels, splits
and the skip summary kept beside the manifest; malformed input must fail with
the file and row named.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from cluster.ray_util import RayTaskPool, ensure_ray
from shards import fixture_trees_other as other
from shards.adapter_kit import AdapterError, findings_impression
from shards.adapters import make_adapter
from shards.config import BuildConfig, DataConfig, SourceConfig
from shards.fixture_trees import make_mimic
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


def test_mimic_cxr_jpg(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    recs, summary, extra = build(tmp_path, "mimic_cxr_jpg", {"root": str(root)})
    assert sorted(recs) == ["s50000001", "s50000002", "s50000004", "s50000006", "s50000008"]
    assert {k: positions(r) for k, r in recs.items()} == {
        "s50000001": ["PA", "LATERAL"], "s50000002": ["AP"], "s50000004": ["AP"], "s50000006": ["PA"],
        "s50000008": ["PA", "AP"]}
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
    assert {k: v for k, v in one["labels"].items() if v is not None} == {"Cardiomegaly": 1.0, "Edema": -1.0}
    assert {k: v for k, v in two["labels"].items() if v is not None} == {"No Finding": 1.0, "Pneumothorax": 0.0}
    assert len(one["labels"]) == 14 and one["label_set"] == "chexpert"
    assert summary["skipped"]["counts"] == {"missing_image": 1, "missing_report": 1, "no_frontal": 1,
                                            "not_in_split": 1, "row_duplicate": 1, "unreadable_image": 1,
                                            "view_missing_image": 2}
    assert summary["skipped_studies"] == 5 and extra["skipped"] == summary["skipped"]["counts"]
    ex = summary["skipped"]["examples"]
    assert "metadata.csv.gz, row 9" in ex["row_duplicate"][0] and "s50000010" in ex["unreadable_image"][0]
    assert "study 50000003" in ex["no_frontal"][0] and "s50000007.txt" in ex["missing_report"][0]


def test_padchest(tmp_path):
    root = other.make_padchest(tmp_path / "pc")
    recs, summary, extra = build(tmp_path, "padchest", {"root": str(root), "known_unreadable": "known_unreadable.txt"})
    assert sorted(recs) == ["s1", "s2", "s5", "s7"]
    assert {k: positions(r) for k, r in recs.items()} == {"s1": ["PA", "LATERAL"], "s2": ["AP"], "s5": ["AP"],
                                                         "s7": ["PA"]}
    assert {k: {n for n, v in r["labels"].items() if v == 1.0} for k, r in recs.items()} == {
        "s1": {"cardiomegaly", "pleural effusion"}, "s2": {"normal"}, "s5": {"atelectasis"}, "s7": {"support devices"}}
    assert all(r["label_set"] == "padchest" and len(r["labels"]) == 11 for r in recs.values())
    assert recs["s1"]["report"]["findings"] == "cardiomegalia. derrame pleural izquierdo pequeño."
    assert [v["source_dtype"] for v in recs["s1"]["views"]] == ["uint16", "uint8"]  # 16-bit and 8-bit PNGs
    by_patient = defaultdict(set)
    for r in recs.values():
        by_patient[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())  # patient-hash split
    assert summary["skipped"]["counts"] == {"empty_report": 1, "missing_image": 1, "no_frontal": 1, "no_labels": 1,
                                            "row_duplicate": 1, "unreadable_image": 1, "view_known_unreadable": 1,
                                            "view_missing_image": 1}
    assert summary["label_set"] == extra["label_set"] == "padchest"


def test_chexpert_plus(tmp_path):
    root = other.make_chexpert_plus(tmp_path / "cxp")
    recs, summary, _ = build(tmp_path, "chexpert_plus", {"root": str(root)})
    s1, s2, v3, s5 = ("train/patient00001/study1", "train/patient00001/study2", "valid/patient00003/study1",
                      "train/patient00005/study1")
    assert sorted(recs) == sorted([s1, s2, v3, s5])
    assert {k: positions(r) for k, r in recs.items()} == {s1: ["PA", "LATERAL"], s2: ["AP"], v3: ["PA"], s5: ["AP"]}
    assert {k: r["split"] for k, r in recs.items()} == {s1: "train", s2: "train", v3: "validate", s5: "train"}
    assert (recs[s1]["report"]["findings"], recs[s1]["report"]["impression"]) == ("Heart is enlarged.", "Cardiomegaly.")
    assert recs[s5]["report"]["findings"] == "Lines and tubes unchanged."
    assert {k: v for k, v in recs[s1]["labels"].items() if v is not None} == {"Cardiomegaly": 1.0, "Edema": 0.0}
    assert all(v is None for v in recs[v3]["labels"].values())
    assert recs[s1]["meta"]["images"][0].endswith("view1_frontal.png") and recs[v3]["meta"]["images"][0].endswith(".jpg")
    assert summary["skipped"]["counts"] == {"missing_image": 1, "no_frontal": 1, "row_duplicate": 1,
                                            "view_missing_image": 1}


def test_iu_xray_and_r2gen(tmp_path):
    iu, _, _ = build(tmp_path / "a", "iu_xray", {"root": str(other.make_iu_xray(tmp_path / "iu"))})
    assert sorted(iu) == ["CXR1", "CXR2", "CXR3"]
    assert [len(iu[k]["views"]) for k in sorted(iu)] == [2, 1, 1]
    assert (iu["CXR2"]["report"]["findings"], iu["CXR2"]["report"]["impression"]) == ("", "Normal chest.")
    assert iu["CXR3"]["meta"]["indication"] == "Cough."
    r2, summary, _ = build(tmp_path / "b", "r2gen_json", {"root": str(other.make_r2gen(tmp_path / "r2"))})
    assert {k: (r["split"], r["patient_id"], len(r["views"])) for k, r in r2.items()} == {
        "m1": ("train", "1", 2), "m2": ("train", "1", 1), "m3": ("validate", "2", 1)}
    assert summary["skipped"]["counts"] == {"empty_report": 1, "missing_image": 1, "row_duplicate": 1,
                                            "view_missing_image": 2}


def test_skip_limit_stops_the_build_and_keeps_the_summary(tmp_path):
    root = make_mimic(tmp_path / "mimic")
    with pytest.raises(Exception, match="max_skip_fraction"):
        build(tmp_path, "mimic_cxr_jpg", {"root": str(root)}, max_skip_fraction=0.2)
    summary = json.loads((tmp_path / "shards" / BUILD_SUMMARY).read_text())
    assert summary["skipped_studies"] == 5


@pytest.mark.parametrize("name,make,where", [
    ("mimic_cxr_jpg", make_mimic, "mimic-cxr-2.0.0-metadata.csv.gz, row 16: column 'subject_id'"),
    ("padchest", other.make_padchest, "160K_01.02.19.csv, row 13: column 'Labels' is not a Python list literal"),
    ("chexpert_plus", other.make_chexpert_plus, "df_chexpert_plus_240401.csv.gz, row 9: 26 fields"),
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
