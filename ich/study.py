"""Label-budget studies: a grid of training runs (supervision x budget x seed) in one resumable, spec-locked folder.

A study is a frozen ``StudyConfig``; ``plan_cells`` expands it into cells, each an ordinary
run folder (``ich.runs``) trained by ``train.fit`` and evaluated by ``evaluate.evaluate_run``.
Layout of a study folder::

    study.json       the resolved spec (dataset, grid, run preset, overrides, encoder file and
                     checksum): the lock; a rerun with another spec is refused
    progress.json    {"state", "done", "total", "failed", "running", "elapsed_s", "updated",
                      "cells_from" (epoch s the cells began), "cells_done_before" (done before this start)}
    cells.jsonl      one line per cell event (start, done, failed), appended
    summary.csv      one row per cell, then one per (arm, budget) with the mean and 95% CI over seeds;
                     ``validation`` (paid | none | free), ``train_labels``, ``val_labels`` and
                     ``labels_counted`` (= train + validation labels: what the planner prices),
                     ``label_noise`` (the arm's noise model, ``ich.noise``; empty = clean labels),
                     ``acquisition`` (how the arm bought its labels, ``ich.acquire``)
    runs/<cell>/     the run folders, named ``<arm>-m<budget>-s<seed>`` (arm: weak, strong, mixed-f0.25, weak-exam-sens90-spec97)

Cells are ordered seed-major: every budget of every arm gets seed 0 before any gets seed 1,
so the first points of every curve arrive first and a half-finished study already spans all
budgets. Rerunning ``run_study`` on the folder skips finished cells, resumes interrupted ones
from their checkpoint (or restarts them when they had none) and reruns failed ones.

Every cell of a study starts from the same encoder (``StudyConfig.init``), so the arms
compete on equal footing. ``init="auto"`` reuses ``<encoders>/<dataset name>-compact.pt`` next
to the dataset folder (``default_encoder_path``) or, when it is missing, pretrains one without
labels (``AUTO_PRETRAIN``: 2-5 CPU-minutes for the default phantom; `make run` does it up front) and keeps it
for the next study. With an encoder file and ``finetune="none"`` (the default for files) each
cell trains only the pooling and head on cached slice embeddings, computed once before the
cells start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ich import atomic, noise
from ich.config import ACQUISITIONS, SUPERVISIONS, JsonConfig, check_number, check_choice, reject_unknown_keys

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FORMAT = "ich-study/1"
SPEC_FILE = "study.json"
PROGRESS_FILE = "progress.json"
EVENTS_FILE = "cells.jsonl"
SUMMARY_FILE = "summary.csv"
RUNS_DIR = "runs"
LOCK_FILE = ".lock"
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
        An acquisition strategy other than random makes its own arm (``weak-uncertainty``) for weak and strong,
        with clean labels (strategies and noise models are separate axes: ``train.acquisition`` refuses noise).
        """
        out: dict[str, tuple] = {}
        for strategy in self.acquisition:
            for spec in self.label_noise:
                n = noise.parse(spec)
                for s in self.supervisions:
                    if strategy != "random" and (s == "mixed" or spec):
                        continue
                    kinds = {"weak": ("exam",), "strong": ("slice",)}.get(s, ("exam", "slice"))
                    touched = [k for k in kinds if getattr(n, k) != (1.0, 1.0)]
                    applied = noise.LabelNoise(**{k: getattr(n, k) for k in touched})
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
        # cheaper, noisier exam label pay? Budgets in steps of 3x (16 vs 48, 32 vs 96, 64 vs 192) so "one reader"
        # and "majority of three" can be compared at equal cost. Fast path, as quick
        "supervisions": ["weak"], "budgets": [16, 32, 48, 64, 96, 144, 192], "seeds": list(range(5)),
        "label_noise": ["", "exam=0.95/0.95", "exam=0.9/0.9", "exam=0.8/0.8"],
        "preset": "default", "init": "auto", "finetune": "none", "pixel_slices": 0, "overrides": {},
    },
    "acquisition": {
        # which exams or slices to buy: random (the reference's stratified draw) vs uncertainty vs coreset
        # (ich.acquire; 3 rounds: a seed set, then two rounds chosen by the strategy). Fast path, as quick
        "supervisions": ["weak", "strong"], "budgets": [12, 24, 48, 96, 192], "seeds": list(range(3)),
        "acquisition": ["random", "uncertainty", "coreset"],
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
        info.update(path=spec.init, checksum=meta.get("checksum"), method=meta.get("method"))
    return spec, info


# ------------------------------------------------------------------------------ folder I/O
def read_study(study: str | os.PathLike) -> tuple[StudyConfig, dict]:
    """(spec, the whole study.json dict) of a study folder.

    Raises:
        FileNotFoundError: the folder has no study.json.
    """
    p = Path(study) / SPEC_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{study} is not a study folder (no {SPEC_FILE}); start one with `python -m ich study`")
    d = json.loads(p.read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{p} has format {d.get('format')!r}, expected {FORMAT!r}")
    return StudyConfig.from_dict(d["spec"]), d


def is_study(path: str | os.PathLike) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def all_runs(runs_root: str | os.PathLike, studies_root: str | os.PathLike):
    """Every run folder the app shows: single runs under ``runs_root`` and every study's cells under
    ``studies_root/<study>/runs`` (``runs.list_runs`` rows plus ``study``: the study's name, "" for single runs)."""
    import pandas as pd

    from ich import runs

    frames = [runs.list_runs(runs_root).assign(study="")]
    root = Path(studies_root)
    for study in sorted(root.iterdir()) if root.is_dir() else []:
        if is_study(study) and (study / RUNS_DIR).is_dir():
            frames.append(runs.list_runs(study / RUNS_DIR).assign(study=study.name))
    return pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)


def cell_dir(study: str | os.PathLike, cell: Cell | str) -> Path:
    return Path(study) / RUNS_DIR / (cell if isinstance(cell, str) else cell.name)


def _lock_spec(out: Path, spec: StudyConfig, encoder: dict) -> None:
    """Write study.json, or check that the folder holds the same spec (and encoder weights)."""
    record = {"format": FORMAT, "spec": spec.to_dict(), "encoder": {k: encoder.get(k) for k in ("path", "checksum")},
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if is_study(out):
        old_spec, old = read_study(out)
        _check_same_spec(out, old_spec, spec, resolved=True)
        if (old.get("encoder") or {}).get("checksum") != record["encoder"]["checksum"]:
            raise ValueError(f"the encoder file {spec.init} changed since {out} was started (checksum "
                             f"{(old.get('encoder') or {}).get('checksum')} -> {record['encoder']['checksum']}); "
                             "restore it, or start a new study with --out elsewhere")
        return
    if out.exists() and any(p.name not in (LOCK_FILE, PROGRESS_FILE) for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a study folder; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / SPEC_FILE, json.dumps(record, indent=2))


def _check_same_spec(out: Path, old: StudyConfig, new: StudyConfig, *, resolved: bool) -> None:
    """Raise ``ValueError`` naming the fields where ``new`` differs from the folder's spec.

    Before resolution (``resolved=False``) ``init="auto"`` and relative dataset paths are not compared.
    """
    a, b = old.to_dict(), new.to_dict()
    skip = set() if resolved else ({"init"} if new.init == "auto" else set()) | {"dataset"}
    if not resolved and Path(new.dataset).resolve() != Path(old.dataset):
        skip.discard("dataset")
        b["dataset"] = str(Path(new.dataset).resolve())
    if not resolved and new.init not in ("auto", "random") and not new.init.startswith("imagenet:"):
        b["init"] = str(Path(new.init).resolve())
    diffs = [k for k in a if k not in skip and a.get(k) != b[k]]
    if diffs:
        shown = "; ".join(f"{k}: folder {a[k]!r} vs now {b[k]!r}" for k in diffs[:3])
        raise ValueError(f"{out} holds a study with another spec ({shown}); rerun it with the same options "
                         "(or `--resume` alone), or choose a new --out")


class StudyLock:
    """An exclusive lock on a study folder (``fcntl.flock``, released when the process dies)."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self.f = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.seek(0)
            who = self.f.read().strip() or "another process"
            self.f.close()
            raise RuntimeError(f"study {self.path.parent} is being run by {who}; wait for it, or cancel it "
                               "first") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()}")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def cell_state(study: str | os.PathLike, cell: Cell | str) -> str:
    """``done`` (trained and evaluated), ``todo`` (no folder), or the run's state (running, failed, ...)."""
    from ich import runs

    d = cell_dir(study, cell)
    if not runs.is_run(d):
        return "todo"
    state = runs.read_status(d).get("state", "queued")
    if state == "done" and not runs.evaluation_path(d).is_file():
        return "trained"
    return state


def write_progress(study: str | os.PathLike, **fields) -> dict:
    """Merge ``fields`` into progress.json atomically (``jobs.progress_of`` reads done/total)."""
    p = Path(study) / PROGRESS_FILE
    try:
        d = json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        d = {}
    d.update(fields)
    d["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic.write_text(p, json.dumps(d, indent=2))
    return d


def mark_cancelled(study: str | os.PathLike, reason: str = "cancelled by the user") -> None:
    """Record a cancel everywhere a study keeps state: progress.json and every unfinished cell's status.json.

    Called by ``jobs.cancel`` once the study's processes were signalled, so that the Results page, the
    HTML report and every run selector say "cancelled", whatever the killed processes managed to write.
    """
    from ich import runs

    study = Path(study)
    p = read_progress(study)
    if p.get("state") not in ("done", "failed", "cancelled") and (study / PROGRESS_FILE).is_file():
        write_progress(study, state="cancelled", running=0, error=reason)
    for d in sorted((study / "runs").glob("*")) if (study / "runs").is_dir() else []:
        if runs.is_run(d) and runs.read_status(d).get("state") in ("queued", "running"):
            runs.write_status(d, "cancelled", error=reason)


def read_progress(study: str | os.PathLike) -> dict:
    p = Path(study) / PROGRESS_FILE
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _append_event(study: Path, event: dict) -> None:
    with open(study / EVENTS_FILE, "a") as f:
        f.write(json.dumps(event, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_events(study: str | os.PathLike) -> list[dict]:
    """The cell events of cells.jsonl (a torn last line is ignored)."""
    from ich.runs import read_jsonl

    return read_jsonl(Path(study) / EVENTS_FILE)


# ------------------------------------------------------------------------------ one cell (runs in a worker)
def run_cell(task: dict) -> dict:
    """Train and evaluate one cell; meant for worker processes (``ich.executors``).

    Args:
        task: ``{"name", "run_dir", "config" (RunConfig dict), "pixel_slices", "device"}``.

    Returns:
        ``{"name", "state", "seconds", "fit_seconds", "train_seconds", "eval_seconds",
        "overhead_seconds", "started", "pid", "exam_auc"}``; a failed fit raises (the run is
        marked failed by ``fit``).
    """
    from ich import runs
    from ich.config import RunConfig
    from ich.evaluate import evaluate_run
    from ich.train import fit

    started = time.time()
    t0 = time.perf_counter()
    cfg = RunConfig.from_dict(task["config"])
    run_dir = Path(task["run_dir"])
    resume = False
    if runs.is_run(run_dir) and runs.read_config(run_dir) == cfg:
        if runs.read_status(run_dir).get("state") == "done":
            resume = True                                    # trained; only the evaluation is missing
        elif runs.has_checkpoint(run_dir):
            resume = runs.load_checkpoint(run_dir).get("last") is not None   # killed mid-training
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)   # an interrupted start without a checkpoint, or a failed run: start again
    t_fit = time.perf_counter()
    summary = fit(cfg, run_dir, resume=resume)
    fit_seconds = time.perf_counter() - t_fit
    if summary.get("state") != "done":
        raise RuntimeError(f"cell {task['name']} ended {summary.get('state')}")
    t_eval = time.perf_counter()
    k = int(task.get("pixel_slices", 0))
    result = evaluate_run(run_dir, pixel=k > 0, pixel_methods=("gradcam",), max_pixel_slices=k or None,
                          device=task.get("device", "cpu"))
    eval_seconds = time.perf_counter() - t_eval
    seconds = time.perf_counter() - t0
    train_seconds = float(summary.get("train_seconds") or 0.0)
    return {"name": task["name"], "state": "done", "seconds": round(seconds, 3), "fit_seconds": round(fit_seconds, 3),
            "train_seconds": round(train_seconds, 3), "eval_seconds": round(eval_seconds, 3),
            "overhead_seconds": round(seconds - train_seconds - eval_seconds, 3), "started": started,
            "pid": os.getpid(), "exam_auc": result["exam"]["auc"]}


# ------------------------------------------------------------------------------ the study
def prepare_embeddings(spec: StudyConfig, *, on_progress: Callable[[dict], None] | None = None) -> float:
    """Compute the fast path's slice embeddings once, before cells start (so workers never race for them).

    Returns seconds spent (0 when the cache was warm or the study does not use the fast path).
    """
    if spec.init in ("random",) or spec.init.startswith("imagenet:"):
        return 0.0
    cells = plan_cells(spec)
    cfg = cell_config(spec, cells[0])
    if cfg.model.finetune != "none":
        return 0.0
    import torch

    from ich.embed import default_cache_dir, embed_dataset
    from ich.models import build_model
    from ich.device import resolve_device, resolve_precision
    from ich.store import open_dataset

    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    precision = "bf16" if resolve_precision(cfg.train.precision, device) == "bf16" else "fp32"
    ds = open_dataset(cfg.data.dataset)
    model = build_model(cfg).to(device)
    if device.type == "cpu" and precision == "bf16":   # embed_dataset feeds channels_last input: match the
        model.encoder.to(memory_format=torch.channels_last)   # weights (2.6x faster; the checksum is unchanged)
    meta = {"windows": list(cfg.data.windows), "input_size": int(cfg.data.input_size or ds.size)}
    embed_dataset(ds, model.encoder, meta, default_cache_dir(cfg.model.init_path), device=device,
                  precision=precision, on_progress=on_progress)
    return time.perf_counter() - t0


def run_study(spec: StudyConfig, out: str | os.PathLike, *, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, cpus_per_cell: float | None = None, gpus_per_cell: float | None = None,
              on_progress: Callable[[dict], None] | None = None):
    """Run (or resume) a study into ``out``; returns the summary tables ``(cells, aggregate)``.

    Args:
        spec: the study (``make_study``); ``init="auto"`` is resolved first (see the module docstring).
        out: the study folder: new, or holding the same spec (finished cells are skipped).
        executor: ``"local"`` (a pool of worker processes), ``"ray"`` (one Ray task per cell) or
            ``"inline"`` (in this process, one cell after another: debugging and tests).
        workers: concurrent cells (local default: one per GPU, else one per CPU core; never more than cells).
        ray_address: a running Ray cluster (``ray://host:10001`` or ``auto``); None starts a local instance.
        cpus_per_cell, gpus_per_cell: Ray resources of each cell task (default 1 CPU, and 1 GPU when the
            driver sees one).
        on_progress: called with the progress dict after every cell event.

    Raises:
        ValueError / FileExistsError: another spec in ``out``, infeasible budgets, bad options.
        RuntimeError: another process is running this study.
    """
    from ich import executors

    check_choice("executor", executor, EXECUTORS)
    out = Path(out)
    t0 = time.perf_counter()
    if not spec.dataset:
        raise ValueError("the study needs a dataset: pass --dataset (a folder from `python -m ich import`)")
    from ich.store import open_dataset

    open_dataset(spec.dataset)     # a missing dataset fails before the study folder is created
    if is_study(out):          # fail fast, before any pretraining, when the folder holds another study
        _check_same_spec(out, read_study(out)[0], spec, resolved=False)
    elif out.exists() and any(p.name not in (LOCK_FILE, PROGRESS_FILE) for p in out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a study folder; choose a new --out")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_interrupt)   # `jobs cancel` sends SIGTERM: stop cleanly
    except ValueError:                                     # not the main thread
        old_term = None
    try:
        with StudyLock(out):
            return _run_locked(spec, out, t0, executors.make_executor(
                executor, workers=workers, n_tasks=len(plan_cells(spec)), ray_address=ray_address,
                cpus_per_task=cpus_per_cell, gpus_per_task=gpus_per_cell), on_progress)
    except Exception:
        if created and not is_study(out):   # failed before the spec was written: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _run_locked(spec: StudyConfig, out: Path, t0: float, pool, on_progress):
    def elapsed() -> float:
        return round(time.perf_counter() - t0, 3)

    def progress(**fields) -> None:
        _notify(on_progress, write_progress(out, elapsed_s=elapsed(), **fields))

    cells = plan_cells(spec)
    progress(state="preparing", done=0, total=len(cells), failed=0, running=0,
             started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        if spec.init == "auto" and not default_encoder_path(spec.dataset).is_file():
            pool.start()     # workers start (and import torch) while the encoder is pretrained

        def on_pretrain(e: dict) -> None:
            step, steps = e.get("step", 0), e.get("steps")
            if step in (1, steps) or step % 10 == 0:
                progress(state="pretraining", detail=f"pretraining the encoder: step {step}/{steps}")

        spec, encoder = resolve_study(spec, on_progress=on_pretrain)
        check_budgets(spec)
        for c in cells[:len(spec.arms)]:       # every arm's run config is valid before anything is written
            cell_config(spec, c)
        _lock_spec(out, spec, encoder)
        states = {c.name: cell_state(out, c) for c in cells}
        todo = [c for c in cells if states[c.name] != "done"]
        done = len(cells) - len(todo)
        arms_done = {c.arm for c in cells if states[c.name] == "done"}
        failed: set[str] = set()
        progress(state="preparing", done=done, encoder=encoder or None, detail="")
        if not todo:
            progress(state="done", running=0)
            return write_summary(out)
        tasks = [{"name": c.name, "run_dir": str(cell_dir(out, c)), "config": cell_config(spec, c).to_dict(),
                  "pixel_slices": spec.pixel_slices, "device": "auto", "arm": c.arm} for c in todo]
        (out / RUNS_DIR).mkdir(exist_ok=True)
        pool.start()                       # workers import torch while the embeddings are computed
        t_embed = time.perf_counter()
        prepare_embeddings(spec, on_progress=lambda e: progress(
            state="embedding", detail=f"embedding slices: {e['done']}/{e['total']}"))
        progress(embed_s=round(time.perf_counter() - t_embed, 2), detail="",
                 cells_from=time.time(), cells_done_before=done)    # the cells' own pace gives the time left
        running: set[str] = set()

        def on_start(task):
            running.add(task["name"])
            _append_event(out, {"cell": task["name"], "event": "start", "t": elapsed()})
            progress(state="running", running=len(running))

        for task, result, error in pool.map(run_cell, tasks, on_start=on_start):
            running.discard(task["name"])
            extra = {}
            if error is None:
                done += 1
                failed.discard(task["name"])
                arms_done.add(task["arm"])
                if len(arms_done) == len(spec.arms) and "first_point_s" not in read_progress(out):
                    extra["first_point_s"] = elapsed()   # every curve has its first point
                _append_event(out, {"cell": task["name"], "event": "done", "t": elapsed(), **result})
            else:
                failed.add(task["name"])
                log.warning("cell %s failed: %s", task["name"], error)
                _append_event(out, {"cell": task["name"], "event": "failed", "t": elapsed(), "error": error})
            write_summary(out)
            progress(state="running", done=done, failed=len(failed), running=len(running), last=task["name"], **extra)
    except KeyboardInterrupt:
        write_progress(out, state="cancelled", running=0, elapsed_s=elapsed())
        raise
    finally:
        pool.shutdown()
    progress(state="failed" if failed else "done", running=0)
    return write_summary(out)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _notify(fn, progress: dict) -> None:
    if fn is not None:
        fn(dict(progress))


# ------------------------------------------------------------------------------ summary
CELL_COLUMNS = ["row", "arm", "supervision", "slice_fraction", "label_noise", "acquisition", "budget", "seed", "n_seeds", "n_labels", "validation",
                "train_labels", "val_labels", "val_label_kind", "labels_counted", "lr", "state",
                "exam_auc", "exam_auc_ci_low", "exam_auc_ci_high", "slice_auc", "slice_auc_ci_low",
                "slice_auc_ci_high", "sequence_f1", "sequence_f1_ci_low", "sequence_f1_ci_high", "pixel_dice",
                "pixel_dice_ci_low", "pixel_dice_ci_high", "seconds", "run"]
STAT_COLUMNS = ("exam_auc", "slice_auc", "sequence_f1", "pixel_dice")


def cell_row(study: str | os.PathLike, cell: Cell) -> dict:
    """One summary row: the cell's grid position, state and figures (NaN until evaluated).

    Figures: exam AUC with its DeLong 95% CI; slice AUC of the slice probabilities; the
    sequence F1 of the supervision's own estimator (attention for weak and mixed, probability
    for strong); the median Otsu Dice of Grad-CAM maps against masks on lesion slices (when the
    dataset has masks); seconds = training + evaluation.
    """
    from ich import runs

    d = cell_dir(study, cell)
    nan = float("nan")
    row = {"row": "cell", "arm": cell.arm, "supervision": cell.supervision, "slice_fraction": cell.slice_fraction,
           "label_noise": cell.label_noise, "acquisition": cell.acquisition, "budget": cell.budget, "seed": cell.seed, "n_seeds": 1, "n_labels": nan, "validation": "",
           "train_labels": nan, "val_labels": nan, "val_label_kind": "", "labels_counted": nan, "lr": nan,
           "state": cell_state(study, cell),
           **{c: nan for c in CELL_COLUMNS if c.startswith(STAT_COLUMNS)}, "seconds": nan, "run": str(d)}
    if row["state"] not in ("done", "trained"):
        return row
    summary = runs.read_status(d).get("summary") or {}
    row["n_labels"] = summary.get("n_labels", nan)
    # labels used for model selection are counted: paid ones are part of n_labels, free ones come on top
    validation = summary.get("validation", "free")      # runs from before paid validation used the free split
    train_labels = _num(summary.get("train_labels", row["n_labels"]))
    val_labels = _num(summary.get("val_labels", nan))
    row.update(validation=validation, train_labels=train_labels, val_labels=val_labels,
               val_label_kind=summary.get("val_label_kind", "exam"), labels_counted=train_labels + val_labels,
               lr=_num(summary.get("lr", nan)))
    if row["state"] != "done":
        return row
    from ich.record import Evaluation      # here, like runs: both import torch, which `import ich.study` avoids

    m = Evaluation.read(d)
    seq = m.sequence_f1.get("probability" if cell.supervision == "strong" else "attention", nan)
    row.update(exam_auc=m.exam_auc, exam_auc_ci_low=m.exam_auc_ci_low, exam_auc_ci_high=m.exam_auc_ci_high,
               slice_auc=m.slice_auc, sequence_f1=seq, pixel_dice=m.pixel_dice,
               seconds=_num(summary.get("seconds", nan)) + (m.seconds if m.seconds == m.seconds else 0.0))
    return row


def _clip01(v: float) -> float:
    return v if v != v else min(1.0, max(0.0, v))


def _num(v) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def summarise_study(study: str | os.PathLike):
    """The study's tables from its run folders: ``(cells, aggregate)`` DataFrames.

    ``cells``: one row per planned cell (``CELL_COLUMNS``, ``row="cell"``). ``aggregate``: one row per
    (arm, budget) with finished cells (``row="mean"``): each figure's mean over seeds with a
    Student-t 95% CI (``metrics.mean_ci``, clipped to [0, 1]; NaN bounds with one seed),
    ``n_seeds``, mean seconds.
    """
    import pandas as pd

    from ich.metrics import mean_ci

    spec, _ = read_study(study)
    cells = pd.DataFrame([cell_row(study, c) for c in plan_cells(spec)], columns=CELL_COLUMNS)
    rows = []
    done = cells[cells["state"] == "done"]
    for (arm, budget), grp in done.groupby(["arm", "budget"], sort=False):
        first = grp.iloc[0]
        modes = sorted(set(grp["validation"]))
        r = {"row": "mean", "arm": arm, "supervision": first["supervision"], "slice_fraction": first["slice_fraction"],
             "label_noise": first["label_noise"], "acquisition": first["acquisition"], "budget": int(budget), "seed": None, "n_seeds": int(len(grp)), "n_labels": grp["n_labels"].mean(),
             "validation": "+".join(modes), "train_labels": grp["train_labels"].mean(),
             "val_labels": grp["val_labels"].mean(), "val_label_kind": first["val_label_kind"],
             "labels_counted": grp["labels_counted"].mean(), "lr": float("nan"),
             "state": "done", "seconds": grp["seconds"].mean(), "run": ""}
        for stat in STAT_COLUMNS:   # all four figures live in [0, 1]: the t interval is clipped to it
            m, lo, hi = mean_ci(grp[stat].to_numpy(float))
            r[stat], r[f"{stat}_ci_low"], r[f"{stat}_ci_high"] = m, _clip01(lo), _clip01(hi)
        rows.append(r)
    aggregate = pd.DataFrame(rows, columns=CELL_COLUMNS)
    if len(aggregate):
        order = {a: i for i, (a, _, _) in enumerate(spec.arms)}
        aggregate = aggregate.sort_values(["arm", "budget"], key=lambda s: s.map(order) if s.name == "arm" else s,
                                          ignore_index=True)
    return cells, aggregate


def write_summary(study: str | os.PathLike):
    """Write summary.csv (cell rows, then mean rows) atomically; returns ``(cells, aggregate)``."""
    import pandas as pd

    cells, aggregate = summarise_study(study)
    both = pd.concat([cells, aggregate], ignore_index=True) if len(aggregate) else cells
    with atomic.writing(Path(study) / SUMMARY_FILE) as tmp:
        both.to_csv(tmp, index=False)
    return cells, aggregate
