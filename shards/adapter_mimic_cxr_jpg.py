"""MIMIC-CXR-JPG 2.0.0 as distributed: metadata, split and label CSVs (plain or .gz), JPEGs, reports.

Layout under ``root`` (each CSV path can be overridden)::

    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, 14 labels (1.0 / 0.0 / -1.0 / blank)
    mimic-cxr-2.0.0-negbio.csv[.gz]     the same columns (``labeler: negbio``)
    files/pNN/pSUBJECT/sSTUDY/DICOM.jpg
    files/pNN/pSUBJECT/sSTUDY.txt       from the reports archive (``reports_root`` if unpacked elsewhere)

Planning keeps one compact entry per study (ids, split, ordered (view, dicom)
pairs, 14 label bytes); reports and images are read by the shard tasks.
Views: frontal first (PA, then AP), laterals as extra views (``views``
policy, ``max_views``); a lateral-only study is skipped (``no_frontal``)
unless ``views: all``.  Splits are the official ones (they are by patient);
a study absent from the split file is skipped (``not_in_split``).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from shards.adapter_kit import (Adapter, AdapterError, SkipStudy, find_file, findings_impression, norm_split,
                                order_views, read_csv)
from shards.adapters import ADAPTERS
from shards.records import CHEXPERT_LABELS, Study, View

PREFIX = "mimic-cxr-2.0.0"
_CODES = {"": 0, "1.0": 1, "0.0": 2, "-1.0": 3, "1": 1, "0": 2, "-1": 3}
_VALUES = {0: None, 1: 1.0, 2: 0.0, 3: -1.0}


def study_dir(root: str, subject: str, study: str) -> str:
    return os.path.join(root, "files", f"p{subject[:2]}", f"p{subject}", f"s{study}")


def _int_id(row: dict[str, str], col: str, where: str) -> str:
    value = row[col].strip()
    if not value.isdigit():
        raise AdapterError(f"{where}: column '{col}' must be an integer id, got {value!r}")
    return value


@ADAPTERS.register("mimic_cxr_jpg")
class MimicCxrJpgAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, metadata: Optional[str] = None, split: Optional[str] = None,
                 labels: Optional[str] = None, labeler: str = "chexpert", reports_root: Optional[str] = None,
                 views: str = "frontal_first", max_views: int = 2, check_files: bool = True):
        if views not in ("frontal_first", "frontal_only", "all"):
            raise AdapterError(f"mimic_cxr_jpg: views must be frontal_first, frontal_only or all, got {views!r}")
        self.root = os.path.abspath(root)
        self.reports_root = os.path.abspath(reports_root) if reports_root else self.root
        self.views, self.max_views, self.check_files = views, int(max_views), bool(check_files)
        self.metadata_path = find_file(self.root, f"{PREFIX}-metadata.csv", metadata)
        self.split_path = find_file(self.root, f"{PREFIX}-split.csv", split)
        self.labels_path = find_file(self.root, f"{PREFIX}-{labeler}.csv", labels, required=False)
        self._index = self._plan()

    # ------------------------------------------------------------------ planning
    def _read_splits(self) -> dict[str, str]:
        splits: dict[str, str] = {}
        for rowno, row in read_csv(self.split_path, ("dicom_id", "study_id", "subject_id", "split")):
            where = f"{self.split_path}, row {rowno}"
            study = _int_id(row, "study_id", where)
            split = norm_split(row["split"], where)
            if splits.setdefault(study, split) != split:
                raise AdapterError(f"{where}: study {study} is in splits '{splits[study]}' and '{split}'")
        return splits

    def _read_labels(self) -> dict[str, bytes]:
        if self.labels_path is None:
            return {}
        out: dict[str, bytes] = {}
        for rowno, row in read_csv(self.labels_path, ("subject_id", "study_id", *CHEXPERT_LABELS)):
            where = f"{self.labels_path}, row {rowno}"
            codes = []
            for name in CHEXPERT_LABELS:
                code = _CODES.get(row[name].strip())
                if code is None:
                    raise AdapterError(f"{where}: label '{name}' must be 1.0, 0.0, -1.0 or blank, got {row[name]!r}")
                codes.append(code)
            out[_int_id(row, "study_id", where)] = bytes(codes)
        return out

    def _plan(self) -> list[tuple]:
        splits, labels = self._read_splits(), self._read_labels()
        studies: dict[str, list] = {}
        for rowno, row in read_csv(self.metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition")):
            where = f"{self.metadata_path}, row {rowno}"
            dicom = row["dicom_id"].strip()
            if not dicom:
                raise AdapterError(f"{where}: empty dicom_id")
            subject, study = _int_id(row, "subject_id", where), _int_id(row, "study_id", where)
            entry = studies.setdefault(study, [subject, []])
            if entry[0] != subject:
                raise AdapterError(f"{where}: study {study} listed under subjects {entry[0]} and {subject}")
            if any(d == dicom for _, d in entry[1]):  # a dicom belongs to one study: duplicates meet here
                self.skips().add("row_duplicate", where + f" (dicom {dicom})")
                continue
            entry[1].append((sys.intern(row["ViewPosition"].strip().upper() or "UNKNOWN"), dicom))
        index = []
        for study, (subject, views) in sorted(studies.items(), key=lambda kv: (int(kv[1][0]), int(kv[0]))):
            item = self._plan_study(subject, study, views, splits.get(study), labels.get(study))
            if item is not None:
                index.append(item)
        return index

    def _plan_study(self, subject: str, study: str, views: list, split: Optional[str],
                    labels: Optional[bytes]) -> Optional[tuple]:
        where = f"study {study} (subject {subject})"
        if split is None:
            self.skips().add("not_in_split", f"{where}: not in {self.split_path}")
            return None
        folder = study_dir(self.root, subject, study)
        ordered = order_views(views, self.views)
        if self.check_files:
            present = []
            for pos, dicom in ordered:
                if os.path.isfile(os.path.join(folder, f"{dicom}.jpg")):
                    present.append((pos, dicom))
                else:
                    self.skips().add("view_missing_image", os.path.join(folder, f"{dicom}.jpg"))
            if ordered and not present:
                self.skips().add("missing_image", f"{where}: none of its images is on disk under {folder}")
                return None
            ordered = present
        if not ordered or (self.views != "all" and ordered[0][0] not in ("PA", "AP")):
            positions = sorted({p for p, _ in views})
            self.skips().add("no_frontal", f"{where}: view positions {positions}")
            return None
        report = study_dir(self.reports_root, subject, study) + ".txt"
        if self.check_files and not os.path.isfile(report):
            self.skips().add("missing_report", f"{where}: {report}")
            return None
        return subject, study, split, tuple(ordered[:self.max_views]), labels

    # ------------------------------------------------------------------ contract
    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(item[0], item[2]) for item in self._index]

    def load(self, index: int) -> Study:
        subject, study, split, views, labels = self._index[index]
        report_path = study_dir(self.reports_root, subject, study) + ".txt"
        try:
            with open(report_path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise SkipStudy("missing_report", f"study {study}: {report_path}") from None
        findings, impression, how = findings_impression(text)
        if how == "empty":
            raise SkipStudy("empty_report", f"study {study}: {report_path} has no text")
        folder = study_dir(self.root, subject, study)
        label_dict = ({name: _VALUES[code] for name, code in zip(CHEXPERT_LABELS, labels)}
                      if labels is not None else {name: None for name in CHEXPERT_LABELS})
        return Study(study_id=f"s{study}", patient_id=subject, split=split,
                     views=[View(path=os.path.join(folder, f"{d}.jpg"), position=p) for p, d in views],
                     findings=findings, impression=impression, labels=label_dict,
                     meta={"dataset": "mimic_cxr_jpg", "subject_id": subject, "study_id": study,
                           "dicom_ids": [d for _, d in views], "sections": how})
