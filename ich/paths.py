"""Where the app keeps things: the data root and its standard sub-folders.

The root is ``$ICH_DATA`` when set (tests point it at a temporary folder), else ``./data``.
Names typed by users become folders under it only through ``check_name`` (never ``..`` or a path).
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("ICH_DATA", "data"))


def datasets_dir() -> Path:
    return data_root() / "datasets"


def dicom_dir() -> Path:
    return data_root() / "dicom"


def runs_dir() -> Path:
    return data_root() / "runs"


def studies_dir() -> Path:
    return data_root() / "studies"


def encoders_dir() -> Path:
    return data_root() / "encoders"


def jobs_db() -> Path:
    return data_root() / "jobs.sqlite"


def uploads_dir() -> Path:
    return data_root() / "uploads"


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str, what: str = "dataset name") -> str:
    """A user-typed name that becomes one folder under the data root: 1-64 letters, digits, '.', '_', '-',
    starting with a letter or digit (so never '..', a path separator or a hidden folder).

    Raises:
        ValueError: anything else, with a sanitised suggestion.
    """
    text = str(name).strip()
    if not NAME_PATTERN.match(text):
        suggestion = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")[:64] or "my-dataset"
        raise ValueError(f"{what} must be 1-64 letters, digits, '.', '_' or '-' and start with a letter or digit "
                         f"(it becomes a folder name inside the data folder), not {name!r}; try {suggestion!r}")
    return text


def check_out_folder(out: str | os.PathLike, what: str = "--out") -> Path:
    """An output folder whose last part names it: refuses '', '.', '..' and hidden names ('.x').

    Hidden names clash with the temporary folders (``.<name>.tmp-...``) and are skipped by the listings.
    """
    out = Path(out)
    name = out.name
    if name in ("", ".", "..") or name.startswith("."):
        raise ValueError(f"{what} {str(out)!r} must end in the name of the folder to create (not {name!r} and "
                         f"not starting with '.'); e.g. {str(out.parent / 'my-dataset')!r}")
    return out
