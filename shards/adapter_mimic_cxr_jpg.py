"""MIMIC-CXR-JPG 2.0.0 as distributed: metadata, split and label CSVs (plain or .gz), JPEGs, reports.

Layout under ``root`` (each CSV path can be overridden; a configured path that is
absent is an :class:`AdapterError` naming it)::

    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, Rows, Columns, ...
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id, study_id, 14 labels (1.0 / 0.0 / -1.0 / blank)
    mimic-cxr-2.0.0-negbio.csv[.gz]     the same columns (``labeler: negbio``)
    files/pNN/pSUBJECT/sSTUDY/DICOM.jpg
    files/pNN/pSUBJECT/sSTUDY.txt       from the reports archive (``reports_root`` if unpacked elsewhere)

Planning keeps one compact entry per study (ids, split, ordered (view, dicom,
rows x columns) triples, the study's date-time, 14 label bytes); reports and
images are read by the shard tasks.
Views: frontal first (PA, then AP), laterals (LATERAL, LL) as extra views
(``views`` policy, ``max_views``); a lateral-only study is skipped
(``no_frontal``) unless ``views: all``.  Every other ViewPosition (``XTABLE
LATERAL``, ``AP AXIAL``, ``LAO``, blank, ...) is left out and counted as
``view_other_position``, views past ``max_views`` as ``view_over_max_views``
(``views: all`` keeps the other positions, after the laterals).  Splits are the
official ones (they are by patient); a study absent from the split file is
skipped (``not_in_split``).
Chronology: ``StudyDate`` / ``StudyTime`` (MIMIC's shifted dates, consistent
within a patient) order each patient's studies: the index lists a patient's
studies oldest first, and each record's meta carries ``study_date``,
``study_time``, ``study_order`` (0 = the patient's first study) and
``prior_study_id`` (the study before it, or null).  ``Rows`` / ``Columns`` go
into meta as ``dicom_rows_columns``, aligned with ``dicom_ids``.  All four
columns are optional (blank or absent -> null).
``check_files`` (default true) stats every image and report while planning
(:class:`~shards.adapter_kit.FileCheck`: on ``check_threads`` threads when a stat
is slow, as on a network file system);
``check_files: false`` plans from the CSVs alone and leaves a missing file to
the shard task (the study is then skipped as ``unreadable_image`` /
``missing_report``).
"""
from __future__ import annotations

import os
import sys
from typing import Optional

from shards.adapter_kit import (CHECK_BATCH, Adapter, AdapterError, FileCheck, SkipStudy, cap_views,
                                check_view_policy, find_dir, find_file, findings_impression, norm_split, order_views,
                                read_csv)
from shards.adapters import ADAPTERS
from shards.records import CHEXPERT_LABELS, Study, View

PREFIX = "mimic-cxr-2.0.0"
_CODES = {"": 0, "1.0": 1, "0.0": 2, "-1.0": 3, "1": 1, "0": 2, "-1": 3}
_VALUES = {0: None, 1: 1.0, 2: 0.0, 3: -1.0}
_NO_DATE = 10 ** 15  # sorts after every YYYYMMDDhhmmss


def study_dir(root: str, subject: str, study: str) -> str:
    """``root/files/pNN/pSUBJECT/sSTUDY`` (an f-string: planning builds ~600k of these paths)."""
    return f"{root}/files/p{subject[:2]}/p{subject}/s{study}"


def _int_id(row: dict[str, str], col: str, where: str) -> str:
    value = row[col].strip()
    if not value.isdigit():
        raise AdapterError(f"{where}: column '{col}' must be an integer id, got {value!r}")
    return value


def _study_datetime(row: dict[str, str], where: str) -> int:
    """StudyDate (YYYYMMDD) + StudyTime (hhmmss[.ffffff]) -> YYYYMMDDhhmmss; _NO_DATE when blank/absent."""
    date, clock = (row.get("StudyDate") or "").strip(), (row.get("StudyTime") or "").strip()
    if not date:
        return _NO_DATE
    try:
        seconds = int(float(clock)) if clock else 0
    except ValueError:
        seconds = -1
    if not (date.isdigit() and len(date) == 8) or not 0 <= seconds < 240000:
        raise AdapterError(f"{where}: StudyDate/StudyTime must be YYYYMMDD / hhmmss[.f], got {date!r} / {clock!r}")
    return int(date) * 1_000_000 + seconds


def _rows_columns(row: dict[str, str], where: str) -> Optional[int]:
    """Rows, Columns -> rows * 65536 + columns (one small int per view), None when blank/absent."""
    r, c = (row.get("Rows") or "").strip(), (row.get("Columns") or "").strip()
    if not r and not c:
        return None
    try:
        rows, cols = int(float(r)), int(float(c))
    except ValueError:
        rows = cols = -1
    if not (0 < rows < 65536 and 0 < cols < 65536):
        raise AdapterError(f"{where}: Rows/Columns must be positive integers, got {r!r} / {c!r}")
    return rows * 65536 + cols


@ADAPTERS.register("mimic_cxr_jpg")
class MimicCxrJpgAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, metadata: Optional[str] = None, split: Optional[str] = None,
                 labels: Optional[str] = None, labeler: str = "chexpert", reports_root: Optional[str] = None,
                 views: str = "frontal_first", max_views: int = 2, check_files: bool = True, check_threads: int = 8):
        self.root = os.path.abspath(root)
        self.views = check_view_policy("mimic_cxr_jpg", views)
        self.max_views, self.check_files, self.check_threads = int(max_views), bool(check_files), int(check_threads)
        self.metadata_path = find_file(self.root, f"{PREFIX}-metadata.csv", metadata, what="mimic_cxr_jpg: metadata")
        self.split_path = find_file(self.root, f"{PREFIX}-split.csv", split, what="mimic_cxr_jpg: split")
        self.labels_path = find_file(self.root, f"{PREFIX}-{labeler}.csv", labels, required=False,
                                     what="mimic_cxr_jpg: labels")
        self.reports_root = find_dir(self.root, reports_root, "mimic_cxr_jpg: reports_root") if reports_root else self.root
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
        shapes: dict = {}  # a few distinct image sizes: one int object each, shared by the views
        for rowno, row in read_csv(self.metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition")):
            where = f"{self.metadata_path}, row {rowno}"
            dicom = row["dicom_id"].strip()
            if not dicom:
                raise AdapterError(f"{where}: empty dicom_id")
            subject, study = _int_id(row, "subject_id", where), _int_id(row, "study_id", where)
            entry = studies.get(study)
            if entry is None:
                entry = studies[study] = [subject, [], _study_datetime(row, where)]
            if entry[0] != subject:
                raise AdapterError(f"{where}: study {study} listed under subjects {entry[0]} and {subject}")
            if any(v[1] == dicom for v in entry[1]):  # a dicom belongs to one study: duplicates meet here
                self.skips().add("row_duplicate", where + f" (dicom {dicom})")
                continue
            shape = _rows_columns(row, where)
            entry[1].append((sys.intern(row["ViewPosition"].strip().upper() or "UNKNOWN"), dicom,
                             shapes.setdefault(shape, shape)))
        index = []
        # a patient's studies oldest first (then by id): study_order / prior_study_id follow the index
        ordered = sorted(studies.items(), key=lambda kv: (int(kv[1][0]), kv[1][2], int(kv[0])))
        del studies
        with FileCheck(self.check_threads) as check:
            for start in range(0, len(ordered), CHECK_BATCH):
                batch = ordered[start:start + CHECK_BATCH]
                exists = check(self._paths(batch)) if self.check_files else {}
                for study, (subject, views, when) in batch:
                    item = self._plan_study(subject, study, views, splits.get(study), labels.get(study), when, exists)
                    if item is not None:
                        index.append(item)
        return index

    def _paths(self, batch: list) -> list[str]:
        """Every image and report file the studies of ``batch`` may use (checked in bulk)."""
        out = []
        for study, (subject, views, _) in batch:
            folder = study_dir(self.root, subject, study)
            out.extend(f"{folder}/{v[1]}.jpg" for v in views)
            out.append(study_dir(self.reports_root, subject, study) + ".txt")
        return out

    def _plan_study(self, subject: str, study: str, views: list, split: Optional[str],
                    labels: Optional[bytes], when: int, exists: dict[str, bool]) -> Optional[tuple]:
        """The study's index entry, or None (skipped and counted; its views are then not counted again)."""
        where = f"study {study} (subject {subject})"
        if split is None:
            self.skips().add("not_in_split", f"{where}: not in {self.split_path}")
            return None
        folder = study_dir(self.root, subject, study)
        dropped: list[tuple[str, str]] = []
        ordered = order_views(views, self.views, dropped, where)
        if self.check_files:
            present = []
            for view in ordered:
                path = f"{folder}/{view[1]}.jpg"
                if exists[path]:
                    present.append(view)
                else:
                    dropped.append(("view_missing_image", path))
            if ordered and not present:
                self.skips().add("missing_image", f"{where}: none of its images is on disk under {folder}")
                return None
            ordered = present
        if not ordered or (self.views != "all" and ordered[0][0] not in ("PA", "AP")):
            positions = sorted({v[0] for v in views})
            self.skips().add("no_frontal", f"{where}: view positions {positions}")
            return None
        report = study_dir(self.reports_root, subject, study) + ".txt"
        if self.check_files and not exists[report]:
            self.skips().add("missing_report", f"{where}: {report}")
            return None
        kept = cap_views(ordered, self.max_views, dropped, where)
        self.commit_views(dropped)
        return subject, study, split, kept, labels, when

    # ------------------------------------------------------------------ contract
    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(item[0], item[2]) for item in self._index]

    def _chronology(self, index: int) -> tuple[int, Optional[str]]:
        """(study_order, prior study id) among the patient's kept studies (the index is in date order)."""
        subject, order = self._index[index][0], 0
        while index - order - 1 >= 0 and self._index[index - order - 1][0] == subject:
            order += 1
        return order, (f"s{self._index[index - 1][1]}" if order else None)

    def load(self, index: int) -> Study:
        subject, study, split, views, labels, when = self._index[index]
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
        order, prior = self._chronology(index)
        dated = when != _NO_DATE
        return Study(study_id=f"s{study}", patient_id=subject, split=split,
                     views=[View(path=os.path.join(folder, f"{v[1]}.jpg"), position=v[0]) for v in views],
                     findings=findings, impression=impression, labels=label_dict,
                     meta={"dataset": "mimic_cxr_jpg", "subject_id": subject, "study_id": study,
                           "dicom_ids": [v[1] for v in views], "sections": how,
                           "dicom_rows_columns": [None if v[2] is None else [v[2] >> 16, v[2] & 0xFFFF]
                                                  for v in views],
                           "study_date": f"{when // 1_000_000:08d}" if dated else None,
                           "study_time": f"{when % 1_000_000:06d}" if dated else None,
                           "study_order": order, "prior_study_id": prior})
