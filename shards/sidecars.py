"""Sidecars and dataset assets: what later passes add to a shard set without rewriting it.

A **sidecar** is a named set of tars aligned with the main shards, one per main shard it
covers, same file name, samples keyed by the same study key::

    <shards_dir>/sidecars/<name>/sidecar.json        provenance + per-tar sha256 (written last)
    <shards_dir>/sidecars/<name>/train-000000.tar    <key>.<name>.json | <key>.<name>.safetensors ...

Annotation overlays (topics, reasoning chains: ``kind="annotation"``, JSON members) and
per-study tensors (KG subgraphs, segmenter masks: ``kind="tensors"``, safetensors members)
are both sidecars.  A sidecar may cover only some splits (reasoning data exists for the
training split only) and may leave out single studies; the reader joins by key, so a
study without an entry simply has none.  ``reads_splits`` records which splits the producer
*learned from* (what it read beyond the study itself), and every test of leak-freedom
checks it.

A **dataset asset** is a named folder of files about the whole dataset (topic ontology,
knowledge graph, vision-token bank, perception tree)::

    <shards_dir>/assets/<name>/asset.json    producer, version, reads_splits, sha256 per file
    <shards_dir>/assets/<name>/<files>

Both are published atomically (a temp dir renamed into place, provenance file last) and
their digests enter the dataset fingerprint (:func:`dataset_fingerprint`) that loader
state and checkpoints keep, so resuming on different annotations is refused.
Nothing here unpickles: JSON and safetensors only.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from configs.atomic import atomic_write_json, fsync_dir

SIDECARS_DIR, ASSETS_DIR = "sidecars", "assets"
SIDECAR_JSON, ASSET_JSON = "sidecar.json", "asset.json"


class SidecarError(RuntimeError):
    """A sidecar or asset is missing, unreadable or disagrees with its recorded checksums."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class SidecarInfo:
    name: str
    kind: str  # "annotation" | "tensors"
    producer: dict[str, Any]
    version: str
    reads_splits: list[str]  # what the producer learned from, beyond each study itself
    shards: dict[str, dict[str, Any]]  # main shard file -> {"num_entries", "sha256"}
    root: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def path(self, shard_file: str) -> Path:
        return Path(self.root) / shard_file

    def digest(self) -> str:
        body = {k: getattr(self, k) for k in ("name", "kind", "producer", "version", "reads_splits", "shards")}
        return _sha256_bytes(json.dumps(body, sort_keys=True).encode())


@dataclass
class Asset:
    name: str
    root: Path
    meta: dict[str, Any]

    def path(self, file: str) -> Path:
        return self.root / file

    def read_bytes(self, file: str) -> bytes:
        if file not in self.meta["files"]:
            raise SidecarError(f"asset '{self.name}' has no file '{file}' (it has {sorted(self.meta['files'])})")
        return self.path(file).read_bytes()

    def read_json(self, file: str) -> Any:
        return json.loads(self.read_bytes(file))

    def digest(self) -> str:
        return _sha256_bytes(json.dumps(self.meta, sort_keys=True).encode())


# ------------------------------------------------------------------------------ reading
def load_sidecars(shards_dir: str | os.PathLike) -> dict[str, SidecarInfo]:
    """Every published sidecar of a shard set (unpublished temp dirs are ignored)."""
    base = Path(shards_dir) / SIDECARS_DIR
    out: dict[str, SidecarInfo] = {}
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir()):
        meta_path = d / SIDECAR_JSON
        if d.name.startswith(".") or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
            out[d.name] = SidecarInfo(meta["name"], meta["kind"], meta["producer"], meta["version"],
                                      list(meta["reads_splits"]), dict(meta["shards"]), str(d), meta.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SidecarError(f"sidecar {meta_path} is unreadable ({err!r}): rebuild it") from None
    return out


def load_assets(shards_dir: str | os.PathLike) -> dict[str, Asset]:
    base = Path(shards_dir) / ASSETS_DIR
    out: dict[str, Asset] = {}
    if base.is_dir():
        for d in sorted(base.iterdir()):
            if not d.name.startswith(".") and (d / ASSET_JSON).is_file():
                out[d.name] = load_asset(d)
    return out


def load_asset(directory: str | os.PathLike, verify: bool = True) -> Asset:
    d = Path(directory)
    try:
        meta = json.loads((d / ASSET_JSON).read_text())
    except (OSError, ValueError) as err:
        raise SidecarError(f"asset {d}: {ASSET_JSON} unreadable ({err})") from None
    if verify:
        for file, digest in meta.get("files", {}).items():
            p = d / file
            if not p.is_file():
                raise SidecarError(f"asset {d}: file {file} is missing")
            if _sha256_file(p) != digest:
                raise SidecarError(f"asset {d}: file {file} differs from its recorded sha256 (edited or corrupt)")
    return Asset(meta.get("name", d.name), d, meta)


def dataset_fingerprint(base: str, sidecars: dict[str, SidecarInfo], assets: dict[str, Asset]) -> str:
    """The shard set's fingerprint extended by every sidecar and asset in use (base alone when none)."""
    if not sidecars and not assets:
        return base
    h = hashlib.sha256(base.encode())
    for name in sorted(sidecars):
        h.update(f"sidecar:{name}:{sidecars[name].digest()}".encode())
    for name in sorted(assets):
        h.update(f"asset:{name}:{assets[name].digest()}".encode())
    return h.hexdigest()


def index_tar(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> {suffix: (data offset, size)} by scanning tar headers only."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if m.isfile():
                stem, _, suffix = m.name.partition(".")
                out.setdefault(stem, {})[suffix] = (m.offset_data, m.size)
    return out


# ------------------------------------------------------------------------------ writing
def _publish_dir(tmp: Path, final: Path) -> None:
    """Swap ``tmp`` into ``final`` (the old one, if any, is removed only after the swap)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_asset(shards_dir: str | os.PathLike, name: str, files: dict[str, bytes], *, producer: dict[str, Any],
                version: str, reads_splits: list[str], meta: Optional[dict[str, Any]] = None) -> Asset:
    """Publish a dataset asset (replacing an older one of the same name)."""
    base = Path(shards_dir) / ASSETS_DIR
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    digests = {}
    for file, data in sorted(files.items()):
        (tmp / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp / file).write_bytes(data)
        digests[file] = _sha256_bytes(data)
    atomic_write_json(tmp / ASSET_JSON, {"name": name, "producer": producer, "version": version,
                                         "reads_splits": sorted(reads_splits), "files": digests,
                                         "meta": meta or {}, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime())})
    _publish_dir(tmp, base / name)
    return load_asset(base / name)


def copy_assets(shards_dir: str | os.PathLike, names: list[str], dest: str | os.PathLike) -> list[str]:
    """Copy the named assets (verified) into ``dest/assets/`` (an export directory)."""
    found = load_assets(shards_dir)
    for name in names:
        if name not in found:
            raise SidecarError(f"{shards_dir}: no asset '{name}' (have {sorted(found)}): build it first")
        target = Path(dest) / ASSETS_DIR / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(found[name].root, target)
    return names


MemberFn = Callable[[Any, Any], Optional[dict[str, bytes]]]  # (DecodedSample, context) -> {suffix: bytes}


def write_sidecar_shard(make_members: MemberFn, context: Any, shards_dir: str, shard: dict[str, Any],
                        tmp_dir: str) -> dict[str, Any]:
    """One task: read one main shard, compute each study's members, write the aligned sidecar tar."""
    return write_sidecar_shards(make_members, context, shards_dir, [shard], tmp_dir)[0]


def write_sidecar_shards(make_members: MemberFn, context: Any, shards_dir: str, shards: list[dict[str, Any]],
                         tmp_dir: str, skip_bad_images: bool = False) -> list[dict[str, Any]]:
    """One task over several main shards: the manifest is read once, each shard gets its aligned tar."""
    from shards.manifest import load_manifest

    manifest = load_manifest(shards_dir)
    by_file = {s.file: s for s in manifest.shards}
    return [_write_one(make_members, context, manifest, by_file[s["file"]], tmp_dir, skip_bad_images)
            for s in shards]


def _write_one(make_members: MemberFn, context: Any, manifest, info, tmp_dir: str,
               skip_bad_images: bool = False) -> dict[str, Any]:
    from shards.adapter_kit import SkipLog
    from shards.reader import iter_decoded

    out = Path(tmp_dir) / info.file
    entries = 0
    skips = SkipLog() if skip_bad_images else None
    with tarfile.open(out, "w") as tar:
        for sample in iter_decoded(manifest, info, image_skips=skips):
            members = make_members(sample, context)
            if not members:
                continue
            entries += 1
            for suffix, data in sorted(members.items()):
                ti = tarfile.TarInfo(f"{sample.key}.{suffix}")
                ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
                tar.addfile(ti, io.BytesIO(data))
    return {"file": info.file, "num_entries": entries, "sha256": _sha256_file(out),
            "skipped": skips.to_json() if skips is not None else None}


def task_batches(items: list, parallelism: int, tasks_per_worker: int = 2,
                 weights: Optional[list[float]] = None) -> list[list]:
    """``items`` cut into about ``tasks_per_worker`` contiguous batches per worker, of near-equal total
    ``weights`` (e.g. studies per shard): few tasks, since each pays the pool's per-task overhead and
    unpacks the shared context once, yet balanced, so no worker is left with the tail alone."""
    if not items:
        return []
    n = min(len(items), max(1, parallelism * tasks_per_worker))
    w = list(weights) if weights is not None else [1.0] * len(items)
    total, acc = float(sum(w)) or 1.0, 0.0
    out: list[list] = [[] for _ in range(n)]
    for item, wi in zip(items, w):
        out[min(n - 1, int((acc + wi / 2) * n / total))].append(item)
        acc += wi
    return [b for b in out if b]


def build_sidecar(shards_dir: str | os.PathLike, name: str, *, kind: str, producer: dict[str, Any], version: str,
                  reads_splits: list[str], splits: list[str], make_members: MemberFn, context: Any = None,
                  pool=None, meta: Optional[dict[str, Any]] = None, tasks_per_worker: int = 2,
                  skip_bad_images: bool = False) -> SidecarInfo:
    """Compute a sidecar over the shards of ``splits`` on ``pool``; publish it atomically.

    The shards are batched into about ``tasks_per_worker`` tasks per worker of the pool (see
    :func:`task_batches`); ``context`` is shipped to the workers once (the pool's ``shared``).

    ``make_members(sample, context)`` must be a module-level function (it runs in tasks) that
    returns ``{suffix: bytes}`` for the study (suffixes start with ``name.``) or None to skip it.
    ``skip_bad_images``: a study whose stored image cannot be used (shards/imageio.py) gets no entry
    and is counted by reason (``meta.skipped`` of ``sidecar.json``) instead of stopping the pass.
    """
    from shards.adapter_kit import SkipLog

    from configs.parallel import SerialPool
    from shards.manifest import load_manifest

    root = Path(shards_dir).resolve()
    manifest = load_manifest(root)
    base = root / SIDECARS_DIR
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    chosen = [s for s in manifest.shards if s.split in splits]
    pool = pool or SerialPool()
    batches = task_batches([{"file": s.file} for s in chosen], getattr(pool, "parallelism", 1), tasks_per_worker,
                           weights=[s.num_samples for s in chosen])
    results = {}
    skips = SkipLog()
    try:
        for _, batch in pool.map_unordered(write_sidecar_shards,
                                           [(str(root), b, str(tmp), skip_bad_images) for b in batches],
                                           shared=(make_members, context)):
            for res in batch:
                results[res["file"]] = {"num_entries": res["num_entries"], "sha256": res["sha256"]}
                skips.merge(res.get("skipped") or {})
        if skip_bad_images:
            meta = {**(meta or {}), "skipped": skips.to_json()}
            if skips.counts:
                print(f"{name}: skipped {sum(skips.counts.values())} studies whose image cannot be used: "
                      f"{dict(skips.counts)}; e.g. {next(iter(skips.examples.values()))[0]}", flush=True)
        atomic_write_json(tmp / SIDECAR_JSON, {
            "name": name, "kind": kind, "producer": producer, "version": version,
            "reads_splits": sorted(reads_splits), "splits": sorted(splits), "base_fingerprint": manifest.fingerprint,
            "shards": dict(sorted(results.items())), "meta": meta or {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        _publish_dir(tmp, base / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_sidecars(root)[name]
