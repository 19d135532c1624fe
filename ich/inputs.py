"""Checks that one read DICOM series is an axial head CT a model can score, before it is scored.

``check_folder`` reads and checks every series of a folder; ``check_volume`` looks at a ``dicom.Volume`` (pixels in HU plus the non-identifying facts of
``Volume.meta``) and returns a ``SeriesCheck``: *refusals* (the series must not be scored: each
says what was found, what was expected and how to fix it) and *warnings* (the series is scored,
but the app and the CLI show the warning next to the score).

What ``dicom.read_series`` already refuses (and so never reaches this module): a non-CT modality,
mixed series, multi-frame files, mixed image sizes or orientations, missing positions and
duplicated slice positions. Checked here:

- modality (again, for volumes built elsewhere), slice count (refused above ``MAX_SLICES``, a
  warning below ``FEW_SLICES``), slice spacing (refused outside ``SPACING_MM``), missing slices
  (a gap in the positions), pixel-identical neighbouring slices, the slice orientation (refused
  unless the slices are within ``MAX_TILT_DEG`` of axial);
- a head check (a warning): the field of view and the width of the body outline must be those of a
  head (``HEAD_FOV_MM``, ``HEAD_WIDTH_MM``). A body CT at vertebra level, cropped to 85 mm (pydicom's
  ``CT_small.dcm``), fails it. The out-of-distribution score (``ich.ood``) is the second, learned check.

The limits are fixed from what head CT protocols produce (documented below), never from test results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Head CT protocols reconstruct 0.5-10 mm slices; 10 mm is the thickest routine axial head CT.
SPACING_MM = (0.3, 10.0)
MAX_SLICES = 1000           # 0.3 mm over 300 mm; anything larger is not one head series
FEW_SLICES = 10             # below this an exam score rests on very little of the head
MAX_TILT_DEG = 30.0         # gantry tilt of routine head CT stays under ~25 degrees
HEAD_FOV_MM = (150.0, 500.0)   # reconstructed field of view (columns x column spacing)
HEAD_WIDTH_MM = (90.0, 240.0)  # widest body outline (HU > -300) across the series' middle slices
BODY_HU = -300.0            # air/skin boundary


@dataclass(frozen=True)
class SeriesCheck:
    """The verdict on one series: refusals stop scoring, warnings are shown beside the score."""

    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    facts: dict = field(default_factory=dict)   # n_slices, spacing_mm, tilt_deg, fov_mm, head_width_mm

    @property
    def ok(self) -> bool:
        return not self.refusals

    def to_dict(self) -> dict:
        return {"ok": self.ok, "refusals": list(self.refusals), "warnings": list(self.warnings), "facts": self.facts}

    def raise_if_refused(self) -> None:
        """Raise ``ValueError`` with every refusal (one per line) when the series must not be scored."""
        if self.refusals:
            raise ValueError("the series cannot be scored: " + " | ".join(self.refusals))


def _tilt_deg(normal) -> float | None:
    """Angle between the slice normal and the patient's head-feet axis, degrees (0 = axial)."""
    if normal is None:
        return None
    n = np.asarray(normal, dtype=float)
    norm = np.linalg.norm(n)
    if not norm:
        return None
    return float(np.degrees(np.arccos(min(1.0, abs(n[2]) / norm))))


def head_width_mm(hu: np.ndarray, column_spacing_mm: float) -> float:
    """Widest left-right extent of the body outline (HU > -300) over the middle third of the slices, mm.

    Args:
        hu: (S, H, W) float HU.
        column_spacing_mm: pixel width in mm.
    """
    s = hu.shape[0]
    mid = hu[s // 3: max(s // 3 + 1, 2 * s // 3)]
    body = mid > BODY_HU                                   # (s', H, W)
    cols = body.any(axis=1)                                # (s', W) columns that hold body
    widths = [np.ptp(np.flatnonzero(c)) + 1 if c.any() else 0 for c in cols]
    return float(max(widths) * column_spacing_mm) if widths else 0.0


def check_volume(volume) -> SeriesCheck:
    """Check one series read by ``dicom.read_series`` (or any object with ``hu``, ``spacing_mm``, ``meta``).

    Args:
        volume: ``hu`` (S, H, W) float HU; ``spacing_mm`` (slice, row, column) mm; ``meta`` with
            ``modality``, ``normal``, ``gaps``, ``uneven_spacing``, ``slice_positions_mm`` when known.

    Returns:
        A ``SeriesCheck``; never raises for a bad series (call ``raise_if_refused``).
    """
    hu = np.asarray(volume.hu)
    meta = dict(getattr(volume, "meta", {}) or {})
    refusals: list[str] = []
    warnings: list[str] = []
    if hu.ndim != 3 or hu.shape[0] == 0:
        return SeriesCheck(refusals=(f"expected a stack of slices (S, H, W), found an array of shape {hu.shape}",))
    n = int(hu.shape[0])
    step, _, col = (float(v) if v is not None else math.nan for v in volume.spacing_mm)
    facts = {"n_slices": n, "spacing_mm": None if math.isnan(step) else round(step, 3)}

    modality = str(meta.get("modality") or "CT").upper()
    if modality != "CT":
        refusals.append(f"the modality is {modality}, not CT: the model reads head CT only; upload a CT series")
    if n > MAX_SLICES:
        refusals.append(f"the series has {n} slices, more than {MAX_SLICES}: this is not one head CT series; "
                        "upload one axial head series")
    elif n < FEW_SLICES:
        warnings.append(f"only {n} slice{'s' if n != 1 else ''}: a head CT usually has 20-60 axial slices, so "
                        "the exam score rests on a small part of the head; read it as a slice score")
    if n > 1:
        lo, hi = SPACING_MM
        if not math.isfinite(step) or not lo <= step <= hi:
            refusals.append(f"the slices are {step:.2f} mm apart; this model expects {lo}-{hi} mm between axial "
                            "head CT slices. Upload the series reconstructed at a routine slice thickness")
        gaps = list(meta.get("gaps") or [])
        if gaps:
            pos = meta.get("slice_positions_mm") or []
            where = ", ".join(f"after slice {i}" + (f" ({pos[i + 1] - pos[i]:.1f} mm step)" if len(pos) > i + 1 else "")
                              for i in gaps[:3])
            refusals.append(f"slices are missing ({len(gaps)} gap{'s' if len(gaps) > 1 else ''}: {where}, where "
                            f"the series steps {step:.1f} mm); export the complete series")
        elif meta.get("uneven_spacing"):
            warnings.append("the slices are unevenly spaced; the slice strip shows them in order, not to scale")
        same = [i for i in range(n - 1) if np.array_equal(hu[i], hu[i + 1])]
        if same:
            refusals.append(f"{len(same)} pair{'s' if len(same) > 1 else ''} of neighbouring slices are "
                            f"pixel-identical (first: slices {same[0]} and {same[0] + 1}); the series holds copied "
                            "slices. Export the original series")
    tilt = _tilt_deg(meta.get("normal"))
    facts["tilt_deg"] = None if tilt is None else round(tilt, 1)
    if tilt is not None and tilt > MAX_TILT_DEG:
        plane = "sagittal or coronal" if tilt > 60 else "strongly tilted"
        refusals.append(f"the slices are {plane} ({tilt:.0f} degrees from axial); the model reads axial head CT "
                        f"(tilt under {MAX_TILT_DEG:.0f} degrees). Upload the axial series")

    if math.isfinite(col) and col > 0:
        fov = hu.shape[2] * col
        width = head_width_mm(hu, col)
        facts.update(fov_mm=round(fov, 1), head_width_mm=round(width, 1))
        reasons = []
        if not HEAD_FOV_MM[0] <= fov <= HEAD_FOV_MM[1]:
            reasons.append(f"the field of view is {fov:.0f} mm wide (a head CT shows {HEAD_FOV_MM[0]:.0f}-"
                           f"{HEAD_FOV_MM[1]:.0f} mm)")
        if not HEAD_WIDTH_MM[0] <= width <= HEAD_WIDTH_MM[1]:
            reasons.append(f"the body outline is {width:.0f} mm wide (a head is {HEAD_WIDTH_MM[0]:.0f}-"
                           f"{HEAD_WIDTH_MM[1]:.0f} mm)")
        if reasons:
            warnings.append("this does not look like a head: " + "; ".join(reasons) + ". The model was trained on "
                            "head CT only, so its score for this series means nothing")
    else:
        warnings.append("the series records no pixel spacing, so the head check could not run")
    return SeriesCheck(refusals=tuple(refusals), warnings=tuple(warnings), facts=facts)


def check_folder(folder: str | os.PathLike) -> list[dict]:
    """Read and check every CT series of a DICOM folder, without scoring (``ich.inputs``).

    Returns:
        One dict per series, in the folder's order: ``series`` ("series 1", ...), ``series_key``
        (a hash of its UID), ``volume`` (a ``dicom.Volume``, None when it could not be read), ``check``
        (an ``inputs.SeriesCheck``). A series ``read_series`` refuses (non-CT, duplicated slices...)
        comes back with that refusal as its check.
    """
    from ich import dicom

    scan = dicom.scan_headers(folder, on_error="raise")
    if not scan.headers:
        raise ValueError(f"{folder}: no DICOM image found ({len(scan.non_image)} non-image objects); give the folder "
                         "of one CT series")
    out = []
    for i, (uid, headers) in enumerate(dicom.group_series(scan.headers).items()):
        item = {"series": f"series {i + 1}", "series_key": dicom.key_hash(uid)[:12], "volume": None}
        try:
            vol = dicom.read_series([h.path for h in headers])
            item.update(volume=vol, check=check_volume(vol))
        except dicom.DicomError as err:
            item["check"] = SeriesCheck(refusals=(str(err),), facts={"n_slices": len(headers)})
        out.append(item)
    return out

