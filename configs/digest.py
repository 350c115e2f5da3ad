"""File digests that several cores can compute: sha256 over fixed-size pieces.

A checkpoint of a 100M-parameter model is ~1.7 GB; one sha256 over it costs a core about a
second, longer than writing it.  Its digest is therefore defined over 64 MiB pieces, hashed
in parallel threads (hashlib releases the GIL):

    "sha256-64MiB-pieces:" + hex(sha256(sha256(piece_0) || sha256(piece_1) || ...))

where ``piece_i`` is bytes ``[i * 64 MiB, (i + 1) * 64 MiB)`` of the file and ``||`` joins the
32-byte digests (an empty file has no pieces).  Any one changed byte changes its piece's digest
and so the whole digest, as with a plain sha256.  A plain 64-hex sha256 (what older rrg wrote)
is still understood everywhere a digest is checked (:func:`hasher_for`, :func:`matches`).
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Optional

PIECE = 64 << 20
PREFIX = "sha256-64MiB-pieces:"
_BLOCK = 8 << 20


class PieceHasher:
    """Streaming form of the piece digest (``update`` / ``hexdigest``, like a hashlib object)."""

    def __init__(self) -> None:
        self._digests: list[bytes] = []
        self._current = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), PIECE - self._filled)
            self._current.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == PIECE:
                self._digests.append(self._current.digest())
                self._current, self._filled = hashlib.sha256(), 0

    def hexdigest(self) -> str:
        tail = [self._current.digest()] if self._filled else []
        return PREFIX + hashlib.sha256(b"".join(self._digests + tail)).hexdigest()


def hasher_for(expected: Optional[str]):
    """A fresh hasher of the kind ``expected`` was made with (plain sha256 for a bare hex digest)."""
    return PieceHasher() if expected and expected.startswith(PREFIX) else hashlib.sha256()


def _piece_digest(path: Path, index: int, size: int, sync: bool) -> bytes:
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        f.seek(index * PIECE)
        left = min(PIECE, size - index * PIECE)
        while left > 0:
            n = f.readinto(view[: min(_BLOCK, left)])
            if not n:
                raise OSError(f"{path}: file shrank while it was hashed")
            h.update(view[:n])
            left -= n
        if sync and index == 0:
            os.fsync(f.fileno())  # the file's data is on the disk before anything lists it as complete
    return h.digest()


def file_digests(paths: Iterable[str | os.PathLike], *, sync: bool = False,
                 threads: Optional[int] = None) -> dict[Path, str]:
    """The piece digest of every file, pieces hashed by ``threads`` threads (default: the cores, at most 8).

    ``sync=True`` also fsyncs every file (its data reaches the disk, as a checkpoint needs).
    """
    paths = [Path(p) for p in paths]
    sizes = {p: p.stat().st_size for p in paths}
    jobs = [(p, i) for p in paths for i in range(-(-sizes[p] // PIECE))]  # ceil: no piece when empty
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda job: _piece_digest(job[0], job[1], sizes[job[0]], sync), jobs))
    pieces: dict[Path, list[bytes]] = {p: [] for p in paths}
    for (p, _), digest in zip(jobs, done):
        pieces[p].append(digest)
    if sync:
        for p in paths:
            if not sizes[p]:
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
    return {p: PREFIX + hashlib.sha256(b"".join(pieces[p])).hexdigest() for p in paths}


def file_digest(path: str | os.PathLike) -> str:
    return file_digests([path])[Path(path)]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The plain sha256 hex of a file (shards, sidecars, assets; checkpoints of older rrg)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def matches(path: str | os.PathLike, expected: str) -> bool:
    """Whether ``path`` has digest ``expected`` (a piece digest, or a plain sha256 hex)."""
    return (file_digest(path) if expected.startswith(PREFIX) else file_sha256(path)) == expected
