"""Write a study's self-contained HTML report (curves, fits, label ratio, cost plans, every cell, the spec).

Example: python -m ich report data/studies/s1 --out report.html --target 0.9
The file embeds plotly.js and opens offline. Cost parameters: --seconds-per-exam-label,
--seconds-per-slice-label, --hourly-rate (defaults 60 s, 5 s, 200 USD; see README "Cost model").
"""

from __future__ import annotations

import argparse


def add_cost_arguments(p: argparse.ArgumentParser) -> None:
    """The cost-model options shared with the `plan` verb."""
    from ich.planner import CostModel

    d = CostModel()
    p.add_argument("--seconds-per-exam-label", type=float, default=d.seconds_per_exam_label,
                   help=f"annotator seconds per exam label (default {d.seconds_per_exam_label:g})")
    p.add_argument("--seconds-per-slice-label", type=float, default=d.seconds_per_slice_label,
                   help=f"annotator seconds per slice label (default {d.seconds_per_slice_label:g})")
    p.add_argument("--seconds-per-noisy-label", type=float, default=d.seconds_per_noisy_label,
                   help=f"seconds per label of a noisy source, e.g. mined from reports (default "
                        f"{d.seconds_per_noisy_label:g}; arms with --label-noise; a majority of K reads pays K)")
    p.add_argument("--seconds-per-confirmed-slice", type=float, default=d.seconds_per_confirmed_slice,
                   help=f"seconds to confirm a slice a weak guide pre-selected (default "
                        f"{d.seconds_per_confirmed_slice:g}; arms with --acquisition attention)")
    p.add_argument("--hourly-rate", type=float, default=d.hourly_rate,
                   help=f"annotator cost per hour (default {d.hourly_rate:g})")
    p.add_argument("--currency", default=d.currency, help=f"currency label (default {d.currency})")


def cost_from_args(args):
    from ich.planner import CostModel

    return CostModel(seconds_per_exam_label=args.seconds_per_exam_label,
                     seconds_per_slice_label=args.seconds_per_slice_label, hourly_rate=args.hourly_rate,
                     currency=args.currency, seconds_per_noisy_label=args.seconds_per_noisy_label,
                     seconds_per_confirmed_slice=args.seconds_per_confirmed_slice)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study folder (from `python -m ich study`)")
    p.add_argument("--out", help="HTML file to write (default STUDY/report.html)")
    p.add_argument("--target", type=float, action="append", default=[],
                   help="AUC target for labels needed, ratios and plans (repeatable; default: picked from the fits)")
    p.add_argument("--metric", default="exam_auc", help="exam_auc (default) | slice_auc | sequence_f1 | pixel_dice")
    add_cost_arguments(p)


def run(args) -> int:
    from ich.config import check_choice
    from ich.report import write_report

    check_choice("--metric", args.metric, ("exam_auc", "slice_auc", "sequence_f1", "pixel_dice"))
    path = write_report(args.study, args.out, cost=cost_from_args(args), targets=args.target or None,
                        metric=args.metric)
    print(f"report written: {path}")
    return 0
