"""Housekeeping of runs and studies: rename one, or move it into ``<data>/archive`` (out of every list) and back.

Nothing is deleted: ``archive`` moves a single run folder (``<data>/runs/<name>``) or a whole study
(``<data>/studies/<name>``, with every cell) to ``<data>/archive/runs/<name>`` or
``<data>/archive/studies/<name>``; ``restore`` moves it back. A folder that a process is still writing
is refused (its writer lock is taken for the move, so no trainer can start on it meanwhile), as is a
cell of a study (archive the study) or anything outside the data folder.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ich import paths, runs
from ich.study import StudyLock, is_study

KINDS = ("runs", "studies")


def archive_dir() -> Path:
    """``<data>/archive``: where archived runs and studies wait, out of every list."""
    return paths.data_root() / "archive"


def _kind(folder: Path) -> str:
    """``runs`` or ``studies`` for a folder the app lists; raises ``ValueError`` naming what was found."""
    if is_study(folder):
        return "studies"
    if runs.is_run(folder):
        if folder.parent.name == "runs" and is_study(folder.parent.parent):
            raise ValueError(f"{folder.name} is a cell of study {folder.parent.parent.name}; archive the whole study "
                             "(its cells belong to its summary)")
        return "runs"
    raise ValueError(f"{folder} is neither a run folder (config.json) nor a study folder (study.json); nothing to "
                     "archive")


@contextmanager
def _locked(folder: Path, kind: str) -> Iterator[None]:
    """Hold the folder's writer lock (a run's writer.lock, a study's .lock): refused while a process writes it."""
    if kind == "studies":
        try:
            with StudyLock(folder):
                yield
        except RuntimeError as err:
            raise ValueError(f"{err}; cancel its job on the Runs page before archiving it") from None
    else:
        try:
            with runs.writer_lock(folder):
                yield
        except runs.RunLockedError as err:
            raise ValueError(f"{err}; cancel its job on the Runs page before archiving it") from None


def _move(src: Path, dst: Path) -> Path:
    if dst.exists():
        raise FileExistsError(f"{dst} exists already; rename or remove it first, then try again")
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)            # one rename on one file system: the folder is either here or there
    return dst


def archive(folder: str | os.PathLike) -> Path:
    """Move a finished run or study from ``<data>/runs`` or ``<data>/studies`` into the archive; returns its new path.

    Raises:
        ValueError: not a run or study folder, a study's cell, not under the data folder, or still being written.
        FileExistsError: the archive already holds a folder of that name.
    """
    folder = Path(folder).resolve()
    kind = _kind(folder)
    home = (paths.runs_dir() if kind == "runs" else paths.studies_dir()).resolve()
    if folder.parent != home:
        raise ValueError(f"{folder} is not in {home}; only the app's own runs and studies are archived")
    with _locked(folder, kind):
        return _move(folder, archive_dir().resolve() / kind / folder.name)


def restore(folder: str | os.PathLike) -> Path:
    """Move an archived run or study back to ``<data>/runs`` or ``<data>/studies``; returns its path there.

    Raises:
        ValueError: not an archived run or study. FileExistsError: that name is in use again.
    """
    folder = Path(folder).resolve()
    kind = _kind(folder)
    if folder.parent != (archive_dir() / kind).resolve():
        raise ValueError(f"{folder} is not in the archive ({archive_dir() / kind})")
    with _locked(folder, kind):
        return _move(folder, (paths.runs_dir() if kind == "runs" else paths.studies_dir()).resolve() / folder.name)


def rename(folder: str | os.PathLike, name: str) -> Path:
    """Give a finished run or study in ``<data>/runs`` or ``<data>/studies`` a new folder name; returns its new path.

    Raises:
        ValueError: a name that is not a plain folder name (``paths.check_name``), or as ``archive``.
        FileExistsError: the name is taken.
    """
    folder = Path(folder).resolve()
    kind = _kind(folder)
    home = (paths.runs_dir() if kind == "runs" else paths.studies_dir()).resolve()
    if folder.parent != home:
        raise ValueError(f"{folder} is not in {home}; only the app's own runs and studies are renamed")
    name = paths.check_name(name, "run name" if kind == "runs" else "study name")
    with _locked(folder, kind):
        return _move(folder, home / name)


def current() -> list[Path]:
    """The runs and studies the app lists (``<data>/runs``, ``<data>/studies``), newest name first in each."""
    out = []
    for root in (paths.runs_dir(), paths.studies_dir()):
        out += [p for p in sorted(root.iterdir(), reverse=True) if is_study(p) or runs.is_run(p)] \
            if root.is_dir() else []
    return out


def label(folder: Path) -> str:
    """A run or study folder as a selector shows it: "study · <name>" or "run · <name>"."""
    return f"{'study' if is_study(folder) else 'run'} · {folder.name}"


def archived() -> list[Path]:
    """Archived runs and studies, newest name first."""
    out = []
    for kind in KINDS:
        root = archive_dir() / kind
        out += [p for p in sorted(root.iterdir(), reverse=True) if p.is_dir()] if root.is_dir() else []
    return out
