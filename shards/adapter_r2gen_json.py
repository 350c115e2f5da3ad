"""R2Gen's ``annotation.json`` (IU X-ray and MIMIC-CXR variants) with its ``images/`` folder.

``{"train"|"val"|"test": [{"id", "report", "image_path": [...], "split", ["study_id", "subject_id"]}]}``;
image paths are relative to ``images_dir`` (default ``<root>/images``).  The
split is the file's own (val -> validate).  The patient is ``subject_id`` when
given (MIMIC), else the study ``id`` (IU: one report per patient); a patient
in two splits is refused by the writer.  The report is R2Gen's cleaned
findings text (``findings``; R2Gen keeps no impression).  The file gives no view
positions: views keep its ``image_path`` order (``position: UNKNOWN``), so view 0
is the first path, as in R2Gen's own loaders.

Skips (counted): missing images (``view_missing_image`` for kept studies,
``missing_image`` when none is left), views past ``max_views``
(``view_over_max_views``), empty reports (``empty_report``), a study id listed
twice (``row_duplicate``).
A record lacking ``id``, ``report`` or ``image_path`` is an :class:`AdapterError`
naming the file, split list and position.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from shards.adapter_kit import (CHECK_BATCH, Adapter, AdapterError, FileCheck, cap_views, find_dir, find_file,
                                norm_split)
from shards.adapters import ADAPTERS
from shards.records import Study, View


@ADAPTERS.register("r2gen_json")
class R2GenJsonAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, annotation: Optional[str] = None, images_dir: str = "images",
                 max_views: int = 2, check_files: bool = True, check_threads: int = 8):
        self.root = os.path.abspath(root)
        self.path = find_file(self.root, "annotation.json", annotation, what="r2gen_json: annotation")
        self.images_dir = find_dir(self.root, images_dir, "r2gen_json: images_dir")
        self.max_views, self.check_files, self.check_threads = int(max_views), bool(check_files), int(check_threads)
        self._index = self._plan()

    def _plan(self) -> list[tuple]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise AdapterError(f"{self.path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise AdapterError(f"{self.path}: expected {{train|val|test: [...]}}")
        todo, seen = [], set()
        for key, records in data.items():
            split = norm_split(key, f"{self.path}, key '{key}'")
            for pos, rec in enumerate(records):
                where = f"{self.path}, {key}[{pos}]"
                if not isinstance(rec, dict) or not rec.get("id") or not isinstance(rec.get("report"), str) \
                        or not isinstance(rec.get("image_path"), list):
                    raise AdapterError(f"{where}: needs 'id', 'report' (string) and 'image_path' (list)")
                sid = str(rec["id"])
                if sid in seen:
                    self.skips().add("row_duplicate", f"{where} (id {sid})")
                    continue
                seen.add(sid)
                todo.append((rec, sid, split, where))
        index = []
        with FileCheck(self.check_threads) as check:
            for start in range(0, len(todo), CHECK_BATCH):
                batch = todo[start:start + CHECK_BATCH]
                exists = check([os.path.join(self.images_dir, str(p)) for rec, *_ in batch for p in rec["image_path"]]
                               ) if self.check_files else {}
                index.extend(item for args in batch if (item := self._plan_record(*args, exists)) is not None)
        return index

    def _plan_record(self, rec: dict, sid: str, split: str, where: str, exists: dict[str, bool]) -> Optional[tuple]:
        images = [str(p) for p in rec["image_path"]]
        dropped: list[tuple[str, str]] = []
        if self.check_files:
            present = [p for p in images if exists[os.path.join(self.images_dir, p)]]
            dropped += [("view_missing_image", f"{where}: {os.path.join(self.images_dir, p)}")
                        for p in images if p not in present]
            if not present:
                self.skips().add("missing_image", f"{where}: none of {images} on disk")
                return None
            images = present
        report = " ".join(rec["report"].split())
        if not report:
            self.skips().add("empty_report", where)
            return None
        kept = cap_views([("UNKNOWN", p) for p in images], self.max_views, dropped, where)
        self.commit_views(dropped)
        patient = str(rec.get("subject_id") or sid)
        return sid, patient, split, tuple(p for _, p in kept), report, rec.get("study_id")

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(item[1], item[2]) for item in self._index]

    def load(self, index: int) -> Study:
        sid, patient, split, images, report, study_id = self._index[index]
        meta = {"dataset": "r2gen_json", "image_path": list(images)}
        if study_id is not None:
            meta["study_id"] = str(study_id)
        return Study(study_id=sid, patient_id=patient, split=split,
                     views=[View(path=os.path.join(self.images_dir, p), position="UNKNOWN") for p in images],
                     findings=report, meta=meta)
