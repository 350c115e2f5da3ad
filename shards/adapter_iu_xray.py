"""IU X-ray (Open-i) as distributed: ``ecgen-radiology/*.xml`` reports and ``NLMCXR_png/<id>.png`` images.

Each XML report holds ``AbstractText`` sections (COMPARISON, INDICATION,
FINDINGS, IMPRESSION) and one ``parentImage id=...`` per image.  IU X-ray has
no patient ids and no official split: every report is its own patient (its
``uId``), so the writer's patient-hash split applies.  It gives no view
positions either: views keep the XML order (``position: UNKNOWN``).  No
CheXpert labels ship with it (``labels`` stay empty).

Skips (counted): missing PNGs (``view_missing_image``; ``missing_image`` when
none is left), reports with neither FINDINGS nor IMPRESSION (``empty_report``),
reports without images (``no_image``).  A file that is not well-formed XML is
an :class:`AdapterError` naming it.
"""
from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET
from typing import Optional

from shards.adapter_kit import Adapter, AdapterError
from shards.adapters import ADAPTERS
from shards.records import Study, View

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")


def parse_report(path: str) -> tuple[str, dict[str, str], list[str]]:
    """(uId, {section: text}, parentImage ids) of one Open-i XML file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise AdapterError(f"{path}: not well-formed XML ({err})") from None
    root = tree.getroot()
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise AdapterError(f"{path}: no <uId id=...> element")
    sections = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        if label in SECTIONS:
            sections[label] = " ".join("".join(node.itertext()).split())
    images = [n.get("id") for n in root.iter("parentImage") if n.get("id")]
    return uid.get("id"), sections, images


@ADAPTERS.register("iu_xray")
class IuXrayAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, reports_dir: str = "ecgen-radiology",
                 images_dir: str = "NLMCXR_png", max_views: int = 2, check_files: bool = True):
        self.root = os.path.abspath(root)
        self.reports_dir = os.path.join(self.root, reports_dir)
        self.images_dir = os.path.join(self.root, images_dir)
        self.max_views, self.check_files = int(max_views), bool(check_files)
        if not os.path.isdir(self.reports_dir):
            raise AdapterError(f"iu_xray: no such folder {self.reports_dir}")
        self._index = self._plan()

    def _plan(self) -> list[tuple]:
        index = []
        for path in sorted(glob.glob(os.path.join(self.reports_dir, "*.xml"))):
            uid, sections, images = parse_report(path)
            if not images:
                self.skips().add("no_image", path)
                continue
            if self.check_files:
                present = [i for i in images if os.path.isfile(os.path.join(self.images_dir, f"{i}.png"))]
                for i in images:
                    if i not in present:
                        self.skips().add("view_missing_image", os.path.join(self.images_dir, f"{i}.png"))
                if not present:
                    self.skips().add("missing_image", f"{path}: none of {images} on disk")
                    continue
                images = present
            if not sections.get("FINDINGS") and not sections.get("IMPRESSION"):
                self.skips().add("empty_report", f"{path}: neither FINDINGS nor IMPRESSION")
                continue
            index.append((uid, path, tuple(images[:self.max_views])))
        if not index and not self.skips().counts:
            raise AdapterError(f"iu_xray: no reports in {self.reports_dir}")
        return index

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(uid, None) for uid, _, _ in self._index]

    def load(self, index: int) -> Study:
        uid, path, images = self._index[index]
        _, sections, _ = parse_report(path)
        return Study(study_id=uid, patient_id=uid, split=None,
                     views=[View(path=os.path.join(self.images_dir, f"{i}.png"), position="UNKNOWN") for i in images],
                     findings=sections.get("FINDINGS", ""), impression=sections.get("IMPRESSION", ""),
                     meta={"dataset": "iu_xray", "image_ids": list(images), "indication": sections.get("INDICATION", ""),
                           "comparison": sections.get("COMPARISON", ""),
                           "sections": "sections" if sections.get("FINDINGS") else "impression_only"})
