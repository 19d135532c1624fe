"""Names and codes shared by every dataset: hemorrhage subtypes, splits, windows, recorded readers.

Mask voxels hold a subtype code: 0 = no hemorrhage, 1..5 = ``SUBTYPES[code - 1]``.
Window presets are (level, width) in HU.
"""

import re

SUBTYPES: tuple[str, ...] = (
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)
SUBTYPE_ABBREV: dict[str, str] = {
    "epidural": "EDH",
    "intraparenchymal": "IPH",
    "intraventricular": "IVH",
    "subarachnoid": "SAH",
    "subdural": "SDH",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")

WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
}

READER_NAME = re.compile(r"^R[0-9]{1,2}$")   # recorded readers: R1, R2, ... (CQ500's three)
READ_PREFIX = "read_"                        # exams.parquet column of a reader's exam read: read_R1, ...


def read_columns(columns) -> list[str]:
    """The recorded readers among an exams table's column names (``["R1", "R2", "R3"]`` for CQ500; ``[]`` for most)."""
    return [c[len(READ_PREFIX):] for c in columns if c.startswith(READ_PREFIX)]

