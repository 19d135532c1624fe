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
    hu = np.full((5, 32, 32), 30.0, np.float32)
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
