"""Length bucketing: batches of similar-length rows, so long reasoning chains batch efficiently.

Chains are several times longer than reports and vary a lot between studies; a batch padded to
its longest row wastes most of its tokens when lengths mix.  :func:`bucket_batches` keeps the
stream order at the scale of a window (``window`` batches' worth of rows, e.g. one shuffle
buffer), sorts rows by length inside it, cuts batches, and shuffles the batch order with a
seed, so the result is a deterministic function of (lengths, batch_size, window, seed) and a
resumed run sees the same batches.  Every index appears exactly once; a short last batch stays.

The streaming reader uses it with ``data.bucket_by_length: true`` (train mode): :class:`WindowBuckets`
regroups each window of ``shuffle_buffer // batch_size`` batches of a loader worker's emitted
stream.  The length of a sample is the byte size of its JSON members (the record and its text
overlays, e.g. the reasoning chain): known from the raw tar members, before any image is decoded,
and fixed by the manifest fingerprint.  So which samples form batch ``j`` stays a pure function of
(seed, epoch, segment, rank, worker, position) and the data: the reader's resume state is unchanged
and a resume is exact.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np


def bucket_batches(lengths: Sequence[int], batch_size: int, window: int, seed: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches of similar length (see the module docstring)."""
    if batch_size < 1 or window < 1:
        raise ValueError("batch_size and window must be >= 1")
    span = batch_size * window
    rng = np.random.default_rng(seed)
    out: list[list[int]] = []
    for lo in range(0, len(lengths), span):
        idx = sorted(range(lo, min(lo + span, len(lengths))), key=lambda i: (lengths[i], i))
        batches = [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
        out.extend(batches[k] for k in rng.permutation(len(batches)))
    return out


def padding_efficiency(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Real tokens / padded tokens over the batches (1.0 = no padding)."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return real / max(padded, 1)


def text_bytes(members: Mapping[str, bytes]) -> int:
    """Length proxy of a raw sample: bytes of its JSON members (record + text overlays, no images)."""
    return sum(len(v) for k, v in members.items() if k.endswith("json"))


class WindowBuckets:
    """Emitted positions of the batch starting at position ``lo`` of a stream, bucketed per window."""

    def __init__(self, batch_size: int, window: int, seed_words: Sequence[int], size_of: Callable[[int], int],
                 end: int):
        self.bs, self.window, self.seed_words, self.size_of, self.end = batch_size, window, list(seed_words), size_of, end
        self._cache: tuple[int, list[list[int]]] = (-1, [])

    def positions(self, lo: int) -> list[int]:
        span = self.bs * self.window
        w, j = divmod(lo, span)
        if self._cache[0] != w:
            lengths = [self.size_of(p) for p in range(w * span, min((w + 1) * span, self.end))]
            seed = int(np.random.SeedSequence([*self.seed_words, w]).generate_state(1)[0])
            self._cache = (w, [[w * span + i for i in b] for b in bucket_batches(lengths, self.bs, self.window, seed)])
        return self._cache[1][j // self.bs]
