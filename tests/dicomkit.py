"""DICOM fixtures built with pydicom for the tests (no files from anywhere else).

``write_dicom`` makes a radiograph with the attributes a test asks for and PHI
tags holding ``phi`` (a marker string), so tests can prove it never leaks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
BIRTH_DATE = "19111111"  # a date marker: PatientBirthDate must hold a real date
PHI_TAGS = ("PatientName", "AccessionNumber", "InstitutionName", "ReferringPhysicianName",
            "InstitutionAddress", "OperatorsName", "StudyDescription", "PatientAddress", "OtherPatientIDs")


def _base(sop_class: str, study_uid: str, patient_id: str, phi: str, accession: Optional[str]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = f"{phi}^Jane"
    ds.PatientBirthDate = BIRTH_DATE
    ds.AccessionNumber = accession or f"{phi}ACC"
    ds.InstitutionName = f"{phi} General Hospital"
    ds.ReferringPhysicianName = f"Dr^{phi}"
    ds.InstitutionAddress = f"1 {phi} Street"
    ds.OperatorsName = f"{phi}^Op"
    ds.StudyDescription = f"CHEST {phi}"
    ds.PatientAddress = f"2 {phi} Road"
    ds.OtherPatientIDs = f"{phi}-other"
    ds.StudyDate = "20200315"
    return ds


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
                slope: Optional[float] = None, intercept: Optional[float] = None,
                window: Optional[tuple[float, float]] = None, voi_function: Optional[str] = None,
                voi_lut: Optional[tuple[list[int], np.ndarray]] = None, compress: Optional[str] = None,
                syntax: Optional[str] = None, pixel_data: bool = True, study_uid: Optional[str] = None,
                patient_id: str = "MRN0001", phi: str = "PHIMARK", view: str = "PA",
                accession: Optional[str] = None) -> Path:
    """A DX radiograph; ``voi_lut`` = (LUTDescriptor, LUTData); ``compress`` = a transfer syntax pydicom encodes;
    ``syntax`` = a transfer syntax to claim (its pixel data is then fake)."""
    ds = _base(DX_CLASS, study_uid or generate_uid(), patient_id, phi, accession)
    ds.Modality, ds.ViewPosition = "DX", view
    ds.PixelSpacing = [0.139, 0.139]
    if pixel_data:
        ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, bits_stored)
    else:
        ds.Rows, ds.Columns, ds.PhotometricInterpretation = pixels.shape[0], pixels.shape[1], photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
        ds.SamplesPerPixel = 1
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept or 0.0, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
        if voi_function:
            ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = list(voi_lut[0])
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut[1]])  # LUTData
        ds.VOILUTSequence = Sequence([item])
    if compress:
        ds.compress(compress)
    if syntax:
        from pydicom.encaps import encapsulate

        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate([b"\xff\xd8not-really-compressed\xff\xd9"])
        ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_sr(path: Path, *, study_uid: str, patient_id: str, findings: str, impression: str,
             phi: str = "PHIMARK") -> Path:
    """A Basic Text SR holding a findings and an impression TEXT item."""
    ds = _base(SR_CLASS, study_uid, patient_id, phi, None)
    ds.Modality, ds.ValueType = "SR", "CONTAINER"

    def text(meaning: str, value: str) -> Dataset:
        item, code = Dataset(), Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121071", "DCM", meaning
        item.ValueType, item.TextValue = "TEXT", value
        item.ConceptNameCodeSequence = Sequence([code])
        return item

    ds.ContentSequence = Sequence([text("Finding", findings), text("Impression", impression)])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def read(path: Path) -> Dataset:
    return pydicom.dcmread(str(path))
