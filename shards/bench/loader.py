"""``rrg bench loader``: loader samples/s per DataLoader worker count, measured side by side.

The machine is shared and noisy, so worker counts are interleaved within each
repeat and the table reports the median of the repeats and the ratio against
0 workers (reading in the main process).  The builder does nothing beyond the
reader's own decode (images, masks, kg, json): this is the data path alone,
without a model.  Worker start-up is timed separately and left out of the rate.
"""
from __future__ import annotations

import statistics
import time

from shards.manifest import load_manifest
from shards.reader import ShardLoader
from shards.records import DecodedSample


def _decode_only(sample: DecodedSample) -> dict:
    return {"key": sample.key}


def _measure(loader: ShardLoader, batches: int) -> tuple[float, float]:
    """(start-up seconds to the first batch, samples/s over the following ``batches`` batches)."""
    t0 = time.perf_counter()
    first, n, seen = None, 0, 0
    while n < batches + 1:
        for _ in loader:
            n += 1
            if first is None:
                first = time.perf_counter()
            else:
                seen += loader.batch_size
            if n == batches + 1:
                break
    return first - t0, seen / (time.perf_counter() - first)


def bench_loader(cfg, workers=(0, 1, 2), batches: int = 40, repeats: int = 3) -> dict[int, float]:
    """Print and return the median train-split samples/s per worker count (rank 0 of world size 1)."""
    manifest = load_manifest(cfg.data.shards_dir)  # ManifestError says how to build the shards
    rates: dict[int, list[float]] = {w: [] for w in workers}
    startup: dict[int, list[float]] = {w: [] for w in workers}
    for rep in range(repeats):
        for w in workers:
            loader = ShardLoader(manifest, cfg.data.train_split, rank=0, world_size=1,
                                 batch_size=cfg.train.micro_batch_size, seed=cfg.seed + rep, num_workers=w,
                                 shuffle_buffer=cfg.data.shuffle_buffer, builder=_decode_only,
                                 verify=cfg.data.verify, max_skip_fraction=cfg.data.max_skip_fraction,
                                 prefetch_factor=cfg.data.prefetch_factor)
            up, rate = _measure(loader, batches)
            startup[w].append(up)
            rates[w].append(rate)
    medians = {w: statistics.median(r) for w, r in rates.items()}
    base = medians.get(0) or medians[workers[0]]
    print(f"loader benchmark: {manifest.root} split={cfg.data.train_split} batch={cfg.train.micro_batch_size} "
          f"batches={batches} repeats={repeats}")
    print(f"{'workers':>8} {'samples/s':>10} {'vs 0':>6} {'start-up s':>11}")
    for w in workers:
        print(f"{w:>8} {medians[w]:>10.1f} {medians[w] / base:>6.2f} {statistics.median(startup[w]):>11.2f}")
    return medians
