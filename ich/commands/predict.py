"""Score exams with a trained run: a dataset (written into the run folder) or the DICOM series of a folder.

--dataset D writes predictions.parquet (the run's own dataset, test split) or
predictions-<name>.parquet (another dataset, all exams) into the run folder, one row per slice.
--dicom FOLDER checks every CT series in the folder (``ich.inputs``: modality, slice count and
spacing, missing or identical slices, orientation, head check), scores those that pass, and says
for each whether it lies out of the run's training distribution (``ich.ood``). It prints a short
text per series and the per-slice table (or writes it with --out FILE.csv); --json prints one
JSON object per series instead: exam_score (null when refused), ood, ood_reason, warnings, refusals.
It exits 2 when no series could be scored.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished run folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset folder to score")
    src.add_argument("--dicom", help="folder of DICOM CT series to check and score (one exam per series)")
    p.add_argument("--split", help="train | val | test | all (default: test for the run's dataset, else all)")
    p.add_argument("--name", help="write predictions-<name>.parquet (default: from the dataset)")
    p.add_argument("--out", help="--dicom only: write the per-slice table to this CSV file")
    p.add_argument("--json", action="store_true", help="--dicom only: print one JSON object per series")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="the run's checkpoint is from an older ich version and you trust its source: re-save it in "
                        "the safe format first (loading it this once may run code it holds)")


def run(args) -> int:
    if args.trust_checkpoint:
        from ich import runs

        runs.trust_checkpoint(args.run)
    checked = None
    if args.dicom:  # read, size-check and check the DICOM before torch and the model load
        from ich.inputs import check_folder

        checked = list(check_folder(args.dicom))
    from ich import predict

    if args.dataset:
        path = predict.predict_dataset(args.run, args.dataset, split=args.split, name=args.name, device=args.device)
        exams = __import__("pandas").read_parquet(path)
        s = predict.summarize(exams)
        print(json.dumps({"written": str(path), **s}, indent=2, default=str))
        return 0
    import pandas as pd

    results, tables = [], []
    for item in checked:
        check = item["check"]
        row = {"exam": item["series"], "series_key": item["series_key"], "n_slices": check.facts.get("n_slices"),
               "exam_score": None, "ood": None, "ood_score": None, "ood_threshold": None, "ood_reason": None,
               "warnings": list(check.warnings), "refusals": list(check.refusals)}
        if check.ok:
            scored = predict.score_series(args.run, item["volume"], device=args.device)
            row.update({k: scored[k] for k in ("exam_score", "ood", "ood_score", "ood_threshold", "ood_reason")})
            tables.append(scored["slices"].assign(exam=item["series"], exam_score=scored["exam_score"]))
        results.append(row)
    if args.out and tables:
        pd.concat(tables, ignore_index=True).to_csv(args.out, index=False)
    if args.json:
        print(json.dumps({"exams": results, "written": args.out if tables else None}, indent=2))
    else:
        for r in results:
            print(_describe(r))
        if not args.out and len(tables) == 1:
            print(tables[0].drop(columns=["exam", "exam_score"]).to_string(index=False))
    if not tables:
        print("error: no series could be scored: " + " | ".join(r for x in results for r in x["refusals"]),
              file=sys.stderr)
        return 2
    return 0


def _describe(r: dict) -> str:
    """Plain lines for one series: its score (or why it was refused), the OOD verdict and the warnings."""
    head = f"{r['exam']} ({r['n_slices']} slices)"
    if r["refusals"]:
        return "\n".join([f"{head}: NOT SCORED", *(f"  - {x}" for x in r["refusals"])])
    flag = "OUT OF DISTRIBUTION: " if r["ood"] else ""
    lines = [f"{head}: exam score {r['exam_score']:.3f}" + (" (not reliable)" if r["ood"] else ""),
             f"  {flag}{r['ood_reason']}"]
    lines += [f"  warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)
