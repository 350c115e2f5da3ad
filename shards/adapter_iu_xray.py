"""IU X-ray (Open-i) as distributed: ``ecgen-radiology/*.xml`` reports and ``NLMCXR_png/<id>.png`` images.

Each XML report holds ``AbstractText`` sections (COMPARISON, INDICATION,
FINDINGS, IMPRESSION) and one ``parentImage id=...`` per image.  IU X-ray has
no patient ids and no official split: every report is its own patient (its
``uId``), so the writer's patient-hash split applies.  No CheXpert labels ship
with it (``labels`` stay empty).

View positions: the Open-i XML has none per image.  Its ``parentImage`` ``caption`` is written per
*study* and de-identified: "Xray Chest PA and Lateral", "PA and lateral", "Chest XXXX and lateral"
(where XXXX was "PA") stand on every image of a frontal + lateral pair.  So a caption is trusted
only when it names exactly one view, holds no redaction token (``XXXX`` may hide a view word) and,
in a study of several images, is not the same on all of them (``PA`` / ``Lateral`` on their own
images are per image).  The optional ``projections`` file (``uid, filename, projection`` with
``Frontal`` / ``Lateral``, as in the Kaggle redistribution's ``indiana_projections.csv``; its
``1_IM-0001-4001.dcm.png`` names are matched to the ``CXR1_1_IM-0001-4001`` ids by report number
and ``IM-`` part) gives ``FRONTAL`` / ``LATERAL`` for every image it lists and wins over captions.
What is still unknown is decided from the pixels when the shard task loads the study
(``view_from_content``, default on; :func:`shards.viewclass.mediastinum_contrast`): a frontal view
has the bright mediastinum between two dark lung fields, a lateral none, so of two images the one
with clearly more of that contrast is the frontal, and a lone image is frontal or lateral only when
it is far on one side of the thresholds; anything closer stays ``UNKNOWN``.  Where each stored
view's position came from (``projections``, ``caption``, ``content``, ``unknown``) is in the
record's ``meta.view_sources`` and counted in ``build_summary.json`` (``view_sources``).
Views are ordered frontal, then unknown, then lateral, each group in XML order, so an unknown view 0
is the report's first ``parentImage``; a study whose images are all known laterals is skipped
(``no_frontal``), at planning time (projections, captions) or at load time (content).

Skips (counted): missing PNGs (``view_missing_image``, counted for kept reports;
``missing_image`` when none is left), views past ``max_views``
(``view_over_max_views``), reports with neither FINDINGS nor IMPRESSION
(``empty_report``), reports without images (``no_image``), lateral-only reports
(``no_frontal``).  A file that is not well-formed XML, or a malformed
projections row, is an :class:`AdapterError` naming it.
"""
from __future__ import annotations

import glob
import os
import re
import xml.etree.ElementTree as ET
from typing import Optional

from shards.adapter_kit import Adapter, AdapterError, SkipStudy, cap_views, find_dir, find_file, read_csv
from shards.adapters import ADAPTERS
from shards.records import Study, View

SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
_RANK = {"PA": 0, "AP": 0, "FRONTAL": 0, "UNKNOWN": 1, "LATERAL": 2}
_FRONTAL_WORDS = {"PA": "PA", "AP": "AP", "FRONTAL": "FRONTAL"}
_LATERAL_WORDS = {"LATERAL", "LAT", "LL", "RL"}


_REDACTED = re.compile(r"X{3,}")  # Open-i's de-identification token


def caption_position(caption: str) -> str:
    """A caption naming exactly one view, with nothing redacted -> its position; else UNKNOWN."""
    if _REDACTED.search(caption.upper()):
        return "UNKNOWN"  # "Chest XXXX and lateral": the XXXX was a view word ("PA")
    words = set(re.findall(r"[A-Z]+", caption.upper()))
    frontal = {_FRONTAL_WORDS[w] for w in words if w in _FRONTAL_WORDS}
    lateral = bool(words & _LATERAL_WORDS)
    if len(frontal) == 1 and not lateral:
        return frontal.pop()
    if lateral and not frontal:
        return "LATERAL"
    return "UNKNOWN"


def study_caption_positions(captions: list[str]) -> list[str]:
    """Positions from a study's captions: a caption the same on every image of a multi-image study
    describes the examination, not the image, and says nothing about any one view."""
    norm = [" ".join(c.upper().split()) for c in captions]
    if len(norm) > 1 and len(set(norm)) == 1:
        return ["UNKNOWN"] * len(norm)
    return [caption_position(c) for c in captions]


_IMAGE_NAME = re.compile(r"^(?:CXR)?(\d+)(?:_\d+)?_(IM-[0-9-]+)", re.IGNORECASE)


def image_key(name: str) -> str:
    """Open-i id ``CXR1_1_IM-0001-4001`` and Kaggle file ``1_IM-0001-4001.dcm.png`` -> ``1_IM-0001-4001``."""
    base = os.path.basename(name.strip())
    m = _IMAGE_NAME.match(base)
    if m:
        return f"{m.group(1)}_{m.group(2).upper()}"
    return re.sub(r"(\.dcm)?\.(png|jpg)$", "", base, flags=re.IGNORECASE)


def parse_report(path: str) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
    """(uId, {section: text}, [(parentImage id, position from the captions)]) of one Open-i XML file."""
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
    nodes = [n for n in root.iter("parentImage") if n.get("id")]
    positions = study_caption_positions([n.findtext("caption") or "" for n in nodes])
    return uid.get("id"), sections, [(n.get("id"), pos) for n, pos in zip(nodes, positions)]


@ADAPTERS.register("iu_xray")
class IuXrayAdapter(Adapter):
    def __init__(self, root: str, seed: int = 0, reports_dir: str = "ecgen-radiology",
                 images_dir: str = "NLMCXR_png", projections: Optional[str] = None, max_views: int = 2,
                 check_files: bool = True, view_from_content: bool = True):
        self.root = os.path.abspath(root)
        self.reports_dir = find_dir(self.root, reports_dir, "iu_xray: reports_dir")
        self.images_dir = find_dir(self.root, images_dir, "iu_xray: images_dir")
        self.projections_path = find_file(self.root, projections, projections,
                                          what="iu_xray: projections") if projections else None
        self.max_views, self.check_files = int(max_views), bool(check_files)
        self.view_from_content = bool(view_from_content)
        self._index = self._plan()

    def _projections(self) -> dict[str, str]:
        if self.projections_path is None:
            return {}
        out: dict[str, str] = {}
        for rowno, row in read_csv(self.projections_path, ("filename", "projection")):
            proj = row["projection"].strip().upper()
            if proj not in ("FRONTAL", "LATERAL") or not row["filename"].strip():
                raise AdapterError(f"{self.projections_path}, row {rowno}: projection must be Frontal or Lateral "
                                   f"with a filename, got {row['projection']!r} / {row['filename']!r}")
            out[image_key(row["filename"])] = proj
        return out

    def _plan(self) -> list[tuple]:
        projections = self._projections()
        index = []
        for path in sorted(glob.glob(os.path.join(self.reports_dir, "*.xml"))):
            uid, sections, images = parse_report(path)
            if not images:
                self.skips().add("no_image", path)
                continue
            views = sorted(((projections.get(image_key(i), pos), i,
                             "projections" if image_key(i) in projections else "caption" if pos != "UNKNOWN"
                             else "unknown") for i, pos in images),
                           key=lambda v: _RANK[v[0]])
            dropped: list[tuple[str, str]] = []
            if self.check_files:
                present = []
                for v in views:
                    if os.path.isfile(os.path.join(self.images_dir, f"{v[1]}.png")):
                        present.append(v)
                    else:
                        dropped.append(("view_missing_image", os.path.join(self.images_dir, f"{v[1]}.png")))
                if not present:
                    self.skips().add("missing_image", f"{path}: none of {[i for i, _ in images]} on disk")
                    continue
                views = present
            if views[0][0] == "LATERAL":
                self.skips().add("no_frontal", f"{path}: every image is a lateral")
                continue
            if not sections.get("FINDINGS") and not sections.get("IMPRESSION"):
                self.skips().add("empty_report", f"{path}: neither FINDINGS nor IMPRESSION")
                continue
            kept = cap_views(views, self.max_views, dropped, path)
            self.commit_views(dropped)
            index.append((uid, path, kept))
        if not index and not self.skips().counts:
            raise AdapterError(f"iu_xray: no reports in {self.reports_dir}")
        return index

    def entries(self) -> list[tuple[str, Optional[str]]]:
        return [(uid, None) for uid, _, _ in self._index]

    def _content_positions(self, path: str, views: tuple) -> tuple:
        """The still-unknown views' positions from their pixels (shards/viewclass.py); re-ordered."""
        from shards.viewclass import positions_from_content

        unknown = [k for k, v in enumerate(views) if v[0] == "UNKNOWN"]
        if not unknown or not self.view_from_content:
            return views
        guessed = positions_from_content([os.path.join(self.images_dir, f"{views[k][1]}.png") for k in unknown],
                                         alone=len(views) == 1)
        out = list(views)
        for k, pos in zip(unknown, guessed):
            if pos != "UNKNOWN":
                out[k] = (pos, views[k][1], "content")
        out.sort(key=lambda v: _RANK[v[0]])
        if out[0][0] == "LATERAL":
            raise SkipStudy("no_frontal", f"{path}: every image is a lateral (from the image content)")
        return tuple(out)

    def load(self, index: int) -> Study:
        uid, path, views = self._index[index]
        _, sections, _ = parse_report(path)
        views = self._content_positions(path, views)
        return Study(study_id=uid, patient_id=uid, split=None,
                     views=[View(path=os.path.join(self.images_dir, f"{i}.png"), position=p) for p, i, _ in views],
                     findings=sections.get("FINDINGS", ""), impression=sections.get("IMPRESSION", ""),
                     meta={"dataset": "iu_xray", "image_ids": [i for _, i, _ in views],
                           "view_sources": [src for _, _, src in views],
                           "indication": sections.get("INDICATION", ""), "comparison": sections.get("COMPARISON", ""),
                           "sections": "sections" if sections.get("FINDINGS") else "impression_only"})
