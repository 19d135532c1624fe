"""Run a label-budget study: supervision levels x budgets x seeds, one run folder per cell, resumable.

Example: python -m ich study --dataset data/datasets/phantom --supervision weak,strong
--budgets 12,24,48,96,192 --seeds 3 --out data/studies/s1 [--executor local|ray] [--workers N]

Presets, on the fast path (measured on 2 CPU cores, README): quick (weak + strong x 5 budgets x 10
seeds, 100 cells, about 7 min), noise (weak at 0-20 % wrong exam labels, one read or the majority of
three, 54 cells, about 6 min) and acquisition (random / uncertainty / coreset / attention, 105 cells,
16-18 min); without --dataset they use data/datasets/phantom. Every cell starts from the
same encoder (--init; "auto" reuses or pretrains <data>/encoders/<dataset>-compact.pt).
Rerunning the same command (or --resume --out STUDY) skips finished cells and resumes the rest.
Results: STUDY/summary.csv; then `python -m ich report STUDY --out report.html`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, not {text!r}")
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="study folder (new, or an unfinished study with the same spec)")
    p.add_argument("--preset", help="study preset: quick | noise | acquisition | tiny | reference (fields below override it)")
    p.add_argument("--dataset", help="dataset folder (default with --preset quick: data/datasets/phantom)")
    p.add_argument("--supervision", type=_csv(str), help="arms, comma-separated: weak,strong[,mixed]")
    p.add_argument("--budgets", type=_csv(int), help="label budgets, comma-separated (e.g. 12,24,48,96,192)")
    p.add_argument("--seeds", help="N (seeds 0..N-1) or a comma-separated list of seeds")
    p.add_argument("--slice-fractions", type=_csv(float), help="mixed arms: shares of the budget spent on slice labels")
    p.add_argument("--repeats", help="all (default) | reference (R(m) runs per budget, paper §7.2)")
    p.add_argument("--run-preset", help="RunConfig preset of every cell: default | tiny | reference")
    p.add_argument("--init", help="auto | random | ENCODER_PATH | imagenet:PATH: the encoder every cell starts from")
    p.add_argument("--finetune", help="none (cached embeddings) | partial | all (default from --init)")
    p.add_argument("--pixel-slices", type=int, help="lesion slices per cell scored for pixel Dice (0: off)")
    p.add_argument("--acquisition", type=_csv(str), help="how each arm buys its labels, comma-separated: random "
                   "(default), uncertainty, coreset (ich.acquire; rounds: --set train.rounds=N, default 3), attention (strong "
                   "arms: a weak guide on --set train.guide_exams=N exam labels, default 24, points at the slices)")
    p.add_argument("--label-noise", action="append", metavar="SPEC",
                   help="repeatable: one arm per noise model of the bought labels, e.g. --label-noise clean "
                        "--label-noise exam=0.95/0.95 (sensitivity/specificity; ich.noise). Test labels stay clean")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig override for every cell, e.g. train.lr=3e-4 (repeatable)")
    p.add_argument("--name", help="a name for the study (informational)")
    p.add_argument("--validation", help="paid (default: every cell selects its model on a share of its own budget) | "
                                        "free (the fully labelled val split, as the reference; counted by the planner)")
    p.add_argument("--executor", default="local", help="local (process pool, default) | ray | inline (this process; debugging)")
    p.add_argument("--workers", type=int, help="cells at a time (local default: one per GPU, else one per core)")
    p.add_argument("--ray-address", help="a running Ray cluster (e.g. auto, ray://head:10001); default: local Ray")
    p.add_argument("--cpus-per-cell", type=float, help="Ray: CPUs per cell task (default 1)")
    p.add_argument("--gpus-per-cell", type=float, help="Ray: GPUs per cell task (default 1 when GPUs exist, else 0)")
    p.add_argument("--robustness", action="store_true",
                   help="after the study, rerun its grid under recipe variants (ich.robustness: learning rate x1/3 "
                        "and x3, patience, steps per epoch, sparsemax/softmax, BCE/focal) in STUDY/robustness/; "
                        "`python -m ich plan STUDY --target T` then says whether the cheapest plan survives them")
    p.add_argument("--resume", action="store_true", help="continue the study in --out with its saved spec")
    p.add_argument("--dry-run", action="store_true", help="print the resolved spec and the cells, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def build_spec(args):
    """The ``StudyConfig`` the arguments describe."""
    from pathlib import Path

    from ich.config import parse_overrides
    from ich.paths import datasets_dir
    from ich.study import make_study, read_study

    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out STUDY, the study folder to continue")
        spec, _ = read_study(args.out)
        return spec
    seeds = None
    if args.seeds:
        try:
            vals = [int(v) for v in args.seeds.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--seeds must be N or a comma-separated list of seeds, not {args.seeds!r}") from None
        seeds = list(range(vals[0])) if len(vals) == 1 and "," not in args.seeds else vals
    overrides = parse_overrides(args.set)
    if args.validation:
        overrides["train.validation"] = args.validation
    dataset = args.dataset
    if not dataset and args.preset in ("quick", "noise", "acquisition"):
        dataset = str(datasets_dir() / "phantom")
        if not Path(dataset).is_dir():
            raise FileNotFoundError(f"--preset {args.preset} without --dataset uses {dataset}, which does not exist; create "
                                    "it with `make phantom` (or synth + import), or pass --dataset")
    if not dataset:
        raise ValueError("--dataset is required (a folder written by `python -m ich import`)")
    return make_study(args.preset, dataset=dataset, supervisions=args.supervision, budgets=args.budgets, seeds=seeds,
                      slice_fractions=args.slice_fractions, repeats=args.repeats, preset=args.run_preset,
                      init=args.init, finetune=args.finetune, pixel_slices=args.pixel_slices, overrides=overrides,
                      name=args.name, label_noise=args.label_noise,
                      acquisition=args.acquisition)


def run(args) -> int:
    import time

    from ich.study import cell_config, plan_cells, resolve_study, run_study

    if not args.out:
        raise ValueError("--out STUDY is required (the study folder to create or continue)")
    spec = build_spec(args)
    if args.dry_run:
        spec, encoder = resolve_study(spec) if spec.init != "auto" else (spec, {})
        cells = plan_cells(spec)
        print(json.dumps({"spec": spec.to_dict(), "cells": [c.name for c in cells]}, indent=2))
        if spec.init != "auto":
            cell_config(spec, cells[0])  # validates the run config
        return 0
    t0 = time.perf_counter()

    shown = {"line": "", "counts": "", "t": 0.0}

    def on_progress(p: dict) -> None:
        """One line per change of state or counts; a changing detail (embedding 12/48) at most every 2 s."""
        if args.quiet:
            return
        where = f"robustness {p['variant']} " if p.get("variant") else ""
        counts = (f"{where}{p.get('state')}: {p.get('done')}/{p.get('total')} done, {p.get('running')} running, "
                  f"{p.get('failed')} failed" + (f" (last {p['last']})" if p.get("last") else ""))
        line = counts + (f" · {p['detail']}" if p.get("detail") else "")
        now = time.perf_counter()
        if line == shown["line"] or (counts == shown["counts"] and now - shown["t"] < 2.0):
            return
        shown.update(line=line, counts=counts, t=now)
        print(f"[{now - t0:7.1f}s] {line}", file=sys.stderr, flush=True)

    launch = run_study
    if args.robustness:
        from ich.robustness import run_robustness as launch
    cells, aggregate = launch(spec, args.out, executor=args.executor, workers=args.workers,
                              ray_address=args.ray_address, cpus_per_cell=args.cpus_per_cell,
                              gpus_per_cell=args.gpus_per_cell, on_progress=on_progress)
    cols = ["arm", "budget", "n_seeds", "exam_auc", "exam_auc_ci_low", "exam_auc_ci_high", "sequence_f1"]
    if len(aggregate):
        print(aggregate[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    failed = cells[cells["state"] != "done"]
    print(f"study {args.out}: {len(cells) - len(failed)}/{len(cells)} cells done in {time.perf_counter() - t0:.1f} s; "
          f"summary: {args.out}/summary.csv" + (f"; recipe variants: {args.out}/robustness/ (verdict: "
                                                f"python -m ich plan {args.out} --target T)" if args.robustness else ""))
    if len(failed):
        print(f"{len(failed)} cells did not finish ({', '.join(failed['run'].map(lambda r: r.rsplit('/', 1)[-1])[:5])}"
              f"{', ...' if len(failed) > 5 else ''}); rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0
