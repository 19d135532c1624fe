"""Pure array maths on CT pixels: HU conversion, the RSNA 12-bit fix, windowing, resizing.

Volumes are float32 HU arrays shaped (S, H, W); windowed images are float32 in [0, 1].
torch is imported only when a function needs it (``resize``, or a tensor argument), so reading
and refusing DICOM files stays light (a torch import alone is ~0.9 GB RSS and seconds of start-up).
"""

from __future__ import annotations

import sys

import numpy as np

from ich.labels import WINDOWS

HU_MIN, HU_MAX = -1024, 3071  # the int16 cache clips to this range (12-bit CT)


def to_hu(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Apply the DICOM modality LUT (PS3.3 C.11.1): HU = pixels * slope + intercept.

    Returns float32.
    """
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def needs_12bit_fix(bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    """Whether an RSNA 2019 file carries the known wrong intercept (data-formats.md §1.3)."""
    return bits_stored == 12 and pixel_representation == 0 and intercept > -100


def fix_12bit(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Repair an RSNA 12-bit slice: returns the corrected raw pixels and the intercept to use (-1000)."""
    x = pixels.astype(np.int32) + 1000
    x[x >= 4096] -= 4096
    return x, -1000.0


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch: a tensor implies torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def window(hu: np.ndarray | torch.Tensor, level: float, width: float):
    """Clip HU to [level - width/2, level + width/2] and rescale to [0, 1] (float32)."""
    lo, hi = level - width / 2.0, level + width / 2.0
    if _is_tensor(hu):
        return ((hu.float() - lo) / (hi - lo)).clamp_(0.0, 1.0)
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def stack_windows(hu: np.ndarray | torch.Tensor, names: tuple[str, ...] = ("brain",)):
    """Window a (..., H, W) volume with each named preset; returns (..., C, H, W) with C = len(names)."""
    unknown = [n for n in names if n not in WINDOWS]
    if unknown:
        raise ValueError(f"window must be one of {sorted(WINDOWS)}, not {unknown}")
    chans = [window(hu, *WINDOWS[n]) for n in names]
    if _is_tensor(hu):
        import torch

        return torch.stack(chans, dim=-3)
    return np.stack(chans, axis=-3)


def resize(volume: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize the in-plane axes of a (S, H, W) volume to (S, size, size).

    Bilinear (antialiased when shrinking) for images, nearest for label masks; the dtype is kept.
    """
    if volume.ndim != 3:
        raise ValueError(f"resize expects a (S, H, W) volume, not shape {volume.shape}")
    if volume.shape[1:] == (size, size):
        return volume
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(volume)).unsqueeze(1).float()  # (S, 1, H, W)
    if nearest:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        shrink = size < max(volume.shape[1:])
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    out = out.squeeze(1).numpy()
    if np.issubdtype(volume.dtype, np.integer):
        out = np.rint(out)
    return out.astype(volume.dtype)


def to_int16_hu(hu: np.ndarray) -> np.ndarray:
    """Round and clip a float HU volume to the cache's int16 range [-1024, 3071]."""
    return np.clip(np.rint(hu), HU_MIN, HU_MAX).astype(np.int16)
