"""The shard manifest: the one file that says what a shard set holds.

``<shards_dir>/manifest.json``::

    {
      "format_version": 1,
      "adapter": {"name": "demo", "args": {...}},
      "preprocess": {"image_size": 512, "image_format": "png", ...},
      "fingerprint": "<sha256 over adapter, preprocess and every shard's checksum>",
      "splits": {"train": 1600, "validate": 200, "test": 200},
      "shards": [{"file": "train-000000.tar", "split": "train", "num_samples": 125,
                  "num_bytes": 1234567, "sha256": "..."}, ...],
      "mask_bytes": {"total": ..., "mean_per_study": ...},
      "created": "2026-11-22T05:00:00Z"
    }

It is written atomically (temp file + rename) after every shard is complete,
so a manifest that exists always describes finished shards.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configs.digest import file_sha256  # noqa: F401  (shards, sidecars and tests import it from here)
from shards.records import FORMAT_VERSION

MANIFEST_NAME = "manifest.json"


class ManifestError(RuntimeError):
    """The manifest is missing, unreadable, or disagrees with the shards."""


@dataclass
class ShardInfo:
    file: str
    split: str
    num_samples: int
    num_bytes: int
    sha256: str


@dataclass
class Manifest:
    root: Path
    adapter: dict[str, Any]
    preprocess: dict[str, Any]
    shards: list[ShardInfo]
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    sidecars: dict[str, Any] = field(default_factory=dict)  # name -> shards.sidecars.SidecarInfo
    assets: dict[str, Any] = field(default_factory=dict)  # name -> shards.sidecars.Asset

    @property
    def dataset_fingerprint(self) -> str:
        """The shards' fingerprint extended by the sidecars and assets beside them (what checkpoints keep)."""
        from shards.sidecars import dataset_fingerprint

        return dataset_fingerprint(self.fingerprint, self.sidecars, self.assets)

    def split_shards(self, split: str) -> list[ShardInfo]:
        found = [s for s in self.shards if s.split == split]
        if not found:
            raise ManifestError(
                f"{self.root / MANIFEST_NAME}: no shards for split '{split}' "
                f"(splits present: {sorted({s.split for s in self.shards})})"
            )
        return found

    def path_of(self, shard: ShardInfo) -> Path:
        return self.root / shard.file

    @property
    def splits(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.split] = out.get(s.split, 0) + s.num_samples
        return out

    def compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.adapter, self.preprocess], sort_keys=True, default=str).encode())
        for s in sorted(self.shards, key=lambda s: s.file):
            h.update(f"{s.file}:{s.num_samples}:{s.sha256}".encode())
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "adapter": self.adapter,
            "preprocess": self.preprocess,
            "fingerprint": self.fingerprint or self.compute_fingerprint(),
            "splits": self.splits,
            "shards": [vars(s) for s in self.shards],
            **self.extra,
        }

    def write(self) -> Path:
        """Atomically publish ``manifest.json`` in ``root``."""
        self.fingerprint = self.compute_fingerprint()
        path = self.root / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path


def _disagreeing(m: "Manifest", limit: int = 3) -> str:
    """The listed shards whose file disagrees with its entry (missing, other size, other sha256), named."""
    import hashlib

    bad = []
    for shard in m.shards:
        f = m.root / shard.file
        if not f.is_file():
            bad.append(f"{shard.file} missing")
        elif f.stat().st_size != shard.num_bytes:
            bad.append(f"{shard.file} is {f.stat().st_size} bytes, listed {shard.num_bytes}")
        else:
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            if h.hexdigest() != shard.sha256:
                bad.append(f"{shard.file} sha256 {h.hexdigest()[:12]}..., listed {shard.sha256[:12]}...")
        if len(bad) > limit:
            break
    return ": " + "; ".join(bad[:limit]) + (" ..." if len(bad) > limit else "") if bad else ""


def load_manifest(shards_dir: str | os.PathLike, cache: bool = True) -> Manifest:
    """The manifest at ``shards_dir``; an ``s3://`` (fsspec) URL is first synced into the local cache
    (shards streamed and sha256-verified, retried; see shards/storage.py), or with ``cache=False``
    (``data.cache: false``) only its manifest, the reader streaming each shard when it needs it."""
    from shards.storage import StorageError, is_remote, sync_shards

    if is_remote(shards_dir):
        try:
            shards_dir = sync_shards(str(shards_dir), shards=cache)
        except FileNotFoundError:
            raise ManifestError(f"no shard manifest at {shards_dir}/manifest.json: build the shards first "
                                f"(`rrg shards build CONFIG --out {shards_dir}`)") from None
        except StorageError as err:
            raise ManifestError(str(err)) from None
    root = Path(shards_dir)
    path = root / MANIFEST_NAME if root.is_dir() or not root.suffix else root
    root = path.parent
    if not path.is_file():
        raise ManifestError(
            f"no shard manifest at {path}: build the shards first (`rrg shards build CONFIG`) "
            f"or point data.shards_dir at a finished build"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ManifestError(f"manifest {path} is unreadable: {err}") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"manifest {path} has format_version {data.get('format_version')!r}, "
            f"this rrg reads {FORMAT_VERSION}: rebuild the shards"
        )
    try:
        shards = [ShardInfo(**s) for s in data["shards"]]
        known = {"format_version", "adapter", "preprocess", "fingerprint", "splits", "shards"}
        m = Manifest(root, data["adapter"], data["preprocess"], shards, data["fingerprint"],
                     {k: v for k, v in data.items() if k not in known})
    except (KeyError, TypeError) as err:
        raise ManifestError(f"manifest {path} is malformed ({err!r}): rebuild the shards") from None
    if m.compute_fingerprint() != m.fingerprint:
        raise ManifestError(f"manifest {path}: fingerprint does not match its shard list (edited by hand?)"
                            f"{_disagreeing(m)}; rebuild the shards (`rrg shards build`), never reuse it as is")
    from shards.sidecars import SidecarError, load_assets, load_sidecars

    try:
        m.sidecars, m.assets = load_sidecars(root), load_assets(root)
    except SidecarError as err:
        raise ManifestError(str(err)) from None
    return m


def iter_json_records(manifest: Manifest, split: str):
    """The ``.json`` study records of a split, in shard order, without decoding images.

    For driver-side passes over text (training a tokenizer, label priors, baselines).
    """
    import tarfile

    from shards.reader import ShardFiles

    files = ShardFiles(str(manifest.root), "checksum")  # local: the file; streamed s3://: a verified spool copy
    for shard in manifest.split_shards(split):
        with tarfile.open(files.path(shard), "r") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    yield json.loads(tar.extractfile(member).read())
