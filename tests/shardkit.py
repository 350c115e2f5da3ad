"""Tiny real WebDataset shard sets for reader tests, with optional injected damage.

Shards are written with ``webdataset.TarWriter`` in the member layout of
``shards/records.py`` and published with ``Manifest(...).write()``; damage is
applied before the manifest is computed (so verification passes and the reader
has to cope), unless a test damages a file afterwards on purpose.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from safetensors.numpy import save

from shards.manifest import Manifest, ShardInfo, file_sha256
from shards.masks import encode_masks


def png_bytes(seed: int, size: int = 32) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def sample_key(split: str, shard: int, i: int) -> str:
    return f"{split}{shard:02d}_{i:03d}"


def write_shard_set(root: str | os.PathLike, sizes: dict[str, list[int]], *, corrupt: set[str] = frozenset(),
                    missing_view: set[str] = frozenset(), truncate: dict[str, int] | None = None,
                    image_size: int = 32, override_view: dict[str, bytes] | None = None) -> Manifest:
    """Write ``sizes[split][i]`` samples into shard ``<split>-00000i.tar`` and publish the manifest.

    corrupt: keys whose view0.png bytes are garbage; missing_view: keys written without view0.png;
    override_view: key -> the bytes stored as its view0.png (a hostile image, an empty file);
    truncate: shard file -> number of samples kept whole; the tar is cut inside the next sample's first member.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    infos = []
    for split, counts in sizes.items():
        for s, n in enumerate(counts):
            name = f"{split}-{s:06d}.tar"
            with wds.TarWriter(str(root / name)) as tw:
                for i in range(n):
                    key = sample_key(split, s, i)
                    with_masks = i % 3 == 0
                    record = {"study_id": key, "patient_id": f"p{key}", "split": split,
                              "report": {"text": f"FINDINGS: study {key}."}, "labels": {},
                              "views": [{"file": "view0.png"}],
                              "masks": {"channels": ["lung", "heart"], "shape": [2, 32, 32]} if with_masks else None}
                    sample = {"__key__": key, "json": json.dumps(record).encode()}
                    if key not in missing_view:
                        sample["view0.png"] = b"\x89PNG garbage" if key in corrupt else png_bytes(zlib.crc32(key.encode()), image_size)
                    if override_view and key in override_view:
                        sample["view0.png"] = override_view[key]
                    if with_masks:
                        sample["masks.bin"] = encode_masks(np.ones((2, 32, 32), bool))
                    if i % 4 == 1:
                        sample["kg.safetensors"] = save({"node_ids": np.arange(3, dtype=np.int64),
                                                         "edge_index": np.array([[0, 1], [1, 2]], np.int64)})
                    tw.write(sample)
            if truncate and name in truncate:
                _cut(root / name, sample_key(split, s, truncate[name]))
            infos.append(ShardInfo(name, split, n, os.path.getsize(root / name), file_sha256(root / name)))
    manifest = Manifest(root, {"name": "shardkit", "args": {}}, {"image_size": image_size, "image_format": "png"}, infos)
    manifest.write()
    return manifest


def _cut(path: Path, first_lost_key: str) -> None:
    """Truncate a tar in the middle of the data of the first member of ``first_lost_key``."""
    with tarfile.open(path) as tf:
        member = next(m for m in tf if m.name.startswith(first_lost_key + "."))
    with open(path, "r+b") as f:
        f.truncate(member.offset_data + member.size // 2)


def resume_and_dump(jobs_path: str, out_path: str) -> None:
    """In a fresh process: for each job, restore a loader from a JSON state and dump the next batches' keys."""
    from shards.manifest import load_manifest
    from shards.reader import ShardLoader

    results = []
    for job in json.loads(Path(jobs_path).read_text()):
        loader = ShardLoader(load_manifest(job["root"]), "train", **job["kwargs"])
        loader.load_state_dict(job["state"])
        got: list[list[str]] = []
        while len(got) < job["batches"]:
            for batch in loader:
                got.append(batch["keys"])
                if len(got) == job["batches"]:
                    break
        results.append(got)
    Path(out_path).write_text(json.dumps(results))


def all_keys(split: str, counts: list[int]) -> list[str]:
    return [sample_key(split, s, i) for s, n in enumerate(counts) for i in range(n)]


def png_bomb(path: str | os.PathLike, side: int = 24_000) -> Path:
    """A valid 8-bit grey PNG of ``side`` x ``side`` black pixels (24,000: 576 MP, ~560 KB on disk),
    written chunk by chunk (the PNG spec's IHDR / IDAT / IEND with zlib rows) without ever holding
    the image: what a decompression bomb among real radiographs looks like."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte 0 + one byte per pixel
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)))
        data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
        f.write(chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path
