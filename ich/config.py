"""Frozen run configurations (data, model, training) with presets, validation and a JSON round trip.

A ``RunConfig`` holds everything needed to rerun a training run; it is written to every run
folder as ``config.json``. Configs are immutable: derive variants with ``dataclasses.replace``
or ``with_overrides(cfg, {"train.lr": 1e-4})``. Unknown keys are rejected with a "did you
mean" hint; every choice field names its options when it is wrong.

Presets (``PRESETS``; resolve one with ``make_config``):

- ``"tiny"``: a seconds-long CPU configuration for tests and demos (64 px, a narrow
  compact encoder, 4 epochs).
- ``"default"`` (= the dataclass defaults; every entry point resolves it through ``ich.recipe``):
  the compact CNN at 128 px, softmax attention with light dropout (0.1 on embeddings, none in
  the attention), BCE, AdamW (weight decay 1e-4, cosine schedule over 20 epochs), 64 optimiser
  steps per epoch for every arm (4 bags or 32 slices a step), bags of 4 exams per step (padded
  + masked), reference bag subsampling, no augmentation (torchio's affine costs as much CPU as
  the training step). Model selection is **paid for**: a stratified quarter of the bought
  labels (of the arm's own kind) is held out and chooses the learning rate (1e-3 x 0.3, 1, 3)
  and the epoch; with fewer than 4 held-out labels of a class the run uses the label-free
  schedule (lr 1e-3, 20 epochs, last epoch). No early stopping (patience None). Softmax, BCE and
  dropout 0.1 were picked on the easy phantom's *validation* exam AUC (weak, 100 exams, one
  seed: 0.78 against 0.72 for focal + sparsemax + dropout 0.5; within seed noise, so
  ``study --robustness`` reruns a study with sparsemax and with focal loss); 64 steps, 20 epochs
  and the 0.3-3x learning-rate grid are conventions, not tuned; a quarter for validation is the
  usual 75/25 split. No default here was chosen on a test split.
- ``"reference"``: the study's settings (paper-protocol.md §2-§7): ResNet-18 from ImageNet
  weights with conv1/layer1/layer2 frozen, one brain window at the cached resolution,
  sparsemax attention, focal loss (alpha 0.60 weak / 0.86 strong), SGD (lr 1e-3, momentum
  0.9, wd 1e-4) for exam-supervised and Adam (lr 1e-5, wd 1e-7) for slice-supervised
  learners, StepLR(3, 0.3), 1 exam or 4 slices per step, torchio augmentation, the P:N-ratio
  budget rule, the fully labelled validation split (``validation="free"``), one learning rate.
  Budget runs: up to 5,000 epochs, validation every 16 epochs when the budget
  is at most 1,000 labels (else every epoch) and stopping after 4 validations without
  improvement; full-data runs: 15 epochs, no early stopping. Departure: the kept checkpoint
  maximises the validation exam AUC, not the accuracy at 0.5.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ich import noise

ACQUISITIONS = ("random", "uncertainty", "coreset", "attention")   # keys of ich.acquire's strategies (kept here: level-1 module)
GUIDE_NEGATIVES = ("random", "attended")     # ich.acquire.guided_slices: how slices of a guide's negative exams are chosen
WINDOW_NAMES = ("brain", "subdural", "bone")  # keys of labels.WINDOWS (kept here: level-1 module)
ENCODER_NAMES = ("compact", "resnet18")
POOLING_NAMES = ("attention", "gated_attention", "mean", "max")
ACTIVATIONS = ("sparsemax", "softmax")
FINETUNE = ("none", "partial", "all")
SUPERVISIONS = ("weak", "strong", "mixed")
SAMPLINGS = ("prevalence", "reference")
LOSSES = ("focal", "bce")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
VALIDATIONS = ("paid", "free")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

#: Focal-loss alpha of the reference study per loss term (paper-protocol.md §5).
REFERENCE_ALPHA = {"exam": 0.60, "slice": 0.86}


def did_you_mean(value: object, options) -> str:
    """`` (did you mean 'x'?)`` when ``value`` is close to one of ``options``, else ``""``."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def preset_with_overrides(value, presets: Mapping[str, Any], cls, overrides: Mapping[str, Any]):
    """A frozen config: ``value`` itself (an instance of ``cls``) or the preset it names, with fields replaced.

    Raises:
        ValueError: an unknown preset name or field, with a did-you-mean hint.
    """
    if isinstance(value, cls):
        cfg = value
    elif value in presets:
        cfg = presets[value]
    else:
        raise ValueError(f"difficulty must be one of {sorted(presets)}, not {value!r}{did_you_mean(value, presets)}")
    unknown = [k for k in overrides if k not in cls.__dataclass_fields__]
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field {unknown[0]!r}"
                         f"{did_you_mean(unknown[0], cls.__dataclass_fields__)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def check_choice(name: str, value: object, options) -> None:
    """Raise ``ValueError`` naming ``name``, the options and a close match when ``value`` is not an option."""
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, not {value!r}{did_you_mean(value, options)}")


def check_number(name: str, value, *, lo=None, hi=None, integer=False, allow_none=False, lo_open=False):
    """Refuse a config number out of [lo, hi] (or (lo, hi] with ``lo_open``), not an integer when one is needed,
    or None unless allowed; the error names the field, the range and what was found."""
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (not integer and not math.isfinite(value)):
        what = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, not {value!r}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, not {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"{name} must be <= {hi}, not {value!r}")


class JsonConfig:
    """The JSON round trip every frozen config shares: ``to_json`` / ``from_json`` around the class's
    ``to_dict`` / ``from_dict``; ``json_what`` names the config in error messages."""

    json_what = "config"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.json_what} is not valid JSON: {err}") from err
        return cls.from_dict(d)

    @classmethod
    def check_mapping(cls, d) -> None:
        """Raise unless ``d`` is a JSON object (a ``from_dict`` input)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a {cls.json_what} must be a JSON object, not {type(d).__name__}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how slices are turned into network input."""

    dataset: str = ""                       # path of an ich dataset folder (ich.store)
    windows: tuple[str, ...] = ("brain",)   # CT windows stacked as channels, C = len(windows) (labels.WINDOWS)
    input_size: int | None = 128            # slices are resized to input_size² px at load time; None = cached size

    def __post_init__(self):
        if not isinstance(self.dataset, str):
            raise ValueError(f"data.dataset must be a folder path (str), not {self.dataset!r}")
        windows = tuple(self.windows) if isinstance(self.windows, (list, tuple)) else self.windows
        if not isinstance(windows, tuple) or not windows:
            raise ValueError(f"data.windows must be a non-empty list of window names {list(WINDOW_NAMES)}, "
                             f"not {self.windows!r}")
        for w in windows:
            check_choice("data.windows entry", w, WINDOW_NAMES)
        if len(set(windows)) != len(windows):
            raise ValueError(f"data.windows must not repeat a window, not {list(windows)}")
        object.__setattr__(self, "windows", windows)
        check_number("data.input_size", self.input_size, lo=16, hi=1024, integer=True, allow_none=True)


@dataclass(frozen=True)
class ModelConfig:
    """Slice encoder, pooling over slices, and how the encoder starts and trains."""

    encoder: str = "compact"                # ENCODERS: compact (CPU CNN) | resnet18 (torchvision)
    width: int = 32                         # compact only: channels of the first stage (x2, x4 later)
    embed_dim: int = 128                    # D, per-slice embedding size
    pooling: str = "attention"              # POOLINGS: attention | gated_attention | mean | max
    attention_activation: str = "softmax"   # softmax (default: denser gradients from scratch) | sparsemax (reference)
    attention_dim: int = 64                 # hidden size of the attention MLP (V: D -> attention_dim)
    embedding_dropout: float = 0.1          # dropout on slice embeddings before pooling and the head (reference 0.5)
    attention_dropout: float = 0.0          # dropout inside the attention score, on V h (reference 0.25)
    init: str = "random"                    # random | ENCODER_PATH (ich-encoder file) | imagenet:PATH (resnet18 weights)
    finetune: str = "all"                   # none: frozen encoder, cached embeddings | partial: reference freezing | all

    def __post_init__(self):
        check_choice("model.encoder", self.encoder, ENCODER_NAMES)
        check_choice("model.pooling", self.pooling, POOLING_NAMES)
        check_choice("model.attention_activation", self.attention_activation, ACTIVATIONS)
        check_choice("model.finetune", self.finetune, FINETUNE)
        check_number("model.width", self.width, lo=4, hi=512, integer=True)
        check_number("model.embed_dim", self.embed_dim, lo=2, hi=4096, integer=True)
        check_number("model.attention_dim", self.attention_dim, lo=1, hi=4096, integer=True)
        for name in ("embedding_dropout", "attention_dropout"):
            v = getattr(self, name)
            check_number(f"model.{name}", v, lo=0.0)
            if v >= 1.0:
                raise ValueError(f"model.{name} must be in [0, 1), not {v!r}")
        if not isinstance(self.init, str) or not self.init:
            raise ValueError(f"model.init must be 'random', an encoder file path or 'imagenet:PATH', not {self.init!r}")
        if self.init.startswith("imagenet:"):
            if self.encoder != "resnet18":
                raise ValueError(f"model.init={self.init!r} loads torchvision ResNet-18 ImageNet weights, but "
                                 f"model.encoder is {self.encoder!r}; use --encoder resnet18 or another --init")
            if not self.init[len("imagenet:"):]:
                raise ValueError("model.init='imagenet:' needs a file: imagenet:PATH (a torchvision resnet18 "
                                 "state-dict file such as resnet18-f37072fd.pth; nothing is downloaded)")
        if self.init == "random" and self.finetune != "all":
            raise ValueError(
                f"model.finetune={self.finetune!r} freezes encoder layers, which is only useful for a pretrained "
                "encoder, but model.init is 'random'. Pass --init ENCODER_PATH or --init imagenet:PATH, "
                "or use --finetune all to train the random encoder")

    @property
    def init_kind(self) -> str:
        """``"random"``, ``"imagenet"`` or ``"encoder"`` (an ich-encoder file)."""
        if self.init == "random":
            return "random"
        return "imagenet" if self.init.startswith("imagenet:") else "encoder"

    @property
    def init_path(self) -> str | None:
        """The file named by ``init`` (None for random)."""
        kind = self.init_kind
        return None if kind == "random" else (self.init[len("imagenet:"):] if kind == "imagenet" else self.init)


@dataclass(frozen=True)
class TrainConfig:
    """Supervision, label budget, loss, optimiser and loop settings."""

    supervision: str = "weak"               # weak: exam labels | strong: slice labels | mixed: both
    budget: int | None = None               # labels bought: exams (weak), slices (strong), both (mixed); None = all
    slice_fraction: float = 0.5             # mixed only: share of the budget spent on slice labels of whole exams
    sampling: str = "prevalence"            # prevalence: keep the split's prevalence | reference: P:N-ratio quirk
    loss: str = "bce"                       # bce | focal (reference, adaptive gamma 5/3)
    focal_alpha: float | None = None        # None: reference alpha (0.60 exam term, 0.86 slice term)
    slice_loss_weight: float = 1.0          # mixed only: weight of the slice-loss term
    optimizer: str = "adamw"                # sgd | adam | adamw
    lr: float = 1e-3                        # peak learning rate
    weight_decay: float = 1e-4
    momentum: float = 0.9                   # sgd only
    schedule: str = "cosine"                # constant | step (StepLR) | cosine (over `epochs`)
    step_size: int = 3                      # step schedule: epochs between decays
    step_gamma: float = 0.3                 # step schedule: decay factor
    epochs: int = 20                        # maximum number of epochs
    patience: int | None = None             # stop after this many validations without improvement; None = never
    val_every: int = 1                      # validate every this many epochs (and at the last one)
    steps_per_epoch: int | None = 64        # optimiser steps per epoch, cycling the labelled set; None = one pass
    validation: str = "paid"                # paid: model selection on a share of the bought labels (counted) |
                                            # free: on the dataset's fully labelled val split (reference; not counted)
    val_fraction: float = 0.25              # paid: share of the bought labels held out for model selection
    val_min_per_class: int = 4              # paid: fewer positives or negatives held out -> label-free schedule
                                            # (4, not 2: chosen on calibration phantom seed 100, never evaluated:
                                            # weak at 24 labels sd 0.14 -> 0.05 over 8 seeds, mean 0.85 -> 0.92)
    lr_factors: tuple[float, ...] = (0.3, 1.0, 3.0)  # learning rates tried (x lr), chosen on validation labels only
    label_noise: str = ""                   # bought labels' noise, e.g. "exam=0.90/0.97" (ich.noise); "" = clean
    acquisition: str = "random"             # how the budget is bought (ich.acquire): random (one stratified draw) |
                                            # uncertainty | coreset (in `rounds` rounds, from the labels bought so far) |
                                            # attention (strong: slices a weak guide attends to, confirmed by a reader)
    rounds: int = 3                         # acquisition rounds (a seed set, then rounds-1 chosen by the strategy)
    guide_exams: int = 24                   # attention: exam labels bought to train the weak guide (priced as exam
                                            # labels, on top of the slice budget)
    guide_negatives: str = "random"         # attention: slices of the guide's negative exams, random | attended
    exams_per_step: int = 4                 # weak/mixed: bags per optimiser step (padded + masked)
    slices_per_step: int = 32               # strong: slices per optimiser step
    bag_min_slices: int | None = 10         # weak bag augmentation: keep k ~ randint(min, S) slices; None = off
    augment: bool = False                   # torchio: flips, small affine, noise, gamma (one draw per bag)
    device: str = "auto"                    # auto (cuda if present) | cpu | cuda
    precision: str = "fp32"                 # fp32 (one recipe on every machine) | bf16 | fp16 (cuda) |
                                            # auto (bf16 where the hardware has it: faster, machine-dependent)
    threads: int | None = None              # torch CPU threads; None = torch's default

    def __post_init__(self):
        check_choice("train.supervision", self.supervision, SUPERVISIONS)
        check_choice("train.sampling", self.sampling, SAMPLINGS)
        check_choice("train.loss", self.loss, LOSSES)
        check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        check_choice("train.schedule", self.schedule, SCHEDULES)
        check_choice("train.device", self.device, DEVICES)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_number("train.budget", self.budget, lo=1, integer=True, allow_none=True)
        check_number("train.slice_fraction", self.slice_fraction, lo=0.0, hi=1.0)
        check_number("train.focal_alpha", self.focal_alpha, lo=0.0, hi=1.0, allow_none=True, lo_open=True)
        check_number("train.slice_loss_weight", self.slice_loss_weight, lo=0.0)
        check_number("train.lr", self.lr, lo=0.0, lo_open=True)
        check_number("train.weight_decay", self.weight_decay, lo=0.0)
        check_number("train.momentum", self.momentum, lo=0.0, hi=1.0)
        check_number("train.step_size", self.step_size, lo=1, integer=True)
        check_number("train.step_gamma", self.step_gamma, lo=0.0, hi=1.0, lo_open=True)
        check_number("train.epochs", self.epochs, lo=1, integer=True)
        check_number("train.patience", self.patience, lo=1, integer=True, allow_none=True)
        check_number("train.val_every", self.val_every, lo=1, integer=True)
        check_number("train.steps_per_epoch", self.steps_per_epoch, lo=1, integer=True, allow_none=True)
        check_number("train.exams_per_step", self.exams_per_step, lo=1, integer=True)
        check_number("train.slices_per_step", self.slices_per_step, lo=1, integer=True)
        check_number("train.bag_min_slices", self.bag_min_slices, lo=1, integer=True, allow_none=True)
        check_number("train.threads", self.threads, lo=1, integer=True, allow_none=True)
        check_choice("train.validation", self.validation, VALIDATIONS)
        check_number("train.val_fraction", self.val_fraction, lo=0.0, hi=0.9, lo_open=True)
        check_number("train.val_min_per_class", self.val_min_per_class, lo=1, integer=True)
        factors = tuple(self.lr_factors) if isinstance(self.lr_factors, (list, tuple)) else self.lr_factors
        if not isinstance(factors, tuple) or not factors:
            raise ValueError(f"train.lr_factors must be a non-empty list of positive numbers (e.g. [0.3, 1, 3]), "
                             f"not {self.lr_factors!r}")
        for f in factors:
            check_number("train.lr_factors entry", f, lo=0.0, lo_open=True)
        if len(set(factors)) != len(factors):
            raise ValueError(f"train.lr_factors must not repeat a value, not {list(factors)}")
        object.__setattr__(self, "lr_factors", tuple(float(f) for f in factors))
        if not isinstance(self.augment, bool):
            raise ValueError(f"train.augment must be true or false, not {self.augment!r}")
        object.__setattr__(self, "label_noise", noise.parse(self.label_noise).spec)   # normalised ("" when clean)
        check_choice("train.acquisition", self.acquisition, ACQUISITIONS)
        check_number("train.rounds", self.rounds, lo=1, integer=True)
        check_number("train.guide_exams", self.guide_exams, lo=2, integer=True)
        check_choice("train.guide_negatives", self.guide_negatives, GUIDE_NEGATIVES)
        if self.supervision == "mixed" and self.budget is not None and not 0.0 < self.slice_fraction < 1.0:
            raise ValueError(f"train.slice_fraction must be strictly between 0 and 1 for mixed supervision "
                             f"(0 is weak, 1 is strong), not {self.slice_fraction!r}")


@dataclass(frozen=True)
class RunConfig(JsonConfig):
    """One training run: data + model + train + seed (the seed drives the budget subset and the init)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0                           # budget subset, initialisation, data order, dropout
    preset: str = "default"                 # the preset this config started from (informational)

    json_what = "run config"

    def __post_init__(self):
        for name, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"RunConfig.{name} must be a {cls.__name__}, not {type(getattr(self, name)).__name__}")
        check_number("seed", self.seed, lo=0, integer=True)
        if not isinstance(self.preset, str):
            raise ValueError(f"preset must be a string, not {self.preset!r}")
        t = self.train
        if t.acquisition != "random":
            if t.supervision == "mixed":
                raise ValueError("train.acquisition applies to weak (exam labels) or strong (slice labels) runs; mixed "
                                 "buys both kinds at once: use train.acquisition=random for mixed")
            if self.model.finetune != "none":
                raise ValueError(f"train.acquisition={t.acquisition} scores the pool from cached embeddings of a frozen "
                                 "encoder: start from an encoder file with model.finetune=none (the quick study's "
                                 "setting), or use train.acquisition=random")
            if t.acquisition == "attention" and t.supervision != "strong":
                raise ValueError("train.acquisition=attention buys slice labels (the slices a weak guide attends to): "
                                 "use it with strong supervision, or pick uncertainty or coreset for weak runs")
            if t.acquisition == "attention" and self.model.pooling not in ("attention", "gated_attention"):
                raise ValueError(f"train.acquisition=attention reads the weak guide's attention: use model.pooling="
                                 f"attention or gated_attention, not {self.model.pooling}")
            if t.rounds < 2 and t.acquisition != "attention":
                raise ValueError(f"train.acquisition={t.acquisition} needs train.rounds of at least 2 (a seed set, then "
                                 "a round chosen by the strategy)")
            if t.budget is None:
                raise ValueError(f"train.acquisition={t.acquisition} buys a budget in rounds: give train.budget")
            if t.label_noise and t.acquisition == "attention":
                raise ValueError("train.acquisition=attention with train.label_noise is not supported (the guide's exam "
                                 "labels and the confirmed slices would need a price and a noise model each); use "
                                 "one of the two")
        if self.model.encoder == "resnet18" and len(self.data.windows) not in (1, 3):
            raise ValueError(f"the resnet18 encoder takes 1 window (replicated to RGB, as the reference) or 3 "
                             f"windows, not {len(self.data.windows)} ({list(self.data.windows)}); "
                             "use the compact encoder for other channel counts")

    @property
    def in_channels(self) -> int:
        """C, the number of input channels (one per window)."""
        return len(self.data.windows)

    # ------------------------------------------------------------------ serialisation
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Build from a (possibly partial) nested dict; unknown keys raise with a did-you-mean hint."""
        cls.check_mapping(d)
        reject_unknown_keys(d, cls)
        parts = {}
        for name, sub in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
            section = d.get(name, {})
            if not isinstance(section, Mapping):
                raise ValueError(f"config section {name!r} must be an object, not {section!r}")
            reject_unknown_keys(section, sub, prefix=f"{name}.")
            parts[name] = sub(**section)
        return cls(**parts, **{k: d[k] for k in ("seed", "preset") if k in d})



def check_probabilities(obj, names) -> None:
    """Refuse a field of ``obj`` among ``names`` that is not a probability in [0, 1]."""
    for name in names:
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], not {getattr(obj, name)!r}")


def check_subtype_weights(w, subtypes) -> None:
    """Refuse subtype weights that are not one non-negative number per subtype with a positive sum."""
    if len(w) != len(subtypes) or min(w) < 0 or sum(w) <= 0:
        raise ValueError(f"subtype_weights must be {len(subtypes)} non-negative numbers in the order "
                         f"{list(subtypes)} with a positive sum, not {w!r}")


def reject_unknown_keys(d: Mapping, cls, *, what: str = "config", prefix: str = "") -> None:
    """Raise ``ValueError`` (with a did-you-mean and the valid keys) for a key of ``d`` that ``cls`` lacks.

    Every frozen config's ``from_dict`` calls this; ``what`` names the config in the message.
    """
    names = [prefix + f.name for f in dataclasses.fields(cls)]
    for key in d:
        if prefix + str(key) not in names:
            hint = did_you_mean(prefix + str(key), names)
            raise ValueError(f"unknown {what} key {prefix + str(key)!r}{hint}; valid keys: {names}")


# ---------------------------------------------------------------------------- presets
PRESETS: dict[str, dict] = {
    "tiny": {
        "data": {"input_size": 64},
        "model": {"width": 16, "embed_dim": 32, "attention_dim": 16, "embedding_dropout": 0.1,
                  "attention_dropout": 0.0},
        "train": {"epochs": 4, "patience": None, "lr": 3e-3, "exams_per_step": 4, "slices_per_step": 32,
                  "precision": "fp32", "steps_per_epoch": None, "validation": "free", "lr_factors": [1.0]},
    },
    "default": {},
    "reference": {
        "data": {"windows": ["brain"], "input_size": None},
        "model": {"encoder": "resnet18", "pooling": "attention", "attention_activation": "sparsemax",
                  "embed_dim": 128, "attention_dim": 64, "embedding_dropout": 0.5, "attention_dropout": 0.25,
                  "finetune": "partial"},
        "train": {"loss": "focal", "focal_alpha": None, "sampling": "reference", "schedule": "step",
                  "step_size": 3, "step_gamma": 0.3, "exams_per_step": 1, "slices_per_step": 4,
                  "bag_min_slices": 10, "augment": True, "steps_per_epoch": None, "validation": "free",
                  "lr_factors": [1.0]},
    },
}

#: Reference optimisers per supervision (paper-protocol.md §6); mixed trains the MIL model like weak.
REFERENCE_OPTIMIZERS = {
    "weak": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4},
    "strong": {"optimizer": "adam", "lr": 1e-5, "weight_decay": 1e-7},
    "mixed": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4},
}


def preset_dict(name: str, *, supervision: str = "weak", budget: int | None = None) -> dict:
    """The nested override dict of a preset, resolved for a supervision and budget."""
    check_choice("preset", name, list(PRESETS))
    d = json.loads(json.dumps(PRESETS[name]))  # deep copy
    if name == "reference":
        train = d["train"]
        train.update(REFERENCE_OPTIMIZERS.get(supervision, REFERENCE_OPTIMIZERS["weak"]))
        if budget is None:   # full-data models: 15 epochs, best checkpoint, no early stopping
            train.update(epochs=15, patience=None, val_every=1)
        else:                # budget models: up to 5000 epochs, patience 3 -> stop after 4 bad validations
            train.update(epochs=5000, patience=4, val_every=1 if budget > 1000 else 16)
    return d


def make_config(dataset: str = "", *, preset: str = "default", supervision: str = "weak",
                budget: int | None = None, seed: int = 0, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Build a ``RunConfig`` from a preset plus dotted overrides (``{"train.lr": 1e-4}``).

    Args:
        dataset: the dataset folder.
        preset: one of ``PRESETS``.
        supervision, budget, seed: the usual study knobs (``budget=None`` means all labels).
        overrides: dotted keys ``section.field`` (or ``seed``) to values, applied last.

    Raises:
        ValueError: unknown preset or key (with a did-you-mean), or an invalid value.
    """
    d = preset_dict(preset, supervision=supervision, budget=budget)
    d.setdefault("data", {})["dataset"] = str(dataset)
    d.setdefault("train", {}).update(supervision=supervision, budget=budget)
    d["seed"], d["preset"] = seed, preset
    for key, value in (overrides or {}).items():
        _set_dotted(d, key, value)
    return RunConfig.from_dict(d)


def with_overrides(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with dotted overrides applied (and validated)."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        _set_dotted(d, key, value)
    return RunConfig.from_dict(d)


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    top = [f.name for f in dataclasses.fields(RunConfig)]
    if len(parts) == 1:
        if key not in ("seed", "preset"):
            raise ValueError(f"unknown config key {key!r}{did_you_mean(key, top)}; use section.field, e.g. train.lr")
        d[key] = value
        return
    if len(parts) != 2 or parts[0] not in ("data", "model", "train"):
        raise ValueError(f"config key {key!r} must look like data.X, model.X or train.X"
                         f"{did_you_mean(parts[0], ['data', 'model', 'train'])}")
    d.setdefault(parts[0], {})[parts[1]] = value


def parse_value(text: str):
    """Parse a command-line override value: JSON (numbers, true/false/null, lists) else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items, *, example: str = "train.lr=3e-4") -> dict:
    """``--set KEY=VALUE`` items -> ``{key: parse_value(value)}``; a malformed item raises with an example."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set needs KEY=VALUE (e.g. {example}), not {item!r}")
        out[key.strip()] = parse_value(text.strip())
    return out
