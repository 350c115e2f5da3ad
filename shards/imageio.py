"""Image and mask preprocessing done once, at shard-build time.

Radiographs arrive as 8-bit or 16-bit grayscale PNGs, RGB JPEGs, or arrays.
The writer turns every view into uint8 (gray stays gray, RGB stays RGB),
resizes it so its longest side is ``image_size`` (Lanczos, computed in float
for high-bit-depth input so nothing is quantised before filtering), and
encodes it as lossless PNG or as JPEG at a given quality.  Masks are resized
with nearest-neighbour to the stored view size so they stay exactly boolean.

Hostile files: every image is checked before it is decoded.  :func:`open_image` reads the header
only and refuses (``ImageSkip``, an ``OSError`` with a ``reason`` the build counts) a zero-byte file
(``empty_image_file``), a file Pillow cannot identify (``unreadable_image``), and one whose header
promises more than ``max_pixels`` (``image_too_large``: a decompression bomb, e.g. a 24,000 x 24,000
PNG of 550 KB, is never inflated).  A file whose header reads but whose data breaks off is
``truncated_image``.
So a build task never holds more than the largest image allowed, whatever the files claim.
The default limit, 50 megapixels, is well above the largest real radiograph (a 43 x 43 cm detector
at 100 um is 4,300 x 4,300 = 18.5 MP; MIMIC-CXR's largest are about 4,280 x 3,520 = 15 MP).
Pillow's own bomb check (above 2 x 89.5 MP) stays in force, so limits above 178 MP have no effect.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import Literal, Union

import numpy as np
from PIL import Image

ImageFormat = Literal["png", "jpeg"]
EXTENSIONS = {"png": "png", "jpeg": "jpg"}


DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_REASONS = ("empty_image_file", "unreadable_image", "image_too_large", "truncated_image")


class ImageSkip(OSError):
    """This image file cannot be used; ``reason`` (one of :data:`IMAGE_REASONS`) is what the build counts."""

    def __init__(self, where: str, reason: str, detail: str = ""):
        super().__init__(f"{where}: {reason}{f' ({detail})' if detail else ''}")
        self.where, self.reason, self.detail = where, reason, detail


def _truncated(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, EOFError) or "truncated" in text or "broken data stream" in text


def open_image(source: Union[str, bytes], max_pixels: int = DEFAULT_MAX_PIXELS, where: str = "") -> Image.Image:
    """Open an image file (or its bytes) lazily: the header is read and checked, nothing is decoded."""
    where = where or (source if isinstance(source, str) else "image")
    if isinstance(source, str):
        try:
            size = os.path.getsize(source)
        except OSError as err:
            raise ImageSkip(where, "unreadable_image", err.strerror or str(err)) from None
    else:
        size = len(source)
    if size == 0:
        raise ImageSkip(where, "empty_image_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below decides
            img = Image.open(source if isinstance(source, str) else io.BytesIO(source))
    except Image.DecompressionBombError as err:
        raise ImageSkip(where, "image_too_large", f"{err}; {size} bytes on disk") from None
    except (OSError, SyntaxError, ValueError) as err:  # not even a readable header: not an image file
        raise ImageSkip(where, "unreadable_image", f"{type(err).__name__}: {err}") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImageSkip(where, "image_too_large", f"{width} x {height} = {width * height / 1e6:.1f} MP in its header, "
                                                  f"over data.build.max_image_pixels={max_pixels / 1e6:g} MP; "
                                                  f"{size} bytes on disk, not decoded")
    return img


def decode_checked(img: Image.Image, where: str) -> None:
    """``img.load()``, with a file that breaks off (or does not decode) as :class:`ImageSkip`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombError as err:
        raise ImageSkip(where, "image_too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageSkip(where, "truncated_image" if _truncated(err) else "unreadable_image",
                        f"{type(err).__name__}: {err}") from None


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as (H, W) uint8/uint16 or (H, W, 3) uint8, keeping the bit depth.

    Raises :class:`ImageSkip` (checked from the header first: see the module docstring)."""
    with open_image(path, max_pixels) as img:
        decode_checked(img, path)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return np.asarray(img, dtype=np.uint16).copy()
        if img.mode in ("I", "F"):  # 32-bit gray: keep the values, windowing maps them later
            return np.asarray(img, dtype=np.float32).copy()
        if img.mode in ("1", "L", "LA"):
            return np.asarray(img.convert("L"), dtype=np.uint8).copy()
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def load_mask(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a mask image as (H, W) bool: 0/1 and 0/255 files both work, JPEG noise is thresholded."""
    arr = load_image(path, max_pixels)
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
