"""Compare two runs' exam AUCs with the paired DeLong test on the exams both scored.

Prints both AUCs, the difference A - B with its confidence interval, z and the p-value.
The default test is two-sided; --alternative greater tests H1: AUC_A > AUC_B (the reference
study's one-sided test, with the weak learner as A). --bootstrap N adds a paired stratified
bootstrap as a cross-check.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", help="run folder A")
    p.add_argument("run_b", help="run folder B")
    p.add_argument("--dataset", help="score both runs on this dataset (default: each run's own test split)")
    p.add_argument("--split", help="train | val | test | all (default: test for a run's own dataset, else all)")
    p.add_argument("--alternative", default="two-sided", choices=["two-sided", "greater", "less"],
                   help="H1: AUC_A != AUC_B (default), > (greater) or < (less)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the difference's CI (default 0.95)")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="also run a paired bootstrap with N resamples (default: off)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--device", default="auto", help="where to score a dataset the runs have no predictions for")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _f(v: float, digits: int = 3) -> str:
    return "nan" if v is None or v != v else f"{v:.{digits}f}"


def format_comparison(r: dict) -> str:
    """The comparison dict of ``evaluate.compare_runs`` as a few readable lines."""
    h1 = {"two-sided": "AUC_A != AUC_B", "greater": "AUC_A > AUC_B", "less": "AUC_A < AUC_B"}[r["alternative"]]
    pct = f"{100 * r['level']:g}%"
    lines = [
        f"exams: {r['n_exams']} shared ({r['n_positive']} positive); "
        f"only in A: {r['n_only_a']}, only in B: {r['n_only_b']}",
        f"AUC A  {_f(r['auc_a'])}  {r['run_a']}",
        f"AUC B  {_f(r['auc_b'])}  {r['run_b']}",
        f"difference A - B  {_f(r['diff'])}  ({pct} CI {_f(r['diff_ci_low'])} to {_f(r['diff_ci_high'])})",
        f"DeLong z = {_f(r['z'], 2)}, p = {_f(r['p_value'], 4)}  ({r['alternative']}, H1: {h1})",
    ]
    b = r.get("bootstrap")
    if b:
        lines.append(f"bootstrap: difference {pct} CI {_f(b['diff_ci_low'])} to {_f(b['diff_ci_high'])}, "
                     f"p = {_f(b['p_value'], 4)} (normal), {_f(b['p_empirical'], 4)} (empirical)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ich.evaluate import compare_runs

    if args.bootstrap and args.bootstrap < 10:
        raise ValueError(f"--bootstrap must be 0 (off) or at least 10 resamples, not {args.bootstrap}")
    r = compare_runs(args.run_a, args.run_b, dataset=args.dataset, split=args.split, alternative=args.alternative,
                     level=args.level, n_boot=args.bootstrap or None, seed=args.seed, device=args.device)
    if args.json:
        print(json.dumps(r, indent=2, default=str))
    else:
        print(format_comparison(r))
    return 0
