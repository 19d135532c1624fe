"""A study folder on disk: its layout, the spec lock, the writer lock, progress, events and cell states."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ich import atomic
from ich.study.spec import Cell, StudyConfig

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


FORMAT = "ich-study/1"
SPEC_FILE = "study.json"
PROGRESS_FILE = "progress.json"
EVENTS_FILE = "cells.jsonl"
SUMMARY_FILE = "summary.csv"
RUNS_DIR = "runs"
LOCK_FILE = ".lock"


# ------------------------------------------------------------------------------ folder I/O
def read_study(study: str | os.PathLike) -> tuple[StudyConfig, dict]:
    """(spec, the whole study.json dict) of a study folder.

    Raises:
        FileNotFoundError: the folder has no study.json.
    """
    p = Path(study) / SPEC_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{study} is not a study folder (no {SPEC_FILE}); start one with `python -m ich study`")
    d = json.loads(p.read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{p} has format {d.get('format')!r}, expected {FORMAT!r}")
    return StudyConfig.from_dict(d["spec"]), d


def is_study(path: str | os.PathLike) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def all_runs(runs_root: str | os.PathLike, studies_root: str | os.PathLike):
    """Every run folder the app shows: single runs under ``runs_root`` and every study's cells under
    ``studies_root/<study>/runs`` (``runs.list_runs`` rows plus ``study``: the study's name, "" for single runs)."""
    import pandas as pd

    from ich import runs

    frames = [runs.list_runs(runs_root).assign(study="")]
    root = Path(studies_root)
    for study in sorted(root.iterdir()) if root.is_dir() else []:
        if is_study(study) and (study / RUNS_DIR).is_dir():
            frames.append(runs.list_runs(study / RUNS_DIR).assign(study=study.name))
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def cell_dir(study: str | os.PathLike, cell: Cell | str) -> Path:
    return Path(study) / RUNS_DIR / (cell if isinstance(cell, str) else cell.name)


def lock_spec(out: Path, spec: StudyConfig, encoder: dict) -> None:
    """Write study.json, or check that the folder holds the same spec (and encoder weights)."""
    record = {"format": FORMAT, "spec": spec.to_dict(), "encoder": {k: encoder.get(k) for k in ("path", "checksum")},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if is_study(out):
        old_spec, old = read_study(out)
        check_same_spec(out, old_spec, spec, resolved=True)
        if (old.get("encoder") or {}).get("checksum") != record["encoder"]["checksum"]:
            raise ValueError(f"the encoder file {spec.init} changed since {out} was started (checksum "
                             f"{(old.get('encoder') or {}).get('checksum')} -> {record['encoder']['checksum']}); "
                             "restore it, or start a new study with --out elsewhere")
        return
    if out.exists() and any(p.name not in (LOCK_FILE, PROGRESS_FILE) for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a study folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / SPEC_FILE, json.dumps(record, indent=2))


def check_same_spec(out: Path, old: StudyConfig, new: StudyConfig, *, resolved: bool) -> None:
    """Raise ``ValueError`` naming the fields where ``new`` differs from the folder's spec.

    Before resolution (``resolved=False``) ``init="auto"`` and relative dataset paths are not compared.
    """
    a, b = old.to_dict(), new.to_dict()
    skip = set() if resolved else ({"init"} if new.init == "auto" else set()) | {"dataset"}
    if not resolved and Path(new.dataset).resolve() != Path(old.dataset):
        skip.discard("dataset")
        b["dataset"] = str(Path(new.dataset).resolve())
    if not resolved and new.init not in ("auto", "random") and not new.init.startswith("imagenet:"):
        b["init"] = str(Path(new.init).resolve())
    diffs = [k for k in a if k not in skip and a.get(k) != b[k]]
    if diffs:
        shown = "; ".join(f"{k}: folder {a[k]!r} vs now {b[k]!r}" for k in diffs[:3])
        raise ValueError(f"{out} holds a study with another spec ({shown}); rerun it with the same options "
                         "(or `--resume` alone), or choose a new --out")


class StudyLock:
    """An exclusive lock on a study folder (``fcntl.flock``, released when the process dies)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self.f = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            who = self.f.read().strip() or "another process"
            self.f.close()
            raise RuntimeError(f"study {self.path.parent} is being run by {who}; wait for it, or cancel it "
                               "first") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()}")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def cell_state(study: str | os.PathLike, cell: Cell | str) -> str:
    """``done`` (trained and evaluated), ``todo`` (no folder), or the run's state (running, failed, ...)."""
    from ich import runs

    d = cell_dir(study, cell)
    if not runs.is_run(d):
        return "todo"
    state = runs.read_status(d).get("state", "queued")
    if state == "done" and not runs.evaluation_path(d).is_file():
        return "trained"
    return state


def write_progress(study: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into progress.json atomically (``jobs.progress_of`` reads done/total)."""
    p = Path(study) / PROGRESS_FILE
    try:
        d = json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        d = {}
    d.update(fields)
    d["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic.write_text(p, json.dumps(d, indent=2))
    return d


def mark_cancelled(study: str | os.PathLike, reason: str = "cancelled by the user") -> None:
    """Record a cancel everywhere a study keeps state: progress.json and every unfinished cell's status.json.

    Called by ``jobs.cancel`` once the study's processes were signalled, so that the Results page, the
    HTML report and every run selector say "cancelled", whatever the killed processes managed to write.
    """
    from ich import runs

    study = Path(study)
    p = read_progress(study)
    if p.get("state") not in ("done", "failed", "cancelled") and (study / PROGRESS_FILE).is_file():
        write_progress(study, state="cancelled", running=0, error=reason)
    for d in sorted((study / "runs").glob("*")) if (study / "runs").is_dir() else []:
        if runs.is_run(d) and runs.read_status(d).get("state") in ("queued", "running"):
            runs.write_status(d, "cancelled", error=reason)


def read_progress(study: str | os.PathLike) -> dict:
    p = Path(study) / PROGRESS_FILE
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def append_event(study: Path, event: dict) -> None:
    with open(study / EVENTS_FILE, "a") as f:
        f.write(json.dumps(event, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_events(study: str | os.PathLike) -> list[dict]:
    """The cell events of cells.jsonl (a torn last line is ignored)."""
    from ich.runs import read_jsonl

    return read_jsonl(Path(study) / EVENTS_FILE)
