"""DICOM dataset adapters: ``dicom_folder`` (a hospital export) and ``mimic_cxr_dicom``.

Both yield studies whose views are DICOM file paths: the shard writer decodes
them (shards/dicom.py) and counts unusable ones.  What enters a shard from the
headers is only ``shards.dicom.safe_meta`` (the allow-list).  Patient ids, and
for ``dicom_folder`` the study ids too (StudyInstanceUID), are replaced by
salted one-way pseudonyms; the salt lives in ``salt_file`` (created when
missing, never copied into shards, manifests or logs: the manifest records
only its path).

``dicom_folder``: every DICOM under ``root``, grouped by StudyInstanceUID.
Reports come from ``reports`` (a CSV with a ``study_instance_uid`` or
``accession_number`` column and ``report`` or ``findings``/``impression``
columns) or, for studies the CSV lacks, from SR documents in the study (text
items only).  Studies with no report or no image are left out and counted.

``mimic_cxr_dicom``: MIMIC-CXR's layout, ``files/pXX/p<subject>/s<study>/<dicom_id>.dcm``
with the report in ``files/pXX/p<subject>/s<study>.txt``; the split from
``mimic-cxr-2.0.0-split.csv(.gz)`` and labels from ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` when present.
"""
from __future__ import annotations

import csv
import gzip
import os
import re
from typing import Any, Optional

from shards.adapters import ADAPTERS, AdapterError
from shards.dicom import DicomSkip, date_shift_days, is_dicom, is_sr, load_salt, pseudonym, read_header, safe_meta
from shards.records import CHEXPERT_LABELS, Study, View
from shards.views import frontal_first

DEFAULT_SALT = "~/.config/rrg/phi_salt"
_SECTION = re.compile(r"\b(FINDINGS|IMPRESSION)\s*:", re.IGNORECASE)


def _open_csv(path: str):
    return gzip.open(path, "rt", newline="") if path.endswith(".gz") else open(path, newline="")


def _sr_text(ds) -> tuple[str, str]:
    """(findings, impression) from an SR document's TEXT content items, by concept name."""
    findings, impression = [], []

    def walk(items):
        for item in items or []:
            if str(item.get("ValueType", "")) == "TEXT" and item.get("TextValue"):
                names = item.get("ConceptNameCodeSequence") or []
                name = str(names[0].get("CodeMeaning", "")).lower() if names else ""
                (impression if "impression" in name else findings).append(str(item.TextValue).strip())
            walk(item.get("ContentSequence"))

    walk(ds.get("ContentSequence"))
    return " ".join(findings), " ".join(impression)


def split_sections(text: str) -> tuple[str, str]:
    """A free-text report -> (findings, impression); the whole text is findings when it has no headings."""
    marks = list(_SECTION.finditer(text))
    if not marks:
        return " ".join(text.split()), ""
    parts = {}
    for m, nxt in zip(marks, marks[1:] + [None]):
        parts[m.group(1).upper()] = " ".join(text[m.end():nxt.start() if nxt else len(text)].split())
    return parts.get("FINDINGS", ""), parts.get("IMPRESSION", "")


class _DicomStudies:
    """Shared: the salt, pseudonyms, date shifts and DICOM views of a study."""

    def __init__(self, salt_file: str, study_date: str):
        if study_date not in ("drop", "shift"):
            raise AdapterError(f"study_date must be 'drop' or 'shift', got {study_date!r}")
        self.salt_file, self.study_date = salt_file, study_date
        self._salt = load_salt(salt_file)

    def patient(self, raw_id: str) -> str:
        return "p" + pseudonym(self._salt, "patient", raw_id)

    def views(self, paths: list[str], raw_patient: str) -> tuple[list[View], list[dict[str, Any]]]:
        """Frontal first; per view only allow-listed header values (study date shifted if configured)."""
        shift = date_shift_days(self._salt, raw_patient) if self.study_date == "shift" else None
        headers = []
        for path in paths:
            try:
                headers.append(read_header(path))
            except DicomSkip:
                headers.append(None)  # the writer reports it when it fails to decode the pixels
        metas = [safe_meta(h, shift) if h is not None else {} for h in headers]
        order = frontal_first([m.get("ViewPosition") for m in metas])
        return ([View(path=paths[i], position=str(metas[i].get("ViewPosition") or "UNKNOWN")) for i in order],
                [metas[i] for i in order])


@ADAPTERS.register("dicom_folder")
class DicomFolderAdapter(_DicomStudies):
    def __init__(self, root: str, reports: Optional[str] = None, salt_file: str = DEFAULT_SALT,
                 study_date: str = "drop", seed: int = 0):
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise AdapterError(f"dicom_folder adapter: no such directory {self.root}")
        super().__init__(salt_file, study_date)
        self.reports = os.path.abspath(reports) if reports else None
        self._studies = self._scan()

    def _report_table(self) -> tuple[str, dict[str, tuple[str, str]]]:
        if not self.reports:
            return "", {}
        if not os.path.isfile(self.reports):
            raise AdapterError(f"dicom_folder adapter: reports file not found: {self.reports}")
        with _open_csv(self.reports) as f:
            rows = list(csv.DictReader(f))
        cols = set(rows[0]) if rows else set()
        key = next((c for c in ("study_instance_uid", "accession_number") if c in cols), None)
        if key is None or not ({"report", "findings", "impression"} & cols):
            raise AdapterError(f"{self.reports}: needs a study_instance_uid or accession_number column and "
                               f"report or findings/impression columns; has {sorted(cols)}")
        table = {}
        for n, row in enumerate(rows, start=2):
            if not row.get(key):
                raise AdapterError(f"{self.reports}, line {n}: empty {key}")
            if row.get("report") and not (row.get("findings") or row.get("impression")):
                table[row[key].strip()] = split_sections(row["report"])
            else:
                table[row[key].strip()] = (row.get("findings") or "", row.get("impression") or "")
        return key, table

    def _scan(self) -> list[dict[str, Any]]:
        key, table = self._report_table()
        studies: dict[str, dict[str, Any]] = {}
        unreadable = 0
        for dirpath, dirnames, files in os.walk(self.root):
            dirnames.sort()
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if not is_dicom(path):
                    continue
                try:
                    ds = read_header(path)
                except DicomSkip as skip:
                    print(f"dicom_folder: skipped {skip}")
                    unreadable += 1
                    continue
                uid = str(ds.get("StudyInstanceUID", ""))
                if not uid:
                    print(f"dicom_folder: skipped {path}: no StudyInstanceUID")
                    unreadable += 1
                    continue
                st = studies.setdefault(uid, {"uid": uid, "patient": str(ds.get("PatientID", "") or uid),
                                              "accession": str(ds.get("AccessionNumber", "")), "images": [], "sr": []})
                st["sr" if is_sr(ds) else "images"].append(path)
        kept, no_report, no_image = [], 0, 0
        for st in studies.values():
            lookup = st["uid"] if key == "study_instance_uid" else st["accession"]
            st["report"] = table.get(lookup)
            if not st["images"]:
                no_image += 1
            elif st["report"] is None and not st["sr"]:
                no_report += 1
            else:
                kept.append(st)
        print(f"dicom_folder: {len(kept)} studies; left out {no_report} without a report, {no_image} without "
              f"images, {unreadable} unreadable files")
        if not kept:
            raise AdapterError(f"dicom_folder adapter: no usable study (with images and a report) under {self.root}")
        return kept

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(self.patient(st["patient"]), None) for st in self._studies]

    def load(self, index: int) -> Study:
        st = self._studies[index]
        findings, impression = st["report"] or ("", "")
        for path in st["sr"] if st["report"] is None else []:
            f, i = _sr_text(read_header(path))
            findings, impression = " ".join(x for x in (findings, f) if x), " ".join(x for x in (impression, i) if x)
        views, metas = self.views(st["images"], st["patient"])
        return Study(study_id="s" + pseudonym(self._salt, "study", st["uid"]), patient_id=self.patient(st["patient"]),
                     split=None, views=views, findings=findings, impression=impression, meta={"dicom": metas})


@ADAPTERS.register("mimic_cxr_dicom")
class MimicCxrDicomAdapter(_DicomStudies):
    SPLIT = "mimic-cxr-2.0.0-split.csv"
    LABELS = "mimic-cxr-2.0.0-chexpert.csv"
    SPLITS = {"train": "train", "validate": "validate", "test": "test"}

    def __init__(self, root: str, reports_root: Optional[str] = None, salt_file: str = DEFAULT_SALT,
                 study_date: str = "drop", seed: int = 0):
        self.root = os.path.abspath(root)
        self.reports_root = os.path.abspath(reports_root) if reports_root else self.root
        if not os.path.isdir(os.path.join(self.root, "files")):
            raise AdapterError(f"mimic_cxr_dicom adapter: {self.root} has no files/ directory")
        super().__init__(salt_file, study_date)
        self._studies = self._scan()
        self._labels = self._read_labels()

    def _find(self, name: str) -> Optional[str]:
        for cand in (name, name + ".gz"):
            for base in (self.root, self.reports_root):
                if os.path.isfile(os.path.join(base, cand)):
                    return os.path.join(base, cand)
        return None

    def _scan(self) -> list[dict[str, Any]]:
        splits: dict[str, str] = {}
        path = self._find(self.SPLIT)
        if path:
            with _open_csv(path) as f:
                for n, row in enumerate(csv.DictReader(f), start=2):
                    if row.get("split") not in self.SPLITS:
                        raise AdapterError(f"{path}, line {n}: unknown split {row.get('split')!r}")
                    splits[row["study_id"]] = self.SPLITS[row["split"]]
        studies = []
        files = os.path.join(self.root, "files")
        for group in sorted(os.listdir(files)):
            for subject in sorted(os.listdir(os.path.join(files, group))):
                sdir = os.path.join(files, group, subject)
                for study in sorted(d for d in os.listdir(sdir) if os.path.isdir(os.path.join(sdir, d))):
                    images = sorted(os.path.join(sdir, study, f) for f in os.listdir(os.path.join(sdir, study))
                                    if f.lower().endswith(".dcm"))
                    report = os.path.join(self.reports_root, "files", group, subject, study + ".txt")
                    if images and os.path.isfile(report):
                        studies.append({"subject": subject.lstrip("p"), "study": study.lstrip("s"), "images": images,
                                        "report": report, "split": splits.get(study.lstrip("s"))})
        if not studies:
            raise AdapterError(f"mimic_cxr_dicom adapter: no study with .dcm images and a report under {files}")
        return studies

    def _read_labels(self) -> dict[str, dict[str, Optional[float]]]:
        path = self._find(self.LABELS)
        if not path:
            return {}
        out = {}
        with _open_csv(path) as f:
            for row in csv.DictReader(f):
                out[row["study_id"]] = {k: (float(row[k]) if row.get(k) not in (None, "") else None)
                                        for k in CHEXPERT_LABELS}
        return out

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(self.patient(st["subject"]), st["split"]) for st in self._studies]

    def load(self, index: int) -> Study:
        st = self._studies[index]
        with open(st["report"], encoding="utf-8", errors="replace") as f:
            findings, impression = split_sections(f.read())
        views, metas = self.views(st["images"], st["subject"])
        return Study(study_id=f"s{st['study']}", patient_id=self.patient(st["subject"]), split=st["split"],
                     views=views, findings=findings, impression=impression,
                     labels=self._labels.get(st["study"], {}), meta={"dicom": metas})
