"""Atomic writes: a reader sees the old file or the new one, never half; a failed write leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from ich import atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "status.json"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic.writing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the disk filled up")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_writers_that_pick_their_format_from_the_name_keep_its_end(tmp_path):
    target = tmp_path / "maps.npz"
    with atomic.writing(target, keep_suffix=True) as tmp:
        assert tmp.name.endswith("maps.npz") and tmp.name.startswith(".")
        np.savez_compressed(tmp, a=np.arange(3))
    assert np.load(target)["a"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]
    plain = atomic.temporary_name(tmp_path / "x.dcm")
    assert plain.name.startswith(".x.dcm.tmp-") and not plain.name.endswith(".dcm")   # no *.dcm reader sees it


def test_parent_folders_are_made(tmp_path):
    assert atomic.write_bytes(tmp_path / "a" / "b" / "c.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
