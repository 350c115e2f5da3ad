"""Pure index planning for the shard reader: which sample goes to which rank, worker, batch.

Nothing here reads data.  Every function maps integers to integers, so the
exact batch sequence of any rank, and the set of samples consumed after ``k``
batches, can be computed anywhere (the main process, a loader worker, a test,
a job restarted with a different world size) without touching a shard.

Vocabulary:
  virtual index  a sample's position in the split's manifest order: shard ``i``
                 owns ``[starts[i], starts[i] + num_samples[i])``.
  order          the epoch's (remaining) samples as virtual indices, in plan order.
  slot           one position of a rank's batches: a virtual index, or ``PAD`` (-1)
                 for an eval filler that keeps ranks' batch counts equal.
  segment        a stretch of one epoch run with one (world_size, num_workers,
                 batch_size, shuffle_buffer); ``consumed`` batches of it were yielded
                 on every rank (ranks step in lockstep).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

PAD = -1
Mode = Literal["train", "eval"]


@dataclass(frozen=True)
class Segment:
    world_size: int
    num_workers: int  # DataLoader worker processes; 0 = read in the main process
    batch_size: int
    shuffle_buffer: int
    consumed: int = 0  # batches yielded to the caller, on every rank

    @property
    def streams(self) -> int:
        """Number of logical worker streams a rank's batches are dealt to."""
        return max(1, self.num_workers)

    def to_json(self) -> dict:
        return asdict(self)


def shard_starts(counts: Sequence[int]) -> np.ndarray:
    """Stage 1: virtual index of each shard's first sample (plus the total at the end)."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))])


def epoch_order(counts: Sequence[int], seed: int, epoch: int) -> np.ndarray:
    """Stage 2: the epoch's virtual order: the samples of the shards in a seeded shard permutation."""
    starts = shard_starts(counts)
    perm = np.random.default_rng([seed, epoch]).permutation(len(counts))
    parts = [np.arange(starts[i], starts[i + 1], dtype=np.int64) for i in perm]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def num_batches(n: int, seg: Segment, mode: Mode) -> int:
    """Batches per rank for ``n`` samples left in the epoch: equal on every rank by construction."""
    if mode == "train":
        return (n // seg.world_size) // seg.batch_size
    per_rank = -(-n // seg.world_size)
    return -(-per_rank // seg.batch_size)


def rank_slots(order: np.ndarray, rank: int, seg: Segment, mode: Mode) -> np.ndarray:
    """Stage 3: the rank's contiguous range of ``order``, cut or padded to whole batches.

    train: ``L = n // world_size`` samples per rank (the < world_size remainder is
    dropped), then the last partial batch is dropped (same size on every rank).
    eval: ceil-sized ranges; the short tail is padded with ``PAD`` to the common
    number of batches, so each real sample appears exactly once.
    """
    n, ws, bs = len(order), seg.world_size, seg.batch_size
    size = n // ws if mode == "train" else -(-n // ws)
    mine = order[rank * size:(rank + 1) * size]
    want = num_batches(n, seg, mode) * bs
    if len(mine) >= want:
        return mine[:want]
    return np.concatenate([mine, np.full(want - len(mine), PAD, np.int64)])


def worker_slots(slots: np.ndarray, worker: int, seg: Segment) -> np.ndarray:
    """Stage 4: the whole batches ``worker, worker + W, ...`` of the rank (DataLoader round-robin)."""
    batches = slots.reshape(-1, seg.batch_size)
    return batches[worker::seg.streams].reshape(-1)


def block_perm(seed: int, epoch: int, rank: int, worker: int, block: int, size: int, segment: int) -> np.ndarray:
    """The emission order of one shuffle block (segment 0 keys are exactly [seed, epoch, rank, worker, block])."""
    key = [seed, epoch, rank, worker, block] + ([segment] if segment else [])
    return np.random.default_rng(key).permutation(size)


def shuffled(slots: np.ndarray, seed: int, epoch: int, rank: int, worker: int, seg: Segment,
             segment: int, mode: Mode) -> np.ndarray:
    """Stage 5: block shuffle: each run of ``shuffle_buffer`` slots is emitted in a seeded permutation.

    Position-addressable: emitted slot ``p`` lives in block ``p // shuffle_buffer``.
    """
    if mode == "eval":
        return slots
    out = slots.copy()
    for b, lo in enumerate(range(0, len(slots), seg.shuffle_buffer)):
        block = slots[lo:lo + seg.shuffle_buffer]
        out[lo:lo + len(block)] = block[block_perm(seed, epoch, rank, worker, b, len(block), segment)]
    return out


def worker_stream(order: np.ndarray, rank: int, worker: int, seg: Segment, *, seed: int, epoch: int,
                  segment: int, mode: Mode) -> np.ndarray:
    """Stages 3-5 together: the slots worker ``worker`` of ``rank`` emits, in emission order."""
    slots = worker_slots(rank_slots(order, rank, seg, mode), worker, seg)
    return shuffled(slots, seed, epoch, rank, worker, seg, segment, mode)


def batches_before(k: int, worker: int, streams: int) -> int:
    """How many of the first ``k`` rank batches come from ``worker`` (batch j is from worker j % W)."""
    return max(0, -(-(k - worker) // streams))


def rank_batches(order: np.ndarray, rank: int, seg: Segment, *, seed: int, epoch: int, segment: int,
                 mode: Mode) -> list[np.ndarray]:
    """The rank's exact batch sequence for one segment (what the DataLoader yields, in order)."""
    per_worker = [worker_stream(order, rank, w, seg, seed=seed, epoch=epoch, segment=segment, mode=mode)
                  .reshape(-1, seg.batch_size) for w in range(seg.streams)]
    total = num_batches(len(order), seg, mode)
    return [per_worker[j % seg.streams][j // seg.streams] for j in range(total)]


def consumed_samples(order: np.ndarray, seg: Segment, *, seed: int, epoch: int, segment: int,
                     mode: Mode) -> np.ndarray:
    """Virtual indices yielded on all ranks after ``seg.consumed`` batches (pads excluded)."""
    taken = []
    for rank in range(seg.world_size):
        for w in range(seg.streams):
            n = batches_before(seg.consumed, w, seg.streams) * seg.batch_size
            taken.append(worker_stream(order, rank, w, seg, seed=seed, epoch=epoch, segment=segment,
                                       mode=mode)[:n])
    got = np.concatenate(taken) if taken else np.zeros(0, np.int64)
    return got[got != PAD]


def segment_orders(counts: Sequence[int], segments: Sequence[Segment], *, seed: int, epoch: int,
                   mode: Mode) -> list[np.ndarray]:
    """The order each segment plans over: the epoch order minus everything earlier segments consumed."""
    order = epoch_order(counts, seed, epoch)
    orders = [order]
    for i, seg in enumerate(segments[:-1]):
        done = consumed_samples(order, seg, seed=seed, epoch=epoch, segment=i, mode=mode)
        order = order[~np.isin(order, done)]
        orders.append(order)
    return orders


def locate(index: int, starts: np.ndarray) -> tuple[int, int]:
    """Virtual index -> (shard position in the manifest's split list, sample ordinal inside the shard)."""
    shard = int(np.searchsorted(starts, index, side="right")) - 1
    return shard, int(index - starts[shard])
