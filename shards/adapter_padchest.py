"""PadChest as distributed: one CSV (plain or .gz) and 16-bit PNGs under ``ImageDir`` subfolders.

``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` starts with an
unnamed index column; its list columns (``Labels``, ``Localizations``,
``LabelsLocalizationsBySentence``, ``labelCUIS``) are Python-literal strings,
parsed with ``ast.literal_eval`` only (never ``eval``).  Images live at
``<root>/<ImageDir>/<ImageID>``.

* Studies: rows grouped by ``StudyID``; patients by ``PatientID``; no official
  split, so the writer's patient-hash split applies.
* Views: ``Projection`` PA -> PA, AP / AP_horizontal -> AP, L -> LATERAL;
  other projections (COSTAL, EXCLUDE, UNK, ...) are left out and counted as
  ``view_other_position`` (``views: all`` keeps them), views past
  ``max_views`` as ``view_over_max_views``.
* Report: the Spanish ``Report`` text as findings (PadChest has no sections).
* Labels: ``Labels`` terms mapped through ``configs.labelsets.PADCHEST_RAW_TO_MAIN``
  onto ``PADCHEST_LABELS`` (1.0 present, 0.0 absent); record ``label_set: padchest``.
* Unreadable images: optional ``known_unreadable``, a list of ImageIDs or a text
  file of them (one a line, relative to ``root``); no download ships one, so it
  defaults to none, and a file that is configured but absent is an
  :class:`AdapterError` naming it.  Listed images are left out while planning
  (``view_known_unreadable``; a study with nothing else: ``known_unreadable``); any other image that fails to decode is found by
  the shard task and left out there (``view_unreadable_image`` when a frontal
  view remains, else the study is skipped as ``unreadable_image``).
* Skips (counted): missing images, lateral-only studies, empty reports / labels,
  duplicated rows.

The study's report and its label bits are kept in the planning index (the CSV
is the only copy of the text); images are read by the shard tasks.
"""
from __future__ import annotations

import ast
import os
from typing import Any, Optional

from configs.labelsets import PADCHEST_LABELS, PADCHEST_RAW_TO_MAIN
from shards.adapter_kit import (CHECK_BATCH, Adapter, AdapterError, FileCheck, cap_views, check_view_policy, find_dir,
                                find_file, order_views, read_csv)
from shards.adapters import ADAPTERS
from shards.records import Study, View

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PROJECTIONS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL"}
LIST_COLUMNS = ("Labels", "Localizations", "LabelsLocalizationsBySentence", "labelCUIS")
_BIT = {name: 1 << i for i, name in enumerate(PADCHEST_LABELS)}


def parse_list(value: str, where: str, column: str) -> Optional[list]:
    """A Python-literal list column -> list (None for an empty / NaN cell); malformed -> AdapterError."""
    text = value.strip()
    if text in ("", "nan", "NaN", "None"):
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise AdapterError(f"{where}: column '{column}' is not a Python list literal ({err}): {text[:60]!r}") from None
    if not isinstance(parsed, list):
        raise AdapterError(f"{where}: column '{column}' must be a list, got {type(parsed).__name__}")
    return parsed


def main_labels(terms: list, where: str) -> int:
    """PadChest ``Labels`` terms -> bit set over PADCHEST_LABELS."""
    bits = 0
    for term in terms:
        if not isinstance(term, str):
            raise AdapterError(f"{where}: column 'Labels' holds a non-string {term!r}")
        main = PADCHEST_RAW_TO_MAIN.get(term.strip())
        if main is not None:
            bits |= _BIT[main]
    return bits


@ADAPTERS.register("padchest")
class PadChestAdapter(Adapter):
    label_set = "padchest"

    def __init__(self, root: str, seed: int = 0, csv: Optional[str] = None, images_root: Optional[str] = None,
                 views: str = "frontal_first", max_views: int = 2, check_files: bool = True,
                 known_unreadable: Any = None, check_threads: int = 8):
        self.root = os.path.abspath(root)
        self.views = check_view_policy("padchest", views)
        self.max_views, self.check_files, self.check_threads = int(max_views), bool(check_files), int(check_threads)
        self.csv_path = find_file(self.root, CSV_NAME, csv, what="padchest: csv")
        self.images_root = find_dir(self.root, images_root, "padchest: images_root") if images_root else self.root
        self.unreadable = self._unreadable(known_unreadable)
        self._index = self._plan()

    def _unreadable(self, spec: Any) -> frozenset:
        """ImageIDs known to be unreadable: none, a list, or a text file (one id a line) under ``root``."""
        if spec is None or spec == "":
            return frozenset()
        if isinstance(spec, str):
            path = find_file(self.root, spec, spec, what="padchest: known_unreadable")
            with open(path, encoding="utf-8") as f:
                return frozenset(line.strip() for line in f if line.strip())
        if not isinstance(spec, (list, tuple, set, frozenset)):
            raise AdapterError(f"padchest: known_unreadable must be a file name or a list of ImageIDs, got {spec!r}")
        return frozenset(str(s) for s in spec)

    def _plan(self) -> list[tuple]:
        studies: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        required = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", *LIST_COLUMNS)
        for rowno, row in read_csv(self.csv_path, required):
            where = f"{self.csv_path}, row {rowno}"
            image, study = row["ImageID"].strip(), row["StudyID"].strip()
            if not image or not study or not row["PatientID"].strip():
                raise AdapterError(f"{where}: empty ImageID, StudyID or PatientID")
            if not row["ImageDir"].strip().isdigit():
                raise AdapterError(f"{where}: ImageDir must be a folder number, got {row['ImageDir']!r}")
            terms = parse_list(row["Labels"], where, "Labels")
            for col in LIST_COLUMNS[1:]:
                parse_list(row[col], where, col)  # validated, not kept
            if image in seen:
                self.skips().add("row_duplicate", f"{where} (ImageID {image})")
                continue
            seen.add(image)
            entry = studies.setdefault(study, {"patient": row["PatientID"].strip(), "views": [], "where": where,
                                               "report": row["Report"].strip(), "terms": terms, "unreadable": []})
            pos = PROJECTIONS.get(row["Projection"].strip().upper(), row["Projection"].strip().upper() or "UNKNOWN")
            if image in self.unreadable:
                entry["unreadable"].append(("view_known_unreadable", f"{where} (ImageID {image}, {pos})"))
                continue
            entry["views"].append((pos, row["ImageDir"].strip(), image))
        index, items = [], list(studies.items())
        del studies
        with FileCheck(self.check_threads) as check:
            for start in range(0, len(items), CHECK_BATCH):
                batch = items[start:start + CHECK_BATCH]
                exists = check([os.path.join(self.images_root, v[1], v[2]) for _, st in batch for v in st["views"]]
                               ) if self.check_files else {}
                index.extend(item for sid, st in batch if (item := self._plan_study(sid, st, exists)) is not None)
        return index

    def _plan_study(self, study: str, st: dict[str, Any], exists: dict[str, bool]) -> Optional[tuple]:
        """The study's index entry, or None (skipped and counted; its views are then not counted again)."""
        where = f"{st['where']} (study {study})"
        if not st["views"] and st["unreadable"]:
            self.skips().add("known_unreadable", f"{where}: every image is listed in known_unreadable")
            return None
        dropped: list[tuple[str, str]] = list(st["unreadable"])
        views = order_views(st["views"], self.views, dropped, where, name=2)
        if self.check_files:
            present = []
            for v in views:
                path = os.path.join(self.images_root, v[1], v[2])
                if exists[path]:
                    present.append(v)
                else:
                    dropped.append(("view_missing_image", path))
            if views and not present:
                self.skips().add("missing_image", f"{where}: no image on disk")
                return None
            views = present
        if not views or (self.views != "all" and views[0][0] not in ("PA", "AP")):
            known = sorted({v[0] for v in st["views"]})
            self.skips().add("no_frontal", f"{where}: projections {known}"
                             + (f" ({len(st['unreadable'])} more known unreadable)" if st["unreadable"] else ""))
            return None
        if not st["report"]:
            self.skips().add("empty_report", where)
            return None
        if st["terms"] is None:
            self.skips().add("no_labels", where)
            return None
        kept = cap_views(views, self.max_views, dropped, where, name=2)
        self.commit_views(dropped)
        return st["patient"], study, kept, st["report"], main_labels(st["terms"], where)

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(item[0], None) for item in self._index]

    def load(self, index: int) -> Study:
        patient, study, views, report, bits = self._index[index]
        return Study(study_id=study, patient_id=patient, split=None,
                     views=[View(path=os.path.join(self.images_root, d, img), position=p) for p, d, img in views],
                     findings=report, labels={name: 1.0 if bits & _BIT[name] else 0.0 for name in PADCHEST_LABELS},
                     label_set="padchest",
                     meta={"dataset": "padchest", "image_ids": [img for _, _, img in views], "language": "es"})
