"""``rrg shards masks``: cache a segmenter's masks for every study, once, as a sidecar aligned by key.

The pass runs the model of ``data.passes.masks`` (shards/passes/masks/segmenter.py) on view 0 of
every study (the frontal view under every adapter's view policy), one pool
task per shard, and publishes the sidecar ``<shards_dir>/sidecars/<name>/``
(shards/sidecars.py) with, per study key::

    <key>.<name>.json        {"masks_member": "<name>.masks.bin", "encoding", "shape": [C, H, W],
                              "channels": [...], "num_bytes", "view": 0}
    <key>.<name>.masks.bin   bool masks, bit-packed + zlib (shards/masks.py): a few KB per study
    <key>.<name>.safetensors {"soft": uint8 (C, H, W)}, only with ``data.passes.masks.soft: true``
                             (probabilities quantised to 0..255)

The sidecar's provenance (backend, model file digest, channels, threshold,
input size) is in its ``sidecar.json`` and its digest enters the dataset
fingerprint, so checkpoints notice new masks.  The reader joins the sidecar
and delivers these masks as ``DecodedSample.masks`` / ``mask_channels`` in
place of any drawn masks in the shards, so model families read them unchanged.
The segmenter learns nothing from the dataset: ``reads_splits`` is empty.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from shards.config import DataConfig
from shards.passes.masks.config import MasksConfig
from shards.manifest import file_sha256, load_manifest
from shards.masks import ENCODING, encode_masks

_LOADED: dict[tuple, Any] = {}  # per process: the model is loaded once per task worker


def producer(cfg: MasksConfig) -> dict[str, Any]:
    """What determines the masks (the sidecar's provenance)."""
    from shards.passes.masks.segmenter import load_segmenter

    path = os.path.abspath(cfg.path)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    seg = load_segmenter(cfg.backend, cfg.path, cfg.channels, cfg.input_size)
    return {"name": "rrg.segment_pass", "backend": cfg.backend, "model": os.path.basename(path.rstrip("/")),
            "model_sha256": {os.path.basename(f): file_sha256(f) for f in files if os.path.isfile(f)},
            "channels": seg.channels, "input_size": seg.input_size, "threshold": cfg.threshold, "view": 0,
            "soft": cfg.soft}


def _segmenter(cfg: MasksConfig) -> Any:
    from shards.passes.masks.segmenter import load_segmenter

    key = (cfg.backend, os.path.abspath(cfg.path), tuple(cfg.channels), cfg.input_size)
    if key not in _LOADED:
        import torch

        torch.set_num_threads(1)
        _LOADED[key] = load_segmenter(*key[:2], list(key[2]), key[3])
    return _LOADED[key]


def study_members(sample: Any, cfg: MasksConfig) -> dict[str, bytes]:
    """One study's sidecar members (runs inside the pool task)."""
    segmenter = _segmenter(cfg)
    return mask_members(segmenter(sample.images[0]), segmenter.channels, cfg)


def mask_members(probs: np.ndarray, channels: list[str], cfg: MasksConfig) -> dict[str, bytes]:
    """Probabilities (C, H, W) in [0, 1] -> the sidecar members stored for one study."""
    masks = probs >= cfg.threshold
    data = encode_masks(masks)
    name = cfg.name
    meta = {"masks_member": f"{name}.masks.bin", "encoding": ENCODING, "shape": list(masks.shape),
            "channels": list(channels), "num_bytes": len(data), "view": 0}
    out = {f"{name}.json": json.dumps(meta).encode(), f"{name}.masks.bin": data}
    if cfg.soft:
        from safetensors.numpy import save

        out[f"{name}.safetensors"] = save({"soft": np.rint(probs * 255).astype(np.uint8)})
    return out


def masks_from_config(data_cfg: DataConfig, pool: Any = None, shards_dir: str | None = None) -> tuple[Any, str]:
    """Build the masks sidecar over every split; return (SidecarInfo, the new dataset fingerprint)."""
    from shards.sidecars import build_sidecar

    cfg = data_cfg.passes.masks
    if not cfg.path:
        from configs.schema import ConfigError

        raise ConfigError("data.passes.masks.path", "set the segmentation model (directory or TorchScript file)")
    root = shards_dir or data_cfg.shards_dir
    manifest = load_manifest(root)
    prod = producer(cfg)
    side = build_sidecar(root, cfg.name, kind="tensors", producer=prod, version="1", reads_splits=[],
                         splits=sorted(manifest.splits), make_members=study_members, context=cfg, pool=pool,
                         meta={"channels": prod["channels"]}, skip_bad_images=True)
    total = n = 0
    for sample_bytes in _mask_sizes(side):
        total, n = total + sample_bytes, n + 1
    print(f"masks: {n} studies, {total / max(n, 1):.0f} bytes/study (binary, packbits+zlib)")
    return side, load_manifest(root).dataset_fingerprint


def _mask_sizes(side: Any):
    import tarfile

    for file in side.shards:
        with tarfile.open(side.path(file), "r:") as tar:
            for m in tar:
                if m.name.endswith(".masks.bin"):
                    yield m.size


def command(args, ctx) -> None:
    """``rrg shards masks CONFIG [--shards DIR]``."""
    cfg = ctx.load(args)
    side, fingerprint = masks_from_config(cfg.data, ctx.pool(cfg), shards_dir=args.shards)
    print(f"masks sidecar: {side.root}  studies: {sum(s['num_entries'] for s in side.shards.values())}  "
          f"dataset fingerprint: {fingerprint[:16]}")


def generate_members(cfg, model_dir) -> tuple[Any, Any]:
    """For ``rrg generate``: the segmenter of ``data.passes.masks`` on view 0, thresholded and encoded as the
    pass does (:func:`study_members`)."""
    from shards.passes import PassInputError

    masks = cfg.data.passes.masks
    if not masks.path:
        raise PassInputError("this model reads segmenter masks (`rrg shards masks`) and the run config names no "
                             "segmenter: set data.passes.masks.path (and data.passes.masks.backend) in --config, as "
                             "for `rrg shards masks`")
    if not os.path.exists(masks.path):
        raise PassInputError(f"segmenter {masks.path} not found (data.passes.masks.path)")
    return study_members, masks
