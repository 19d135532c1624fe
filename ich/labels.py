"""Names and codes shared by every dataset: hemorrhage subtypes, splits, windows.

Mask voxels hold a subtype code: 0 = no hemorrhage, 1..5 = ``SUBTYPES[code - 1]``.
Window presets are (level, width) in HU.
"""

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
