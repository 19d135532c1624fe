"""Writing a file so that no reader ever sees half of it: write a temporary file beside it, then rename it over.

Every file the lab records (configs, status, metrics, checkpoints, encoders, reports, DICOM
slices, summaries) goes through ``writing``: on success the temporary file replaces the target
in one ``os.replace`` (atomic on one file system); on any failure (an error, a full disk,
Ctrl-C, SIGTERM) it is removed, so nothing half-written stays behind. Folders that appear
whole (a dataset, a synthetic phantom, an upload) are built under a temporary name and renamed
by their own modules.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path, *, keep_suffix: bool = False) -> Path:
    """The temporary file beside ``path``: hidden, unique to this process.

    ``keep_suffix=True`` keeps the name's end (``.tmp-123-x.npz``) for writers that pick their
    format from it (numpy's savez, nibabel); otherwise ``.x.npz.tmp-123``, which no reader of
    ``*.npz`` or ``*.dcm`` matches.
    """
    return path.with_name(f".tmp-{os.getpid()}-{path.name}" if keep_suffix else f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def writing(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; it replaces ``path`` on success, is removed on failure.

    Example::

        with writing(run / "model.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename is None and err.errno:    # name the file (f.write does not)
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (flushed to disk first unless ``fsync=False``)."""
    with writing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)
