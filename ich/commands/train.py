"""Train a weak (exam labels), strong (slice labels) or mixed learner on a label budget.

The run folder (--out) records everything: config.json, status.json, metrics.jsonl,
labels.parquet (the labels bought), checkpoint.pt and predictions.parquet (test split).
--resume continues a killed run from its checkpoint and ends as an uninterrupted run would.
Presets: default (compact CNN from scratch, CPU), tiny (seconds; tests), reference (the study:
ResNet-18 from ImageNet weights with --init imagenet:PATH). Any field can be set with
--set section.field=value (e.g. --set train.lr=3e-4).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="dataset folder (from `python -m ich import`)")
    p.add_argument("--supervision", default="weak", help="weak | strong | mixed (default weak)")
    p.add_argument("--budget", type=int, default=None,
                   help="labels to buy: exams (weak), slices (strong), both (mixed); default all")
    p.add_argument("--slice-fraction", type=float, default=None, help="mixed: share of the budget spent on slice labels")
    p.add_argument("--sampling", default=None, help="prevalence (default) | reference (the P:N-ratio quirk)")
    p.add_argument("--seed", type=int, default=0, help="budget subset, init and data order (default 0)")
    p.add_argument("--out", help="run folder to create (default: <data>/runs/<time>-<supervision>-m<budget>-s<seed>)")
    p.add_argument("--preset", default="default", help="default | tiny | reference")
    p.add_argument("--encoder", help="compact | resnet18")
    p.add_argument("--pooling", help="attention | gated_attention | mean | max")
    p.add_argument("--attention", dest="attention_activation", help="sparsemax | softmax")
    p.add_argument("--init", help="random | ENCODER_PATH (ich-encoder file) | imagenet:PATH (torchvision resnet18 weights)")
    p.add_argument("--finetune", help="none (frozen encoder, cached embeddings; default with an encoder file) | "
                                      "partial (reference freezing; default with imagenet:) | all (default with random)")
    p.add_argument("--windows", help="comma-separated CT windows: brain[,subdural,bone]")
    p.add_argument("--input-size", type=int, help="slice size in pixels fed to the encoder")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--loss", help="focal | bce")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--validation", help="paid (default: model selection on a share of the budget's own labels, "
                                        "counted) | free (the fully labelled val split, as the reference; not in "
                                        "the budget, added to the planner's cost)")
    p.add_argument("--acquisition", help="random (default: one stratified draw) | uncertainty | coreset: buy the "
                   "budget in rounds chosen from the labels bought so far | attention (strong): slices a weak guide "
                   "attends to, confirmed by a reader (ich.acquire; needs an encoder file)")
    p.add_argument("--guide-exams", type=int, help="attention: exam labels bought to train the weak guide (default 24)")
    p.add_argument("--rounds", type=int, help="acquisition rounds (default 3)")
    p.add_argument("--label-noise", help="noise of the bought labels as a fallible reader gives them, e.g. "
                   "exam=0.90/0.97 (sensitivity/specificity; add ,slice=S/P); default clean. Test labels stay clean")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. train.lr=3e-4 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON instead of a sentence")


def build_config(args):
    """The RunConfig the arguments describe, through the one recipe (``ich.recipe.run_config``)."""
    from ich.config import parse_overrides
    from ich.recipe import run_config

    if not args.dataset:
        raise ValueError("--dataset is required (a folder written by `python -m ich import`)")
    flags = {"model.encoder": args.encoder, "model.pooling": args.pooling,
             "model.attention_activation": args.attention_activation, "data.input_size": args.input_size,
             "train.epochs": args.epochs, "train.loss": args.loss, "train.device": args.device,
             "train.threads": args.threads, "train.sampling": args.sampling, "train.validation": args.validation,
             "train.label_noise": args.label_noise, "train.acquisition": args.acquisition,
             "train.rounds": args.rounds, "train.guide_exams": args.guide_exams}
    if args.windows:
        flags["data.windows"] = [w.strip() for w in args.windows.split(",") if w.strip()]
    flags = {k: v for k, v in flags.items() if v is not None}
    return run_config(args.dataset, supervision=args.supervision, budget=args.budget, seed=args.seed,
                      slice_fraction=args.slice_fraction, preset=args.preset, init=args.init or "random",
                      finetune=args.finetune, overrides={**flags, **parse_overrides(args.set)})


def run(args) -> int:
    from pathlib import Path

    from ich import runs
    from ich.paths import runs_dir
    from ich.train import fit

    if args.resume:
        if not args.out:
            raise ValueError("--resume needs --out RUN, the run folder to continue")
        cfg = None
    else:
        cfg = build_config(args)
    out = Path(args.out) if args.out else runs_dir() / runs.run_name(cfg)

    def on_term(signum, frame):  # jobs.cancel sends SIGTERM: stop cleanly, the run is marked cancelled
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=1000, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", file=sys.stderr)

    def on_progress(event: dict) -> None:
        if bar is None:
            return
        bar.n = int(1000 * min(1.0, float(event.get("progress", 0.0))))
        phase = event["phase"]
        if phase == "train":
            bar.set_description(f"epoch {event['epoch']}/{event['epochs']}", refresh=False)
            bar.set_postfix_str(f"loss {event['loss']:.4f}", refresh=False)
        elif phase == "val":
            m = event["metrics"]
            auc = m.get("val_exam_auc")
            bar.set_postfix_str(f"loss {m['train_loss']:.4f} val AUC {auc:.3f}" if auc is not None else "", refresh=False)
        elif phase == "embed":
            bar.set_description(f"embedding {event['done']}/{event['total']} slices", refresh=False)
        bar.refresh()

    try:
        summary = fit(cfg, out, on_progress=on_progress, resume=args.resume)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({"run": str(out), **summary}, indent=2, default=str))
    else:
        from ich.results import run_sentence   # here, not at the top: it imports torch (2 s on every CLI start)

        print(f"{out}: {run_sentence(summary).replace('**', '')}\nThe full record is in {out / 'status.json'}.")
    return 0 if summary.get("state") == "done" else 1
