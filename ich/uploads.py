"""Uploaded DICOM series (a zip or loose files): safe staging, checks, and import as a one-exam dataset.

An upload is untrusted. The Streamlit server only *stages* it (``stage_upload``: zip bytes or
loose files written under a hidden folder, names checked); ``import_in_process`` then runs
``python -m ich upload`` in a child process with a memory and a time limit, so a decode bomb or a
hang costs the child, never the server. That child (``import_upload``) checks the series
(``ich.inputs``: one CT series, axial, complete, head-like), imports it, writes the checks to
``upload.json`` and deletes the raw DICOM (full headers) unless asked to keep it. Everything is
built in a hidden temporary folder and renamed into ``<root>/<name>/`` only when it all passed, so
a refused upload leaves nothing behind.

A zip from a browser is untrusted. ``safe_extract_zip`` refuses entries that would escape the
target folder (absolute paths, ``..``), symbolic links, more than ``max_files`` entries and more
than ``max_bytes`` uncompressed in total (checked while reading, not trusted from the header),
and extracts into a temporary folder that is renamed into place only when everything passed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path, PurePosixPath

MAX_BYTES = 1 << 30   # 1 GiB uncompressed
MAX_FILES = 5000
CHUNK = 1 << 20
MAX_NAME = 255        # bytes in one file or folder name (the Linux limit)
UPLOAD_FILE = "upload.json"
IMPORT_MEMORY_MB = 2048   # memory the import process may add to its loaded code
IMPORT_TIMEOUT_S = 300


def _check_name_length(name: str, what: str) -> None:
    for part in PurePosixPath(name).parts:
        if len(part.encode("utf-8", errors="replace")) > MAX_NAME:
            raise ValueError(f"{what} {part[:40]!r}... is {len(part.encode('utf-8', errors='replace'))} bytes long; "
                             f"file and folder names may have at most {MAX_NAME}. Rename it and upload again")


def _check_member(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The relative path an entry may be written to, None for a folder entry; raises on a bad entry."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ValueError(f"the zip holds a symbolic link ({info.filename!r}); upload plain DICOM files only")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/") or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ValueError(f"the zip entry {info.filename!r} points outside the upload folder; "
                         "re-create the zip from the series folder itself")
    _check_name_length(name, "the zip entry name")
    if info.is_dir():
        return None
    return path


def safe_extract_zip(source: str | os.PathLike | bytes, target: str | os.PathLike, *,
                     max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES) -> Path:
    """Extract a zip (a path or its bytes) into ``target`` (which must not exist) and return it.

    Raises:
        ValueError: not a zip, a bad entry, too many files or too many bytes (nothing is left behind).
        FileExistsError: ``target`` exists.
    """
    target = Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another upload name")
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        zf = zipfile.ZipFile(data)
    except zipfile.BadZipFile as err:
        raise ValueError("the upload is not a valid zip file; zip the folder that holds the DICOM series") from err
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        with zf:
            members = zf.infolist()
            if len(members) > max_files:
                raise ValueError(f"the zip holds {len(members)} entries, more than the limit of {max_files}; "
                                 "upload one series at a time")
            total = 0
            tmp.mkdir(parents=True)
            for info in members:
                rel = _check_member(info)
                if rel is None:
                    continue
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    while chunk := src.read(CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise ValueError(f"the zip expands to more than {max_bytes / 2**20:.0f} MiB; "
                                             "upload one series at a time")
                        out.write(chunk)
        if not any(p.is_file() for p in tmp.rglob("*")):
            raise ValueError("the zip holds no files; zip the folder that holds the DICOM series")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def stage_upload(files: list[tuple[str, bytes]], root: str | os.PathLike) -> Path:
    """Write an upload (one zip, or loose DICOM files) into a new hidden folder under ``root``; return it.

    Args:
        files: (file name, bytes) pairs as the browser sent them.
        root: the uploads folder.

    Raises:
        ValueError: nothing uploaded, a zip mixed with other files, several zips, a bad zip, or a name
            over 255 bytes (nothing is left behind).
    """
    if not files:
        raise ValueError("nothing was uploaded; choose a zip of one DICOM series, or its .dcm files")
    zips = [f for f in files if f[0].lower().endswith(".zip")]
    if zips and len(files) > 1:
        raise ValueError(f"upload either one zip or loose .dcm files, not {len(zips)} zip(s) with "
                         f"{len(files) - len(zips)} other file(s)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f".staged-{os.getpid()}-{time.time_ns()}"
    if zips:
        return safe_extract_zip(zips[0][1], target)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.mkdir()
        seen = set()
        for name, data in files:
            base = PurePosixPath(str(name).replace("\\", "/")).name
            _check_name_length(base, "the file name")
            if not base or base.startswith(".") or base in seen:
                raise ValueError(f"the file name {base!r} is empty, hidden or given twice; upload each slice once")
            seen.add(base)
            (tmp / base).write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def upload_name(root: str | os.PathLike) -> str:
    """A new, unused upload name (``upload-YYYYmmdd-HHMMSS`` plus a counter when needed)."""
    base = f"upload-{time.strftime('%Y%m%d-%H%M%S')}"
    name, k = base, 1
    while (Path(root) / name).exists():
        k += 1
        name = f"{base}-{k}"
    return name


def import_upload(source: str | os.PathLike | bytes, name: str, root: str | os.PathLike, *, size: int = 256,
                  keep_raw: bool = False) -> Path:
    """Check and import one uploaded series as the dataset ``root/<name>/dataset``; return that folder.

    Args:
        source: zip bytes, a zip file, or a staged folder (moved, not copied).
        name: the upload's name (sanitised to letters, digits, ``.``, ``_``, ``-``).
        root: the uploads folder.
        size: in-plane size of the imported volume.
        keep_raw: keep the uploaded DICOM files (full headers) under ``root/<name>/files``; by default
            they are deleted once imported.

    Raises:
        ValueError: a bad zip, not exactly one CT series, or a series the input checks refuse (the
            message lists why); FileExistsError: the name is taken. Nothing is left behind on error.
    """
    from ich.inputs import check_folder
    from ich.sources import import_folder

    from ich.store import safe_exam_id

    name = safe_exam_id(name)[:100]      # letters, digits, '.', '_', '-': never a path
    root = Path(root)
    base = root / name
    if base.exists():
        raise FileExistsError(f"an upload named {name!r} already exists in {root}; choose another name")
    tmp = root / f".{name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True)
        files = tmp / "files"
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            os.replace(source, files)
        else:
            safe_extract_zip(source, files)
        try:
            series = check_folder(files)
            if len(series) > 1:
                raise ValueError(f"the upload holds {len(series)} series ("
                                 + ", ".join(f"{s['check'].facts.get('n_slices')} slices" for s in series)
                                 + "); upload one series at a time (the axial head series only)")
            check = series[0]["check"]
            check.raise_if_refused()
        except ValueError as err:          # name the uploaded files as the user knows them, not our temp folder
            raise ValueError(str(err).replace(f"{files}{os.sep}", "")) from err
        import_folder(files, tmp / "dataset", size=size, workers=1, split_seed=0)
        if not keep_raw:
            shutil.rmtree(files)
        record = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "raw_kept": bool(keep_raw),
                  "check": check.to_dict()}
        (tmp / UPLOAD_FILE).write_text(json.dumps(record, indent=2))
        os.replace(tmp, base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            shutil.rmtree(source, ignore_errors=True)
    return base / "dataset"


def import_in_process(staged: str | os.PathLike, name: str, root: str | os.PathLike, *, size: int = 256,
                      keep_raw: bool = False, memory_mb: int = IMPORT_MEMORY_MB,
                      timeout_s: float = IMPORT_TIMEOUT_S) -> Path:
    """Run ``import_upload`` in a child process (``python -m ich upload``) with a memory and a time limit.

    The server that calls this never decodes a pixel of the upload. The staged folder is consumed.

    Returns:
        The dataset folder.

    Raises:
        ValueError: the child refused the upload (its one-line reason), ran out of memory, or took longer
            than ``timeout_s`` (its temporary folder is removed).
    """
    root = Path(root)
    cmd = ["upload", str(staged), "--name", name, "--root", str(root),
           "--size", str(size), "--max-memory-mb", str(memory_mb)] + (["--keep-raw"] if keep_raw else [])
    try:
        proc = _run_child(cmd, timeout_s)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if proc is None or proc.returncode != 0:
        for leftover in root.glob(f".{name}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    if proc is None:
        raise ValueError(f"the import took longer than {timeout_s:.0f} s and was stopped; upload one series "
                         "(a head CT has a few hundred slices at most)")
    if proc.returncode != 0:
        if not any(ln.startswith("error: ") for ln in (proc.stderr or "").splitlines()) and \
                ("MemoryError" in (proc.stderr or "") or proc.returncode in (-9, 137)):
            raise ValueError(f"the import needed more than {memory_mb} MB of memory and was stopped; the files "
                             "claim larger images than a CT series has")
        raise ValueError(_reason(proc, "the import"))
    return root / name / "dataset"


def _run_child(argv: list[str], timeout_s: float) -> subprocess.CompletedProcess | None:
    """``python -m ich <argv>`` in a child process with one CPU thread; None when it ran past ``timeout_s``."""
    try:
        return subprocess.run([sys.executable, "-m", "ich", *argv], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    except subprocess.TimeoutExpired:
        return None


def _reason(proc: subprocess.CompletedProcess, what: str) -> str:
    """The one-line reason a child gave (its last ``error: ...`` line), else "<what> failed (exit N): <last line>"."""
    lines = (proc.stderr or "").strip().splitlines()
    reason = next((ln[len("error: "):] for ln in reversed(lines) if ln.startswith("error: ")), None)
    return reason or f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else ''}"


def score_in_process(run: str | os.PathLike, dataset: str | os.PathLike, name: str, *,
                     timeout_s: float = IMPORT_TIMEOUT_S) -> None:
    """Score an uploaded dataset with a run in a child process (``python -m ich predict``), so the app's server
    never runs a model: it writes ``predictions-<name>.parquet`` into the run folder.

    Raises:
        ValueError: the child failed or took longer than ``timeout_s`` (the reason in one line).
    """
    proc = _run_child(["predict", str(run), "--dataset", str(dataset), "--name", name, "--device", "cpu"], timeout_s)
    if proc is None:
        raise ValueError(f"scoring the upload took longer than {timeout_s:.0f} s and was stopped")
    if proc.returncode != 0:
        raise ValueError(f"scoring the upload failed: {_reason(proc, 'it')}")


def read_upload(folder: str | os.PathLike) -> dict:
    """The record of one upload (``upload.json``): name, created, raw_kept, check (refusals, warnings, facts)."""
    path = Path(folder) / UPLOAD_FILE
    return json.loads(path.read_text()) if path.is_file() else {"name": Path(folder).name, "check": {}}


def list_uploads(root: str | os.PathLike) -> list[dict]:
    """Every finished upload under ``root`` (newest first), each with its ``dataset`` path added."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [{**read_upload(p), "dataset": str(p / "dataset")} for p in root.iterdir()
           if not p.name.startswith(".") and (p / "dataset").is_dir()]
    return sorted(out, key=lambda u: u.get("created", ""), reverse=True)


def remove_upload(root: str | os.PathLike, name: str) -> None:
    """Delete one upload (its dataset, record and any kept files)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", str(name)):
        raise ValueError(f"not an upload name: {name!r}")
    shutil.rmtree(Path(root) / name, ignore_errors=True)
