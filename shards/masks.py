"""Compact mask cache: bool (C, H, W) -> zlib(np.packbits) bytes, and back.

Anatomical masks are large flat regions, so bit-packing (8x) followed by zlib
typically lands a 512 px study with 5-7 structures at a few KB.
"""
from __future__ import annotations

import zlib

import numpy as np

ENCODING = "packbits+zlib"


def encode_masks(masks: np.ndarray, level: int = 9) -> bytes:
    if masks.ndim != 3:
        raise ValueError(f"masks must be (C, H, W), got shape {masks.shape}")
    packed = np.packbits(np.ascontiguousarray(masks, dtype=bool), axis=-1)
    return zlib.compress(packed.tobytes(), level)


def decode_masks(data: bytes, shape: tuple[int, int, int] | list[int]) -> np.ndarray:
    c, h, w = (int(v) for v in shape)
    packed_w = (w + 7) // 8
    raw = zlib.decompress(data)
    if len(raw) != c * h * packed_w:
        raise ValueError(f"mask bytes do not match shape {shape}: {len(raw)} != {c * h * packed_w}")
    packed = np.frombuffer(raw, dtype=np.uint8).reshape(c, h, packed_w)
    return np.unpackbits(packed, axis=-1, count=w).astype(bool)


def sidecar_masks(annotations: dict, members: dict[str, bytes]) -> tuple[np.ndarray, list[str]] | None:
    """Masks from a masks sidecar (``rrg shards masks``), which replace drawn masks; the first by name.

    ``annotations``: the sample's parsed ``<name>.json`` sidecar members; a masks sidecar's
    declares ``masks_member``, ``shape`` and ``channels``.  None when there is none.
    """
    for name in sorted(annotations):
        meta = annotations[name]
        if isinstance(meta, dict) and meta.get("masks_member"):
            if meta["masks_member"] not in members:
                raise ValueError(f"sidecar '{name}': missing member .{meta['masks_member']}")
            return decode_masks(members[meta["masks_member"]], meta["shape"]), list(meta["channels"])
    return None
