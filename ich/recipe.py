"""The one recipe: a training request (dataset, arm, budget, seed, encoder, overrides) -> the frozen RunConfig.

Every entry point resolves a run through ``run_config``: ``python -m ich train``, every cell of
``python -m ich study`` and its presets (``study.cell_config``), the Train page (single run and
grid) and Home's quick study. The fairness settings (optimiser steps per epoch, epochs,
patience, the learning-rate grid and paid validation) are ``TrainConfig`` defaults, identical
for every arm; a caller changes them only through explicit ``overrides``, which the run
records in config.json.

The app launches commands, not functions: ``train_argv`` and ``study_argv`` write the command
line that resolves to exactly the same config or study spec (``tests/test_recipe.py`` parses
them back through the CLI and compares), so the command a page shows is what it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ich.config import RunConfig, make_config

#: The settings that decide whether two arms are compared fairly (shown and editable on the Train page).
FAIRNESS_KEYS = ("train.steps_per_epoch", "train.epochs", "train.patience", "train.lr", "train.lr_factors",
                 "train.loss", "model.attention_activation", "train.validation", "train.val_fraction")


def changed_settings(settings: Mapping[str, Any]) -> dict:
    """The dotted settings whose value differs from the recipe's default (what a page passes as overrides)."""
    base = RunConfig().to_dict()
    out = {}
    for key, value in settings.items():
        section, name = key.split(".")
        default = base[section][name]
        default = list(default) if isinstance(default, tuple) else default
        if (list(value) if isinstance(value, tuple) else value) != default:
            out[key] = value
    return out


def init_overrides(init: str, finetune: str | None = None) -> dict:
    """RunConfig overrides implied by where the encoder starts: an encoder file decides architecture and input.

    Args:
        init: ``random``, an ich-encoder file (``python -m ich pretrain``) or ``imagenet:PATH``.
        finetune: none | partial | all; None picks none for encoder files, partial for ImageNet, all for random.
    """
    if init == "random":
        return {"model.finetune": finetune or "all"}
    if init.startswith("imagenet:"):
        return {"model.init": init, "model.encoder": "resnet18", "model.finetune": finetune or "partial"}
    from ich.models import read_encoder_meta

    meta = read_encoder_meta(init)
    out = {"model.init": str(Path(init).resolve()), "model.encoder": meta["encoder"],
           "model.embed_dim": int(meta["embed_dim"]), "data.windows": list(meta["windows"]),
           "data.input_size": meta["input_size"], "model.finetune": finetune or "none"}
    if "width" in (meta.get("encoder_kwargs") or {}):
        out["model.width"] = int(meta["encoder_kwargs"]["width"])
    return out


def run_config(dataset: str, *, supervision: str = "weak", budget: int | None = None, seed: int = 0,
               slice_fraction: float | None = None, preset: str = "default", init: str = "random",
               finetune: str | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """The RunConfig of one training request; the only place a run's recipe is put together.

    Args:
        dataset: an ich dataset folder.
        supervision, budget, seed: the arm, its label budget (None = every label) and the repeat.
        slice_fraction: mixed only, the share of the budget spent on slice labels.
        preset: a ``config.PRESETS`` name.
        init, finetune: where the encoder starts (see ``init_overrides``).
        overrides: dotted ``section.field`` values applied last (they win over the init's).

    Raises:
        ValueError / FileNotFoundError: unknown keys or values, a missing encoder file.
    """
    flags = init_overrides(init, finetune)
    if slice_fraction is not None:
        flags["train.slice_fraction"] = slice_fraction
    return make_config(str(dataset), preset=preset, supervision=supervision, budget=budget, seed=seed,
                       overrides={**flags, **dict(overrides or {})})


def _set_args(overrides: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in sorted(overrides.items()):
        out += ["--set", f"{key}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    return out


def train_argv(dataset: str, out: str | Path, *, supervision: str = "weak", budget: int | None = None, seed: int = 0,
               slice_fraction: float | None = None, preset: str = "default", init: str = "random",
               finetune: str | None = None, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """``python -m ich`` arguments that train exactly ``run_config(...)`` of the same request into ``out``."""
    argv = ["train", "--dataset", str(dataset), "--supervision", supervision, "--seed", str(seed),
            "--preset", preset, "--init", init, "--out", str(out), "--quiet"]
    if budget is not None:
        argv += ["--budget", str(int(budget))]
    if slice_fraction is not None:
        argv += ["--slice-fraction", repr(float(slice_fraction))]
    if finetune is not None:
        argv += ["--finetune", finetune]
    return argv + _set_args(overrides or {})


def study_argv(spec, out: str | Path) -> list[str]:
    """``python -m ich`` arguments that run exactly the study ``spec`` (a ``study.StudyConfig``) into ``out``."""
    argv = ["study", "--dataset", spec.dataset, "--supervision", ",".join(spec.supervisions),
            "--budgets", ",".join(str(b) for b in spec.budgets), "--seeds", ",".join(str(s) for s in spec.seeds) + ("," if len(spec.seeds) == 1 else ""),
            "--slice-fractions", ",".join(repr(float(f)) for f in spec.slice_fractions),
            "--repeats", spec.repeats, "--run-preset", spec.preset, "--init", spec.init,
            "--pixel-slices", str(spec.pixel_slices), "--out", str(out)]
    if spec.finetune is not None:
        argv += ["--finetune", spec.finetune]
    if spec.name:
        argv += ["--name", spec.name]
    if tuple(spec.acquisition) != ("random",):
        argv += ["--acquisition", ",".join(spec.acquisition)]
    if tuple(spec.label_noise) != ("",):
        for n in spec.label_noise:
            argv += ["--label-noise", n or "clean"]
    return argv + _set_args({k: v for k, v in spec.overrides})
