"""DICOM decoding: every conversion step against a reference computed here, pixel by pixel.

References are written from the DICOM standard's formulas (PS3.3 C.11.2.1.2) as plain
per-pixel Python, independently of shards/dicom.py's vectorised code.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from shards.config import BuildConfig
from shards.dicom import ALLOWED, DicomSkip, decode_dicom, is_dicom, read_header, safe_meta
from shards.views import view_pixels
from tests.dicomkit import PHI_TAGS, write_dicom

RNG = np.random.default_rng(7)
IMG12 = RNG.integers(0, 4096, size=(40, 36)).astype(np.uint16)  # 12-bit stored values
IMG16 = RNG.integers(0, 65536, size=(40, 36)).astype(np.uint16)  # full 16-bit range


def per_pixel(stored: np.ndarray, fn) -> np.ndarray:
    return np.array([[fn(int(v)) for v in row] for row in stored], dtype=np.float64)


def linear(c: float, w: float):
    """PS3.3 C.11.2.1.2.1, written as the standard states it, output in [0, 1]."""
    def f(x: float) -> float:
        if x <= c - 0.5 - (w - 1) / 2:
            return 0.0
        if x > c - 0.5 + (w - 1) / 2:
            return 1.0
        return ((x - (c - 0.5)) / (w - 1) + 0.5)
    return f


CASES = {
    # name: (writer kwargs, dicom_window, reference per stored value)
    "mono2_12bit_no_window_minmax": (dict(pixels=IMG12, bits_stored=12), "voi",
                                     lambda v: (v - IMG12.min()) / (IMG12.max() - IMG12.min())),
    "mono1_12bit_window": (dict(pixels=IMG12, bits_stored=12, photometric="MONOCHROME1", window=(2000, 1500)),
                           "voi", lambda v: 1.0 - linear(2000, 1500)(v)),
    "mono2_16bit_rescale_window": (dict(pixels=IMG16, bits_stored=16, slope=0.5, intercept=-1024.0,
                                        window=(8000, 20000)),
                                   "voi", lambda v: linear(8000, 20000)(v * 0.5 - 1024.0)),
    "sigmoid_window": (dict(pixels=IMG12, bits_stored=12, window=(2048, 1000), voi_function="SIGMOID"), "voi",
                       lambda v: 1.0 / (1.0 + math.exp(-4.0 * (v - 2048) / 1000))),
    "voi_lut_sequence": (dict(pixels=IMG12, bits_stored=12, window=(1, 1),  # the LUT wins over the window
                              voi_lut=([3000, 500, 16], (np.arange(3000) * 21).astype(np.uint16))),
                         "voi", lambda v: (min(max(v - 500, 0), 2999) * 21) / 65535.0),
    "window_none_full_range": (dict(pixels=IMG12, bits_stored=12, window=(2000, 100)), "none", lambda v: v / 4095.0),
    "minmax_ignores_window": (dict(pixels=IMG16, bits_stored=16, slope=2.0, intercept=10.0, window=(5, 5)), "minmax",
                              lambda v: (v - int(IMG16.min())) / (int(IMG16.max()) - int(IMG16.min()))),
    "rle_lossless_mono1": (dict(pixels=IMG16, bits_stored=16, photometric="MONOCHROME1", compress=RLELossless),
                           "minmax", lambda v: 1.0 - (v - int(IMG16.min())) / (int(IMG16.max()) - int(IMG16.min()))),
    "jpeg2000_lossless_12bit": (dict(pixels=IMG12, bits_stored=12, compress=JPEG2000Lossless, window=(1800, 2400)),
                                "voi", linear(1800, 2400)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decoded_pixels_equal_the_standard_reference(name, tmp_path):
    kwargs, window, ref_fn = CASES[name]
    path = write_dicom(tmp_path / f"{name}.dcm", **kwargs)
    stored = kwargs["pixels"]
    ref = per_pixel(stored, ref_fn)
    got = decode_dicom(str(path), window)
    assert got.pixels.shape == stored.shape and got.pixels.dtype == np.float32
    np.testing.assert_allclose(got.pixels, ref, atol=1e-6, rtol=0)
    # and through the writer's view path (no resize at this size): 8 bits only at the very end
    image, facts = view_pixels(str(path), BuildConfig(image_size=max(stored.shape), dicom_window=window))
    np.testing.assert_array_equal(image, np.clip(np.rint(ref.astype(np.float32) * 255.0), 0, 255).astype(np.uint8))
    assert facts["source_format"] == "dicom" and facts["source_dtype"] == "uint16"


def test_high_bit_depth_survives_resizing(tmp_path):
    # a smooth 16-bit ramp in a narrow band: quantising to 8 bits before resizing would flatten it
    ramp = np.tile(np.linspace(30000, 30255, 64), (48, 1)).astype(np.uint16)
    path = write_dicom(tmp_path / "ramp.dcm", pixels=ramp, bits_stored=16, window=(30128, 256))
    image, _ = view_pixels(str(path), BuildConfig(image_size=32))
    assert image.shape == (24, 32)
    row = image[12].astype(int)
    assert len(np.unique(row)) >= 28, row  # ~ 256/2 grey steps over 32 pixels, monotone
    assert np.all(np.diff(row[2:-2]) >= 0)


@pytest.mark.parametrize("syntax", [JPEGLSLossless, "1.2.840.10008.1.2.4.100"])
def test_unsupported_transfer_syntax_is_a_clean_skip_naming_file_and_syntax(syntax, tmp_path):
    path = write_dicom(tmp_path / "ls.dcm", pixels=IMG12, syntax=syntax)
    with pytest.raises(DicomSkip) as err:
        decode_dicom(str(path))
    assert str(path) in str(err.value) and str(syntax) in str(err.value)
    assert err.value.reason.startswith("unsupported transfer syntax")


def test_missing_pixel_data_is_a_clean_skip(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", pixels=IMG12, pixel_data=False)
    with pytest.raises(DicomSkip, match="no pixel data") as err:
        view_pixels(str(path), BuildConfig(image_size=32))
    assert str(path) in str(err.value)


def test_header_allow_list_and_detection(tmp_path):
    path = write_dicom(tmp_path / "noext", pixels=IMG12, phi="SECRETX")
    assert is_dicom(str(path)) and not is_dicom(__file__)
    ds = read_header(str(path))
    assert all("SECRETX" in str(ds.get(t)) for t in PHI_TAGS)
    meta = safe_meta(ds)
    assert set(meta) <= set(ALLOWED) and "SECRETX" not in repr(meta) and "MRN0001" not in repr(meta)
    assert meta["ViewPosition"] == "PA" and meta["Rows"] == 40 and meta["PixelSpacing"] == [0.139, 0.139]
    shifted = safe_meta(ds, date_shift_days=10)
    assert shifted["StudyDateShifted"] == "20200305" and "20200315" not in repr(shifted)


def test_salt_file_is_created_once_and_pseudonyms_are_stable(tmp_path):
    from shards.dicom import load_salt, pseudonym

    path = tmp_path / "keys" / "salt"
    salt = load_salt(str(path))
    assert path.is_file() and oct(path.stat().st_mode & 0o777) == "0o600" and len(salt) == 64
    assert load_salt(str(path)) == salt
    assert pseudonym(salt, "patient", "MRN1") == pseudonym(salt, "patient", "MRN1") != pseudonym(b"x" * 32, "patient", "MRN1")
    assert "MRN1" not in pseudonym(salt, "patient", "MRN1")
