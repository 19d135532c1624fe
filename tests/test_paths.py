"""Tests for ich.paths: the data root and the names users type that become folders under it."""

from __future__ import annotations

import pytest

from ich import paths
from ich.store import DatasetWriter


@pytest.mark.parametrize("name", ["phantom-new", "my_data.v2", "A1"])
def test_plain_names_pass(name):
    assert paths.check_name(f"  {name} ") == name


@pytest.mark.parametrize("name,suggestion", [("../../x", "x"), ("/etc/passwd", "etc-passwd"), ("..", "my-dataset"),
                                             (".hidden", "hidden"), ("a/b", "a-b"), ("", "my-dataset"),
                                             ("x" * 65, "x" * 64), ("ca\u00efd", "ca-d")])
def test_names_that_are_paths_or_hidden_are_refused_with_a_suggestion(name, suggestion):
    with pytest.raises(ValueError, match=f"dataset name must be 1-64 letters.*try '{suggestion}'"):
        paths.check_name(name)


@pytest.mark.parametrize("out", ["..", ".hidden", "x/.."])
def test_dataset_writer_refuses_an_out_folder_without_a_name(tmp_path, out):
    with pytest.raises(ValueError, match="must end in the name of the folder to create"):
        DatasetWriter(tmp_path / out, source="folder", size=32)
