"""Evaluate a run: exam AUC with CI and operating points, slice AUC and sequence F1, pixel Dice; writes metrics.json.

The run's own dataset gives its test split and metrics.json; another --dataset gives all its
exams and metrics-<name>.json. A dataset the run has not scored yet is scored first. Pixel
figures (Grad-CAM and a random control by default, scored against the masks) are added when
the dataset has lesion masks.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished run folder")
    p.add_argument("--dataset", help="dataset folder (default: the run's own)")
    p.add_argument("--split", help="train | val | test | all (default: test for the run's dataset, else all)")
    p.add_argument("--name", help="read predictions-<name>.parquet (as written by `predict --name`)")
    p.add_argument("--ci", default="delong", choices=["delong", "bootstrap"],
                   help="exam AUC CI method (default delong)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--cutoff", default="closest", choices=["closest", "youden"],
                   help="sequence-F1 cutoff: ROC point nearest (0,1) (the reference's 'd') or Youden's J")
    p.add_argument("--estimators", help="sequence-F1 estimators, comma-separated: probability,attention "
                                        "(default: attention for weak, probability for strong, both for mixed)")
    p.add_argument("--min-length", type=int, help="minimum predicted run length (default 4 probability, 2 attention)")
    p.add_argument("--offset", type=int, default=0, help="hit tolerance in slices around a true run (default 0)")
    p.add_argument("--no-pixel", action="store_true", help="skip the heatmap scores")
    p.add_argument("--methods", default="gradcam,random",
                   help="heatmap methods, comma-separated: gradcam, ig, occlusion, saliency, random "
                        "(default gradcam,random)")
    p.add_argument("--selection", default="lesion", choices=["lesion", "reference"],
                   help="slices scored: every lesion slice (default) or the reference's detected slices")
    p.add_argument("--max-slices", type=int, default=200, help="at most this many slices scored (0 = all; default 200)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap, slice-subset and random-map seed")
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    p.add_argument("--json", action="store_true", help="print the whole metrics dict")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="the run's checkpoint is from an older ich version and you trust its source: re-save it in "
                        "the safe format first (loading it this once may run code it holds)")


def _split_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def _f(v, digits: int = 3) -> str:
    return "nan" if v is None or v != v else f"{v:.{digits}f}"


def format_metrics(m: dict) -> str:
    """The headline figures of an ``evaluate_run`` dict, one line each."""
    e = m["exam"]
    c = m["counts"]
    lines = [f"run {m['run']} on {m['dataset']} ({m['split']}): {c['labelled_exams']} exams "
             f"({c['positive_exams']} positive), {c['slices']} slices",
             f"exam AUC {_f(e['auc'])} ({100 * e['level']:g}% CI {_f(e['auc_ci_low'])}-{_f(e['auc_ci_high'])}, "
             f"{e['ci_method']}), AP {_f(e['average_precision'])}"]
    for rule, op in e["operating_points"].items():
        lines.append(f"  {rule:<8} threshold {_f(op['threshold'])}: sensitivity {_f(op['sensitivity'])}, "
                     f"specificity {_f(op['specificity'])}")
    for est, s in m["slice"].items():
        if s["n"]:
            lines.append(f"slice AUC ({est}) {_f(s['auc'])}, AP {_f(s['average_precision'])} on {s['n']} slices")
    for est, s in m["sequence"].items():
        if s["available"]:
            lines.append(f"sequence F1 ({est}, min length {s['min_length']}, offset {s['offset']}) {_f(s['f1'])} "
                         f"over {s['n_scored']} exams; run TPR {_f(s['tpr'])} ({s['n_hit']}/{s['n_true_runs']})")
    for method, p in ((m.get("pixel") or {}).get("methods") or {}).items():
        a = p["by_subtype"].get("Any", {})
        if a:
            lines.append(f"pixel {method}: Dice mask {_f(a['dice_mask']['median'])} (IQR {_f(a['dice_mask']['iqr'])}), "
                         f"boxes {_f(a['dice_boxes']['median'])}, pointing {_f(a.get('pointing'))} "
                         f"on {p['n_slices']} slices ({1000 * p['seconds_per_slice']:.0f} ms/slice)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ich import runs
    from ich.evaluate import evaluate_run

    if args.trust_checkpoint:
        runs.trust_checkpoint(args.run)

    m = evaluate_run(args.run, args.dataset, split=args.split, name=args.name, pixel=not args.no_pixel,
                     pixel_methods=_split_list(args.methods) or (), selection=args.selection,
                     max_pixel_slices=args.max_slices or None, device=args.device, level=args.level,
                     ci_method=args.ci, n_boot=args.n_boot, seed=args.seed, cutoff=args.cutoff,
                     estimators=_split_list(args.estimators), min_length=args.min_length, offset=args.offset)
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    else:
        print(format_metrics(m))
        print(f"written: {runs.evaluation_path(args.run, m['prediction_name'])}")
    return 0
