"""Tests for ich.inputs: the checks a series passes before it is scored."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from _series import ct_small_series
from ich.dicom import read_series
from ich.inputs import check_volume


def head_like(n=20, size=64, spacing=(5.0, 3.75, 3.75), **meta):
    """A (n, size, size) volume with a 160 mm wide skull-and-brain disc (240 mm field of view)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2) * spacing[2]
    sl = np.where(r < 72, 35.0, np.where(r < 80, 1000.0, -1000.0)).astype(np.float32)
    hu = np.stack([sl + i * 0.5 for i in range(n)])
    base = {"modality": "CT", "normal": [0.0, 0.0, 1.0], "gaps": [], "uneven_spacing": False,
            "slice_positions_mm": [i * spacing[0] for i in range(n)]}
    return SimpleNamespace(hu=hu, spacing_mm=spacing, meta={**base, **meta})


def test_a_head_series_passes():
    check = check_volume(head_like())
    assert check.ok and check.warnings == (), check
    assert check.facts["head_width_mm"] == pytest.approx(160, abs=8)


def test_real_body_ct_is_warned_as_not_a_head(tmp_path):
    check = check_volume(read_series(ct_small_series(tmp_path / "ct", n=24)))
    assert check.ok
    assert any("does not look like a head" in w and "field of view is 85 mm" in w for w in check.warnings)


def test_a_real_phantom_series_passes(tiny_dicom_phantom):
    check = check_volume(read_series(tiny_dicom_phantom / "exams" / "PH000002"))
    assert check.ok and not any("head" in w for w in check.warnings), check


def test_missing_slices_are_refused(tmp_path):
    folder = ct_small_series(tmp_path / "ct", n=12)
    (folder / "slice005.dcm").unlink()
    check = check_volume(read_series(folder))
    assert not check.ok and "slices are missing (1 gap: after slice 4 (10.0 mm step)" in check.refusals[0]
    with pytest.raises(ValueError, match="cannot be scored: slices are missing"):
        check.raise_if_refused()


def test_identical_neighbouring_slices_are_refused():
    v = head_like()
    v.hu[7] = v.hu[6]
    check = check_volume(v)
    assert any("pixel-identical (first: slices 6 and 7)" in r for r in check.refusals)


@pytest.mark.parametrize("normal, words", [([1.0, 0.0, 0.0], "sagittal or coronal (90 degrees"),
                                           ([0.0, 0.6, 0.8], "strongly tilted (37 degrees")])
def test_non_axial_slices_are_refused(normal, words):
    check = check_volume(head_like(normal=normal))
    assert any(words in r for r in check.refusals), check.refusals


@pytest.mark.parametrize("step", [0.1, 20.0])
def test_slice_spacing_outside_head_protocols_is_refused(step):
    check = check_volume(head_like(spacing=(step, 3.75, 3.75)))
    assert any(f"{step:.2f} mm apart; this model expects 0.3-10.0 mm" in r for r in check.refusals)


def test_non_ct_is_refused_and_too_many_slices_too():
    assert "modality is MR, not CT" in check_volume(head_like(modality="MR")).refusals[0]
    assert "more than 1000" in check_volume(head_like(n=1001)).refusals[0]


def test_one_slice_is_scored_with_a_warning():
    check = check_volume(head_like(n=1))
    assert check.ok and "only 1 slice:" in check.warnings[0]


def test_no_pixel_spacing_skips_the_head_check_with_a_warning():
    check = check_volume(head_like(spacing=(5.0, float("nan"), float("nan"))))
    assert check.ok and "head check could not run" in check.warnings[-1]
