"""CheXpert Plus as distributed: ``df_chexpert_plus_240401.csv`` (plain or .gz), images, CheXbert labels.

One CSV row per image (path_to_image, frontal_lateral, ap_pa, deid_patient_id,
report, section_findings, section_impression, ..., split); the study is the
image's folder (``train/patientNNNNN/studyN``).  ``path_to_image`` names
``.jpg`` files while the PNG release holds ``.png``: the extension is mapped to
what is on disk under ``images_root`` (default ``root``).  Splits are the
CSV's own (train / valid -> validate; they are by patient).

Labels: CheXpert Plus ships three CheXbert label files under
``chexbert_labels/`` (``labels_dir``), JSON lines with ``path_to_image`` and the
14 CheXpert columns (1 / 0 / -1 / null), one per report section labelled:
``report_fixed.json``, ``findings_fixed.json`` and ``impression_fixed.json``.
Every one present is read: the one named by ``labels_from`` (``report``,
default; or ``findings`` / ``impression``; ``labels_json`` overrides its path)
becomes the record's ``labels``, the others go into ``meta.chexbert_labels``
(``{section: {name: value} or null}``).  Without the files labels stay blank.  A label
line for an image the CSV does not list is not used (it names no study).

Views: Frontal + PA/AP -> PA/AP, Frontal without ap_pa -> FRONTAL, Lateral ->
LATERAL; frontal first; views past ``max_views`` are counted as
``view_over_max_views``, laterals left out by ``views: frontal_only`` as
``view_lateral_excluded``, any other frontal_lateral value as
``view_other_position``.  Findings/impression from the section columns; when
both are empty, the ``report`` column with the usual fallbacks.  Skips
(counted): duplicated rows, missing images, lateral-only studies, empty reports.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from shards.adapter_kit import (CHECK_BATCH, FRONTAL, Adapter, AdapterError, FileCheck, cap_views, check_view_policy,
                                find_dir, find_file, findings_impression, norm_split, read_csv)
from shards.adapters import ADAPTERS
from shards.records import CHEXPERT_LABELS, Study, View

CSV_NAME = "df_chexpert_plus_240401.csv"
LABEL_FILES = {"report": "report_fixed.json", "findings": "findings_fixed.json", "impression": "impression_fixed.json"}
_CODES = {None: 0, 1: 1, 1.0: 1, 0: 2, 0.0: 2, -1: 3, -1.0: 3}
_VALUES = {0: None, 1: 1.0, 2: 0.0, 3: -1.0}
_RANK = {"PA": 0, "AP": 1, "FRONTAL": 2, "LATERAL": 3}


def _position(frontal_lateral: str, ap_pa: str) -> str:
    """Frontal + PA/AP -> PA/AP, Frontal alone -> FRONTAL, Lateral -> LATERAL."""
    fl = frontal_lateral.strip().upper()
    if fl == "FRONTAL":
        return ap_pa.strip().upper() if ap_pa.strip().upper() in FRONTAL else "FRONTAL"
    return fl or "UNKNOWN"


def _decode(codes: Optional[bytes]) -> dict[str, Optional[float]]:
    return ({n: _VALUES[c] for n, c in zip(CHEXPERT_LABELS, codes)} if codes is not None
            else {n: None for n in CHEXPERT_LABELS})


@ADAPTERS.register("chexpert_plus")
class ChexpertPlusAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, csv: Optional[str] = None, images_root: Optional[str] = None,
                 labels_json: Optional[str] = None, labels_dir: str = "chexbert_labels", labels_from: str = "report",
                 views: str = "frontal_first", max_views: int = 2, check_files: bool = True, check_threads: int = 8):
        if labels_from not in LABEL_FILES:
            raise AdapterError(f"chexpert_plus: labels_from must be one of {sorted(LABEL_FILES)}, got {labels_from!r}")
        self.root = os.path.abspath(root)
        self.views = check_view_policy("chexpert_plus", views)
        self.max_views, self.check_files, self.check_threads = int(max_views), bool(check_files), int(check_threads)
        self.csv_path = find_file(self.root, CSV_NAME, csv, what="chexpert_plus: csv")
        self.images_root = find_dir(self.root, images_root, "chexpert_plus: images_root") if images_root else self.root
        self.labels_from = labels_from
        self.label_paths: dict[str, str] = {}  # section -> file, the ones present
        for section, name in LABEL_FILES.items():
            override = labels_json if section == labels_from else None
            path = find_file(self.root, os.path.join(labels_dir, name), override, required=False,
                             what="chexpert_plus: labels_json")
            if path:
                self.label_paths[section] = path
        self._index = self._plan()

    @property
    def labels_path(self) -> Optional[str]:
        return self.label_paths.get(self.labels_from)

    def _read_labels(self, section: str, path: str, studies: dict[str, dict[str, Any]]) -> None:
        """Stream one CheXbert JSON-lines file into the studies' entries (first image of a study wins)."""
        slot = list(LABEL_FILES).index(section)
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise AdapterError(f"{where}: not valid JSON ({err})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("path_to_image"), str):
                    raise AdapterError(f"{where}: needs a 'path_to_image' string")
                codes = []
                for name in CHEXPERT_LABELS:
                    code = _CODES.get(rec.get(name))
                    if code is None:
                        raise AdapterError(f"{where}: label '{name}' must be 1, 0, -1 or null, got {rec.get(name)!r}")
                    codes.append(code)
                st = studies.get(os.path.dirname(rec["path_to_image"]))
                if st is not None and st["labels"][slot] is None:
                    st["labels"][slot] = bytes(codes)

    @staticmethod
    def _candidates(rel: str) -> list[str]:
        """The CSV's name, then the PNG release's, then JPEG."""
        stem = os.path.splitext(rel)[0]
        return list(dict.fromkeys((rel, stem + ".png", stem + ".jpg")))

    def _on_disk(self, rel: str, exists: dict[str, bool]) -> Optional[str]:
        for cand in self._candidates(rel):
            if exists[os.path.join(self.images_root, cand)]:
                return cand
        return None

    def _plan(self) -> list[tuple]:
        studies: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        cols = ("path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id", "report", "section_findings",
                "section_impression", "split")
        for rowno, row in read_csv(self.csv_path, cols):
            where = f"{self.csv_path}, row {rowno}"
            rel = row["path_to_image"].strip()
            if not rel or not row["deid_patient_id"].strip():
                raise AdapterError(f"{where}: empty path_to_image or deid_patient_id")
            if rel in seen:
                self.skips().add("row_duplicate", f"{where} ({rel})")
                continue
            seen.add(rel)
            study = os.path.dirname(rel)
            pos = _position(row["frontal_lateral"], row["ap_pa"])
            st = studies.setdefault(study, {"patient": row["deid_patient_id"].strip(), "views": [], "where": where,
                                            "split": norm_split(row["split"], where), "row": row,
                                            "labels": [None] * len(LABEL_FILES)})
            st["views"].append((pos, rel))
        for section, path in self.label_paths.items():
            self._read_labels(section, path, studies)
        index, items = [], list(studies.items())
        del studies
        with FileCheck(self.check_threads) as check:
            for start in range(0, len(items), CHECK_BATCH):
                batch = items[start:start + CHECK_BATCH]
                exists = check([os.path.join(self.images_root, c) for _, st in batch for _, rel in st["views"]
                                for c in self._candidates(rel)]) if self.check_files else {}
                index.extend(item for sid, st in batch if (item := self._plan_study(sid, st, exists)) is not None)
        return index

    def _plan_study(self, study: str, st: dict[str, Any], exists: dict[str, bool]) -> Optional[tuple]:
        """The study's index entry, or None (skipped and counted; its views are then not counted again)."""
        where = f"{st['where']} (study {study})"
        dropped: list[tuple[str, str]] = []
        views = []
        for v in st["views"]:
            if v[0] in _RANK and (self.views != "frontal_only" or v[0] != "LATERAL") or self.views == "all":
                views.append(v)
            else:
                reason = "view_lateral_excluded" if v[0] == "LATERAL" else "view_other_position"
                dropped.append((reason, f"{where}: {v[0]} view {v[1]}"))
        views.sort(key=lambda v: _RANK.get(v[0], len(_RANK)))
        if self.check_files:
            found = [(p, self._on_disk(r, exists), r) for p, r in views]
            dropped += [("view_missing_image", os.path.join(self.images_root, r)) for _, d, r in found if d is None]
            if views and all(d is None for _, d, _ in found):
                self.skips().add("missing_image", f"{where}: no image on disk")
                return None
            views = [(p, d) for p, d, _ in found if d is not None]
        if not views or (self.views != "all" and views[0][0] == "LATERAL"):
            self.skips().add("no_frontal", f"{where}: views {sorted({v[0] for v in st['views']})}")
            return None
        row = st["row"]
        findings, impression = " ".join(row["section_findings"].split()), " ".join(row["section_impression"].split())
        how = "sections" if findings else "impression_only"
        if not findings and not impression:
            findings, impression, how = findings_impression(row["report"])
        if how == "empty":
            self.skips().add("empty_report", where)
            return None
        kept = cap_views(views, self.max_views, dropped, where)
        self.commit_views(dropped)
        return st["patient"], study, st["split"], kept, findings, impression, how, tuple(st["labels"])

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(item[0], item[2]) for item in self._index]

    def load(self, index: int) -> Study:
        patient, study, split, views, findings, impression, how, codes = self._index[index]
        by_section = dict(zip(LABEL_FILES, codes))
        meta = {"dataset": "chexpert_plus", "sections": how, "images": [r for _, r in views],
                "labels_from": self.labels_from if self.labels_path else None}
        others = {s: None if c is None else _decode(c)  # None: that file has no line for the study
                  for s, c in by_section.items() if s != self.labels_from and s in self.label_paths}
        if others:
            meta["chexbert_labels"] = others
        return Study(study_id=study, patient_id=patient, split=split,
                     views=[View(path=os.path.join(self.images_root, r), position=p) for p, r in views],
                     findings=findings, impression=impression, labels=_decode(by_section[self.labels_from]),
                     meta=meta)
