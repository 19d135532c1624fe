"""NIfTI reading and writing at the project's (S, H, W) boundary (the only module that imports nibabel).

NIfTI arrays follow the voxel indices (i, j, k); for CT-ICH (and our phantom masks) k is
the slice axis. Everything is converted once, here, with the reference's transpose
``(2, 1, 0)``: (i, j, k) = (W, H, S) -> (S, H, W). The header affine is ignored, as in the
reference ("reproduce" mode): no reorientation, no z-sort. Spacing comes from the header
zooms and is returned in (S, H, W) order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ich import atomic


def _why(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"

TO_SHW = (2, 1, 0)  # (W, H, S) file axes -> (S, H, W); the transpose is its own inverse


def _load(path: str | os.PathLike):
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a NIfTI file (.nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib errors ...
        raise ValueError(f"{path}: not a readable NIfTI file ({_why(err)}); "
                         "replace it with a good copy") from err
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3-D volume, found shape {img.shape}")
    return img, shape


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read a CT volume stored in HU.

    ``scl_slope``/``scl_inter`` from the header are applied (``get_fdata``).

    Returns:
        (hu (S, H, W) float32, spacing_mm (slice, row, column)).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, or not 3-D.
    """
    img, shape = _load(path)
    try:
        data = img.get_fdata(dtype=np.float32).reshape(shape)
    except Exception as err:  # truncated gzip, short data
        raise ValueError(f"{path}: the image data cannot be read ({_why(err)}); "
                         "the file is probably truncated; replace it with a good copy") from err
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return np.ascontiguousarray(np.transpose(data, TO_SHW)), (zooms[2], zooms[1], zooms[0])


def read_nifti_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask: the stored integers, as uint8 (S, H, W) (no scaling).

    Raises:
        ValueError: unreadable, not 3-D, or values that are not integers in 0..255.
    """
    img, shape = _load(path)
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except Exception as err:
        raise ValueError(f"{path}: the mask data cannot be read ({_why(err)}); "
                         "the file is probably truncated; replace it with a good copy") from err
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise ValueError(f"{path}: a mask must hold integer labels, found non-integer values")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"{path}: mask values must lie in 0..255, found {data.min()}..{data.max()}")
    return np.ascontiguousarray(np.transpose(data, TO_SHW)).astype(np.uint8)


def write_nifti(array: np.ndarray, path: str | os.PathLike, *,
                spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Path:
    """Write a (S, H, W) array as NIfTI with axes (W, H, S), the CT-ICH layout; atomic (temp file + rename).

    Args:
        array: (S, H, W) volume (HU, any numeric dtype) or uint8 mask; the dtype is kept.
        path: ``.nii`` or ``.nii.gz``.
        spacing_mm: (slice, row, column) spacing in mm, stored as the zooms / a diagonal affine.
    """
    import nibabel as nib

    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_nifti expects a (S, H, W) array, not shape {array.shape}")
    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ValueError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    data = np.ascontiguousarray(np.transpose(array, TO_SHW))  # (W, H, S)
    s, r, c = (float(v) for v in spacing_mm)
    img = nib.Nifti1Image(data, np.diag([c, r, s, 1.0]))
    img.header.set_zooms((c, r, s))
    with atomic.writing(path, keep_suffix=True) as tmp:     # nibabel reads the format off the name's end
        nib.save(img, str(tmp))
    return path
