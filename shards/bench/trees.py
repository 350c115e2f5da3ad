"""The dataset trees ``rrg bench build`` reads: MIMIC-CXR-JPG's official layout at scale.

:func:`make_mimic_bench` writes full-size frontal JPEGs (the build-rate bench), :func:`make_mimic_scale`
the CSVs of a 377k-image release (the planning bench).  The small trees with real-world quirks that
the tests use live in tests/fixture_trees*.py and build on the primitives here.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from shards.records import CHEXPERT_LABELS


def radiograph(h: int, w: int, seed: int, bits: int = 8) -> np.ndarray:
    """A smooth chest-like gradient with noise: cheap to make, not trivially compressible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    body = np.exp(-(((x - w / 2) / (0.35 * w)) ** 2 + ((y - h / 2) / (0.45 * h)) ** 2))
    lungs = np.exp(-(((np.abs(x - w / 2) - 0.18 * w) / (0.1 * w)) ** 2 + ((y - 0.45 * h) / (0.25 * h)) ** 2))
    img = 0.2 + 0.6 * body - 0.35 * lungs + 0.05 * rng.standard_normal((h, w)).astype(np.float32)
    top = 65535 if bits == 16 else 255
    return (np.clip(img, 0, 1) * top).astype(np.uint16 if bits == 16 else np.uint8)


def write_csv(path: Path, header: list[str], rows: Iterable[list], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
    opener = (lambda: gzip.open(path, "wt", newline="", encoding="utf-8")) if gz else \
        (lambda: open(path, "w", newline="", encoding="utf-8"))
    with opener() as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


MIMIC_META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
              "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
              "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]

def make_mimic_scale(root: str | os.PathLike, num_rows: int, seed: int = 0, files: bool = False) -> Path:
    """Metadata/split/label CSVs: ``num_rows`` images, ~1.66 per study; ``files``: plus an empty file per
    image and report in the real layout (for planning with ``check_files: true``), else no files."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    per_study = rng.choice([1, 2, 3], size=num_rows, p=[0.45, 0.45, 0.10])
    meta, split_rows, label_rows = [], [], []
    row, study = 0, 50000000
    views = ("PA", "LATERAL", "AP")
    while row < num_rows:
        study += 1
        subject = str(10000000 + study // 3)
        split = ("train", "train", "train", "train", "validate", "test")[int(subject) % 6]
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        if files:
            folder.mkdir(parents=True, exist_ok=True)
            (folder.parent / f"s{study}.txt").touch()
        for v in range(min(int(per_study[row]), num_rows - row)):
            dicom = f"{study:08x}-{v:04x}-{row:08x}"
            meta.append([dicom, subject, study, "CHEST", views[v], 3056, 2544, "21800101", "1", "", "", ""])
            split_rows.append([dicom, study, subject, split])
            if files:
                (folder / f"{dicom}.jpg").touch()
            row += 1
        label_rows.append([subject, study] + ["1.0" if rng.random() < 0.1 else "" for _ in CHEXPERT_LABELS])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", MIMIC_META, meta, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], label_rows, gz=True)
    return root


def make_mimic_bench(root: str | os.PathLike, num_studies: int, size: tuple[int, int] = (3000, 2500)) -> Path:
    """Full-size frontal JPEGs (one per study, written once and hard-linked) plus CSVs and reports."""
    root = Path(root)
    h, w = size
    meta, split_rows, label_rows = [], [], []
    buf = io.BytesIO()
    Image.fromarray(radiograph(h, w, seed=0)).save(buf, format="JPEG", quality=95)
    for n in range(num_studies):
        subject, study = str(10000000 + n), str(50000000 + n)
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        dicom = f"bench-{n:06d}"
        (folder / f"{dicom}.jpg").write_bytes(buf.getvalue())
        (folder.parent / f"s{study}.txt").write_text("FINDINGS: Clear lungs.\n IMPRESSION: Normal.\n")
        meta.append([dicom, subject, study, "CHEST", "PA", h, w, "21800101", "1", "", "", ""])
        split_rows.append([dicom, study, subject, "train"])
        label_rows.append([subject, study] + [""] * len(CHEXPERT_LABELS))
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", MIMIC_META, meta)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], label_rows)
    return root
