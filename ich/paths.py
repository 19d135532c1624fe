"""Where the app keeps things: the data root and its standard sub-folders.

The root is ``$ICH_DATA`` when set (tests point it at a temporary folder), else ``./data``.
"""

from __future__ import annotations

import os
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
