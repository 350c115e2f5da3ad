"""``rrg shards masks``: cache a segmenter's masks for every study, once, on parallel Ray tasks.

Input: a built shard set (its manifest).  Output: a new shard set in
``data.masks.out_dir`` (default ``<shards_dir>-masks``) with the same shard
files, keys and members, except ``<key>.masks.bin`` (bit-packed + zlib,
``shards/masks.py``), which now holds the model's masks for view 0 (the
frontal view under every adapter's view policy), and the record's ``masks``
entry (shape, channel names, bytes, ``producer``).  Any drawn masks of the
source are replaced.  The manifest records the producer (backend, model file
digest, channels, threshold, input size) in ``preprocess.masks`` and the
source fingerprint, so the fingerprint changes with the model; the streaming
reader delivers the new masks as ``DecodedSample.masks`` with their channel
names, so a family reads them in place of the demo's.

One task per shard (the writer's task runner); an existing output shard
whose sidecar matches the plan and settings is kept (re-running finishes).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shards.config import DataConfig, MasksConfig
from shards.manifest import Manifest, ShardInfo, file_sha256, load_manifest
from shards.masks import ENCODING, encode_masks
from shards.writer import _TMP_MARK, _atomic_write_json, _digest, _remove_leftovers, _run_tasks, _sidecar, \
    shard_is_complete


def producer(cfg: MasksConfig) -> dict[str, Any]:
    """What determines the masks: recorded in every record, the manifest and the fingerprint."""
    path = os.path.abspath(cfg.path)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    digest = _digest([file_sha256(f) for f in files if os.path.isfile(f)])
    from shards.segmenter import load_segmenter

    seg = load_segmenter(cfg.backend, cfg.path, cfg.channels, cfg.input_size)
    return {"backend": cfg.backend, "model": os.path.basename(path.rstrip("/")), "model_sha256": digest,
            "channels": seg.channels, "input_size": seg.input_size, "threshold": cfg.threshold, "view": 0}


def read_samples(path: str) -> "OrderedDict[str, dict[str, bytes]]":
    """A shard tar -> {key: {ext: bytes}} in tar order (no pickles: raw member bytes only)."""
    samples: "OrderedDict[str, dict[str, bytes]]" = OrderedDict()
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if member.isfile():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def mask_sample(sample: dict[str, bytes], segmenter: Any, threshold: float, prod: dict[str, Any]) -> dict[str, bytes]:
    """One sample with its masks replaced by the segmenter's on view 0."""
    record = json.loads(sample["json"])
    view = record["views"][0]
    image = np.asarray(Image.open(io.BytesIO(sample[view["member"]])))
    masks = segmenter(image) >= threshold
    data = encode_masks(masks)
    record["masks"] = {"member": "masks.bin", "encoding": ENCODING, "shape": list(masks.shape),
                       "channels": list(segmenter.channels), "num_bytes": len(data), "producer": prod}
    out = dict(sample)
    out["masks.bin"] = data
    out["json"] = json.dumps(record).encode()
    return out


def mask_shard(spec: dict[str, Any], shard: dict[str, Any], out_dir: str, cfg: MasksConfig,
               settings_digest: str) -> dict[str, Any]:
    """Ray task: read one source shard, segment every study, write the shard + sidecar atomically."""
    import torch
    from webdataset import TarWriter

    from shards.segmenter import load_segmenter

    torch.set_num_threads(1)
    segmenter = load_segmenter(cfg.backend, cfg.path, cfg.channels, cfg.input_size)
    out = Path(out_dir)
    final, tmp = out / shard["file"], out / f"{shard['file']}{_TMP_MARK}{os.getpid()}"
    total = count = 0
    try:
        with open(tmp, "wb") as f:
            writer = TarWriter(f, encoder=False, mtime=0.0)
            for key, sample in read_samples(spec["src"][shard["file"]]).items():
                masked = mask_sample(sample, segmenter, cfg.threshold, spec["producer"])
                writer.write({"__key__": key, **masked})
                total, count = total + len(masked["masks.bin"]), count + 1
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    info = {"file": shard["file"], "split": shard["split"], "num_samples": count, "num_bytes": final.stat().st_size,
            "sha256": file_sha256(final), "mask_bytes": total, "plan": _digest(shard["indices"]),
            "settings": settings_digest}
    _atomic_write_json(_sidecar(out, shard["file"]), info)
    return info


def masks_from_config(data_cfg: DataConfig, src: str | None = None, out_dir: str | None = None) -> Manifest:
    """Segment every study of the shard set at ``src`` (default ``data.shards_dir``); return the new manifest."""
    cfg = data_cfg.masks
    if not cfg.path:
        from configs.schema import ConfigError

        raise ConfigError("data.masks.path", "set the segmentation model (directory or TorchScript file)")
    source = load_manifest(src or data_cfg.shards_dir)
    out = Path(out_dir or cfg.out_dir or f"{str(source.root).rstrip('/')}-masks").resolve()
    if out == Path(source.root).resolve():
        raise ValueError(f"masks output {out} must differ from the source shards")
    out.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    prod = producer(cfg)
    settings_digest = _digest({"source": source.fingerprint, "producer": prod})
    plan = [{"file": s.file, "split": s.split, "indices": [source.fingerprint, s.sha256]} for s in source.shards]
    infos = {s["file"]: i for s in plan if (i := shard_is_complete(out, s, settings_digest)) is not None}
    todo = [s for s in plan if s["file"] not in infos]
    spec = {"producer": prod, "src": {s.file: str(source.path_of(s)) for s in source.shards}}
    if todo:
        for info in _run_tasks(spec, todo, out, cfg, settings_digest, fn=mask_shard):
            infos[info["file"]] = info
    shards = [ShardInfo(**{k: infos[s["file"]][k] for k in ("file", "split", "num_samples", "num_bytes", "sha256")})
              for s in plan]
    n = sum(s.num_samples for s in shards)
    mask_total = sum(int(infos[s["file"]]["mask_bytes"]) for s in plan)
    extra = {k: v for k, v in source.extra.items() if k not in ("mask_bytes",)}
    extra.update(mask_bytes={"total": mask_total, "mean_per_study": mask_total / max(n, 1)},
                 masks_producer=prod, source_fingerprint=source.fingerprint, source_dir=str(source.root))
    manifest = Manifest(out, source.adapter, {**source.preprocess, "masks": prod}, shards, extra=extra)
    manifest.write()
    return manifest
