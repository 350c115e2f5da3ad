"""The piece digest checkpoints record: defined as written in configs/digest.py, streaming = parallel."""
from __future__ import annotations

import hashlib
import os

import pytest

from configs import digest


@pytest.fixture()
def small_pieces(monkeypatch):
    monkeypatch.setattr(digest, "PIECE", 1000)
    monkeypatch.setattr(digest, "_BLOCK", 300)


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5432])
def test_parallel_streaming_and_definition_agree(small_pieces, tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    by_definition = digest.PREFIX + hashlib.sha256(b"".join(
        hashlib.sha256(data[i:i + 1000]).digest() for i in range(0, size, 1000))).hexdigest()
    streamed = digest.PieceHasher()
    for lo in range(0, size, 77):  # odd chunks straddle the piece boundaries
        streamed.update(data[lo:lo + 77])
    assert digest.file_digests([path], threads=3, sync=True)[path] == by_definition == streamed.hexdigest()
    assert digest.matches(path, by_definition)
    assert digest.matches(path, hashlib.sha256(data).hexdigest())  # what older rrg recorded


def test_one_changed_byte_anywhere_changes_the_digest(small_pieces, tmp_path):
    path = tmp_path / "f.bin"
    data = bytearray(os.urandom(3500))
    path.write_bytes(data)
    before = digest.file_digest(path)
    for at in (0, 999, 1000, 3499):
        changed = bytearray(data)
        changed[at] ^= 1
        path.write_bytes(changed)
        assert digest.file_digest(path) != before and not digest.matches(path, before)
