"""Tiny synthetic head-CT-like datasets for the learner tests: bright blobs in some slices of noisy heads.

Each exam is (S, size, size) HU: air outside an elliptical head, a bone ring, brain tissue at
~30 HU with Gaussian noise, and for positive exams a run of consecutive slices holding a
bright (~75 HU) disc. Slice labels mark the disc; the exam label is their maximum.
"""

from __future__ import annotations

import numpy as np

from ich.store import DatasetWriter, open_dataset


def blob_volume(rng: np.random.Generator, n_slices: int, size: int, positive: bool, *, noise: float = 6.0,
                radius: float = 0.08, contrast: float = 45.0) -> tuple[np.ndarray, np.ndarray]:
    """One exam: (S, size, size) float32 HU and (S,) slice labels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    head = (xx / 0.42) ** 2 + (yy / 0.47) ** 2
    hu = np.full((n_slices, size, size), -1000.0, np.float32)
    brain = head < 0.85
    skull = (head >= 0.85) & (head < 1.0)
    hu[:, brain] = 30.0
    hu[:, skull] = 900.0
    hu += rng.normal(0, noise, hu.shape).astype(np.float32) * (head < 1.0)
    labels = np.zeros(n_slices, np.int8)
    if positive:
        run = int(rng.integers(max(2, n_slices // 4), max(3, n_slices // 2) + 1))
        start = int(rng.integers(0, n_slices - run + 1))
        cy, cx = rng.uniform(-0.2, 0.2, size=2)
        r = radius * rng.uniform(0.8, 1.25)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
        for s in range(start, start + run):
            hu[s, disc] += contrast
            labels[s] = 1
    return hu, labels


def write_blob_dataset(out, n_exams: int = 24, *, seed: int = 0, size: int = 64, slices=(8, 14),
                       positive_fraction: float = 0.5, split=(0.5, 0.25, 0.25), **kw):
    """Write a blob dataset with ``DatasetWriter`` and open it."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(out, source="phantom", size=size, split_fractions=split, split_seed=seed) as w:
        for i in range(n_exams):
            n = int(rng.integers(slices[0], slices[1] + 1))
            hu, lab = blob_volume(rng, n, size, positive=i % 2 == 0 if positive_fraction == 0.5
                                  else rng.random() < positive_fraction, **kw)
            w.add_exam(f"EX{i:04d}", patient_key=f"P{i}", hu=hu, slice_labels=lab)
    return open_dataset(out)
