"""Small dataset trees in the official layouts, with the real-world quirks (the adapter tests).

Each ``make_<dataset>`` writes a folder exactly as the dataset is distributed
(file names, columns, list-literal columns, gzipped CSVs, 8/16-bit PNGs),
including: missing image files, reports without FINDINGS, lateral-only
studies, duplicated rows, an unreadable image and, on request, one malformed
row.  The study ids and what must happen to each are documented at every
generator, and asserted by tests/test_adapters.py.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from shards.bench.trees import MIMIC_META, radiograph, write_csv  # noqa: F401  (the trees' primitives)
from shards.records import CHEXPERT_LABELS


def write_jpeg(path: Path, h: int, w: int, seed: int, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph(h, w, seed)).save(path, format="JPEG", quality=quality)


def write_png(path: Path, h: int, w: int, seed: int, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(radiograph(h, w, seed, bits)).save(path, format="PNG")


def corrupt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not an image")


# ----------------------------------------------------------------------------- MIMIC-CXR-JPG
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


