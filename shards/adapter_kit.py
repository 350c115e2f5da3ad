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
    studies / rows / single views dropped while planning, counted by reason
    with examples naming file and row.  The writer merges it with the load-time skips into
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

    def commit_views(self, dropped: list[tuple[str, str]]) -> None:
        """Count the views a kept study left out (``view_*`` reasons, see :func:`order_views`)."""
        for reason, where in dropped:
            self.skips().add(reason, where)



# ----------------------------------------------------------------------------- file helpers
def find_file(root: str, name: str, override: Optional[str] = None, required: bool = True,
              what: str = "") -> Optional[str]:
    """``override`` (absolute or under ``root``) or ``root/name``, plain or ``.gz``.

    A configured file (``override``) that is absent, or a required one, is an
    :class:`AdapterError` naming the path (and ``what`` argument set it).
    """
    if not os.path.isdir(root):
        raise AdapterError(f"data.source.args.root: no such folder {root}")
    if override:
        path = override if os.path.isabs(override) else os.path.join(root, override)
        if not os.path.isfile(path):
            raise AdapterError(f"{what + ': ' if what else ''}no such file {path}")
        return path
    for cand in (os.path.join(root, name), os.path.join(root, name + ".gz")):
        if os.path.isfile(cand):
            return cand
    if required:
        raise AdapterError(f"{os.path.join(root, name)}[.gz] not found (the dataset's folder as distributed?)")
    return None


CHECK_BATCH = 8192  # studies whose files are checked together (bounds the transient path list)


class FileCheck:
    """``check_files`` as a bulk ``os.path.isfile``, on up to ``threads`` threads.  Use as a context.

    On a local disk a stat is a few microseconds of mostly Python-side work, and threads only
    contend for the GIL (measured: no faster on tmpfs), so the first paths are timed serially
    and threads are used only if a stat takes over ``SLOW_STAT_S`` (a network file system, where
    the latency overlaps across threads).
    """

    SLOW_STAT_S = 50e-6
    PROBE = 256

    def __init__(self, threads: int = 8):
        self.threads = max(1, int(threads))
        self._pool = None
        self._slow: Optional[bool] = None if self.threads > 1 else False

    def __enter__(self) -> "FileCheck":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __call__(self, paths: list[str]) -> dict[str, bool]:
        """path -> whether it is a file."""
        found: dict[str, bool] = {}
        if self._slow is None:  # probe: time the first paths serially
            import time

            head, paths = paths[:self.PROBE], paths[self.PROBE:]
            t0 = time.perf_counter()
            found.update((p, os.path.isfile(p)) for p in head)
            if head:
                self._slow = (time.perf_counter() - t0) / len(head) > self.SLOW_STAT_S
        if not self._slow or len(paths) < 4 * self.threads:
            found.update((p, os.path.isfile(p)) for p in paths)
            return found
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rrg-check")
        parts = [paths[k::self.threads] for k in range(self.threads)]
        for part, flags in zip(parts, self._pool.map(lambda ps: [os.path.isfile(p) for p in ps], parts)):
            found.update(zip(part, flags))
        return found


def find_dir(root: str, path: str, what: str) -> str:
    """``path`` (absolute or under ``root``) as an existing folder; an AdapterError naming it otherwise."""
    full = path if os.path.isabs(path) else os.path.join(root, path)
    if not os.path.isdir(full):
        raise AdapterError(f"{what}: no such folder {full}")
    return os.path.abspath(full)


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


VIEW_POLICIES = ("frontal_first", "frontal_only", "all")


def check_view_policy(adapter: str, policy: str) -> str:
    if policy not in VIEW_POLICIES:
        raise AdapterError(f"{adapter}: views must be one of {', '.join(VIEW_POLICIES)}, got {policy!r}")
    return policy


def order_views(views: list[tuple], policy: str, dropped: Optional[list[tuple[str, str]]] = None,
                where: str = "", name: int = 1) -> list[tuple]:
    """(position, payload...) ordered frontal first (PA, then AP), laterals after.

    ``policy``: ``frontal_first`` (frontals then laterals), ``frontal_only``, or
    ``all`` (frontals, laterals, then any other position, in their given order).
    Every view left out is appended to ``dropped`` as (reason, example):
    ``view_other_position`` (neither frontal nor lateral, e.g. MIMIC's
    ``XTABLE LATERAL`` / ``AP AXIAL`` / blank, PadChest's ``COSTAL``) or
    ``view_lateral_excluded`` (``frontal_only``).  Callers count them with
    :meth:`Adapter.commit_views` once the study is kept, so that every source
    image is counted once: as a stored view, under a ``view_`` reason, or under
    the reason its whole study was skipped for.  ``name``: the tuple index that names
    the image in those examples.
    """
    rank = {p: i for i, p in enumerate(FRONTAL + LATERAL)}
    keep = []
    for v in views:
        if v[0] in FRONTAL or policy == "all" or (policy != "frontal_only" and v[0] in LATERAL):
            keep.append(v)
        elif dropped is not None:
            reason = "view_lateral_excluded" if v[0] in LATERAL else "view_other_position"
            dropped.append((reason, f"{where}: {v[0]} view {v[name]}"))
    return sorted(keep, key=lambda v: rank.get(v[0], len(rank)))


def cap_views(views: list[tuple], max_views: int, dropped: list[tuple[str, str]], where: str = "",
              name: int = 1) -> tuple:
    """The first ``max_views`` views; the rest go to ``dropped`` as ``view_over_max_views``."""
    for v in views[max_views:]:
        dropped.append(("view_over_max_views", f"{where}: {v[0]} view {v[name]} (max_views={max_views})"))
    return tuple(views[:max_views])


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
