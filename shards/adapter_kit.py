"""The adapter contract and what the real-dataset adapters share.

:class:`Adapter` is the interface every dataset adapter implements (registry:
``shards.adapters.ADAPTERS``):

``entries() -> list[(patient_id, split or None)]``
    one entry per usable study, cheap: the writer plans splits and shards from
    it on the driver.  Planning reads the dataset's CSV/JSON/XML index once and
    keeps a compact index entry per study, nothing more.
``load(index) -> Study``
    one study, inside the Ray task that writes its shard (so adapters must
    pickle small: no open file handles).  A study that turns out unusable at
    load time (an unreadable image) raises :class:`SkipStudy`.
``label_set``
    the configs/labelsets.py name the studies' ``labels`` use (attribute).
``skips() -> SkipLog``
    studies / rows dropped while planning, counted by reason with examples
    naming file and row.  The writer merges it with the load-time skips into
    ``build_summary.json`` beside the manifest: nothing is dropped silently.

Malformed input (a row that cannot be parsed) raises :class:`AdapterError`
naming the file and row instead.
"""
from __future__ import annotations

import csv
import gzip
import io
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Iterator, Optional

from shards.records import Study

MAX_EXAMPLES = 5  # examples kept per skip reason
SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate", "val": "validate",
                 "valid": "validate", "validation": "validate", "test": "test"}
FRONTAL, LATERAL = ("PA", "AP"), ("LATERAL", "LL", "RL")


class AdapterError(ValueError):
    """The source data is malformed; the message names the file and line/record."""


class SkipStudy(Exception):
    """Raised by ``Adapter.load`` for a study that cannot be used: ``reason`` and ``where``."""

    def __init__(self, reason: str, where: str):
        super().__init__(f"{reason}: {where}")
        self.reason, self.where = reason, where


class SkipLog:
    """Counts by reason plus the first few examples (each names a file and row or study)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)

    def merge(self, other: dict[str, Any]) -> None:
        for reason, n in other.get("counts", {}).items():
            self.counts[reason] += n
            ex = self.examples.setdefault(reason, [])
            ex.extend(other.get("examples", {}).get(reason, [])[:MAX_EXAMPLES - len(ex)])

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": {k: self.examples[k] for k in sorted(self.examples)}}


class Adapter(ABC):
    """A dataset as studies: see the module docstring for the contract."""

    _skips: Optional[SkipLog] = None
    label_set: str = "chexpert"  # configs/labelsets.py name of the studies' labels

    @abstractmethod
    def entries(self) -> list[tuple[str, Optional[str]]]:
        """(patient_id, split or None) per study index."""

    @abstractmethod
    def load(self, index: int) -> Study:
        """The study at ``index`` (may raise SkipStudy)."""

    def skips(self) -> SkipLog:
        if self._skips is None:
            self._skips = SkipLog()
        return self._skips



# ----------------------------------------------------------------------------- file helpers
def find_file(root: str, name: str, override: Optional[str] = None, required: bool = True) -> Optional[str]:
    """``override`` or ``root/name``, plain or ``.gz``; a clear error when required and absent."""
    if override:
        path = override if os.path.isabs(override) else os.path.join(root, override)
        if not os.path.isfile(path):
            raise AdapterError(f"no such file {path}")
        return path
    for cand in (os.path.join(root, name), os.path.join(root, name + ".gz")):
        if os.path.isfile(cand):
            return cand
    if required:
        raise AdapterError(f"{os.path.join(root, name)}[.gz] not found (the dataset's folder as distributed?)")
    return None


def open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_csv(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream (row number, row) from a plain or gzipped CSV; row 1 is the first data row.

    A row with the wrong number of fields or a missing required column is an
    :class:`AdapterError` naming the file and row.
    """
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise AdapterError(f"{path}: empty file (no header)") from None
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise AdapterError(f"{path}: header lacks columns {missing}")
        for rowno, row in enumerate(reader, start=1):
            if not row:
                continue
            if len(row) != len(header):
                raise AdapterError(f"{path}, row {rowno}: {len(row)} fields, header has {len(header)}")
            yield rowno, dict(zip(header, row))


def norm_split(value: str, where: str) -> str:
    split = SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise AdapterError(f"{where}: unknown split '{value}' (known: {sorted(SPLIT_ALIASES)})")
    return split


def order_views(views: list[tuple[str, Any]], policy: str) -> list[tuple[str, Any]]:
    """(position, payload) ordered frontal first (PA, then AP), laterals after; others dropped.

    ``policy``: ``frontal_first`` (frontals then laterals), ``frontal_only``, or
    ``all`` (frontals, laterals, then any other position).
    """
    rank = {p: i for i, p in enumerate(FRONTAL + LATERAL)}
    keep = [v for v in views if v[0] in FRONTAL or (policy != "frontal_only" and v[0] in LATERAL)
            or policy == "all"]
    return sorted(keep, key=lambda v: rank.get(v[0], len(rank)))


# ----------------------------------------------------------------------------- reports
_SECTION = re.compile(r"^\s*([A-Z][A-Z /&]+?)\s*:", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """Upper-case ``NAME:`` headings -> their text (MIMIC-CXR / IU style free-text reports)."""
    marks = list(_SECTION.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = " ".join(text[m.end():end].split())
        name = m.group(1).strip()
        out[name] = f"{out[name]} {body}".strip() if name in out else body
    return out


def findings_impression(text: str) -> tuple[str, str, str]:
    """(findings, impression, how) with the usual fallbacks when a section is missing.

    how: ``sections`` (FINDINGS found), ``impression_only`` (no FINDINGS: the
    impression is kept as impression, findings stay empty), ``last_paragraph``
    (neither heading: the last non-empty paragraph becomes the findings) or
    ``empty``.
    """
    sec = report_sections(text)
    findings, impression = sec.get("FINDINGS", ""), sec.get("IMPRESSION", "")
    if findings:
        return findings, impression, "sections"
    if impression:
        return "", impression, "impression_only"
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
    paragraphs = [p for p in paragraphs if not _SECTION.match(p) or len(p.split(":", 1)[1].strip()) > 0]
    if not paragraphs:
        return "", "", "empty"
    last = paragraphs[-1]
    m = _SECTION.match(last)
    return (last[m.end():].strip() if m else last), "", "last_paragraph"
