"""Tests for ich.dicom: header index, series planning (sort, checks), decoding, HU, read_series."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pydicom.examples
import pytest
from pydicom.data import get_testdata_file

import ich.dicom as icd
from ich.pool import WorkerPool
from _datasets import SECRET_BIRTH, SECRET_ID, SECRET_NAME, edit, head_volume, plant_identity, to_jpeg_lossless, \
    truncate_pixels
from ich.dicom import DecoderMissingError, DicomError, read_series, write_series


def _pydicom_data(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package (a test dependency)")
    return path


@pytest.fixture()
def series(tmp_path):
    """A 6-slice 32x32 CT series; returns (folder, hu, sop_uids)."""
    hu, _ = head_volume(6, seed=3)
    sops = write_series(hu, tmp_path / "s", patient_id="P1", series_key="s1", spacing_mm=(2.5, 0.5, 0.5))
    return tmp_path / "s", hu, sops


def _file(folder: Path, sop: str) -> Path:
    return folder / f"{sop}.dcm"


# --------------------------------------------------------------------------- files no one here wrote

def test_ct_small_hu_matches_pydicom():
    path = pydicom.examples.get_path("ct")
    vol = read_series(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.hu.dtype == np.float32 and vol.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.hu[0], expected)
    assert vol.sop_uids == [ds.SOPInstanceUID]
    assert vol.spacing_mm[1:] == pytest.approx((0.661468, 0.661468))
    assert vol.meta["modality"] == "CT" and vol.meta["decoders"] == {"native": 1}


def test_jpeg2000_ct_decoded_equals_uncompressed_copy():
    j2k, raw = _pydicom_data("693_J2KR.dcm"), _pydicom_data("693_UNCR.dcm")
    a, b = read_series(j2k), read_series(raw)
    assert a.meta["decoders"] == {"gdcm": 1}  # python-gdcm is the preferred decoder
    assert b.meta["decoders"] == {"native": 1}
    assert a.shape == (1, 512, 512)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.hu.min() == -3024 and a.meta["transfer_syntaxes"] == {"1.2.840.10008.1.2.4.90":
                                                                   "JPEG 2000 Image Compression (Lossless Only)"}


def test_jpeg_lossless_file_decodes_with_gdcm():
    path = _pydicom_data("JPEG-LL.dcm")
    arr, ds, decoder = icd.decode_file(path)
    assert decoder == "gdcm" and arr.shape == (1024, 256) and arr.dtype == np.int16
    assert str(ds.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.70"
    assert arr.std() > 0  # real image content, not zeros


def test_non_ct_modality_is_refused():
    with pytest.raises(DicomError, match=r"JPEG-LL\.dcm: modality is 'NM', not 'CT'"):
        read_series(_pydicom_data("JPEG-LL.dcm"))


def test_segmentation_object_is_refused():
    with pytest.raises(DicomError, match="modality is 'SEG', not 'CT'"):
        read_series(_pydicom_data("liver.dcm"))


def test_multi_frame_ct_is_refused():
    with pytest.raises(DicomError, match=r"multi-frame image \(2 frames in one file\)"):
        read_series(_pydicom_data("eCT_Supplemental.dcm"))


def test_fast_pixel_read_equals_pydicom(tmp_path, series):
    folder, _, sops = series
    files = [pydicom.examples.get_path("ct"), _file(folder, sops[0])]
    # unsigned and signed 12-bit data with garbage in the unused high bits: pydicom masks / sign-extends
    for signed in (0, 1):
        p = tmp_path / f"bits12_{signed}.dcm"
        shutil.copy(_file(folder, sops[1]), p)
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, signed
        ds.PixelData = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).__or__(0xA000).tobytes()
        ds.save_as(p, enforce_file_format=True)
        files.append(p)
    for f in files:
        h = icd.read_slice_header(f)
        assert h.pixel_offset is not None
        np.testing.assert_array_equal(icd.decode._read_fast(h), pydicom.dcmread(f).pixel_array)


def test_header_fields_match_pydicom_for_every_encoding(tmp_path, series):
    folder, _, sops = series
    implicit = tmp_path / "implicit.dcm"
    ds = pydicom.dcmread(_file(folder, sops[0]))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    files = [pydicom.examples.get_path("ct"), implicit, _pydicom_data("emri_small_big_endian.dcm"),
             _pydicom_data("693_J2KR.dcm")]
    for f in files:
        h, ds = icd.read_slice_header(f), pydicom.dcmread(f)
        assert (h.rows, h.cols, h.modality, h.sop_uid) == (ds.Rows, ds.Columns, ds.Modality, ds.SOPInstanceUID)
        assert h.series_uid == ds.SeriesInstanceUID and h.transfer_syntax == ds.file_meta.TransferSyntaxUID
        assert h.position == (tuple(float(v) for v in ds.ImagePositionPatient) if "ImagePositionPatient" in ds
                              else None)
        assert h.pixel_spacing == (tuple(float(v) for v in ds.PixelSpacing) if "PixelSpacing" in ds else None)
        assert h.bits_stored == ds.BitsStored and h.pixel_representation == ds.PixelRepresentation
        assert h.intercept == float(ds.get("RescaleIntercept", 0)) and h.slope == float(ds.get("RescaleSlope", 1))
        assert h.instance_number == (int(ds.InstanceNumber) if "InstanceNumber" in ds else None)
        # direct pixel reads for uncompressed little endian and one encapsulated frame; they equal pydicom's array
        assert h.n_frames == int(ds.get("NumberOfFrames", 1))
        assert (h.pixel_offset is not None) == (f in (files[0], implicit) or (f == files[3] and h.n_frames == 1))
        if h.n_frames == 1:
            if h.pixel_offset is None:
                arr = icd.decode_file(f)[0]
            elif h.transfer_syntax in icd.NATIVE_FAST:
                arr = icd.decode._read_fast(h)
            else:
                arr = icd.decode._read_encapsulated(h, icd.choose_decoder(h.transfer_syntax))
            np.testing.assert_array_equal(arr, ds.pixel_array)


# --------------------------------------------------------------------------- sorting and HU

def test_slices_sorted_by_position_not_instance_number_or_name(tmp_path):
    hu, _ = head_volume(5, seed=1)
    names = ["e.dcm", "a.dcm", "d.dcm", "b.dcm", "c.dcm"]  # file names do not follow anatomy
    sops = write_series(hu, tmp_path, patient_id="P", series_key="k", file_names=names)
    for name, inst in zip(names, [3, 5, 1, 4, 2]):  # neither do instance numbers
        edit(tmp_path / name, InstanceNumber=inst)
    vol = read_series(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.sop_uids == sops
    assert vol.spacing_mm == (5.0, 0.5, 0.5)
    assert vol.meta["slice_positions_mm"] == [0.0, 5.0, 10.0, 15.0, 20.0]


def test_gantry_tilt_sorts_along_the_normal_not_z(tmp_path):
    t = np.deg2rad(30)
    row, col = np.array([1.0, 0, 0]), np.array([0, np.cos(t), np.sin(t)])
    normal = np.cross(row, col)
    hu, _ = head_volume(4, seed=2)
    sops = write_series(hu, tmp_path, patient_id="P", series_key="tilt")
    for i, sop in enumerate(sops):
        ipp = i * 5.0 * normal - i * 20.0 * col  # z decreases with i, the position along the normal increases
        edit(tmp_path / f"{sop}.dcm", ImageOrientationPatient=[*row, *col], ImagePositionPatient=list(ipp))
    vol = read_series(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing_mm[0] == pytest.approx(5.0)


def test_twelve_bit_fix_is_applied_and_counted(series):
    folder, hu, sops = series
    p = _file(folder, sops[2])
    ds = pydicom.dcmread(p)
    ds.PixelData = np.mod(hu[2].astype(np.int64), 4096).astype(np.uint16).tobytes()
    ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 12, 11, 0
    ds.save_as(p, enforce_file_format=True)
    vol = read_series(folder)
    assert vol.meta["twelve_bit_fixes"] == 1
    np.testing.assert_array_equal(vol.hu, hu)
    raw = read_series(folder, fix12=False)
    assert raw.meta["twelve_bit_fixes"] == 0 and not np.array_equal(raw.hu[2], hu[2])


def test_multivalued_window_takes_first_value(series):
    folder, _, sops = series
    for sop in sops:
        edit(_file(folder, sop), WindowCenter=[40, 80], WindowWidth=[80, 200])
    assert read_series(folder).meta["window"] == [40.0, 80.0]
    assert icd.first_value(pydicom.multival.MultiValue(float, [40, 80])) == 40.0


def test_rescale_slope_gives_float_hu(series):
    folder, hu, sops = series
    for sop in sops:
        edit(_file(folder, sop), RescaleSlope=0.5)
    vol = read_series(folder)
    stored = np.clip(np.rint(hu + 1024), 0, 65535)
    np.testing.assert_allclose(vol.hu, stored * 0.5 - 1024)


def test_gap_in_positions_is_flagged(tmp_path, caplog):
    hu, _ = head_volume(5, seed=4)
    sops = write_series(hu, tmp_path, patient_id="P", series_key="gap")
    edit(tmp_path / f"{sops[4]}.dcm", ImagePositionPatient=[-8.0, -8.0, 40.0])  # step 20 -> 40
    vol = read_series(tmp_path)
    assert vol.meta["gaps"] == [3] and vol.meta["uneven_spacing"] is True
    assert "uneven slice spacing" in caplog.text


def test_workers_give_the_same_volume(series):
    folder, hu, _ = series
    vol = read_series(folder, workers=2)
    np.testing.assert_array_equal(vol.hu, hu)


def test_volume_meta_has_no_identifying_values(series, caplog):
    folder, _, sops = series
    for sop in sops:
        plant_identity(_file(folder, sop))
    vol = read_series(folder)
    text = json.dumps(vol.meta) + caplog.text
    for secret in (SECRET_NAME, SECRET_ID, SECRET_BIRTH, "Secret General", "ACC-SECRET"):
        assert secret not in text
    assert icd.read_slice_header(_file(folder, sops[0])).patient_key == icd.key_hash(SECRET_ID)


def test_header_scan_ignores_non_dicom_and_non_image_files(series):
    folder, _, sops = series
    (folder / "README.txt").write_text("hello")
    (folder / ".hidden.dcm").write_text("x")
    sr = pydicom.Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: no pixels
    sr.SOPInstanceUID, sr.Modality = "1.2.3.4", "SR"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(folder / "REPORT", enforce_file_format=True)  # no suffix, found by its DICM preamble
    scan = icd.scan_headers(folder)
    assert len(scan.headers) == 6 and scan.non_image == [str(folder / "REPORT")]
    assert read_series(folder).shape == (6, 32, 32)


# --------------------------------------------------------------------------- bad input

def test_corrupt_file_raises_or_is_skipped(series):
    folder, hu, sops = series
    truncate_pixels(_file(folder, sops[3]))
    with pytest.raises(DicomError, match=rf"{sops[3]}\.dcm: corrupt or truncated DICOM file \(pixel data truncated"):
        read_series(folder)
    vol = read_series(folder, on_error="skip")
    assert vol.shape == (5, 32, 32) and sops[3] not in vol.sop_uids
    np.testing.assert_array_equal(vol.hu, np.delete(hu, 3, axis=0))
    assert vol.meta["skipped"][0]["kind"] == "corrupt" and vol.meta["gaps"] == [2]


def test_truncated_header_is_corrupt(series):
    folder, _, sops = series
    p = _file(folder, sops[0])
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DicomError, match="corrupt or truncated DICOM file .*header ends before"):
        read_series(folder)


def test_garbage_dcm_file_is_corrupt(series):
    folder, _, _ = series
    (folder / "junk.dcm").write_bytes(b"this is not dicom at all" * 10)
    with pytest.raises(DicomError, match=r"junk\.dcm: corrupt or truncated DICOM file"):
        read_series(folder)
    assert read_series(folder, on_error="skip").shape == (6, 32, 32)


def test_folder_mixing_series_raises_unless_one_is_chosen(tmp_path):
    a, _ = head_volume(3, seed=1)
    b, _ = head_volume(4, seed=2)
    write_series(a, tmp_path, patient_id="P", series_key="a", series_description="AXIAL 5mm")
    write_series(b, tmp_path, patient_id="P", series_key="b", series_description="AXIAL 1mm")
    with pytest.raises(DicomError, match=r"mixes 2 series: .*'AXIAL 5mm'.*Pass series_uid="):
        read_series(tmp_path)
    uid = icd.make_uid("series", "b")
    np.testing.assert_array_equal(read_series(tmp_path, series_uid=uid).hu, b)
    with pytest.raises(ValueError, match="no series with SeriesInstanceUID 'nope'"):
        read_series(tmp_path, series_uid="nope")


def test_missing_position_raises(series):
    folder, _, sops = series
    edit(_file(folder, sops[1]), ImagePositionPatient=None)
    with pytest.raises(DicomError, match=r"no ImagePositionPatient \(0020,0032\); ich needs it to order the 6 slices"):
        read_series(folder)


def test_duplicate_position_raises(series):
    folder, _, sops = series
    copy = folder / "copy.dcm"
    shutil.copy(_file(folder, sops[2]), copy)
    edit(copy, SOPInstanceUID="1.2.3.999")
    with pytest.raises(DicomError, match="have the same slice position .*Remove the duplicate file"):
        read_series(folder)


def test_inconsistent_image_size_raises(tmp_path, series):
    folder, _, sops = series
    big, _ = head_volume(1, size=48)
    write_series(big, tmp_path / "big", patient_id="P", series_key="s1", sop_uids=["1.2.3.48"])
    odd = tmp_path / "big" / "1.2.3.48.dcm"
    edit(odd, ImagePositionPatient=[-8.0, -8.0, 99.0])
    shutil.copy(odd, folder / "odd.dcm")
    with pytest.raises(DicomError, match=r"odd\.dcm: image is 48x48 pixels, but 6 other slices .* are 32x32"):
        read_series(folder)


def test_missing_decoder_names_the_package(tmp_path, series, monkeypatch):
    folder, hu, sops = series
    for sop in sops:
        to_jpeg_lossless(_file(folder, sop))
    np.testing.assert_array_equal(read_series(folder).hu, hu)  # gdcm decodes it
    monkeypatch.setattr(icd.decode, "_available_decoders", lambda ts: ())
    with pytest.raises(DecoderMissingError, match=r"uses JPEG Lossless.*\(1\.2\.840\.10008\.1\.2\.4\.70\) and no "
                                                  r"decoder .*pip install python-gdcm"):
        read_series(folder)


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="holds no DICOM files"):
        read_series(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_series(tmp_path / "nope")


def test_on_error_must_be_a_known_mode(series):
    with pytest.raises(ValueError, match=r"on_error must be one of \['raise', 'skip'\], not 'ignore'"):
        read_series(series[0], on_error="ignore")


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        WorkerPool(0)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
def test_encapsulated_frames_are_decoded_from_the_offset_and_damage_still_names_the_file(tmp_path):
    """RLE: the direct read (no second header parse) equals pydicom's array; a file cut inside its
    fragments falls back to the full read, whose error names the file."""
    src = Path(get_testdata_file("MR_small_RLE.dcm"))
    h = icd.read_slice_header(src)
    assert h.pixel_offset is not None and h.transfer_syntax == pydicom.uid.RLELossless
    decoded = icd.decode_series([h], size=None)
    np.testing.assert_array_equal(decoded.hu, pydicom.dcmread(src).pixel_array[None].astype(decoded.hu.dtype))
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(src.read_bytes()[: h.pixel_offset + 200])
    assert icd.decode._read_encapsulated(icd.read_slice_header(cut), "pydicom") is None
    with pytest.raises(icd.DicomError, match="cut.dcm"):
        icd.decode_series([icd.read_slice_header(cut)], size=None)


# --------------------------------------------------------------------------- decode bombs (issue 12)

_TIMED = """
import sys, time
import ich.cli, ich.dicom, ich.sources, ich.uploads, pydicom.pixels  # imports are not the refusal's cost
t0 = time.perf_counter()
{call}
print("SECONDS", time.perf_counter() - t0)
"""


def _seconds(res: dict) -> float:
    return float(next(ln for ln in res["stdout"].splitlines() if ln.startswith("SECONDS")).split()[1])


def _assert_cheap_refusal(res: dict, what: str) -> None:
    text = res["stdout"] + res["stderr"]
    assert "refused before decoding" in text and "60000 x 60000" in text and "ICH_MAX_PIXELS" in text, \
        f"{what}: no clear refusal (rc {res['rc']}): {text[-800:]}"
    assert _seconds(res) < 2.0, f"{what}: the refusal took {_seconds(res):.2f} s"
    assert res["max_rss_mb"] < 300, f"{what}: peak RSS {res['max_rss_mb']:.0f} MB"


def test_decode_bomb_is_refused_by_import_folder_cheaply(tmp_path):
    from _datasets import run_measured, write_decode_bomb

    write_decode_bomb(tmp_path / "src" / "a" / "bomb.dcm")
    call = (f"rc = ich.cli.main(['import', 'folder', {str(tmp_path / 'src')!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '--workers', '1', '--no-progress'])\nprint('RC', rc)")
    res = run_measured(_TIMED.format(call=call))
    _assert_cheap_refusal(res, "import folder")
    assert "RC 2" in res["stdout"] and not (tmp_path / "out").exists()


def test_decode_bomb_is_refused_by_the_upload_import_cheaply(tmp_path):
    import io
    import zipfile

    from _datasets import run_measured, write_decode_bomb

    bomb = write_decode_bomb(tmp_path / "bomb.dcm")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.write(bomb, "series/bomb.dcm")
    (tmp_path / "up.zip").write_bytes(buf.getvalue())
    call = (f"try:\n    ich.uploads.import_upload(open({str(tmp_path / 'up.zip')!r}, 'rb').read(), 'scan', "
            f"{str(tmp_path / 'uploads')!r})\nexcept ValueError as err:\n    print('REFUSED', err)")
    res = run_measured(_TIMED.format(call=call))
    _assert_cheap_refusal(res, "upload import")
    assert "REFUSED" in res["stdout"]


def test_decode_bomb_is_refused_by_predict_dicom_cheaply(tmp_path):
    from _datasets import run_measured, write_decode_bomb

    write_decode_bomb(tmp_path / "series" / "bomb.dcm")
    call = (f"rc = ich.cli.main(['predict', {str(tmp_path / 'no-run')!r}, '--dicom', "
            f"{str(tmp_path / 'series')!r}])\nprint('RC', rc)")
    res = run_measured(_TIMED.format(call=call))
    _assert_cheap_refusal(res, "predict --dicom")
    assert "RC 2" in res["stdout"]


def test_decode_file_and_decode_series_check_the_header_before_decoding(tmp_path, monkeypatch):
    from _datasets import write_decode_bomb

    bomb = write_decode_bomb(tmp_path / "bomb.dcm")
    with pytest.raises(DicomError, match="refused before decoding.*60000 x 60000.*ICH_MAX_PIXELS") as info:
        icd.decode_file(bomb)
    assert info.value.kind == "too_large"
    with pytest.raises(DicomError, match="refused before decoding"):
        icd.read_slice_header(bomb)
    small = write_decode_bomb(tmp_path / "ok.dcm", rows=128, cols=128)  # the real size: decodes
    h = icd.read_slice_header(small)
    bad = icd.SliceHeader(**{**{f: getattr(h, f) for f in h.__slots__}, "rows": 60000, "cols": 60000})
    with pytest.raises(DicomError, match="refused before decoding"):
        icd.decode_series([bad])
    assert icd.decode_series([bad], on_error="skip").problems[0].kind == "too_large"


def test_decode_limits_frames_bytes_and_environment(tmp_path, monkeypatch):
    limits = icd.DecodeLimits()
    limits.check("f.dcm", rows=512, cols=512, n_frames=1, bits_allocated=16, samples=1)  # a CT slice passes
    with pytest.raises(DicomError, match="5,000 frames, the limit is 1,024.*ICH_MAX_FRAMES"):
        limits.check("f.dcm", rows=16, cols=16, n_frames=5000, bits_allocated=16, samples=1)
    with pytest.raises(DicomError, match="MiB of decoded pixels.*ICH_MAX_SLICE_BYTES"):
        limits.check("f.dcm", rows=4096, cols=4096, n_frames=1, bits_allocated=32, samples=3)
    monkeypatch.setenv("ICH_MAX_PIXELS", str(70000 * 70000))
    monkeypatch.setenv("ICH_MAX_SLICE_BYTES", str(8 << 30))
    icd.decode_limits().check("f.dcm", rows=60000, cols=60000, n_frames=1, bits_allocated=16, samples=1)
    monkeypatch.setenv("ICH_MAX_FRAMES", "lots")
    with pytest.raises(ValueError, match="ICH_MAX_FRAMES must be a positive integer, not 'lots'"):
        icd.decode_limits()
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        icd.DecodeLimits(max_pixels=0)
