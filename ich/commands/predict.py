"""Score exams with a trained run: a dataset (written into the run folder) or one DICOM series.

--dataset D writes predictions.parquet (the run's own dataset, test split) or
predictions-<name>.parquet (another dataset, all exams) into the run folder, one row per slice.
--dicom FOLDER scores one exam and prints the exam score and the per-slice table
(or writes it with --out FILE.csv).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a finished run folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset folder to score")
    src.add_argument("--dicom", help="folder of one DICOM CT series to score")
    p.add_argument("--split", help="train | val | test | all (default: test for the run's dataset, else all)")
    p.add_argument("--name", help="write predictions-<name>.parquet (default: from the dataset)")
    p.add_argument("--out", help="--dicom only: write the per-slice table to this CSV file")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="the run's checkpoint is from an older ich version and you trust its source: re-save it in "
                        "the safe format first (loading it this once may run code it holds)")


def run(args) -> int:
    if args.trust_checkpoint:
        from ich import runs

        runs.trust_checkpoint(args.run)
    if args.dicom:  # read (and size-check) the DICOM before torch and the model load
        from ich.dicom import read_series

        vol = read_series(args.dicom)
    from ich import predict

    if args.dataset:
        path = predict.predict_dataset(args.run, args.dataset, split=args.split, name=args.name, device=args.device)
        exams = __import__("pandas").read_parquet(path)
        s = predict.summarize(exams)
        print(json.dumps({"written": str(path), **s}, indent=2, default=str))
        return 0
    score, slices = predict.predict_volume(args.run, vol.hu, device=args.device)
    if args.out:
        slices.assign(exam_score=score).to_csv(args.out, index=False)
    print(json.dumps({"exam_score": score, "n_slices": len(slices), "written": args.out}, indent=2))
    if not args.out:
        print(slices.to_string(index=False))
    return 0
