"""The cheapest labelling plan (supervision, budget, slice fraction) that reaches a target AUC in a study.

Example: python -m ich plan data/studies/s1 --target 0.9 [--criterion ci_low]
[--seconds-per-exam-label 60 --seconds-per-slice-label 5 --hourly-rate 200]
Observed plans come from the study's cells (mean over seeds, or the lower 95% CI bound with
--criterion ci_low); fitted plans read labels needed off the power-law learning curves.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ich.commands.report import add_cost_arguments

    p.add_argument("study", help="study folder (from `python -m ich study`)")
    p.add_argument("--target", type=float, required=True, help="the AUC to reach, e.g. 0.9")
    p.add_argument("--criterion", default="mean", help="mean (default) | ci_low (the 95%% CI's lower bound must reach it)")
    p.add_argument("--metric", default="exam_auc", help="exam_auc (default) | slice_auc | sequence_f1 | pixel_dice")
    p.add_argument("--json", action="store_true", help="print the plans as JSON")
    add_cost_arguments(p)


def run(args) -> int:
    from ich.commands.report import cost_from_args
    from ich.results import study_answer

    cost = cost_from_args(args)
    answer = study_answer(args.study, cost=cost, targets=[args.target], criterion=args.criterion, metric=args.metric)
    if answer.aggregate.empty:
        raise RuntimeError(f"study {args.study} has no finished cell yet; wait for `python -m ich study` to finish some")
    at = answer.targets[0]
    robust = at.robustness        # the study was run with --robustness: does the answer survive the variants?
    if args.json:
        print(json.dumps({"target": args.target, "cost_model": cost.to_dict(),
                          "observed": at.plan.to_dict() if at.plan else None,
                          "fitted": [p.to_dict() for p in at.fitted],
                          "robustness": robust and {"sentence": robust.sentence, "table": robust.rows()}},
                         indent=2, default=str))
        return 0 if at.plan or at.fitted else 1
    print(f"target {args.metric} {args.target:g} (criterion {args.criterion}); cost: "
          f"{cost.seconds_per_exam_label:g} s/exam label, {cost.seconds_per_slice_label:g} s/slice label, "
          f"{cost.seconds_per_noisy_label:g} s/noisy read, {cost.seconds_per_confirmed_slice:g} s/confirmed slice, "
          f"{cost.hourly_rate:g} {cost.currency}/h")
    if at.plan:
        print("cheapest observed plan: " + at.plan.sentence().replace("**", ""))
    else:
        print(f"no observed plan reaches {args.target:g} by the {args.criterion} rule")
    for line in at.outcomes:   # every arm, none dropped
        print("  " + line)
    if at.effects:
        print("how each way of buying moved the cost (against the same learner, clean labels bought at random):")
        for line in at.effects:
            print("  " + line)
    if robust is not None:
        print("robustness: " + robust.sentence)
        for r in robust.rows():
            print(f"  {r['variant']}: {r['cheapest plan']}" + (f" [flips? {r['flips?']}]" if r["flips?"] else ""))
    return 0 if at.plan or at.fitted else 1
