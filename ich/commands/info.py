"""Show a dataset's counts: exams, slices, positives, masks and the per-split numbers.

Prints a readable table, or the counts as JSON with --json (``Dataset.summary()``).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a dataset folder written by `python -m ich import`")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--report", action="store_true", help="include the import report")


def run(args: argparse.Namespace) -> int:
    from ich.store import open_dataset

    ds = open_dataset(args.dataset)
    summary = ds.summary()
    if args.report:
        summary["report"] = ds.meta.get("report", {})
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


def _pct(k: int, n: int) -> str:
    return f"{k} ({100.0 * k / n:.1f}%)" if n else "0"


def format_summary(s: dict) -> str:
    """The summary as a small text table."""
    rows = [("all", s["exams"], s["positive_exams"], s["slices"], s["positive_slices"])]
    rows += [(name, d["exams"], d["positive_exams"], d["slices"], d["positive_slices"])
             for name, d in s["splits"].items()]
    head = ("split", "exams", "positive exams", "slices", "positive slices")
    cells = [head] + [(r[0], str(r[1]), _pct(r[2], r[1]), str(r[3]), _pct(r[4], r[3])) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    table = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(head)))
             for c in cells]
    lines = [f"dataset {s['name']}  (source {s['source']}, {s['size']}x{s['size']} px)", *table,
             f"exams with exam labels: {s['exams_with_exam_labels']}, with slice labels: "
             f"{s['exams_with_slice_labels']}, with masks: {s['exams_with_masks']}",
             "positive exams by subtype: " + ", ".join(f"{k} {v}" for k, v in s["subtype_exams"].items())]
    report = s.get("report")
    if report:
        lines.append("import report: " + json.dumps({k: report[k] for k in ("dropped", "decoders",
                                                                             "twelve_bit_fixes") if k in report}))
    return "\n".join(lines)
