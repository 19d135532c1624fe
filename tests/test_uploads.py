"""Tests for ich.uploads: safe zip extraction and import of an uploaded series."""

from __future__ import annotations

import io
import stat
import zipfile

import numpy as np
import pytest

from ich.dicom import write_series
from ich.store import open_dataset
from ich.uploads import import_upload, safe_extract_zip


def make_zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_extracts_plain_files(tmp_path):
    out = safe_extract_zip(make_zip({"series/a.dcm": b"x", "series/b.dcm": b"yy"}), tmp_path / "up")
    assert sorted(p.name for p in out.rglob("*.dcm")) == ["a.dcm", "b.dcm"]


@pytest.mark.parametrize("name", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm"])
def test_path_escape_is_refused_and_nothing_is_left(tmp_path, name):
    with pytest.raises(ValueError, match="points outside the upload folder"):
        safe_extract_zip(make_zip({"ok.dcm": b"x", name: b"evil"}), tmp_path / "up")
    assert list(tmp_path.iterdir()) == []


def test_symlink_is_refused(tmp_path):
    with pytest.raises(ValueError, match="symbolic link"):
        safe_extract_zip(make_zip({"ok.dcm": b"x"}, symlink="link.dcm"), tmp_path / "up")
    assert list(tmp_path.iterdir()) == []


def test_total_size_is_bounded_while_reading(tmp_path):
    with pytest.raises(ValueError, match="expands to more than"):
        safe_extract_zip(make_zip({"big.dcm": b"\0" * 5000}), tmp_path / "up", max_bytes=4000)
    assert list(tmp_path.iterdir()) == []


def test_file_count_is_bounded(tmp_path):
    with pytest.raises(ValueError, match="more than the limit of 2"):
        safe_extract_zip(make_zip({f"{i}.dcm": b"x" for i in range(3)}), tmp_path / "up", max_files=2)


def test_not_a_zip(tmp_path):
    with pytest.raises(ValueError, match="not a valid zip"):
        safe_extract_zip(b"hello", tmp_path / "up")


def test_import_upload_makes_a_one_exam_dataset(tmp_path):
    series = tmp_path / "series"
    hu = np.full((5, 32, 32), 30.0, np.float32) + np.arange(5, dtype=np.float32)[:, None, None]  # no copied slices
    write_series(hu, series, patient_id="ANON", series_key="upload-test")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(series.iterdir()):
            zf.write(p, f"my series/{p.name}")
    ds = open_dataset(import_upload(buf.getvalue(), "case 1", tmp_path / "uploads", size=32))
    assert len(ds.exams) == 1 and int(ds.exams["n_slices"].iloc[0]) == 5
    assert "ANON" not in ds.exams.to_string()
    with pytest.raises(FileExistsError, match="already exists"):
        import_upload(buf.getvalue(), "case 1", tmp_path / "uploads", size=32)


# ---------------------------------------------------------------- staging, checks, the import process
from _series import ct_small_series, zip_folder  # noqa: E402
from ich import uploads  # noqa: E402


def loose(folder):
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def test_loose_dcm_files_are_staged_and_imported_and_the_raw_files_deleted(tmp_path):
    root = tmp_path / "uploads"
    staged = uploads.stage_upload(loose(ct_small_series(tmp_path / "ct", n=12)), root)
    assert staged.parent == root and staged.name.startswith(".") and len(list(staged.iterdir())) == 12
    ds = open_dataset(uploads.import_upload(staged, "u1", root, size=32))
    assert len(ds.exams) == 1 and int(ds.exams.n_slices.iloc[0]) == 12
    assert not staged.exists() and not (root / "u1" / "files").exists()      # raw DICOM deleted after import
    (record,) = uploads.list_uploads(root)
    assert record["name"] == "u1" and record["raw_kept"] is False
    assert any("does not look like a head" in w for w in record["check"]["warnings"])
    uploads.remove_upload(root, "u1")
    assert uploads.list_uploads(root) == [] and sorted(p.name for p in root.iterdir()) == []


def test_raw_files_are_kept_only_when_asked(tmp_path):
    root = tmp_path / "uploads"
    uploads.import_upload(zip_folder(ct_small_series(tmp_path / "ct", n=12)), "keep", root, size=32, keep_raw=True)
    assert len(list((root / "keep" / "files").rglob("*.dcm"))) == 12
    assert uploads.read_upload(root / "keep")["raw_kept"] is True


def test_a_refused_upload_leaves_nothing_behind(tmp_path):
    root = tmp_path / "uploads"
    folder = ct_small_series(tmp_path / "ct", n=12)
    (folder / "slice005.dcm").unlink()
    with pytest.raises(ValueError, match=r"cannot be scored: slices are missing \(1 gap: after slice 4"):
        uploads.import_upload(zip_folder(folder), "gap", root, size=32)
    assert list(root.iterdir()) == []
    with pytest.raises(ValueError, match="the upload is not a valid zip"):
        uploads.import_upload(b"not a zip", "bad", root, size=32)
    assert list(root.iterdir()) == []


def test_two_series_in_one_upload_are_refused(tmp_path):
    ct_small_series(tmp_path / "two" / "a", n=12)
    ct_small_series(tmp_path / "two" / "b", n=12)
    staged = uploads.stage_upload([("two.zip", make_zip({f"{s}/{p.name}": p.read_bytes()
                                                         for s in "ab" for p in (tmp_path / "two" / s).iterdir()}))],
                                  tmp_path / "uploads")
    with pytest.raises(ValueError, match="holds 2 series .*upload one series at a time"):
        uploads.import_upload(staged, "two", tmp_path / "uploads", size=32)
    assert list((tmp_path / "uploads").iterdir()) == []


def test_names_over_255_bytes_are_refused_clearly(tmp_path):
    long = "x" * 300 + ".dcm"
    with pytest.raises(ValueError, match="is 304 bytes long; file and folder names may have at most 255"):
        uploads.stage_upload([(long, b"x")], tmp_path / "uploads")
    with pytest.raises(ValueError, match="zip entry name .* is 304 bytes long"):
        uploads.stage_upload([("a.zip", make_zip({f"s/{long}": b"x"}))], tmp_path / "uploads")
    assert list((tmp_path / "uploads").iterdir()) == []


def test_staging_refuses_mixed_or_empty_uploads(tmp_path):
    with pytest.raises(ValueError, match="nothing was uploaded"):
        uploads.stage_upload([], tmp_path)
    with pytest.raises(ValueError, match="either one zip or loose .dcm files"):
        uploads.stage_upload([("a.zip", make_zip({"a.dcm": b"x"})), ("b.dcm", b"x")], tmp_path)
    with pytest.raises(ValueError, match="given twice"):
        uploads.stage_upload([("a.dcm", b"x"), ("dir/a.dcm", b"y")], tmp_path / "u")


def test_upload_names_are_new_and_safe(tmp_path):
    (tmp_path / uploads.upload_name(tmp_path)).mkdir()
    assert not (tmp_path / uploads.upload_name(tmp_path)).exists()
    ds = uploads.import_upload(zip_folder(ct_small_series(tmp_path / "ct", n=12)), "../evil", tmp_path / "up", size=32)
    assert ds == tmp_path / "up" / "evil" / "dataset"


@pytest.mark.slow
def test_the_import_process_imports_and_refuses_with_the_reason(tmp_path):
    root = tmp_path / "uploads"
    ds = uploads.import_in_process(uploads.stage_upload([("s.zip", zip_folder(ct_small_series(tmp_path / "ct")))],
                                                        root), "ok", root, size=32)
    assert open_dataset(ds).exams.n_slices.iloc[0] == 24
    folder = ct_small_series(tmp_path / "gap", n=12)
    (folder / "slice005.dcm").unlink()
    staged = uploads.stage_upload(loose(folder), root)
    with pytest.raises(ValueError, match=r"^the series cannot be scored: slices are missing"):
        uploads.import_in_process(staged, "gap", root, size=32)
    assert not staged.exists() and sorted(p.name for p in root.iterdir()) == ["ok"]


@pytest.mark.slow
def test_the_import_process_is_stopped_by_its_time_limit_and_cleans_up(tmp_path):
    root = tmp_path / "uploads"
    staged = uploads.stage_upload(loose(ct_small_series(tmp_path / "ct", n=12)), root)
    with pytest.raises(ValueError, match="took longer than 1 s and was stopped"):
        uploads.import_in_process(staged, "slow", root, size=32, timeout_s=1)
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_a_decode_bomb_costs_the_import_process_not_the_caller(tmp_path):
    import resource

    import pydicom
    from pydicom.uid import RLELossless

    folder = ct_small_series(tmp_path / "ct", n=2)
    for p in folder.iterdir():
        ds = pydicom.dcmread(p)
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.Rows = ds.Columns = 60000
        ds.save_as(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    root = tmp_path / "uploads"
    with pytest.raises(ValueError, match="(?i)memory|pixels|too large"):
        uploads.import_in_process(uploads.stage_upload(loose(folder), root), "bomb", root, size=32, memory_mb=1024)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000     # KB: the caller did not decode
    assert list(root.iterdir()) == []


def test_an_upload_is_scored_in_a_child_process_and_its_failure_is_one_line(tmp_path, tiny_phantom_run, tiny_dataset):
    """The server never runs a model: ``score_in_process`` runs `python -m ich predict` and reports its reason."""
    import shutil

    from ich import runs
    from ich.uploads import score_in_process

    run = tmp_path / "run"
    shutil.copytree(tiny_phantom_run, run)
    score_in_process(run, tiny_dataset, "upload-x")
    exams, _ = runs.read_predictions(run, "upload-x")
    assert len(exams)
    with pytest.raises(ValueError, match=r"scoring the upload failed: .*no such|scoring the upload failed: .*not"):
        score_in_process(tmp_path / "nowhere", tiny_dataset, "upload-y")
