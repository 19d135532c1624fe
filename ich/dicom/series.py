"""One CT series from files to a HU volume: scan, plan and decode together (``read_series``)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ich.dicom.common import DicomError, check_on_error
from ich.dicom.decode import choose_decoders, decode_task
from ich.dicom.scan import group_series, plan_series, scan_headers
from ich.pool import WorkerPool

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- one series

@dataclass
class Volume:
    """One CT series as an HU volume.

    Attributes:
        hu: (S, H, W) float32 HU, slice 0 lowest along the slice normal.
        spacing_mm: (slice step along the normal, row spacing, column spacing) in mm.
        sop_uids: SOPInstanceUID of each slice, in slice order (to join labels or boxes).
        meta: non-identifying facts: modality, transfer syntaxes, decoder, window (first values),
            slice positions, gaps, 12-bit fixes, skipped files. No names, IDs, dates.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    sop_uids: list[str]
    meta: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def read_series(paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike], *,
                series_uid: str | None = None, on_error: str = "raise", workers: int = 1,
                fix12: bool = True) -> Volume:
    """Read one CT series (a folder, or a list of files) into a ``Volume``.

    Args:
        paths_or_folder: a folder (recursive) or the files of the series.
        series_uid: the SeriesInstanceUID to read when the input holds several series.
        on_error: "raise" (default) stops at the first corrupt file; "skip" drops corrupt files
            and lists them in ``meta["skipped"]`` (the series-level checks always raise).
        workers: processes used for the header scan and the decoding.
        fix12: apply the RSNA 12-bit fix where its condition holds.

    Raises:
        FileNotFoundError / ValueError: missing or empty input.
        DicomError: corrupt file (on_error="raise"), mixed series without ``series_uid``,
            non-CT modality, missing or duplicate positions, inconsistent image sizes.
        DecoderMissingError: compressed pixels and no decoder installed (names the package).
    """
    check_on_error(on_error)
    with WorkerPool(workers) as pool:
        scan = scan_headers(paths_or_folder, on_error=on_error, pool=pool)
        where = paths_or_folder if isinstance(paths_or_folder, (str, os.PathLike)) else "the given files"
        if not scan.headers:
            if scan.problems:
                raise scan.problems[0]
            raise ValueError(f"{where}: no image files found ({len(scan.non_image)} non-image DICOM objects)")
        groups = group_series(scan.headers)
        if series_uid is not None:
            if series_uid not in groups:
                raise ValueError(f"{where}: no series with SeriesInstanceUID {series_uid!r}; found {sorted(groups)}")
            headers = groups[series_uid]
        elif len(groups) > 1:
            desc = "; ".join(f"{uid} ({len(hs)} files, {hs[0].series_description or 'no description'!r})"
                             for uid, hs in groups.items())
            raise DicomError(
                f"{where} mixes {len(groups)} series: {desc}. Pass series_uid=... to read one of them, or import "
                "the folder with `python -m ich import folder`, which makes one exam per series",
                kind="mixed_series", path=scan.headers[0].path)
        else:
            headers = scan.headers
        plan = plan_series(headers)
        decoders = choose_decoders(plan.headers)
        n = plan.n_slices
        heavy = any(h.pixel_offset is None for h in plan.headers)  # plain reads are cheaper than IPC
        n_chunks = min(n, 4 * workers) if workers > 1 and heavy else 1
        bounds = [round(k * n / n_chunks) for k in range(n_chunks + 1)]
        spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        tasks = [(plan.headers[a:b], decoders, None, on_error, fix12) for a, b in spans]
        parts, kept, problems, fixes, used = [], [], list(scan.problems), 0, Counter()
        for (a, _), part in zip(spans, pool.map_ordered(decode_task, tasks)):
            parts.append(part.hu)
            kept.extend(a + k for k in part.kept)
            problems.extend(part.problems)
            fixes += part.twelve_bit_fixes
            used.update(part.decoders)
    if not kept:
        raise problems[0] if problems else ValueError(f"{where}: no slice could be decoded")
    hu = np.concatenate([p.astype(np.float32, copy=False) for p in parts if len(p)])  # (S, H, W) HU
    meta = plan.describe()
    positions = plan.positions_mm[kept]
    if len(kept) != n:  # gaps over the slices actually kept
        steps = np.diff(positions)
        meta["gaps"] = [int(i) for i in np.flatnonzero(steps > 1.5 * np.median(steps))] if len(steps) else []
    meta.update({
        "n_slices": len(kept), "slice_positions_mm": [round(float(p), 4) for p in positions],
        "decoders": dict(used), "twelve_bit_fixes": fixes,
        "skipped": [{"file": e.path, "kind": e.kind, "reason": str(e)} for e in problems],
    })
    return Volume(hu=hu, spacing_mm=plan.spacing_mm, sop_uids=[plan.headers[i].sop_uid for i in kept], meta=meta)
