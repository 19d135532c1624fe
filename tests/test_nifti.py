"""Tests for ich.nifti: the (W, H, S) file <-> (S, H, W) array boundary, spacing, mask checks."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from ich.nifti import TO_SHW, read_nifti, read_nifti_mask, write_nifti


def _volume(shape=(4, 6, 5), seed=0):
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.int16)


def test_read_transposes_file_axes_to_shw(tmp_path):
    shw = _volume()
    path = tmp_path / "049.nii"
    # the CT-ICH layout: the file's array is (W, H, S), written here with nibabel directly
    nib.save(nib.Nifti1Image(np.transpose(shw, (2, 1, 0)), np.diag([0.4, 0.45, 5.0, 1.0])), str(path))
    hu, spacing = read_nifti(path)
    assert hu.dtype == np.float32 and hu.shape == (4, 6, 5)
    np.testing.assert_array_equal(hu, shw)
    assert spacing == pytest.approx((5.0, 0.45, 0.4))  # (slice, row, column)


def test_scaling_from_the_header_is_applied(tmp_path):
    shw = _volume()
    img = nib.Nifti1Image(np.transpose(shw, TO_SHW), np.eye(4))
    img.header.set_slope_inter(2.0, -10.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    hu, _ = read_nifti(tmp_path / "scaled.nii")
    np.testing.assert_allclose(hu, shw * 2.0 - 10.0)


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_write_read_round_trip(tmp_path, name):
    shw = _volume((3, 8, 7))
    write_nifti(shw, tmp_path / name, spacing_mm=(2.5, 0.5, 0.6))
    hu, spacing = read_nifti(tmp_path / name)
    np.testing.assert_array_equal(hu, shw)
    assert spacing == pytest.approx((2.5, 0.5, 0.6))
    assert nib.load(str(tmp_path / name)).shape == (7, 8, 3)  # stored as (W, H, S)
    assert not list(tmp_path.glob(".tmp-*"))


def test_mask_is_read_as_uint8_codes(tmp_path):
    mask = np.zeros((3, 4, 5), dtype=np.uint8)
    mask[1, 1:3, 2:4] = 5
    write_nifti(mask, tmp_path / "m.nii.gz")
    out = read_nifti_mask(tmp_path / "m.nii.gz")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)


def test_float_mask_with_fractions_is_rejected(tmp_path):
    write_nifti(np.full((2, 3, 3), 0.5, dtype=np.float32), tmp_path / "m.nii")
    with pytest.raises(ValueError, match="a mask must hold integer labels"):
        read_nifti_mask(tmp_path / "m.nii")


def test_mask_values_out_of_range_are_rejected(tmp_path):
    write_nifti(np.full((2, 3, 3), -1, dtype=np.int16), tmp_path / "m.nii")
    with pytest.raises(ValueError, match=r"mask values must lie in 0\.\.255, found -1"):
        read_nifti_mask(tmp_path / "m.nii")


def test_four_d_volume_is_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 2, 2), dtype=np.int16), np.eye(4)), str(tmp_path / "4d.nii"))
    with pytest.raises(ValueError, match=r"expected a 3-D volume, found shape \(3, 3, 2, 2\)"):
        read_nifti(tmp_path / "4d.nii")


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.nii does not exist"):
        read_nifti(tmp_path / "nope.nii")
    write_nifti(_volume((4, 16, 16)), tmp_path / "v.nii.gz")
    data = gzip.decompress((tmp_path / "v.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(ValueError, match=r"cut\.nii\.gz: the image data cannot be read .*truncated"):
        read_nifti(tmp_path / "cut.nii.gz")


def test_write_rejects_bad_shapes_and_names(tmp_path):
    with pytest.raises(ValueError, match=r"expects a \(S, H, W\) array"):
        write_nifti(np.zeros((3, 3)), tmp_path / "x.nii")
    with pytest.raises(ValueError, match=r"must end in \.nii or \.nii\.gz"):
        write_nifti(np.zeros((1, 3, 3)), tmp_path / "x.npy")
