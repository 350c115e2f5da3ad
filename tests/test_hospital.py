"""Hospital inputs end to end: a DICOM folder -> shards -> tiny training (W&B offline) -> eval and generate.

One module fixture builds a DICOM export whose PHI tags hold a marker string
(plus an unsupported transfer syntax, a view without pixel data and a study
whose report is only in an SR document), builds shards with the
``dicom_folder`` adapter, trains 2 steps with W&B offline and exports.  The
tests then look for the marker everywhere and compare ``rrg generate`` with
``rrg eval`` on the same studies.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless

from shards.dicom import ALLOWED, pseudonym
from tests.dicomkit import BIRTH_DATE, write_dicom, write_sr
from tests.trainkit import ROOT

MARK = "Zq7PHIMARKq"
SALT = b"0123456789abcdef0123456789abcdef"
N_STUDIES = 12
FINDINGS = ["Heart size is normal.", "Mild cardiomegaly.", "Small left pleural effusion.", "Lungs are clear.",
            "No pneumothorax.", "Right lower lobe opacity."]
IMPRESSIONS = ["No acute cardiopulmonary process.", "Effusion.", "Pneumonia is possible."]


def run(cmd: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{cmd[:4]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def rrg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "launcher.cli", *args], env=env)


def phantom(rng: np.random.Generator, h: int = 80, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - rng.uniform(20, 60)) / 18) ** 2 + ((xx - rng.uniform(16, 48)) / 14) ** 2))
    return np.clip(800 + 2500 * blob + rng.normal(0, 60, (h, w)), 0, 4095).astype(np.uint16)


def make_export(root: Path) -> dict:
    """DICOM studies under root/dicoms/studyNN, a reports CSV keyed by accession number; returns the plan."""
    rng = np.random.default_rng(0)
    studies, rows = {}, []
    for i in range(N_STUDIES):
        uid, patient, accession = f"1.2.826.0.1.3680043.8.498.{9000 + i}", f"{MARK}ID{i}", f"{MARK}{i:03d}"
        folder = root / "dicoms" / f"study{i:02d}"
        mono = "MONOCHROME1" if i % 3 == 0 else "MONOCHROME2"
        kw = dict(study_uid=uid, patient_id=patient, phi=MARK, accession=accession)
        if i == 1:  # its only image uses a syntax no installed decoder reads: the whole study is skipped
            write_dicom(folder / "a.dcm", phantom(rng), syntax=JPEGLSLossless, **kw)
        else:
            write_dicom(folder / "b.dcm", phantom(rng), photometric=mono, window=(2000, 3000), view="PA", **kw)
        if i % 4 == 2:  # a lateral without pixel data: that view is skipped, the study kept
            write_dicom(folder / "c.dcm", phantom(rng), pixel_data=False, view="LATERAL", **kw)
        findings = " ".join(rng.choice(FINDINGS, size=2, replace=False))
        impression = str(rng.choice(IMPRESSIONS))
        if i == 0:  # report only in an SR document
            write_sr(folder / "sr.dcm", study_uid=uid, patient_id=patient, findings=findings, impression=impression,
                     phi=MARK)
        else:
            rows.append({"accession_number": accession, "findings": findings, "impression": impression})
        studies[uid] = {"folder": folder, "findings": findings, "impression": impression}
    (root / "dicoms" / "README.txt").write_text("not a DICOM; ignored\n")
    with open(root / "reports.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["accession_number", "findings", "impression"])
        writer.writeheader()
        writer.writerows(rows)
    return studies


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("hospital")
    studies = make_export(tmp)
    (tmp / "secret").mkdir()
    (tmp / "secret" / "salt").write_bytes(SALT + b"\n")
    cfg = tmp / "hospital.yaml"
    cfg.write_text(f"""base: {ROOT / 'configs' / 'tiny.yaml'}
name: hospital
output_dir: {tmp / 'run'}
data:
  source:
    adapter: dicom_folder
    args: {{root: {tmp / 'dicoms'}, reports: {tmp / 'reports.csv'}, salt_file: {tmp / 'secret' / 'salt'},
            study_date: shift}}
  build: {{split_fractions: {{train: 0.6, test: 0.4}}, max_skip_fraction: 0.2, progress: false}}
  shards_dir: {tmp / 'shards'}
  eval_split: test
model: {{max_text_len: 64, lm: {{hf_config: {{initializer_range: 0.3}}}}, vision: {{hf_config: {{initializer_range: 0.3}}}}}}
# ~random weights at a large init scale: the generated text differs with the image (a 2-step model
# at the usual scale writes only newlines, which would make "generate == eval" hold trivially)
train: {{max_steps: 2, micro_batch_size: 2, warmup_steps: 1, lr: 1.0e-6}}
checkpoint: {{every_steps: 2, export: merged}}
logging: {{wandb: {{mode: offline}}}}
eval: {{split: test, batch_size: 1, max_new_tokens: 12, bootstrap: 0, meteor: false}}
cluster: {{num_workers: 1, ray_temp_dir: /tmp/rr-dcm}}
""")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp / "wandb"))
    (tmp / "wandb").mkdir()
    build = rrg("shards", "build", str(cfg), env=env)
    train = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                 "-m", "trainer.worker", str(cfg)], env=env, timeout=420)
    return {"tmp": tmp, "cfg": cfg, "studies": studies, "env": env, "logs": [build, train]}


def secrets_of(hospital) -> list[bytes]:
    uids = list(hospital["studies"])
    return [MARK.encode(), BIRTH_DATE.encode(), SALT, *(u.encode() for u in uids)]


@pytest.mark.slow
def test_phi_marker_appears_nowhere(hospital):
    tmp = hospital["tmp"]
    scanned = 0
    for top in ("shards", "run", "wandb"):
        for path in (tmp / top).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                scanned += 1
                for secret in secrets_of(hospital):
                    assert secret not in data, f"{secret[:12]!r} leaked into {path}"
    assert any((tmp / "wandb").rglob("*.wandb")), "no offline W&B run files were written"
    assert scanned > 20
    for proc in hospital["logs"]:
        for secret in secrets_of(hospital):
            assert secret.decode() not in proc.stdout + proc.stderr

    summary = json.loads((tmp / "shards" / "build_summary.json").read_text())
    counts = summary["skipped"]["counts"]
    assert summary["studies"] == N_STUDIES - 1 and summary["skipped_studies"] == 1 and counts["no_usable_view"] == 1
    view_skips = sum(n for r, n in counts.items() if r.startswith("view_"))
    assert view_skips == 1 + len([i for i in range(N_STUDIES) if i % 4 == 2])
    assert counts[f"view_unsupported transfer syntax {JPEGLSLossless} (JPEG-LS Lossless Image Compression)"] == 1
    assert counts["view_no pixel data"] == 3
    assert "study01/a.dcm" in hospital["logs"][0].stdout and str(JPEGLSLossless) in hospital["logs"][0].stdout


@pytest.mark.slow
def test_shard_records_hold_pseudonyms_allowed_tags_and_sr_reports(hospital):
    import tarfile

    tmp = hospital["tmp"]
    records = []
    for tar in sorted((tmp / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            records += [json.load(tf.extractfile(m)) for m in tf.getmembers() if m.name.endswith(".json")]
    manifest = json.loads((tmp / "shards" / "manifest.json").read_text())
    assert len(records) == N_STUDIES - 1 == sum(manifest["splits"].values())
    by_id = {r["study_id"]: r for r in records}
    for uid, st in hospital["studies"].items():
        sid = "s" + pseudonym(SALT, "study", uid)
        if st["folder"].name == "study01":
            assert sid not in by_id
            continue
        rec = by_id[sid]
        assert rec["report"]["findings"] == st["findings"] and rec["report"]["impression"] == st["impression"]
        assert len(rec["views"]) == 1 and rec["views"][0]["position"] == "PA"
        for meta in rec["meta"]["dicom"]:
            assert set(meta) <= set(ALLOWED) | {"StudyDateShifted"}
            assert meta.get("StudyDateShifted", "20200314") < "20200315"
    assert len({r["patient_id"] for r in records}) == N_STUDIES - 1


@pytest.mark.slow
def test_generate_on_dicom_and_png_folders_equals_eval(hospital, tmp_path):
    tmp, cfg = hospital["tmp"], hospital["cfg"]
    export = tmp / "run" / "export"
    assert (export / "rrg_run.yaml").is_file()
    rrg("eval", str(cfg), "--model-dir", str(export), "--out", str(tmp_path / "eval"), env=hospital["env"])
    preds = {p["id"]: p for p in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())}
    uid_of = {"s" + pseudonym(SALT, "study", uid): uid for uid in hospital["studies"]}
    folders = [hospital["studies"][uid_of[sid]]["folder"] for sid in preds]
    texts = [p["generated"] for p in preds.values()]
    assert len(folders) >= 2 and all(texts) and len(set(texts)) == len(texts), texts  # equality below means something

    # the same test studies as loose DICOM folders, and their stored PNG views as a folder of PNG studies
    pngs = tmp_path / "pngs"
    for sid in preds:
        (pngs / sid).mkdir(parents=True)
    import tarfile

    for tar in (tmp / "shards").glob("test-*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".view0.png"):
                    sid = json.load(tf.extractfile(m.name.replace(".view0.png", ".json")))["study_id"]
                    (pngs / sid / "view0.png").write_bytes(tf.extractfile(m).read())
    (pngs / "broken").mkdir()
    (pngs / "broken" / "x.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "reports.jsonl"
    gen = rrg("generate", "--model-dir", str(export), *map(str, folders), str(pngs), "--out", str(out), "--labels")
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    from_png = {k: v for k, v in rows.items() if k in preds}
    assert sorted(rows) == sorted([f.name for f in folders] + list(preds))  # the broken study is left out
    assert "broken/x.png: unreadable image" in gen.stderr
    for sid, folder in zip(preds, folders):
        assert rows[folder.name]["generated"] == preds[sid]["generated"]
        assert rows[folder.name]["labels"] == preds[sid]["gen_labels"]
        assert rows[sid]["generated"] == preds[sid]["generated"]
    # a checkpoint instead of an export: consolidated into --model-dir first, same weights, same reports
    ckpt = tmp / "run" / "checkpoints" / (tmp / "run" / "checkpoints" / "latest").read_text().strip()
    out_ck = tmp_path / "ck.jsonl"
    rrg("generate", "--model-dir", str(tmp_path / "from_ckpt"), "--checkpoint", str(ckpt), str(pngs), "--out", str(out_ck))
    assert {r["id"]: r["generated"] for r in map(json.loads, out_ck.read_text().splitlines())} == \
        {k: v["generated"] for k, v in from_png.items()}
    assert "no pixel data" in gen.stderr or all(f.name != "study02" for f in folders)
    for text in (out.read_text(), gen.stdout + gen.stderr):
        assert MARK not in text
