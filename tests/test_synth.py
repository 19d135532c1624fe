"""Tests for ich.synth and the `synth` verb: the DICOM/NIfTI/CSV contract, determinism, atomic output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ich import synth
from ich.cli import main
from ich.labels import SUBTYPES
from ich.phantom import PhantomConfig, PhantomParams, render_phantom

EXAMS = ["PH000000", "PH000001", "PH000002", "PH000003"]


def _labels(root: Path) -> dict[str, dict[str, int]]:
    """labels.csv as {sop: {subtype: 0/1}}, checking the RSNA layout on the way."""
    out: dict[str, dict[str, int]] = {}
    with open(root / "labels.csv", newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["ID", "Label"]
        for image_id, label in reader:
            sop, name = image_id.rsplit("_", 1)
            assert name in synth.LABEL_NAMES and label in ("0", "1")
            assert name not in out.setdefault(sop, {}), f"duplicate row {image_id}"
            out[sop][name] = int(label)
    assert all(list(v) == list(synth.LABEL_NAMES) for v in out.values())  # six rows per slice, RSNA order
    return out


def _series(folder: Path) -> list[pydicom.Dataset]:
    return sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2]))


def test_layout_and_metadata(tiny_dicom_phantom):
    root = tiny_dicom_phantom
    meta = json.loads((root / "synth.json").read_text())
    assert meta["generator"] == "ich.phantom" and meta["version"] == 1
    assert (meta["seed"], meta["exams"], meta["size"], meta["difficulty"]) == (1, 4, 64, "easy")
    assert PhantomConfig.from_dict(meta["config"]).n_slices == (8, 12)
    assert sorted(p.name for p in (root / "exams").iterdir()) == EXAMS
    assert sorted(p.name for p in (root / "masks").iterdir()) == [f"{e}.nii.gz" for e in EXAMS]
    assert sorted(p.name for p in (root / "params").iterdir()) == [f"{e}.json" for e in EXAMS]
    assert not list(root.parent.glob(".*tmp*"))  # no temporary folder left behind


def test_dicom_series_are_valid_ct(tiny_dicom_phantom):
    uids = set()
    for exam_id in EXAMS:
        files = sorted((tiny_dicom_phantom / "exams" / exam_id).glob("*.dcm"))
        series = _series(tiny_dicom_phantom / "exams" / exam_id)
        assert 8 <= len(series) <= 12
        for i, ds in enumerate(series):
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
            assert ds.PatientID == f"PHANTOM-{exam_id}" and "Anonymous" in str(ds.PatientName)
            assert float(ds.ImagePositionPatient[2]) == pytest.approx(5.0 * i)  # slice 0 = lowest z
            assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert [float(v) for v in ds.PixelSpacing] == pytest.approx([240 / 64, 240 / 64])
            assert float(ds.SliceThickness) == 5.0 and (ds.Rows, ds.Columns) == (64, 64)
            assert (float(ds.RescaleIntercept), float(ds.RescaleSlope)) == (-1024.0, 1.0)
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 80.0)
            uids.add(ds.SOPInstanceUID)
        assert {f.stem for f in files} == {ds.SOPInstanceUID for ds in series}
        assert len({ds.SeriesInstanceUID for ds in series}) == 1
    assert len(uids) == sum(len(list((tiny_dicom_phantom / "exams" / e).glob("*.dcm"))) for e in EXAMS)


def test_pixels_masks_and_labels_replay_from_params(tiny_dicom_phantom):
    root = tiny_dicom_phantom
    labels = _labels(root)
    positives = 0
    for exam_id in EXAMS:
        params = PhantomParams.from_json((root / "params" / f"{exam_id}.json").read_text())
        hu, mask = render_phantom(params)
        series = _series(root / "exams" / exam_id)
        pixels = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                           for ds in series])
        np.testing.assert_array_equal(pixels, np.clip(np.rint(hu), -1024, 3071))
        nii = nib.load(root / "masks" / f"{exam_id}.nii.gz")
        stored = np.asanyarray(nii.dataobj)
        assert stored.dtype == np.uint8 and stored.shape == (64, 64, len(series))  # (W, H, S)
        np.testing.assert_array_equal(np.transpose(stored, (2, 1, 0)), mask)
        assert nii.header.get_zooms() == pytest.approx((240 / 64, 240 / 64, 5.0))
        for k, ds in enumerate(series):
            row = labels[ds.SOPInstanceUID]
            for c, name in enumerate(SUBTYPES):
                assert row[name] == int((mask[k] == c + 1).any())
            assert row["any"] == int(mask[k].any())
        positives += int(mask.any())
    assert 0 < positives < len(EXAMS)  # the fixture has both classes (seed 1: PH000002-3 positive)
    assert len(labels) == sum(len(list((root / "exams" / e).glob("*.dcm"))) for e in EXAMS)


def test_same_bytes_whatever_the_worker_count(tmp_path):
    kwargs = dict(seed=5, size=32, difficulty="easy", slices=(2, 3), p_positive=1.0)
    synth.write_synth_dataset(tmp_path / "one", 3, workers=1, **kwargs)
    synth.write_synth_dataset(tmp_path / "two", 3, workers=2, **kwargs)
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) > 10
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for rel in files:
        if rel.suffixes[-2:] == [".nii", ".gz"]:  # gzip headers may differ; compare the arrays
            a = np.asanyarray(nib.load(tmp_path / "one" / rel).dataobj)
            b = np.asanyarray(nib.load(tmp_path / "two" / rel).dataobj)
            np.testing.assert_array_equal(a, b)
        else:
            assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel


def test_different_seeds_give_different_uids(tmp_path):
    kwargs = dict(size=32, difficulty="easy", slices=(2, 2), workers=1)
    synth.write_synth_dataset(tmp_path / "a", 1, seed=0, **kwargs)
    synth.write_synth_dataset(tmp_path / "b", 1, seed=1, **kwargs)
    a = {p.name for p in (tmp_path / "a" / "exams" / "PH000000").iterdir()}
    b = {p.name for p in (tmp_path / "b" / "exams" / "PH000000").iterdir()}
    assert a and not a & b


def test_refuses_a_non_empty_out(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists and is not an empty folder"):
        synth.write_synth_dataset(out, 1, size=32, slices=(2, 2), workers=1)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_accepts_an_empty_out(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    summary = synth.write_synth_dataset(out, 1, size=32, slices=(2, 2), workers=1)
    assert summary["exams"] == 1 and (out / "synth.json").is_file()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    real = synth.synth_exam

    def flaky(out, index, seed, cfg, compression):
        if index == 1:
            raise RuntimeError("disk full")
        return real(out, index, seed, cfg, compression)

    monkeypatch.setattr(synth, "synth_exam", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        synth.write_synth_dataset(tmp_path / "out", 3, size=32, slices=(2, 2), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_resume_renders_only_the_missing_exams(tmp_path, monkeypatch):
    kwargs = dict(seed=5, size=32, difficulty="easy", slices=(2, 3), p_positive=1.0, workers=1)
    synth.write_synth_dataset(tmp_path / "whole", 3, **kwargs)
    real, calls = synth.synth_exam, []

    def dies_at_2(out, index, seed, cfg, compression):
        calls.append(index)
        if index == 2 and calls.count(2) == 1:
            raise KeyboardInterrupt   # killed half-way
        return real(out, index, seed, cfg, compression)

    monkeypatch.setattr(synth, "synth_exam", dies_at_2)
    with pytest.raises(KeyboardInterrupt):
        synth.write_synth_dataset(tmp_path / "out", 3, resume=True, **kwargs)
    assert (tmp_path / ".out.partial" / "done" / "PH000001.json").is_file() and not (tmp_path / "out").exists()
    synth.write_synth_dataset(tmp_path / "out", 3, resume=True, **kwargs)
    assert calls == [0, 1, 2, 2]          # exams 0 and 1 were not rendered twice
    assert not (tmp_path / ".out.partial").exists() and not (tmp_path / "out" / "done").exists()
    for name in ("labels.csv", "synth.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_resume_refuses_a_partial_run_of_other_arguments(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "synth_exam", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        synth.write_synth_dataset(tmp_path / "out", 2, seed=1, size=32, slices=(2, 2), workers=1, resume=True)
    with pytest.raises(ValueError, match="other arguments .*seed"):
        synth.write_synth_dataset(tmp_path / "out", 2, seed=2, size=32, slices=(2, 2), workers=1, resume=True)


def test_bad_exam_count():
    with pytest.raises(ValueError, match="--exams must be a positive integer, not 0"):
        synth.write_synth_dataset("unused", 0)


def test_bad_seed():
    with pytest.raises(ValueError, match="--seed must be a non-negative integer, not -3"):
        synth.write_synth_dataset("unused", 1, seed=-3)


def test_read_synth_meta_of_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a synth output folder"):
        synth.read_synth_meta(tmp_path)


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", "--out", str(out), "--exams", "2", "--seed", "3", "--size", "32", "--slices", "2", "3",
               "--difficulty", "hard", "--workers", "1", "--no-progress"])
    assert rc == 0
    meta = synth.read_synth_meta(out)
    assert (meta["exams"], meta["seed"], meta["size"], meta["difficulty"]) == (2, 3, 32, "hard")
    assert len(list((out / "exams").iterdir())) == 2


def test_cli_synth_user_error(tmp_path, capsys):
    rc = main(["synth", "--out", str(tmp_path / "x"), "--exams", "0", "--no-progress"])
    assert rc == 2
    assert "error: --exams must be a positive integer, not 0" in capsys.readouterr().err


def test_cli_difficulties_match_the_presets():
    from ich.commands.synth import DIFFICULTIES
    from ich.phantom import PHANTOM_PRESETS

    assert sorted(DIFFICULTIES) == sorted(PHANTOM_PRESETS)


@pytest.mark.parametrize("out", ["..", ".hidden"])
def test_out_folder_must_name_a_folder(tmp_path, out):
    from ich.synth import write_synth_dataset

    with pytest.raises(ValueError, match="must end in the name of the folder to create"):
        write_synth_dataset(tmp_path / "a" / out, 1, size=32, workers=1)
