"""Writing HU volumes as CT DICOM series (the phantom): UIDs, pixel encoding, optional RLE compression."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from ich import atomic

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- writing

def make_uid(*parts: object) -> str:
    """A deterministic DICOM UID derived from ``parts`` (same parts, same UID)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_series(hu: np.ndarray, out_dir: str | os.PathLike, *, patient_id: str, series_key: str,
                 spacing_mm: tuple[float, float, float] = (5.0, 0.5, 0.5), intercept: float = -1024.0,
                 slope: float = 1.0, window: tuple[float, float] = (40.0, 80.0),
                 series_description: str = "HEAD CT", study_key: str | None = None,
                 file_names: list[str] | None = None, sop_uids: list[str] | None = None,
                 study_date: str = "20260101", compression: str = "none") -> list[str]:
    """Write a (S, H, W) HU volume as one CT series, one file per slice.

    Files are valid CT Image Storage objects with unique deterministic UIDs (derived from
    ``series_key``), ImagePositionPatient/ImageOrientationPatient (axial, slice i at
    z = i * spacing), PixelSpacing, SliceThickness, rescale and window tags, and no real
    names. Each file is written to a temporary name and renamed.

    Args:
        hu: (S, H, W) HU volume, slice 0 lowest (inferior).
        out_dir: folder to write into (created).
        patient_id: value of PatientID (use a synthetic key, never a real one).
        series_key: any string that makes the UIDs unique and reproducible.
        spacing_mm: (slice spacing, row spacing, column spacing) in mm.
        intercept, slope: stored pixel = round((hu - intercept) / slope) as uint16.
        file_names: optional file names (default ``<sop uid>.dcm``).
        sop_uids: optional SOPInstanceUIDs (RSNA-style fixtures use ``ID_<hex>``).
        compression: ``"none"`` (Explicit VR Little Endian) or ``"rle"`` (RLE Lossless, about 2x
            smaller for head CT; decoded natively by pydicom).

    Returns:
        The SOPInstanceUIDs, in slice order.
    """
    hu = np.asarray(hu)
    if compression not in ("none", "rle"):
        raise ValueError(f"compression must be 'none' or 'rle', not {compression!r}")
    if hu.ndim != 3:
        raise ValueError(f"write_series expects a (S, H, W) volume, not shape {hu.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    study_uid = make_uid("study", study_key or series_key)
    series_uid = make_uid("series", series_key)
    frame_uid = make_uid("frame", series_key)
    sops = list(sop_uids) if sop_uids is not None else [make_uid("sop", series_key, i) for i in range(n)]
    names = list(file_names) if file_names is not None else [f"{s}.dcm" for s in sops]
    stored = np.clip(np.rint((hu - intercept) / slope), 0, 65535).astype(np.uint16)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sops[i]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = DicomDataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sops[i]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.PatientName = "Phantom^Anonymous"
        ds.StudyDate = study_date
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-(cols * spacing_mm[2]) / 2, -(rows * spacing_mm[1]) / 2, i * spacing_mm[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = i * spacing_mm[0]
        ds.PixelSpacing = [spacing_mm[1], spacing_mm[2]]
        ds.SliceThickness = spacing_mm[0]
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.WindowCenter = window[0]
        ds.WindowWidth = window[1]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = stored[i].tobytes()
        if compression == "rle":
            ds.compress(RLELossless, generate_instance_uid=False)
        with atomic.writing(out / names[i]) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return sops
