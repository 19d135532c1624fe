"""Generate a synthetic head-CT dataset (DICOM series + NIfTI masks + RSNA-style labels.csv).

The same --seed gives the same files. Read the result with `python -m ich import phantom DIR`.
Bigger or harder sets: raise --exams, pick --difficulty hard, or shrink --size to save disk.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

DIFFICULTIES = ("easy", "default", "hard")  # == keys of ich.phantom.PHANTOM_PRESETS and ich.atlas.ATLAS_PRESETS (tested)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    parser.add_argument("--exams", type=int, default=300, help="number of exams (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--anatomy", default="geometric", choices=("geometric", "atlas"),
                        help="geometric: drawn shapes (fast); atlas: the MNI152 brain of the installed nilearn "
                             "package as CT, bleeds placed by anatomy (default: geometric)")
    parser.add_argument("--size", type=int, default=None,
                        help="in-plane pixels, 240 mm field of view (default 256 geometric, 512 atlas)")
    parser.add_argument("--difficulty", default="default", choices=DIFFICULTIES,
                        help="lesion size/contrast/noise preset (default: default)")
    parser.add_argument("--slices", type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="slices per exam, drawn uniformly from LOW..HIGH (default 24 40; atlas: skull "
                             "base to vertex, about 30)")
    parser.add_argument("--compression", default="rle", choices=("rle", "none"),
                        help="DICOM pixel encoding: rle (RLE Lossless, half the disk; default) or none")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")
    parser.add_argument("--resume", action="store_true",
                        help="keep an interrupted run's finished exams (in .OUT.partial) and render only the rest")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    import tqdm

    from ich.synth import write_synth_dataset

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}")
    tqdm.tqdm.monitor_interval = 0  # no monitor thread: the worker pool may then fork (fast start)
    with tqdm.tqdm(total=args.exams, unit="exam", desc="synth", disable=args.no_progress) as bar:
        def on_progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        summary = write_synth_dataset(args.out, args.exams, seed=args.seed, size=args.size,
                                      difficulty=args.difficulty, slices=args.slices, workers=args.workers,
                                      compression=args.compression, resume=args.resume, anatomy=args.anatomy,
                                      on_progress=on_progress)
    log.info("positive exams %d/%d (%.0f%%), positive slices %d/%d (%.1f%%); next: python -m ich import phantom %s",
             summary["positive_exams"], summary["exams"], 100 * summary["positive_exams"] / summary["exams"],
             summary["positive_slices"], summary["slices"], 100 * summary["positive_slices"] / max(1, summary["slices"]),
             args.out)
    return 0
