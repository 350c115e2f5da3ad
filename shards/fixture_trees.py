"""Small dataset trees in the official layouts, with the real-world quirks (tests and ``rrg bench build``).

Each ``make_<dataset>`` writes a folder exactly as the dataset is distributed
(file names, columns, list-literal columns, gzipped CSVs, 8/16-bit PNGs),
including: missing image files, reports without FINDINGS, lateral-only
studies, duplicated rows, an unreadable image and, on request, one malformed
row.  The study ids and what must happen to each are documented at every
generator, and asserted by tests/test_adapters.py.
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


def write_jpeg(path: Path, h: int, w: int, seed: int, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph(h, w, seed)).save(path, format="JPEG", quality=quality)


def write_png(path: Path, h: int, w: int, seed: int, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph(h, w, seed, bits)).save(path, format="PNG")


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


def corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not an image")


# ----------------------------------------------------------------------------- MIMIC-CXR-JPG
MIMIC_META = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
              "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
              "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]
MIMIC_REPORTS = {
    1: "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n\n INDICATION: Cough.\n\n FINDINGS: The heart is "
       "enlarged. Mild interstitial edema.\n\n IMPRESSION: Cardiomegaly with mild edema.\n",
    2: "FINAL REPORT\n EXAMINATION: CHEST (PORTABLE AP)\n\n IMPRESSION: No acute cardiopulmonary process.\n",
    4: "FINAL REPORT\n FINDINGS: Small left pleural effusion.\n\n IMPRESSION: Small left effusion.\n",
    6: "FINAL REPORT\n\n Lungs are clear.\n\n No pneumothorax. Normal heart size.\n",
    8: "FINDINGS: Endotracheal tube in place.\n IMPRESSION: Tube in standard position.\n",
    10: "FINDINGS: Clear lungs.\n IMPRESSION: Normal.\n",
}


MIMIC_DATES = {1: ("21800105", "093000.000"), 2: ("21800102", "101500.125")}  # s2 before s1 (ids say otherwise)


def make_mimic(root: str | os.PathLike, malformed: bool = False, size: tuple[int, int] = (60, 48)) -> Path:
    """MIMIC-CXR-JPG 2.0.0 layout; study s5000000N of the plan below (kept unless said):

    1 p10000001 PA+LATERAL+XTABLE LATERAL, FINDINGS+IMPRESSION, train -> PA, LATERAL (view_other_position)
    2 p10000001 AP only, IMPRESSION only, train; dated before study 1 -> p10000001's study_order 0
    3 p10000002 LATERAL only -> no_frontal (validate)    | 4 p10000002 PA missing on disk + AP (blank Rows/Columns)
                                                             -> AP only (view_missing_image), validate
    5 p10000003 PA missing on disk -> missing_image      | 6 p10000003 no headings (last paragraph), test,
                                                             its metadata row duplicated -> row_duplicate
    7 p10000004 report missing -> missing_report         | 8 p10000004 LATERAL, AP, PA listed -> PA, AP; train
                                                             (LATERAL: view_over_max_views)
    9 p10000005 not in the split file -> not_in_split    | 10 p10000006 corrupt JPEG -> unreadable_image
    StudyDate/StudyTime: MIMIC_DATES for studies 1 and 2, else 218001NN 120000.000.
    metadata and chexpert CSVs gzipped, split plain; ``malformed`` appends a row with subject_id 'p1x'.
    """
    root = Path(root)
    h, w = size
    plan = {1: (1, [("PA", True), ("LATERAL", True), ("XTABLE LATERAL", True)], "train"),
            2: (1, [("AP", True)], "train"),
            3: (2, [("LATERAL", True)], "validate"), 4: (2, [("PA", False), ("AP", True)], "validate"),
            5: (3, [("PA", False)], "test"), 6: (3, [("PA", True)], "test"),
            7: (4, [("PA", True)], "train"), 8: (4, [("LATERAL", True), ("AP", True), ("PA", True)], "train"),
            9: (5, [("PA", True)], None), 10: (6, [("PA", True)], "train")}
    meta, split_rows, label_rows = [], [], []
    for n, (p, views, split) in plan.items():
        subject, study = f"1000000{p}", f"500000{n:02d}"
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        date, clock = MIMIC_DATES.get(n, (f"218001{n:02d}", "120000.000"))
        for v, (pos, present) in enumerate(views):
            dicom = f"d{n:02d}{v}{pos.lower().replace(' ', '')}-0000-aaaa"
            shape = ["", ""] if (n, pos) == (4, "AP") else [h, w]
            meta.append([dicom, subject, study, "CHEST (PA AND LAT)", pos, *shape, date, clock,
                         "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
            if split is not None:
                split_rows.append([dicom, study, subject, split])
            if n == 10:
                corrupt(folder / f"{dicom}.jpg")
            elif present:
                write_jpeg(folder / f"{dicom}.jpg", h, w, seed=n * 10 + v)
        folder.parent.mkdir(parents=True, exist_ok=True)
        if n in MIMIC_REPORTS:
            (folder.parent / f"s{study}.txt").write_text(MIMIC_REPORTS[n])
        elif n != 7:
            (folder.parent / f"s{study}.txt").write_text("FINDINGS: Unremarkable.\n")
        labels = [""] * len(CHEXPERT_LABELS)
        if n == 1:
            labels[CHEXPERT_LABELS.index("Cardiomegaly")] = "1.0"
            labels[CHEXPERT_LABELS.index("Edema")] = "-1.0"
        if n == 2:
            labels[CHEXPERT_LABELS.index("No Finding")] = "1.0"
            labels[CHEXPERT_LABELS.index("Pneumothorax")] = "0.0"
        label_rows.append([subject, study, *labels])
    six = next(i for i, r in enumerate(meta) if r[2] == "50000006")
    meta.insert(six + 1, list(meta[six]))  # study 6's PA row twice: data row 10 is the duplicate
    if malformed:
        meta.append(["dbad", "p1x", "50000099", "CHEST", "PA", h, w, "21800101", "1", "", "", ""])
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv", MIMIC_META, meta, gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *CHEXPERT_LABELS], label_rows,
              gz=True)
    return root


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
