"""Many phantom exams: seeded per exam (same result for any worker count), and written as an ich dataset."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ich.phantom.config import PARAMS_VERSION, PhantomConfig, phantom_config
from ich.phantom.params import PhantomParams, exam_id_for, exam_seed, sample_phantom_params
from ich.phantom.render import render_phantom

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# ----------------------------------------------------------------------------------------------
# many exams
# ----------------------------------------------------------------------------------------------

def make_phantoms(n_exams: int, *, seed: int = 0, cfg: PhantomConfig | None = None,
                  start: int = 0) -> Iterator[tuple[str, PhantomParams, np.ndarray, np.ndarray]]:
    """Yield ``n_exams`` phantom exams: (exam_id, params, hu (S, H, W) float32, mask (S, H, W) uint8).

    Exam ``i`` is drawn from ``exam_seed(seed, i)``, so it is the same whatever ``n_exams`` is.
    """
    if not isinstance(n_exams, (int, np.integer)) or n_exams < 0:
        raise ValueError(f"n_exams must be a non-negative integer, not {n_exams!r}")
    cfg = cfg or PhantomConfig()
    for i in range(start, start + int(n_exams)):
        params = sample_phantom_params(exam_seed(seed, i), cfg)
        hu, mask = render_phantom(params)
        yield exam_id_for(i), params, hu, mask


def write_phantom_dataset(out: str | os.PathLike, n_exams: int, *, seed: int = 0, size: int = 64,
                          difficulty: str | PhantomConfig = "easy", slices: tuple[int, int] | None = None,
                          overwrite: bool = False, **overrides) -> Path:
    """Render phantoms straight into an ich dataset store (no DICOM): the fast path for tests.

    Args:
        out: dataset folder to create (see ``ich.store.DatasetWriter``).
        n_exams: number of exams.
        seed: dataset seed (exam i uses ``exam_seed(seed, i)``).
        size: in-plane pixels, rendered and cached at this size.
        difficulty: a preset name (easy, default, hard) or a ``PhantomConfig``.
        slices: (low, high) slices per exam; default is the config's.
        overrides: other ``PhantomConfig`` fields.

    Returns:
        The dataset path; open it with ``ich.open_dataset``.
    """
    from ich.store import DatasetWriter  # the store pulls in torch; keep `import ich.phantom` light

    if slices is not None:
        overrides["n_slices"] = tuple(slices)
    cfg = phantom_config(difficulty, size=size, **overrides)
    name = difficulty if isinstance(difficulty, str) else "custom"
    with DatasetWriter(out, source="phantom", size=size, overwrite=overwrite) as w:
        w.report = {"generator": "ich.phantom", "version": PARAMS_VERSION, "seed": int(seed),
                    "exams": int(n_exams), "size": size, "difficulty": name, "config": cfg.to_dict()}
        for exam_id, params, hu, mask in make_phantoms(n_exams, seed=seed, cfg=cfg):
            w.add_exam(exam_id, patient_key=f"PHANTOM-{exam_id}", hu=hu, mask=mask,
                       slice_thickness_mm=params.slice_thickness_mm, pixel_spacing_mm=params.pixel_spacing_mm)
    return Path(out)
