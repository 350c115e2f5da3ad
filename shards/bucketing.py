"""Length bucketing: batches of similar-length rows, so long reasoning chains batch efficiently.

Chains are several times longer than reports and vary a lot between studies; a batch padded to
its longest row wastes most of its tokens when lengths mix.  :func:`bucket_batches` keeps the
stream order at the scale of a window (``window`` batches' worth of rows, e.g. one shuffle
buffer), sorts rows by length inside it, cuts batches, and shuffles the batch order with a
seed, so the result is a deterministic function of (lengths, batch_size, window, seed) and a
resumed run sees the same batches.  Every index appears exactly once; a short last batch stays.
"""
from __future__ import annotations

from typing import Sequence

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
