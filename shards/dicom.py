"""DICOM radiographs -> display pixels in [0, 1] plus an allow-listed header (the PHI guard).

The usual conversion errors are handled in one place, in this order (DICOM PS3.3
C.11): stored values -> rescale slope/intercept -> VOI (a VOI LUT sequence, else
window centre/width with its VOI LUT function) -> MONOCHROME1 inverted.  The
result is float32 in [0, 1]; the shard writer resizes it in float (no 12/16-bit
values are clipped or quantised before filtering) and only then maps it to 8 bits.

``dicom_window``: ``voi`` (the file's VOI LUT or window; min/max when it has
none), ``minmax`` (the image's own range) or ``none`` (the full range the
stored bits can hold, through the rescale).

A file that cannot be used (no pixel data, a transfer syntax no installed
decoder handles, colour or multi-frame data) raises :class:`DicomSkip` naming
the file and the reason; the writer counts and skips it.

PHI guard: :func:`safe_meta` is the only way header values leave this module,
and it copies only :data:`ALLOWED` attributes (plus the study date shifted per
patient, when asked).  Names, birth dates, accession numbers, institutions and
UIDs never reach a shard.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import secrets
from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

DicomWindow = Literal["voi", "minmax", "none"]
WINDOWS = ("voi", "minmax", "none")
DICOM_EXTENSIONS = (".dcm", ".dicom")
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
ALLOWED = ("Modality", "ViewPosition", "Rows", "Columns", "PhotometricInterpretation", "PixelSpacing",
           "ImagerPixelSpacing")


class DicomSkip(ValueError):
    """This DICOM cannot be used; ``str()`` names the file, ``reason`` is a short category to count by."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason}{f' ({detail})' if detail else ''}")
        self.path, self.reason = path, reason


@dataclass
class DicomImage:
    pixels: np.ndarray  # float32 (H, W) in [0, 1], 1 = bright
    source_dtype: str  # stored pixel dtype, e.g. uint16
    window: str  # what was applied: voi_lut | window | minmax | none


def is_dicom(path: str) -> bool:
    """A .dcm/.dicom name, or the 'DICM' magic after the 128-byte preamble."""
    if path.lower().endswith(DICOM_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _pydicom():
    """pydicom with value validation off: its warnings quote header values, and those can be PHI."""
    import pydicom
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    return pydicom


def read_header(path: str):
    """The dataset without pixel data (cheap: for adapters grouping files into studies)."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many kinds on a bad file
        raise DicomSkip(path, "not a readable DICOM file", type(err).__name__) from None


# ----------------------------------------------------------------------------- pixels
def _stored_pixels(ds, path: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        raise DicomSkip(path, "no pixel data")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DicomSkip(path, f"unsupported transfer syntax {syntax} ({syntax.name})")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomSkip(path, "colour DICOM (SamplesPerPixel != 1) is not a radiograph")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomSkip(path, "multi-frame DICOM")
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
        raise DicomSkip(path, "undecodable pixel data", f"{type(err).__name__}: {err}") from None


def _first(value: Any) -> float:
    """Window centre/width may be multi-valued: the first pair is the default view."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _lut_window(x: np.ndarray, item) -> np.ndarray:
    """VOI LUT sequence item: LUTDescriptor (entries, first mapped value, bits) + LUTData -> [0, 1]."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    table = np.frombuffer(data, dtype=np.uint16) if isinstance(data, bytes) else np.asarray(data, dtype=np.float64)
    table = table.astype(np.float64)[:entries]
    index = np.clip(np.rint(x) - first, 0, len(table) - 1).astype(np.int64)
    return table[index] / float(2 ** bits - 1)


def _linear_window(x: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """Window centre/width -> [0, 1] with the VOI LUT function (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - centre) / width + 0.5, 0.0, 1.0)
    if width < 1:
        raise ValueError(f"window width must be >= 1 for LINEAR, got {width}")
    if width == 1:  # a threshold
        return (x > centre - 0.5).astype(np.float64)
    return np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _span(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _value_range(ds, stored: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """The full range the stored bits can hold, through the rescale ('none' window)."""
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if int(ds.get("PixelRepresentation", 0)) else (0, 2 ** bits - 1)
    a, b = lo * slope + intercept, hi * slope + intercept
    return min(a, b), max(a, b)


def decode_dicom(path: str, window: DicomWindow = "voi", max_pixels: int = 50_000_000) -> DicomImage:
    """Read a DICOM radiograph as float32 (H, W) in [0, 1]; raises DicomSkip when it cannot be used.

    Rows x Columns is checked against ``max_pixels`` before the pixel data is read or decoded
    (``image_too_large``): large elements are deferred until the check has passed."""
    pydicom = _pydicom()

    if window not in WINDOWS:
        raise ValueError(f"dicom_window must be one of {WINDOWS}, got {window!r}")
    try:
        ds = pydicom.dcmread(path, defer_size="1 MB")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as err:  # noqa: BLE001
        raise DicomSkip(path, "not a readable DICOM file", type(err).__name__) from None
    if rows * cols > max_pixels:
        raise DicomSkip(path, "image_too_large", f"{cols} x {rows} = {rows * cols / 1e6:.1f} MP in its header, over "
                                                 f"data.build.max_image_pixels={max_pixels / 1e6:g} MP; not decoded")
    stored = _stored_pixels(ds, path)
    if stored.ndim != 2:
        raise DicomSkip(path, f"unexpected pixel array shape {stored.shape}")
    if "ModalityLUTSequence" in ds:
        raise DicomSkip(path, "modality LUT sequence is not supported")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    x = stored.astype(np.float64) * slope + intercept
    applied = window
    if window == "voi" and ds.get("VOILUTSequence"):
        y, applied = _lut_window(x, ds.VOILUTSequence[0]), "voi_lut"
    elif window == "voi" and "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        y, applied = _linear_window(x, _first(ds.WindowCenter), _first(ds.WindowWidth), function), "window"
    elif window == "none":
        y = _span(*_value_range(ds, stored, slope, intercept), x)
    else:
        y, applied = _span(float(x.min()), float(x.max()), x), "minmax"
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        y = 1.0 - y
    return DicomImage(np.clip(y, 0.0, 1.0).astype(np.float32), str(stored.dtype), applied)


# ----------------------------------------------------------------------------- PHI guard
def _plain(value: Any) -> Any:
    """A pydicom value as JSON-safe numbers/strings (MultiValue -> list, DSfloat -> float)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)):
        return float(value) if not isinstance(value, int) else int(value)
    return str(value)


def is_sr(ds) -> bool:
    """A structured report (text), not an image."""
    return str(ds.get("SOPClassUID", "")).startswith(SR_CLASS_PREFIX) or ds.get("Modality") == "SR"


def shifted_date(date: str, days: int) -> Optional[str]:
    """YYYYMMDD moved back by ``days`` (None when the header date is malformed)."""
    try:
        day = datetime.datetime.strptime(str(date)[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (day - datetime.timedelta(days=days)).strftime("%Y%m%d")


def safe_meta(ds, date_shift_days: Optional[int] = None) -> dict[str, Any]:
    """The allow-listed attributes only; StudyDate only when a per-patient shift is given."""
    meta = {name: _plain(ds.get(name)) for name in ALLOWED if ds.get(name) not in (None, "")}
    if date_shift_days is not None and ds.get("StudyDate"):
        date = shifted_date(ds.StudyDate, date_shift_days)
        if date is not None:
            meta["StudyDateShifted"] = date
    return meta


def load_salt(path: str) -> bytes:
    """The pseudonymisation salt: read from ``path``, or created there (0600) when missing."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    with open(path, "rb") as f:
        salt = f.read().strip()
    if len(salt) < 16:
        raise ValueError(f"salt file {path} holds fewer than 16 bytes; delete it to make a new one")
    return salt


def pseudonym(salt: bytes, kind: str, value: str, length: int = 16) -> str:
    """A salted, one-way id: the same value gives the same id under one salt, nothing links it back."""
    return hashlib.sha256(salt + b"\0" + kind.encode() + b"\0" + str(value).encode()).hexdigest()[:length]


def date_shift_days(salt: bytes, patient: str, max_days: int = 3650) -> int:
    """A per-patient shift (1..max_days days back), stable under one salt."""
    return 1 + int(pseudonym(salt, "date", patient, 12), 16) % max_days
