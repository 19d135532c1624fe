"""Check and import one uploaded DICOM series (a zip or a folder) as a one-exam dataset (the app's upload child).

Runs in its own process so a hostile upload costs this process, never the app: --max-memory-mb
caps the address space it may add once its code is loaded, before anything is read. The series must pass the input checks
(``ich.inputs``); the raw DICOM is deleted after import unless --keep-raw. Prints the dataset
folder as JSON.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a zip of one DICOM series, or a folder of its files (a folder is moved)")
    p.add_argument("--name", required=True, help="the upload's name (letters, digits, '.', '_', '-')")
    p.add_argument("--root", required=True, help="the uploads folder (the app's data/uploads)")
    p.add_argument("--size", type=int, default=256, help="in-plane size of the imported volume (default 256)")
    p.add_argument("--keep-raw", action="store_true", help="keep the uploaded DICOM files (they hold full headers)")
    p.add_argument("--max-memory-mb", type=int, default=0, help="address-space limit of this process (0: none)")


def run(args) -> int:
    import torch  # noqa: F401  (mapped before the limit is set: ich.preprocess imports it lazily)

    from ich import inputs, sources  # noqa: F401  (the decoders are mapped before the limit is set)
    from ich.uploads import import_upload

    if args.max_memory_mb:
        _limit_new_memory(args.max_memory_mb)

    try:
        path = import_upload(args.source, args.name, args.root, size=args.size, keep_raw=args.keep_raw)
    except MemoryError as err:
        raise ValueError(f"the import needed more than {args.max_memory_mb} MB of memory and was stopped; the files "
                         "claim larger images than a CT series has") from err
    print(json.dumps({"dataset": str(path)}))
    return 0


def _limit_new_memory(mb: int) -> None:
    """Cap this process's address space at what it maps now (code, libraries) plus ``mb`` MiB."""
    import resource

    with open("/proc/self/status") as f:
        now_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = now_kb * 1024 + mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
