"""``rrg bench build``: shard-build throughput as a ratio, and planning cost at MIMIC-CXR scale.

1. Rate.  A synthetic MIMIC-CXR-JPG tree of full-size (about 3000 x 2500)
   frontal JPEGs is built by the real writer on Ray tasks over all cores.
   Side by side in the same run, one core's rate of the per-study work
   (decode + resize + encode, the same functions the writer calls) is
   measured before and after the build, in one pool task: Ray runs its workers
   at nice 15, so a measurement in the (nice 0) driver would not be the same
   core on a shared machine.  Ratio = whole-build studies/s /
   (one core's studies/s x cores); 1.0 means the build is as fast as perfectly
   parallel per-study work with zero overhead (planning, tar writing,
   checksums, Ray scheduling included in the numerator's time).
2. Planning.  A metadata/split/label CSV set of ``rows`` images (377,110 like
   MIMIC-CXR-JPG), no images, is planned (``check_files: false``) in a fresh
   process: adapter index + patient splits + shard plan; prints seconds and the
   process's peak resident memory above its post-import baseline.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from shards.config import BuildConfig, DataConfig, SourceConfig

_PLAN_CHILD = r"""
import json, os, resource, sys, time
from shards.adapters import make_adapter
from shards.writer import assign_splits, plan_shards
base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024  # current RSS, KB
t0 = time.perf_counter()
a = make_adapter("mimic_cxr_jpg", {"root": sys.argv[1], "check_files": False}, 0)
entries = a.entries()
plan = plan_shards(assign_splits(entries, {}, 0), 250)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "studies": len(entries), "shards": len(plan), "peak_mb": (peak - base) / 1024}))
"""


def one_core_rate(paths: list[str], build: BuildConfig) -> float:
    """Studies/s of decode + resize + encode in this process (one core), median over the images."""
    from shards.imageio import encode_image, load_image, preprocess_image

    times = []
    for path in paths:
        t0 = time.perf_counter()
        image = preprocess_image(load_image(path), build.image_size)
        encode_image(image, build.image_format, build.jpeg_quality)
        times.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(times)


def _warm() -> int:
    import PIL.Image  # noqa: F401
    import webdataset  # noqa: F401

    import shards.writer  # noqa: F401
    time.sleep(0.5)
    return os.getpid()


def _one_core(pool, paths: list[str], build: BuildConfig) -> float:
    return next(iter(pool.map_unordered(one_core_rate, [(paths, build)])))[1]


def _warm_workers(pool, cores: int) -> None:
    """Start one Ray worker per core with the writer's imports done, outside the timed build.

    The pool comes from the caller (the CLI hands in a Ray pool: this floor does not start clusters).
    """
    list(pool.map_unordered(_warm, [()] * cores))


def bench_rate(pool, work: Path, studies: int, build: BuildConfig, cores: int) -> dict[str, float]:
    from shards.fixture_trees import make_mimic_bench
    from shards.writer import build_from_config

    root = make_mimic_bench(work / "mimic", studies)
    paths = sorted(str(p) for p in (root / "files").rglob("*.jpg"))[:4]
    _warm_workers(pool, cores)
    before = _one_core(pool, paths, build)
    per_shard = max(1, -(-studies // (2 * cores)))
    cfg = DataConfig(source=SourceConfig("mimic_cxr_jpg", {"root": str(root)}),
                     build=replace(build, samples_per_shard=per_shard, num_tasks=cores, progress=False))
    t0 = time.perf_counter()
    manifest = build_from_config(cfg, seed=0, out_dir=str(work / "shards"), pool=pool)
    elapsed = time.perf_counter() - t0
    after = _one_core(pool, paths, build)
    single = (before + after) / 2
    rate = sum(manifest.splits.values()) / elapsed
    return {"studies": sum(manifest.splits.values()), "build_s": elapsed, "build_rate": rate,
            "one_core_rate": single, "cores": cores, "ratio": rate / (single * cores)}


def bench_plan(work: Path, rows: int) -> dict[str, float]:
    from shards.fixture_trees import make_mimic_scale

    t0 = time.perf_counter()
    root = make_mimic_scale(work / "scale", rows)
    made = time.perf_counter() - t0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _PLAN_CHILD, str(root)], capture_output=True, text=True, env=env,
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"planning child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(rows=rows, csv_make_s=made)
    return out


def _print_rate(rate: dict[str, float], build: BuildConfig, cores: int) -> None:
    print(f"build benchmark: {rate['studies']} MIMIC-layout studies, full-size 3000x2500 JPEG -> "
          f"{build.image_size} px {build.image_format}, {cores} cores")
    print(f"  whole build       {rate['build_rate']:8.2f} studies/s  ({rate['build_s']:.1f} s)")
    print(f"  one core, per-study work {rate['one_core_rate']:8.2f} studies/s (decode + resize + encode)")
    print(f"  ratio build / (one core x {cores}) = {rate['ratio']:.2f}   "
          f"(load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


def bench_build(cfg, pool, studies: int = 24, rows: int = 377_110, work_dir: str | None = None,
                cores: int | None = None) -> dict[str, dict]:
    """Print and return both measurements (``cfg.data.build`` gives image size and format)."""
    cores = cores or pool.parallelism
    work = Path(tempfile.mkdtemp(prefix="rrg-bench-build-", dir=work_dir))
    try:
        rate = bench_rate(pool, work, studies, cfg.data.build, cores) if studies else {}
        if rate:
            _print_rate(rate, cfg.data.build, cores)
        if rows:
            plan = bench_plan(work, rows)
            print(f"planning {plan['rows']} metadata rows ({plan['studies']} studies, {plan['shards']} shards): "
                  f"{plan['seconds']:.1f} s, peak memory +{plan['peak_mb']:.0f} MB "
                  f"({plan['peak_mb'] * 1024 / max(plan['studies'], 1):.2f} KB/study)")
        else:
            plan = {}
        return {"rate": rate, "plan": plan}
    finally:
        shutil.rmtree(work, ignore_errors=True)
