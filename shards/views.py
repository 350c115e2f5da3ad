"""One view, from a file or an array to what a shard stores and what the reader gives back.

The shard writer and ``rrg generate`` both call :func:`encode_view`, and
``rrg generate`` then decodes with the reader's own :func:`decode_image`, so a
model sees exactly the same pixels from a loose PNG/JPEG/DICOM file as from the
shard built out of it.
"""
from __future__ import annotations

import io
from typing import Any, Optional, Union

import numpy as np
from PIL import Image

from shards.config import BuildConfig
from shards.dicom import decode_dicom, is_dicom
from shards.imageio import DEFAULT_MAX_PIXELS, decode_checked, encode_image, load_image, open_image, preprocess_image

Source = Union[str, np.ndarray]


def view_pixels(source: Source, build: BuildConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """A file path (PNG, JPEG, DICOM ...) or array -> stored uint8 pixels + source facts for the record.

    Raises shards.dicom.DicomSkip for a DICOM that cannot be used and shards.imageio.ImageSkip for an
    image file that cannot (empty, unidentifiable, over ``build.max_image_pixels``, truncated).
    """
    if isinstance(source, str) and is_dicom(source):
        dcm = decode_dicom(source, build.dicom_window, max_pixels=build.max_image_pixels)
        image = preprocess_image(dcm.pixels, build.image_size, bounds=(0.0, 1.0))
        return image, {"source_dtype": dcm.source_dtype, "source_shape": list(dcm.pixels.shape),
                       "source_format": "dicom", "window": dcm.window}
    raw = np.asarray(load_image(source, build.max_image_pixels) if isinstance(source, str) else source)
    image = preprocess_image(raw, build.image_size)
    return image, {"source_dtype": str(raw.dtype), "source_shape": list(raw.shape)}


def encode_view(source: Source, build: BuildConfig) -> tuple[bytes, str, np.ndarray, dict[str, Any]]:
    """(member bytes, extension, stored pixels, source facts) for one view."""
    image, facts = view_pixels(source, build)
    data, ext = encode_image(image, build.image_format, build.jpeg_quality)
    return data, ext, image, facts


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A stored view member -> uint8 (H, W) or (H, W, 3): the reader's decode stage (header checked
    first, like a source file: a hostile shard's bomb raises ImageSkip instead of being inflated)."""
    with open_image(data, max_pixels, where="view") as img:
        decode_checked(img, "view")
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
        return np.asarray(img, dtype=np.uint8)


def frontal_first(positions: list[Optional[str]]) -> list[int]:
    """Indices ordering views PA, AP, then the rest (stable): view 0 is what single-image models see."""
    rank = {"PA": 0, "AP": 1}
    return sorted(range(len(positions)), key=lambda i: rank.get(str(positions[i] or "").upper(), 2))
