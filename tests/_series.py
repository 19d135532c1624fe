"""Small real and synthetic DICOM series for the input-check, OOD, upload and browser tests."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np


def ct_small_series(out: str | Path, n: int = 24, spacing_mm: float = 5.0) -> Path:
    """pydicom's CT_small.dcm (a real 128 x 128 body CT slice at vertebra level) copied into an n-slice series.

    Fresh UIDs, InstanceNumber 1..n and positions ``spacing_mm`` apart along z (testing-notes.md).
    """
    import pydicom
    from pydicom import examples
    from pydicom.uid import generate_uid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = examples.get_path("ct")
    series, study = generate_uid(), generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, i * spacing_mm]
        ds.SliceLocation = i * spacing_mm
        ds.PatientID = "TEST"
        ds.PatientName = "Test^Body"
        # a one-pixel change per slice: real neighbouring slices are never pixel-identical
        arr = ds.pixel_array.copy()
        arr.flat[i] = arr.flat[i] + 1
        ds.PixelData = arr.tobytes()
        ds.save_as(out / f"slice{i:03d}.dcm")
    return out


def zip_folder(folder: str | Path, prefix: str = "series") -> bytes:
    """The files of a folder as zip bytes, under ``prefix/``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(Path(folder).iterdir()):
            zf.write(p, f"{prefix}/{p.name}")
    return buf.getvalue()

