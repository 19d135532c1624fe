"""Rename, archive or restore a finished run or study (archived ones move to <data>/archive; nothing is deleted).

Examples: python -m ich archive data/studies/quick          (archive a study with all its cells)
          python -m ich archive data/archive/studies/quick --restore
          python -m ich archive data/runs/20261202-weak-m48-s0 --rename weak-48
          python -m ich archive --list                       (what the app lists, and what is archived)
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", nargs="?", help="a run folder under <data>/runs or a study folder under <data>/studies "
                                             "(with --restore: one under <data>/archive)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--restore", action="store_true", help="move an archived run or study back")
    what.add_argument("--rename", metavar="NAME", help="give the run or study a new folder name instead")
    what.add_argument("--list", action="store_true", help="list the runs and studies, and the archived ones")


def run(args: argparse.Namespace) -> int:
    from ich import archive

    if args.list:
        for title, folders in (("listed", archive.current()), ("archived", archive.archived())):
            print(f"{title}:")
            for f in folders:
                print(f"  {archive.label(f)}  ({f})")
        return 0
    if not args.folder:
        raise ValueError("give the run or study folder to archive (or --list to see them)")
    if args.restore:
        print(f"restored to {archive.restore(args.folder)}")
    elif args.rename:
        print(f"renamed to {archive.rename(args.folder, args.rename)}")
    else:
        print(f"archived to {archive.archive(args.folder)}")
    return 0
