"""The DICOM adapters read their layouts in process (the end-to-end build is in test_hospital.py)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from shards.adapter_dicom import split_sections
from shards.adapters import AdapterError, make_adapter
from shards.config import BuildConfig
from shards.dicom import ALLOWED
from shards.writer import pack_study
from tests.dicomkit import write_dicom

IMG = np.random.default_rng(1).integers(0, 4096, size=(40, 32)).astype(np.uint16)


def test_mimic_cxr_dicom_layout_split_labels_and_sections(tmp_path):
    root = tmp_path / "mimic"
    study = root / "files" / "p10" / "p10000032" / "s50414267"
    write_dicom(study / "lat.dcm", IMG, view="LATERAL", patient_id="10000032")
    write_dicom(study / "front.dcm", IMG, view="AP", patient_id="10000032")
    (study.parent / "s50414267.txt").write_text(
        "FINAL REPORT\n EXAMINATION: CHEST\n\n FINDINGS: Heart size normal.\n Lungs clear.\n\n"
        " IMPRESSION: No acute process.\n")
    (root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,split\nx,50414267,10000032,test\n")
    with open(root / "mimic-cxr-2.0.0-chexpert.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject_id", "study_id", "Cardiomegaly", "No Finding"])
        w.writerow(["10000032", "50414267", "0.0", "1.0"])
    adapter = make_adapter("mimic_cxr_dicom", {"root": str(root), "salt_file": str(tmp_path / "salt")}, seed=0)
    (patient, split), = adapter.entries()
    assert split == "test" and patient.startswith("p") and "10000032" not in patient
    st = adapter.load(0)
    assert st.study_id == "s50414267" and st.findings == "Heart size normal. Lungs clear."
    assert st.impression == "No acute process." and st.labels["Cardiomegaly"] == 0.0
    assert st.labels["No Finding"] == 1.0 and st.labels["Edema"] is None
    assert [v.position for v in st.views] == ["AP", "LATERAL"]  # frontal first
    assert all(set(m) <= set(ALLOWED) for m in st.meta["dicom"])


def test_dicom_folder_by_study_uid_with_report_column(tmp_path):
    uid = "1.2.3.4.5"
    write_dicom(tmp_path / "d" / "x" / "1.dcm", IMG, study_uid=uid, patient_id="P1")
    write_dicom(tmp_path / "d" / "y" / "2.dcm", IMG, study_uid=uid, patient_id="P1", view="LL")
    write_dicom(tmp_path / "d" / "z.dcm", IMG, study_uid="9.9", patient_id="P2")  # no report: left out, counted
    (tmp_path / "r.csv").write_text('study_instance_uid,report\n1.2.3.4.5,"FINDINGS: Clear. IMPRESSION: Normal."\n')
    adapter = make_adapter("dicom_folder", {"root": str(tmp_path / "d"), "reports": str(tmp_path / "r.csv"),
                                            "salt_file": str(tmp_path / "salt")}, seed=0)
    assert len(adapter.entries()) == 1
    st = adapter.load(0)
    assert (st.findings, st.impression) == ("Clear.", "Normal.") and len(st.views) == 2
    assert uid not in st.study_id and "P1" not in st.patient_id
    sample, _ = pack_study(st, 0, "train", "k", BuildConfig(image_size=32))
    assert {"view0.png", "view1.png", "json"} <= set(sample)

    (tmp_path / "bad.csv").write_text("patient,text\n1,x\n")
    with pytest.raises(AdapterError, match="bad.csv: needs a study_instance_uid or accession_number column"):
        make_adapter("dicom_folder", {"root": str(tmp_path / "d"), "reports": str(tmp_path / "bad.csv"),
                                      "salt_file": str(tmp_path / "salt")}, seed=0)


def test_split_sections():
    assert split_sections("findings: a\n b\nImpression: c") == ("a b", "c")
    assert split_sections("no headings here") == ("no headings here", "")


def test_generate_inputs_group_into_studies(tmp_path):
    from PIL import Image

    from tests.dicomkit import write_sr
    from trainer.evaluation.infer_files import GenerateError, collect_studies

    cases = tmp_path / "cases"
    write_dicom(cases / "a" / "lat.dcm", IMG, view="LATERAL", study_uid="1.1")
    write_dicom(cases / "a" / "pa.dcm", IMG, view="PA", study_uid="1.1")
    write_sr(cases / "a" / "zz_sr.dcm", study_uid="1.1", patient_id="P", findings="x", impression="y")
    (cases / "b").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(cases / "b" / "v.png")
    (cases / "b" / "notes.txt").write_text("ignored")
    single = tmp_path / "one.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(single)
    studies = collect_studies([str(cases), str(single)])
    assert [(s.id, [f.split("/")[-1] for f in s.files]) for s in studies] == [
        ("a", ["pa.dcm", "lat.dcm"]), ("b", ["v.png"]), ("one", ["one.png"])]
    with pytest.raises(GenerateError, match="two studies named 'a'"):
        collect_studies([str(cases / "a"), str(cases)])
    with pytest.raises(GenerateError, match="no such file or folder: .*missing"):
        collect_studies([str(tmp_path / "missing")])
