"""Pretrain the slice encoder without labels (self-supervised) and write an encoder file for --init.

Uses only the pixels of the dataset's training split (never a label), so every learner can
start from it without spending label budget. Pass the file to training with --init ENCODER.
An interrupted run continues with --resume (the state is saved after every epoch). Examples:

  python -m ich pretrain --dataset data/datasets/phantom --out data/encoders/phantom-compact.pt
  python -m ich pretrain --dataset data/datasets/phantom --out enc-local.pt --method local --set local_size=32
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)

METHODS = ("local", "patch", "simclr", "masked")  # == ich.pretrain.METHODS (tested)
ENCODERS = ("compact", "resnet18")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--dataset", required=True, help="an ich dataset folder (only its pixels are read)")
    parser.add_argument("--out", required=True, help="the encoder file to write, e.g. data/encoders/enc.pt")
    parser.add_argument("--encoder", choices=ENCODERS, help="slice encoder (default compact)")
    parser.add_argument("--method", choices=METHODS,
                        help="self-supervised objective (default local; ich.pretrain explains each)")
    parser.add_argument("--epochs", type=int, help="passes over the training slices")
    parser.add_argument("--batch-size", type=int, help="slices per step")
    parser.add_argument("--lr", type=float, help="peak learning rate")
    parser.add_argument("--input-size", type=int, help="px the slices are resized to (match the learners' input size)")
    parser.add_argument("--windows", nargs="+", help="CT windows stacked as channels (default: brain)")
    parser.add_argument("--width", type=int, help="compact encoder width")
    parser.add_argument("--embed-dim", type=int, help="embedding size D")
    parser.add_argument("--splits", nargs="+", choices=("train", "val", "test"),
                        help="whose slices to use (default: train only)")
    parser.add_argument("--seed", type=int, help="seed of the initialisation, order and augmentation")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                        help="fp32 (default: one recipe on every CPU) | bf16 | auto (bf16 where the CPU has it "
                             "natively: faster, but the encoder then depends on the CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other PretrainConfig field, e.g. --set temperature=0.1 (repeatable)")
    parser.add_argument("--config", help="a JSON file of PretrainConfig fields (options above override it)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.state")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT (and its state) if present")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_config(args: argparse.Namespace):
    """The ``PretrainConfig`` the options describe (JSON file, then options, then --set)."""
    from pathlib import Path

    from ich.config import parse_overrides
    from ich.pretrain import PretrainConfig

    fields: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} does not exist; pass a JSON file of PretrainConfig fields")
        fields.update(PretrainConfig.from_json(path.read_text()).to_dict())
    for option in ("encoder", "method", "epochs", "batch_size", "lr", "input_size", "windows", "width",
                   "embed_dim", "splits", "seed", "threads", "precision"):
        value = getattr(args, option)
        if value is not None:
            fields[option] = value
    for key, value in parse_overrides(args.set, example="temperature=0.1").items():
        fields[key.replace("-", "_")] = value
    return PretrainConfig.from_dict(fields)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ich.pretrain import pretrain

    cfg = build_config(args)
    bar = tqdm(unit="step", desc=f"pretrain ({cfg.method})", disable=args.no_progress, dynamic_ncols=True)

    def on_progress(p: dict) -> None:
        if bar.total != p["steps"]:
            bar.total = p["steps"]
            bar.n = p["step"] - 1
        bar.set_postfix(epoch=f"{p['epoch']}/{p['epochs']}", loss=f"{p['loss']:.3f}", refresh=False)
        bar.update(p["step"] - bar.n)

    try:
        summary = pretrain(args.dataset, args.out, cfg, on_progress=on_progress, resume=args.resume,
                           overwrite=args.overwrite)
    finally:
        bar.close()
    log.info("wrote %s (%s, %d slices of %d exams, %.0f s, final loss %.4f); use it with --init %s",
             summary["path"], summary["method"], summary["slices"], summary["exams"], summary["seconds"],
             summary["loss"][-1], summary["path"])
    log.debug("%s", json.dumps(summary))
    return 0
