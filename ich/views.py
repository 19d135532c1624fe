"""Display-ready images for the app and reports: windowed slices, overlays, legends and the PNG triptych.

Inputs are HU slices (H, W) float; outputs are uint8 RGB images (H, W, 3) (or PNG bytes, HTML).
A window is a preset name (``labels.WINDOWS``) or a free ``(level, width)`` pair in HU.
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


def window_values(window_name: str | tuple[float, float]) -> tuple[float, float]:
    """(level, width) in HU of a preset name or a free pair (width must be positive)."""
    if isinstance(window_name, str):
        if window_name not in WINDOWS:
            raise ValueError(f"window must be one of {sorted(WINDOWS)} or a (level, width) pair, not {window_name!r}")
        return WINDOWS[window_name]
    level, width = (float(v) for v in window_name)
    if not np.isfinite(level) or not np.isfinite(width) or width <= 0:
        raise ValueError(f"a window is (level, width) in HU with a positive width, not {window_name!r}")
    return level, width


def render_slice(hu: np.ndarray, window_name: str | tuple[float, float] = "brain", mask: np.ndarray | None = None,
                 alpha: float = 0.45) -> np.ndarray:
    """Window one HU slice (H, W) and blend the subtype mask on top; returns uint8 (H, W, 3)."""
    grey = (window(np.asarray(hu, dtype=np.float32), *window_values(window_name)) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if mask is not None:
        for code, name in enumerate(SUBTYPES, start=1):
            sel = np.asarray(mask) == code
            if sel.any():
                rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.array(SUBTYPE_COLOURS[name], dtype=np.float32)
    return rgb.clip(0, 255).astype(np.uint8)


def subtype_legend_html() -> str:
    """One coloured square per hemorrhage subtype, as the mask overlay draws them (HTML for the app)."""
    items = "".join(f'<span style="white-space:nowrap;margin-right:14px"><span style="display:inline-block;width:12px;'
                    f'height:12px;background:rgb{SUBTYPE_COLOURS[name]};margin-right:4px;vertical-align:middle"></span>'
                    f'{name}</span>' for name in SUBTYPES)
    return f'<div style="font-size:0.85rem">Mask colours: {items}</div>'


def heat_legend_image(width: int = 256, height: int = 14) -> np.ndarray:
    """The heatmap colour ramp (``explain.heat_colors``) left (0, no evidence) to right (the map's maximum)."""
    from ich.explain import heat_colors

    ramp = heat_colors(np.linspace(0.0, 1.0, width))                          # (width, 3) in [0, 1]
    return (np.repeat(ramp[None], height, axis=0) * 255).astype(np.uint8)      # (height, width, 3)


def orientation_marks(rgb: np.ndarray) -> np.ndarray:
    """Write the radiological L/R marks on an axial image (patient's right on the image's left).

    DICOM axial images are stored looking from the feet: column 0 is the patient's right.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    h, w = img.height, img.width
    for text, x in (("R", 3), ("L", w - 10)):
        draw.text((x, h // 2 - 5), text, fill=(255, 255, 0))
    return np.asarray(img)


def triptych_png(images: list[np.ndarray], captions: list[str], *, size: int = 384) -> bytes:
    """The slice, its heatmap and its truth side by side with captions, as PNG bytes.

    Args:
        images: (H, W, 3) uint8 RGB images (any sizes; each is resized to ``size`` x ``size``).
        captions: one short caption per image.
    """
    import io

    from PIL import Image, ImageDraw

    if len(images) != len(captions) or not images:
        raise ValueError(f"give one caption per image, got {len(images)} images and {len(captions)} captions")
    pad, band = 8, 22
    out = Image.new("RGB", (len(images) * (size + pad) + pad, size + band + 2 * pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for k, (im, cap) in enumerate(zip(images, captions)):
        x = pad + k * (size + pad)
        out.paste(Image.fromarray(np.asarray(im, dtype=np.uint8)).resize((size, size), Image.NEAREST), (x, pad))
        draw.text((x, pad + size + 5), cap[:60], fill=(0, 0, 0))
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
