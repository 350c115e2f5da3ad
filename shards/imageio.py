"""Image and mask preprocessing done once, at shard-build time.

Radiographs arrive as 8-bit or 16-bit grayscale PNGs, RGB JPEGs, or arrays.
The writer turns every view into uint8 (gray stays gray, RGB stays RGB),
resizes it so its longest side is ``image_size`` (Lanczos, computed in float
for high-bit-depth input so nothing is quantised before filtering), and
encodes it as lossless PNG or as JPEG at a given quality.  Masks are resized
with nearest-neighbour to the stored view size so they stay exactly boolean.
"""
from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

ImageFormat = Literal["png", "jpeg"]
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


def load_image(path: str) -> np.ndarray:
    """Read an image file as (H, W) uint8/uint16 or (H, W, 3) uint8, keeping the bit depth."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(img, dtype=np.uint16).copy()
        if img.mode in ("I", "F"):  # 32-bit gray: keep the values, windowing maps them later
            return np.asarray(img, dtype=np.float32).copy()
        if img.mode in ("1", "L", "LA"):
            return np.asarray(img.convert("L"), dtype=np.uint8).copy()
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_mask(path: str) -> np.ndarray:
    """Read a mask image as (H, W) bool: 0/1 and 0/255 files both work, JPEG noise is thresholded."""
    arr = load_image(path)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    peak = float(arr.max()) if arr.size else 0.0
    return arr > (0.5 if peak <= 1 else peak / 2)


def window_bounds(image: np.ndarray, low_pct: float = 0.0, high_pct: float = 100.0) -> tuple[float, float]:
    """Intensity window for a high-bit-depth image: min/max by default, or percentiles."""
    if low_pct <= 0.0 and high_pct >= 100.0:
        return float(image.min()), float(image.max())
    lo, hi = np.percentile(image, [low_pct, high_pct])
    return float(lo), float(hi)


def apply_window(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (clipped, rounded) as uint8."""
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (image.astype(np.float32) - lo) * scale
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def target_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """(W, H) with the longest side equal to ``longest`` and the aspect ratio kept."""
    scale = longest / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def preprocess_image(image: np.ndarray, longest: int, low_pct: float = 0.0, high_pct: float = 100.0,
                     bounds: tuple[float, float] | None = None) -> np.ndarray:
    """Any supported array -> uint8 (H, W) or (H, W, 3) with longest side ``longest``.

    ``bounds``: the intensity window of a high-bit-depth image when it is already known
    (DICOM pixels come windowed to [0, 1]); otherwise min/max or the percentiles.
    """
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {image.shape}")
    size = target_size(image.shape[0], image.shape[1], longest)
    if image.dtype == np.uint8:
        img = Image.fromarray(image)
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(img)
    if image.ndim == 3:  # high-bit-depth RGB is rare: window jointly, then resize as uint8
        return preprocess_image(apply_window(image, *window_bounds(image, low_pct, high_pct)), longest)
    lo, hi = bounds if bounds is not None else window_bounds(image, low_pct, high_pct)
    img = Image.fromarray(image.astype(np.float32))  # mode "F": filter in float
    if img.size != size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return apply_window(np.asarray(img), lo, hi)


def resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (C, h, w) -> bool (C, height, width) by nearest neighbour."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[1:] == (height, width):
        return masks
    out = np.empty((masks.shape[0], height, width), dtype=bool)
    for c, channel in enumerate(masks):
        img = Image.fromarray(channel.astype(np.uint8) * 255)
        out[c] = np.asarray(img.resize((width, height), Image.Resampling.NEAREST)) > 127
    return out


def encode_image(image: np.ndarray, fmt: ImageFormat = "png", jpeg_quality: int = 95) -> tuple[bytes, str]:
    """uint8 array -> (file bytes, member extension).  PNG is lossless; JPEG uses ``jpeg_quality``."""
    if image.dtype != np.uint8:
        raise ValueError(f"encode_image wants uint8, got {image.dtype}")
    buf = io.BytesIO()
    img = Image.fromarray(image)
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown image format '{fmt}' (png or jpeg)")
    return buf.getvalue(), EXTENSIONS[fmt]
