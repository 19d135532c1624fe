"""Tests for the data verbs: `python -m ich import ...` and `python -m ich info ...`."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import _datasets as D
from ich import cli
from ich.commands import import_
from ich.sources import IMPORTERS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    D.make_phantom_tree(root / "phantom")
    return root / "phantom"


def _import(src, out, *extra):
    return cli.main(["import", "phantom", str(src), "--out", str(out), "--size", "32", "--workers", "1",
                     "--no-progress", *extra])


def test_import_then_info(phantom_src, tmp_path, capsys):
    assert _import(phantom_src, tmp_path / "ds") == 0
    out = capsys.readouterr().out
    assert f"imported 3 exams, 15 slices into {tmp_path / 'ds'}" in out
    assert cli.main(["info", str(tmp_path / "ds"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exams"] == 3 and summary["slices"] == 15 and summary["exams_with_masks"] == 3
    assert summary["positive_exams"] == 2 and summary["positive_slices"] == 4
    assert sum(s["exams"] for s in summary["splits"].values()) == 3
    assert set(summary["splits"]) == {"train", "val", "test"}
    assert cli.main(["info", str(tmp_path / "ds")]) == 0
    table = capsys.readouterr().out
    assert "split" in table and "positive exams" in table and "train" in table
    all_row = next(line for line in table.splitlines() if line.startswith("all"))
    assert all_row.split() == ["all", "3", "2", "(66.7%)", "15", "4", "(26.7%)"]
    assert "with masks: 3" in table


def test_info_with_report(phantom_src, tmp_path, capsys):
    _import(phantom_src, tmp_path / "ds")
    capsys.readouterr()
    cli.main(["info", str(tmp_path / "ds"), "--json", "--report"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["report"]["source"] == "phantom" and summary["report"]["decoders"] == {"native": 15}
    cli.main(["info", str(tmp_path / "ds"), "--report"])
    assert 'import report: {"dropped": {}, "decoders": {"native": 15}' in capsys.readouterr().out


def test_import_verb_lists_every_importer():
    assert set(import_.SOURCES) == set(IMPORTERS)


def test_existing_dataset_is_not_overwritten(phantom_src, tmp_path, capsys):
    assert _import(phantom_src, tmp_path / "ds") == 0
    assert _import(phantom_src, tmp_path / "ds") == 2
    assert "already exists and holds an ich dataset" in capsys.readouterr().err
    assert _import(phantom_src, tmp_path / "ds", "--overwrite") == 0


def test_option_for_another_importer_is_refused(phantom_src, tmp_path, capsys):
    assert _import(phantom_src, tmp_path / "ds", "--bhx", "boxes.csv") == 2
    assert "error: --bhx applies to the cq500 importer only, not to phantom" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_empty_source_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(["import", "folder", str(tmp_path / "empty"), "--out", str(tmp_path / "ds"), "--no-progress"])
    assert code == 2 and "holds no DICOM files" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()


def test_info_on_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path)]) == 2
    assert "is not an ich dataset (no dataset.json)" in capsys.readouterr().err


def test_progress_bars_show_each_stage():
    buf = io.StringIO()
    bars = import_.ProgressBars(enabled=True, file=buf)
    for stage, total in (("scan", 40), ("decode", 30)):
        for done in range(0, total + 1, 10):
            bars(stage, done, total)
    bars.close()
    text = buf.getvalue()
    assert "scan: 100%" in text and "40/40" in text and "decode: 100%" in text and "30/30" in text


def test_format_report_lists_drops():
    report = {"exams": 2, "slices": 9, "seconds": 1.5, "slices_per_second": 6.0, "dropped": {"corrupt": 1},
              "drops": [{"item": "a.dcm", "kind": "corrupt", "reason": "a.dcm: corrupt"}], "drops_total": 1,
              "decoders": {"native": 9}, "twelve_bit_fixes": 1}
    text = import_.format_report(report, "out")
    assert "imported 2 exams, 9 slices into out" in text and "dropped: corrupt 1" in text
    assert "a.dcm: corrupt" in text and "12-bit fixes: 1" in text


@pytest.mark.slow
def test_python_m_ich_import_end_to_end(phantom_src, tmp_path):
    """The real entry point, in a fresh interpreter (slow: imports torch)."""
    run = subprocess.run([sys.executable, "-m", "ich", "import", "phantom", str(phantom_src), "--out",
                          str(tmp_path / "ds"), "--size", "32"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "imported 3 exams" in run.stdout and (tmp_path / "ds" / "dataset.json").is_file()


# --------------------------------------------------------------------------- SIGTERM (issue 12)

_SLOW_HOOK = '''
import os
if os.environ.get("ICH_TEST_HOLD_IMPORT"):  # test hook: hold the import inside its temporary folder
    import time
    import ich.store
    _add = ich.store.DatasetWriter.add_exam
    def _held(self, *args, **kwargs):
        open(os.environ["ICH_TEST_HOLD_IMPORT"], "w").close()
        time.sleep(120)
        return _add(self, *args, **kwargs)
    ich.store.DatasetWriter.add_exam = _held
'''


def _hold_env(tmp_path) -> tuple[dict, Path]:
    """An environment whose `python -m ich` stops in the first add_exam (via sitecustomize) and says so."""
    import os

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_SLOW_HOOK)
    marker = tmp_path / "holding"
    return {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "ICH_TEST_HOLD_IMPORT": str(marker)}, marker


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    import time

    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_sigterm_removes_the_import_temp_folder_like_ctrl_c(phantom_src, tmp_path):
    import signal

    env, marker = _hold_env(tmp_path)
    out = tmp_path / "ds" / "phantom"
    proc = subprocess.Popen([sys.executable, "-m", "ich", "import", "phantom", str(phantom_src), "--out", str(out),
                             "--size", "32", "--workers", "1", "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(marker)
        assert _hidden(out.parent), "the import should be inside its hidden temporary folder"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err
    assert _hidden(out.parent) == [] and not out.exists()


def test_jobs_cancel_on_an_import_leaves_no_temp_folder(phantom_src, tmp_path, monkeypatch):
    import time

    from ich import jobs

    env, marker = _hold_env(tmp_path)
    for k in ("PYTHONPATH", "ICH_TEST_HOLD_IMPORT"):
        monkeypatch.setenv(k, env[k])
    db, out = tmp_path / "jobs.sqlite", tmp_path / "ds" / "phantom"
    job = jobs.submit(db, ["import", "phantom", str(phantom_src), "--out", str(out), "--size", "32",
                           "--workers", "1", "--no-progress"], kind="import", out_dir=out, workdir=ROOT)
    _wait_for(marker)
    assert _hidden(out.parent)
    assert jobs.cancel(db, job.id).state == "cancelled"
    deadline = time.time() + 30
    while _hidden(out.parent) and time.time() < deadline:
        time.sleep(0.1)
    assert _hidden(out.parent) == [] and not out.exists()
