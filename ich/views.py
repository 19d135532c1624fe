"""Display-ready images for the app and reports: windowed slices with mask and heatmap overlays.

Inputs are HU slices (H, W) float; outputs are uint8 RGB images (H, W, 3).
"""

from __future__ import annotations

import numpy as np

from ich.labels import SUBTYPES, WINDOWS
from ich.preprocess import window

# one RGB colour per subtype code 1..5 (colour-blind friendly, Okabe-Ito)
SUBTYPE_COLOURS: dict[str, tuple[int, int, int]] = {
    "epidural": (230, 159, 0),
    "intraparenchymal": (213, 94, 0),
    "intraventricular": (0, 114, 178),
    "subarachnoid": (204, 121, 167),
    "subdural": (0, 158, 115),
}


def render_slice(hu: np.ndarray, window_name: str = "brain", mask: np.ndarray | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """Window one HU slice (H, W) and blend the subtype mask on top; returns uint8 (H, W, 3)."""
    if window_name not in WINDOWS:
        raise ValueError(f"window must be one of {sorted(WINDOWS)}, not {window_name!r}")
    grey = (window(np.asarray(hu, dtype=np.float32), *WINDOWS[window_name]) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if mask is not None:
        for code, name in enumerate(SUBTYPES, start=1):
            sel = np.asarray(mask) == code
            if sel.any():
                rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.array(SUBTYPE_COLOURS[name], dtype=np.float32)
    return rgb.clip(0, 255).astype(np.uint8)


def render_heatmap(hu: np.ndarray, heat: np.ndarray, window_name: str = "brain", alpha: float = 0.5) -> np.ndarray:
    """Blend a non-negative heatmap (H, W) (scaled to its max) over a windowed slice, in a red-yellow ramp."""
    base = render_slice(hu, window_name).astype(np.float32)
    h = np.clip(np.asarray(heat, dtype=np.float32), 0, None)
    h = h / h.max() if h.max() > 0 else h
    ramp = np.stack([np.full_like(h, 255.0), 255.0 * h, np.zeros_like(h)], axis=-1)  # red -> yellow
    a = (alpha * h)[..., None]
    return ((1 - a) * base + a * ramp).clip(0, 255).astype(np.uint8)
