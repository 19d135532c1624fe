"""Uploaded DICOM zips: safe extraction and import as a small dataset the app can score and explain.

A zip from a browser is untrusted. ``safe_extract_zip`` refuses entries that would escape the
target folder (absolute paths, ``..``), symbolic links, more than ``max_files`` entries and more
than ``max_bytes`` uncompressed in total (checked while reading, not trusted from the header),
and extracts into a temporary folder that is renamed into place only when everything passed.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path, PurePosixPath

MAX_BYTES = 1 << 30   # 1 GiB uncompressed
MAX_FILES = 5000
CHUNK = 1 << 20


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


def import_upload(source: str | os.PathLike | bytes, name: str, root: str | os.PathLike, *, size: int = 256) -> Path:
    """Extract an uploaded zip under ``root/<name>/files`` and import it as the dataset ``root/<name>/dataset``.

    Returns the dataset folder. Every CT series in the zip becomes one exam (no labels).
    """
    from ich.sources import import_folder
    from ich.store import safe_exam_id

    base = Path(root) / safe_exam_id(name)
    if base.exists():
        raise FileExistsError(f"an upload named {base.name!r} already exists in {root}; choose another name")
    files = safe_extract_zip(source, base / "files")
    try:
        import_folder(files, base / "dataset", size=size, workers=1, split_seed=0)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return base / "dataset"
