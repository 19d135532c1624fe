"""A study's spec: the frozen ``StudyConfig``, its presets, the cells it expands into and each cell's run config."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ich import noise
from ich.config import ACQUISITIONS, JsonConfig, SUPERVISIONS, check_choice, check_number, reject_unknown_keys

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


REPEATS = ("all", "reference")
EXECUTORS = ("local", "ray", "inline")

#: Label-free pretraining used by ``init="auto"`` when no encoder file exists yet (``ich.pretrain``).
AUTO_PRETRAIN = {"method": "local", "seed": 0}   # the pretraining defaults: about 2-5 CPU-minutes on the default phantom


def reference_repeats(budget: int) -> int:
    """R(m), the reference study's runs per budget (paper-protocol.md §7.2): 20 up to 252 labels,
    15 at 520, 10 at 796-1000, 6 up to 10,000, then 1 (used by ``repeats="reference"``)."""
    if budget <= 252:
        return 20
    if budget <= 520:
        return 15
    if budget <= 1000:
        return 10
    if budget <= 10000:
        return 6
    return 1


def _as_tuple(name: str, value, kind) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"study.{name} must be a list, not {value!r}")
    out = tuple(value)
    if not out:
        raise ValueError(f"study.{name} must not be empty")
    for v in out:
        if kind is int:
            check_number(f"study.{name} entry", v, lo=0 if name == "seeds" else 1, integer=True)
        elif kind is float:
            check_number(f"study.{name} entry", v, lo=0.0, hi=1.0)
    if len(set(out)) != len(out):
        raise ValueError(f"study.{name} must not repeat a value, not {list(out)}")
    return out


# ------------------------------------------------------------------------------ spec
@dataclass(frozen=True)
class StudyConfig(JsonConfig):
    """A label-budget study: every cell is one run of ``preset`` + ``overrides`` at (arm, budget, seed)."""

    json_what = "study config"

    dataset: str = ""                                  # dataset folder (ich.store)
    supervisions: tuple[str, ...] = ("weak", "strong") # arms: weak (exam labels) | strong (slices) | mixed
    budgets: tuple[int, ...] = (12, 24, 48, 96, 192)   # labels bought per cell (exams, slices, or both for mixed)
    seeds: tuple[int, ...] = (0, 1, 2)                 # budget subset + init + data order of each repeat
    slice_fractions: tuple[float, ...] = (0.5,)        # mixed only: one arm per share of the budget on slice labels
    repeats: str = "all"                               # all: every budget gets every seed | reference: R(m) (§7.2)
    preset: str = "default"                            # RunConfig preset of every cell (config.PRESETS)
    init: str = "auto"                                 # auto | random | ENCODER_PATH | imagenet:PATH (same for all cells)
    finetune: str | None = None                        # None: none for encoder files, partial for imagenet, all for random
    overrides: tuple[tuple[str, Any], ...] = ()        # dotted RunConfig overrides for every cell, e.g. ("train.lr", 3e-4)
    pixel_slices: int = 16                             # lesion slices scored for pixel Dice per cell (0: off)
    name: str = ""                                     # informational
    label_noise: tuple[str, ...] = ("",)               # noise models of the bought labels (ich.noise specs; "" = clean):
                                                       # one arm per (supervision, noise) that the noise touches
    acquisition: tuple[str, ...] = ("random",)         # how each arm buys its budget (ich.acquire): one arm per strategy
                                                       # for weak and strong (mixed arms buy at random)

    def __post_init__(self):
        if not isinstance(self.dataset, str):
            raise ValueError(f"study.dataset must be a folder path (str), not {self.dataset!r}")
        object.__setattr__(self, "supervisions", _as_tuple("supervisions", self.supervisions, str))
        for s in self.supervisions:
            check_choice("study.supervisions entry", s, SUPERVISIONS)
        object.__setattr__(self, "budgets", tuple(sorted(_as_tuple("budgets", self.budgets, int))))
        object.__setattr__(self, "seeds", _as_tuple("seeds", self.seeds, int))
        object.__setattr__(self, "slice_fractions", _as_tuple("slice_fractions", self.slice_fractions, float))
        specs = tuple(noise.parse(x).spec for x in _as_tuple("label_noise", self.label_noise, str))
        if len(set(specs)) != len(specs):
            raise ValueError(f"study.label_noise names one noise model twice: {list(self.label_noise)}")
        object.__setattr__(self, "label_noise", specs)
        object.__setattr__(self, "acquisition", _as_tuple("acquisition", self.acquisition, str))
        for a in self.acquisition:
            check_choice("study.acquisition entry", a, ACQUISITIONS)
        if "mixed" in self.supervisions:
            bad = [f for f in self.slice_fractions if not 0.0 < f < 1.0]
            if bad:
                raise ValueError(f"study.slice_fractions must lie strictly between 0 and 1 for mixed supervision "
                                 f"(0 is weak, 1 is strong), not {bad}")
        check_choice("study.repeats", self.repeats, REPEATS)
        from ich.config import FINETUNE, PRESETS

        check_choice("study.preset", self.preset, list(PRESETS))
        if not isinstance(self.init, str) or not self.init:
            raise ValueError(f"study.init must be 'auto', 'random', an encoder file or 'imagenet:PATH', not {self.init!r}")
        if self.finetune is not None:
            check_choice("study.finetune", self.finetune, FINETUNE)
        pairs = self.overrides.items() if isinstance(self.overrides, Mapping) else self.overrides
        try:
            pairs = tuple(sorted((str(k), _freeze(v)) for k, v in pairs))
        except (TypeError, ValueError) as err:
            raise ValueError(f"study.overrides must be a mapping of dotted keys to values, not {self.overrides!r}") \
                from err
        for key, _ in pairs:
            if key in ("train.supervision", "train.budget", "seed", "train.slice_fraction", "data.dataset",
                       "train.label_noise", "train.acquisition"):
                raise ValueError(f"study.overrides must not set {key!r}: the study grid sets it per cell")
        object.__setattr__(self, "overrides", pairs)
        check_number("study.pixel_slices", self.pixel_slices, lo=0, integer=True)
        if not isinstance(self.name, str):
            raise ValueError(f"study.name must be a string, not {self.name!r}")

    # -------------------------------------------------------------- views
    @property
    def arm_table(self) -> list[tuple[str, str, float | None, str, str]]:
        """(arm name, supervision, slice fraction or None, label noise spec, acquisition) in plotting order.

        A noise model makes its own arm (``weak-exam-sens90-spec97``) only where it touches a label kind the
        arm buys (weak: exam labels, strong: slice labels, mixed: both); elsewhere the arm is the clean one.
        An acquisition strategy other than random makes its own arm (``weak-uncertainty``) for weak and strong
        (``attention``, which picks slice labels, for strong only, with clean labels); with noise models
        too, each strategy arm gets each noisy twin (``weak-exam-sens90-spec90-uncertainty``).
        """
        out: dict[str, tuple] = {}
        for strategy in self.acquisition:
            for spec in self.label_noise:
                n = noise.parse(spec)
                for s in self.supervisions:
                    if strategy != "random" and (s == "mixed" or (strategy == "attention" and (s != "strong" or spec))):
                        continue
                    kinds = {"weak": ("exam",), "strong": ("slice",)}.get(s, ("exam", "slice"))
                    touched = [k for k in kinds if n.touches(k)]
                    applied = n.only(touched)
                    suffix = (f"-{applied.tag}" if touched else "") + (f"-{strategy}" if strategy != "random" else "")
                    for name, frac in ([(f"mixed-f{f:g}", float(f)) for f in self.slice_fractions] if s == "mixed"
                                       else [(s, None)]):
                        out.setdefault(name + suffix, (name + suffix, s, frac, applied.spec, strategy))
        return list(out.values())

    @property
    def arms(self) -> list[tuple[str, str, float | None]]:
        """(arm name, supervision, slice fraction or None) in plotting order."""
        return [a[:3] for a in self.arm_table]

    def seeds_for(self, budget: int) -> tuple[int, ...]:
        """The seeds a budget gets (all of them, or the first R(m) under ``repeats="reference"``)."""
        if self.repeats == "reference":
            return self.seeds[:reference_repeats(budget)]
        return self.seeds

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = {k: _thaw(v) for k, v in self.overrides}
        for k in ("supervisions", "budgets", "seeds", "slice_fractions", "label_noise", "acquisition"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StudyConfig":
        """Build from a (possibly partial) dict; unknown keys raise with a did-you-mean hint."""
        cls.check_mapping(d)
        reject_unknown_keys(d, cls, what=cls.json_what)
        return cls(**d)


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        raise TypeError("nested objects are not allowed in overrides")
    return v


def _thaw(v):
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


#: Study presets; resolve with ``make_study``. ``quick`` runs in minutes on 2 CPU cores (fast path).
STUDY_PRESETS: dict[str, dict] = {
    "quick": {
        # 10 seeds (measured with 3 disjoint sets of 10, README "Stability"): the 10-seed means move by < 0.02 from
        # 96 labels on, by up to 0.03 at 48 and 0.15 at 12-24 (which labels are drawn); +/-0.02 there would take
        # 50-450 seeds. The weak >= strong answer held in all three sets at every budget
        "supervisions": ["weak", "strong"], "budgets": [12, 24, 48, 96, 192], "seeds": list(range(10)),
        "preset": "default", "init": "auto", "finetune": "none", "pixel_slices": 16,
        # fast path: the head trains on cached embeddings. No run override: every cell uses the one recipe
        # (ich.recipe; TrainConfig defaults: 64 optimiser steps per epoch for every arm, paid validation, the
        # learning rate chosen on validation labels), so a Train-page grid with the same arms, budgets, seeds
        # and encoder trains the same cells
        "overrides": {},
    },
    "noise": {
        # weak learner at exam-label noise 0 / 5 / 10 / 20 % (of each class's bought labels flipped, exactly): does a
        # cheaper, noisier exam label pay? And "one reader" against "the majority of three reads" (x3) at 10 and 20 %:
        # budgets in steps of 3x (16 vs 48, 48 vs 144) compare them at equal reads. Fast path, as quick. Sized to
        # finish in about 10 minutes on 2 cores (54 cells); README's table is the same grid at more budgets and
        # seeds (--budgets 16,32,48,64,96,144,192 --seeds 5: 210 cells, 43 min)
        "supervisions": ["weak"], "budgets": [16, 48, 144], "seeds": list(range(3)),
        "label_noise": ["", "exam=0.95/0.95", "exam=0.9/0.9", "exam=0.8/0.8", "exam=0.9/0.9x3", "exam=0.8/0.8x3"],
        "preset": "default", "init": "auto", "finetune": "none", "pixel_slices": 0, "overrides": {},
    },
    "acquisition": {
        # which exams or slices to buy: random (the reference's stratified draw) vs uncertainty vs coreset
        # (ich.acquire; 3 rounds: a seed set, then two rounds chosen by the strategy), and for slice labels
        # attention (a weak guide on 24 exam labels points at the slices a reader confirms). Fast path, as quick
        "supervisions": ["weak", "strong"], "budgets": [12, 24, 48, 96, 192], "seeds": list(range(3)),
        "acquisition": ["random", "uncertainty", "coreset", "attention"],
        "preset": "default", "init": "auto", "finetune": "none", "pixel_slices": 0, "overrides": {},
    },
    "tiny": {  # tests: pass dataset and init
        "supervisions": ["weak", "strong"], "budgets": [4, 8], "seeds": [0, 1], "preset": "tiny",
        "finetune": "none", "pixel_slices": 4, "overrides": {"train.epochs": 3},
    },
    # paper-protocol.md §7: the budgets of M up to 10,000 with R(m) repeats and the reference run preset (pass
    # --init imagenet:PATH). M's 17,000 is left out: under the P:N-ratio rule it cannot be drawn and was most
    # likely the full-data model (§7.4), which is a plain `python -m ich train` run without --budget.
    "reference": {
        "supervisions": ["weak", "strong"],
        "budgets": [12, 24, 40, 52, 64, 80, 100, 152, 200, 252, 520, 796, 1000, 10000],
        "seeds": list(range(20)), "repeats": "reference", "preset": "reference", "pixel_slices": 0,
    },
}


def make_study(study_preset: str | None = None, /, **fields) -> StudyConfig:
    """A ``StudyConfig`` from a study preset (``STUDY_PRESETS``) plus fields (None values are ignored).

    ``fields`` are ``StudyConfig`` fields (``preset`` there is the cells' RunConfig preset);
    ``overrides`` are merged into the study preset's overrides.

    Raises:
        ValueError: unknown preset or field (with a did-you-mean), or an invalid value.
    """
    d: dict = {}
    if study_preset is not None:
        check_choice("study preset", study_preset, list(STUDY_PRESETS))
        d = json.loads(json.dumps(STUDY_PRESETS[study_preset]))
        d["name"] = d.get("name") or study_preset
    overrides = dict(d.get("overrides", {}))
    extra = fields.pop("overrides", None) or {}
    overrides.update(dict(extra.items() if isinstance(extra, Mapping) else extra))
    d.update({k: v for k, v in fields.items() if v is not None})
    d["overrides"] = overrides
    return StudyConfig.from_dict(d)


# ------------------------------------------------------------------------------ cells
@dataclass(frozen=True)
class Cell:
    """One run of a study: an arm at a budget and a seed."""

    arm: str                      # weak | strong | mixed-f<fraction>
    supervision: str
    budget: int
    seed: int
    slice_fraction: float | None  # mixed only
    label_noise: str = ""         # noise model of the bought labels (ich.noise spec; "" = clean)
    acquisition: str = "random"   # how the budget is bought (ich.acquire)

    @property
    def name(self) -> str:
        return f"{self.arm}-m{self.budget}-s{self.seed}"


def plan_cells(spec: StudyConfig) -> list[Cell]:
    """Every cell of a study, seed-major: all (budget, arm) pairs of seed k come before any of seed k+1.

    Within a seed, budgets rise and arms alternate, so the first cells are the smallest
    budget of every arm (the first point of every curve).
    """
    cells = []
    for k in range(len(spec.seeds)):
        for budget in spec.budgets:
            seeds = spec.seeds_for(budget)
            if k >= len(seeds):
                continue
            for arm, sup, frac, noise_spec, strategy in spec.arm_table:
                cells.append(Cell(arm, sup, budget, seeds[k], frac, noise_spec, strategy))
    return cells


def default_encoder_path(dataset: str | os.PathLike) -> Path:
    """Where ``init="auto"`` keeps a dataset's encoder: ``<data root>/encoders/<name>-compact.pt``.

    For a dataset at ``<root>/datasets/<name>`` that is ``<root>/encoders``; for a dataset
    anywhere else, an ``encoders`` folder next to it.
    """
    from ich.store import open_dataset

    path = Path(dataset).resolve()
    name = open_dataset(path).name
    root = path.parent.parent if path.parent.name == "datasets" else path.parent
    return root / "encoders" / f"{name}-compact.pt"


def cell_config(spec: StudyConfig, cell: Cell):
    """The ``RunConfig`` of one cell (``spec.init`` must be resolved: not ``"auto"``)."""
    from ich.recipe import run_config

    if spec.init == "auto":
        raise ValueError("cell_config needs a resolved study (init is 'auto'); call resolve_study first")
    overrides = {k: _thaw(v) for k, v in spec.overrides}
    if cell.label_noise:
        overrides["train.label_noise"] = cell.label_noise
    if cell.acquisition != "random":
        overrides["train.acquisition"] = cell.acquisition
    return run_config(spec.dataset, supervision=cell.supervision, budget=cell.budget, seed=cell.seed,
                      slice_fraction=cell.slice_fraction, preset=spec.preset, init=spec.init, finetune=spec.finetune,
                      overrides=overrides)


def check_budgets(spec: StudyConfig) -> None:
    """Raise ``ValueError`` naming the budgets the dataset's training split cannot fill."""
    from ich.data import select_labels
    from ich.store import open_dataset

    ds = open_dataset(spec.dataset)
    sampling = dict(spec.overrides).get("train.sampling")
    if sampling is None:
        from ich.config import preset_dict

        sampling = preset_dict(spec.preset).get("train", {}).get("sampling", "prevalence")
    for arm, sup, frac in spec.arms:
        try:
            select_labels(ds.exams, ds.slices, supervision=sup, budget=max(spec.budgets), seed=spec.seeds[0],
                          sampling=sampling, slice_fraction=frac if frac is not None else 0.5)
        except ValueError as err:
            raise ValueError(f"study arm {arm!r} cannot buy its largest budget on {ds.name}: {err}") from err


def check_auto_encoder(path: Path, meta: dict) -> None:
    """Refuse a reused ``init="auto"`` encoder (``meta``: its ``read_encoder_meta``) pretrained in another
    precision than the auto recipe's pretraining resolves to here.

    Precision is the one pretraining setting that used to be picked by the machine (bf16 on CPUs
    with native bf16, fp32 elsewhere), so one command named two recipes (README, *Learning from few
    labels*). Encoders without a recorded precision (made by hand) pass.
    """
    import torch

    from ich.device import resolve_precision
    from ich.pretrain import PretrainConfig

    made = meta.get("precision")
    wanted = resolve_precision(PretrainConfig(**AUTO_PRETRAIN).precision, torch.device("cpu"))
    if made is not None and made != wanted:
        raise ValueError(
            f"the study's encoder {path} was pretrained in {made}, but today's recipe pretrains in {wanted} "
            "on every machine, so this study would not run the recipe that studies elsewhere run. "
            f"Delete {path} and {path}.state to pretrain it again (a few CPU-minutes), or pass --init {path} "
            "to use it on purpose.")


def resolve_study(spec: StudyConfig, *, on_progress: Callable[[dict], None] | None = None) -> tuple[StudyConfig, dict]:
    """Resolve ``init="auto"`` to an encoder file (pretraining one if needed) and describe the encoder.

    Returns:
        (spec with a concrete ``init`` and an absolute dataset path, encoder info
        ``{"path", "checksum", "pretrained_now", "seconds"}`` or ``{}`` for random/imagenet inits).

    Raises:
        FileNotFoundError: the dataset or encoder file does not exist.
    """
    from ich.store import open_dataset

    if not spec.dataset:
        raise ValueError("the study needs a dataset: pass --dataset (a folder from `python -m ich import`)")
    dataset = str(Path(spec.dataset).resolve())
    open_dataset(dataset)  # raises a clear FileNotFoundError
    spec = dataclasses.replace(spec, dataset=dataset)
    info: dict = {}
    if spec.init == "auto":
        path = default_encoder_path(dataset)
        t0 = time.perf_counter()
        pretrained = False
        if not path.is_file():
            import fcntl

            from ich.config import make_config
            from ich.pretrain import PretrainConfig, pretrain

            run = make_config(dataset, preset=spec.preset, overrides=dict((k, _thaw(v)) for k, v in spec.overrides))
            cfg = PretrainConfig(**AUTO_PRETRAIN, windows=run.data.windows, input_size=run.data.input_size,
                                 embed_dim=run.model.embed_dim, width=run.model.width, encoder="compact")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_name(f".{path.name}.lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)       # two studies on one dataset pretrain once
                if not path.is_file():
                    log.info("no encoder at %s; pretraining one without labels (%s)", path, AUTO_PRETRAIN)
                    pretrain(dataset, path, cfg, resume=True, on_progress=on_progress)
                    pretrained = True
        spec = dataclasses.replace(spec, init=str(path))
        info = {"pretrained_now": pretrained, "seconds": round(time.perf_counter() - t0, 2)}
    if spec.init not in ("random",) and not spec.init.startswith("imagenet:"):
        from ich.models import read_encoder_meta

        spec = dataclasses.replace(spec, init=str(Path(spec.init).resolve()))
        meta = read_encoder_meta(spec.init)
        if info.get("pretrained_now") is False:                  # an auto encoder reused, not made now
            check_auto_encoder(Path(spec.init), meta)
        info.update(path=spec.init, checksum=meta.get("checksum"), method=meta.get("method"))
    return spec, info
