"""Import a dataset (folder, rsna, cq500, ctich, phantom) into an ich dataset folder.

Reads the source's DICOM or NIfTI files once, caches int16 HU volumes at --size and
writes the exam and slice tables with patient-grouped splits. The import writes to a
temporary folder and renames it at the end, so an interrupted import leaves nothing that
looks complete. Examples:

  python -m ich import phantom data/dicom/phantom --out data/datasets/phantom
  python -m ich import rsna /data/rsna --out data/datasets/rsna --workers 2
  python -m ich import cq500 /data/cq500 --out data/datasets/cq500 --bhx /data/bhx/1_Initial_Manual_Labeling.csv
"""

from __future__ import annotations

import argparse
import sys

SOURCES = ("folder", "rsna", "cq500", "ctich", "phantom")  # == sorted keys of ich.sources.IMPORTERS (tested)
# source-specific options -> the importers that take them
SOURCE_OPTIONS = {"labels": ("folder",), "csv": ("rsna",), "reads": ("cq500",), "bhx": ("cq500",),
                  "series": ("cq500",)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' line breaks
    parser.add_argument("source", choices=SOURCES, help="which importer reads SRC")
    parser.add_argument("src", help="the source folder (quote paths with spaces)")
    parser.add_argument("--out", required=True, help="the dataset folder to create")
    parser.add_argument("--size", type=int, default=256, help="cached in-plane size in pixels (default 256)")
    parser.add_argument("--workers", type=int, default=2, help="processes for reading and decoding (default 2)")
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="skip (default): drop bad files/series and list them in the report; raise: stop")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an ich dataset")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-grouped split")
    parser.add_argument("--labels", help="folder: labels CSV in RSNA layout (ID=<SOPInstanceUID>_<subtype>,Label)")
    parser.add_argument("--csv", help="rsna: the label CSV (default SRC/stage_2_train.csv)")
    parser.add_argument("--reads", help="cq500: reads.csv (default SRC/reads.csv)")
    parser.add_argument("--bhx", help="cq500: BHX box CSV (e.g. 1_Initial_Manual_Labeling.csv) -> masks")
    parser.add_argument("--series", choices=("reference", "all"),
                        help="cq500: series selection (reference rule, default; or all CT series)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


class ProgressBars:
    """``on_progress(stage, done, total)`` -> one tqdm bar per stage.

    Args:
        enabled: True shows bars, False hides them, None shows them only on a terminal.
        file: where the bars go (stderr).
    """

    def __init__(self, enabled: bool | None = None, file=None):
        self.enabled = enabled
        self.file = file
        self.bars: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            unit = "file" if stage == "scan" else ("slice" if stage == "decode" else "exam")
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=self.file or sys.stderr,
                                          disable=None if self.enabled is None else not self.enabled,
                                          dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run(args: argparse.Namespace) -> int:
    from ich.sources import IMPORTERS

    kwargs = {}
    for option, sources in SOURCE_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            if args.source not in sources:
                raise ValueError(f"--{option} applies to the {'/'.join(sources)} importer only, not to "
                                 f"{args.source}; drop it or choose another source")
            kwargs[option] = value
    bars = ProgressBars(enabled=False if args.no_progress else None)
    try:
        report = IMPORTERS[args.source](
            args.src, args.out, size=args.size, workers=args.workers, on_progress=bars,
            on_error=args.on_error, overwrite=args.overwrite, split_seed=args.split_seed, **kwargs)
    finally:
        bars.close()
    print(format_report(report, args.out))
    return 0


def format_report(report: dict, out: str) -> str:
    """A few readable lines summarising an import report."""
    lines = [f"imported {report['exams']} exams, {report['slices']} slices into {out} "
             f"in {report['seconds']:.1f} s ({report.get('slices_per_second') or 0:.0f} slices/s)"]
    if report.get("dropped"):
        lines.append("dropped: " + ", ".join(f"{k} {n}" for k, n in sorted(report["dropped"].items())))
        for d in report.get("drops", [])[:5]:
            lines.append(f"  {d['item']}: {d['reason']}")
        more = report.get("drops_total", 0) - min(5, len(report.get("drops", [])))
        if more > 0:
            lines.append(f"  ... {more} more (see the report in {out}/dataset.json)")
    if report.get("decoders"):
        lines.append("decoders: " + ", ".join(f"{k} {n}" for k, n in report["decoders"].items())
                     + f"; 12-bit fixes: {report.get('twelve_bit_fixes', 0)}")
    return "\n".join(lines)
