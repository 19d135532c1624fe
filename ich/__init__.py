"""ICH label-budget lab: weak (exam) vs strong (slice) supervision for hemorrhage detection on head CT.

The flat public API is re-exported here (``import ich; ich.open_dataset(...)``); names
are imported lazily, so ``import ich`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "open_dataset": "ich.store",
    "Dataset": "ich.store",
    "DatasetWriter": "ich.store",
    "SUBTYPES": "ich.labels",
    "WINDOWS": "ich.labels",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ich' has no attribute {name!r}")


def __dir__():
    return __all__
