"""CheXpert Plus as distributed: ``df_chexpert_plus_240401.csv`` (plain or .gz), images, CheXbert labels.

One CSV row per image (path_to_image, frontal_lateral, ap_pa, deid_patient_id,
report, section_findings, section_impression, ..., split); the study is the
image's folder (``train/patientNNNNN/studyN``).  ``path_to_image`` names
``.jpg`` files while the PNG release holds ``.png``: the extension is mapped to
what is on disk under ``images_root`` (default ``root``).  Splits are the
CSV's own (train / valid -> validate; they are by patient).  Labels come from
the CheXbert label JSON lines (``labels_json``, default
``chexbert_labels/report_fixed.json`` when present: one object per line with
``path_to_image`` and the 14 CheXpert columns); without it labels stay blank.

Views: Frontal + PA/AP -> PA/AP, Frontal without ap_pa -> FRONTAL, Lateral ->
LATERAL; frontal first.  Findings/impression from the section columns; when
both are empty, the ``report`` column with the usual fallbacks.  Skips
(counted): duplicated rows, missing images, lateral-only studies, empty reports.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from shards.adapter_kit import (FRONTAL, Adapter, AdapterError, find_file, findings_impression, norm_split,
                                order_views, read_csv)
from shards.adapters import ADAPTERS
from shards.records import CHEXPERT_LABELS, Study, View

CSV_NAME = "df_chexpert_plus_240401.csv"
_CODES = {None: 0, 1: 1, 1.0: 1, 0: 2, 0.0: 2, -1: 3, -1.0: 3}
_VALUES = {0: None, 1: 1.0, 2: 0.0, 3: -1.0}


def _position(frontal_lateral: str, ap_pa: str) -> str:
    """Frontal + PA/AP -> PA/AP, Frontal alone -> FRONTAL, Lateral -> LATERAL."""
    fl = frontal_lateral.strip().upper()
    if fl == "FRONTAL":
        return ap_pa.strip().upper() if ap_pa.strip().upper() in FRONTAL else "FRONTAL"
    return fl or "UNKNOWN"


@ADAPTERS.register("chexpert_plus")
class ChexpertPlusAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, csv: Optional[str] = None, images_root: Optional[str] = None,
                 labels_json: Optional[str] = None, views: str = "frontal_first", max_views: int = 2,
                 check_files: bool = True):
        self.root = os.path.abspath(root)
        self.images_root = os.path.abspath(images_root) if images_root else self.root
        self.views, self.max_views, self.check_files = views, int(max_views), bool(check_files)
        self.csv_path = find_file(self.root, CSV_NAME, csv)
        self.labels_path = find_file(self.root, os.path.join("chexbert_labels", "report_fixed.json"), labels_json,
                                     required=False)
        self._index = self._plan()

    def _labels(self) -> dict[str, bytes]:
        """study folder -> 14 label codes, from the CheXbert JSON lines."""
        if not self.labels_path:
            return {}
        out: dict[str, bytes] = {}
        with open(self.labels_path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{self.labels_path}, line {lineno}"
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
                out.setdefault(os.path.dirname(rec["path_to_image"]), bytes(codes))
        return out

    def _on_disk(self, rel: str) -> Optional[str]:
        stem, ext = os.path.splitext(rel)
        for cand in (rel, stem + ".png", stem + ".jpg"):
            if os.path.isfile(os.path.join(self.images_root, cand)):
                return cand
        return None

    def _plan(self) -> list[tuple]:
        labels = self._labels()
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
                                            "split": norm_split(row["split"], where), "row": row})
            st["views"].append((pos, rel))
        return [item for sid, st in studies.items() if (item := self._plan_study(sid, st, labels)) is not None]

    def _plan_study(self, study: str, st: dict[str, Any], labels: dict[str, bytes]) -> Optional[tuple]:
        where = f"{st['where']} (study {study})"
        rank = {"PA": 0, "AP": 1, "FRONTAL": 2, "LATERAL": 3}
        views = sorted([v for v in st["views"] if v[0] in rank and (self.views != "frontal_only" or rank[v[0]] < 3)],
                       key=lambda v: rank[v[0]]) if self.views != "all" else order_views(st["views"], "all")
        if self.check_files:
            found = [(p, self._on_disk(r), r) for p, r in views]
            for p, disk, r in found:
                if disk is None:
                    self.skips().add("view_missing_image", os.path.join(self.images_root, r))
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
        return (st["patient"], study, st["split"], tuple(views[:self.max_views]), findings, impression, how,
                labels.get(study))

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(item[0], item[2]) for item in self._index]

    def load(self, index: int) -> Study:
        patient, study, split, views, findings, impression, how, codes = self._index[index]
        label_dict = ({n: _VALUES[c] for n, c in zip(CHEXPERT_LABELS, codes)} if codes is not None
                      else {n: None for n in CHEXPERT_LABELS})
        return Study(study_id=study, patient_id=patient, split=split,
                     views=[View(path=os.path.join(self.images_root, r), position=p) for p, r in views],
                     findings=findings, impression=impression, labels=label_dict,
                     meta={"dataset": "chexpert_plus", "sections": how, "images": [r for _, r in views]})
