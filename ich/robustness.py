"""Robustness of a study's answer: the study rerun under recipe variants, and whether its cheapest plan survives them.

A *variant* is one change of the training recipe, written as dotted ``RunConfig`` overrides
layered on top of the study's own overrides (``VARIANTS``): learning rate x1/3 and x3,
patience halved and doubled, optimiser steps per epoch halved and doubled, the attention
activation flipped (sparsemax <-> softmax) and the loss flipped (bce <-> focal). Each value is
read from the base study's resolved cell configs (``study.cell_config``), never from the
library's defaults, so the variants follow whatever recipe the study runs.

Layout, inside the base study folder (each variant a normal, resumable study folder written by
``study.run_study``, with the base study's encoder, arms, budgets and seeds)::

    robustness/robustness.json       the variants: name, plain-words label, overrides, or why skipped
    robustness/<variant>/            a study folder, when the change is the same for every cell
    robustness/<variant>/<part>/     otherwise one study folder per (arm, budget) or per cell
                                     (e.g. steps per epoch when the recipe makes one pass per epoch,
                                     whose length depends on the budget)

The verdict (``verdict``, ``study_verdict``) applies ``planner.cheapest_plan`` (observed points,
mean or CI-lower-bound criterion) to the base study and to every finished variant, and says
in plain words whether the cheapest plan for AUC >= t is the same under every recipe tried or
which change flips it ("arm changes" or "same arm, budget changes", and to what). A variant
counts only when all of its cells have finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ich import atomic
from ich.planner import CRITERIA, CostModel, Plan, annotator_time, cheapest_plan

if TYPE_CHECKING:
    import pandas as pd

    from ich.config import RunConfig
    from ich.study import Cell, StudyConfig

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FORMAT = "ich-robustness/1"
DIR = "robustness"
RECORD_FILE = "robustness.json"


# ------------------------------------------------------------------------------ the variants
def _sig(x: float) -> float:
    """A float rounded to 6 significant digits (readable in config.json, stable across reruns)."""
    return float(f"{x:.6g}")


def _lr(factor: float) -> Callable[["RunConfig"], dict | str]:
    return lambda cfg: {"train.lr": _sig(cfg.train.lr * factor)}


def _patience(kind: str) -> Callable[["RunConfig"], dict | str]:
    def change(cfg):
        p = cfg.train.patience
        if p is None:     # no early stopping in the recipe: try stopping after a quarter / half of the epochs
            return {"train.patience": max(1, cfg.train.epochs // (4 if kind == "half" else 2))}
        new = math.ceil(p / 2) if kind == "half" else 2 * p
        if new == p:
            return f"patience {p} cannot be halved"
        return {"train.patience": new}
    return change


def _steps(kind: str) -> Callable[["RunConfig"], dict | str]:
    def change(cfg):
        own = cfg.train.steps_per_epoch if cfg.train.steps_per_epoch is not None else one_pass_steps(cfg)
        return {"train.steps_per_epoch": max(1, math.ceil(own / 2)) if kind == "half" else 2 * own}
    return change


def _flip_attention(cfg) -> dict | str:
    if cfg.model.pooling not in ("attention", "gated_attention"):
        return f"the pooling is {cfg.model.pooling!r}, which has no attention activation to flip"
    flip = {"sparsemax": "softmax", "softmax": "sparsemax"}
    if cfg.model.attention_activation not in flip:
        return f"attention activation {cfg.model.attention_activation!r} has no sparsemax/softmax counterpart"
    return {"model.attention_activation": flip[cfg.model.attention_activation]}


def _flip_loss(cfg) -> dict | str:
    flip = {"bce": "focal", "focal": "bce"}
    if cfg.train.loss not in flip:
        return f"loss {cfg.train.loss!r} has no bce/focal counterpart"
    return {"train.loss": flip[cfg.train.loss]}


@dataclass(frozen=True)
class Variant:
    """One recipe change: ``change(cell RunConfig)`` gives its overrides for that cell, or why it does not apply."""

    name: str                                           # folder name under robustness/
    label: str                                          # plain words for tables and sentences
    change: Callable[["RunConfig"], dict | str]


#: The recipe changes ``--robustness`` tries (in this order).
VARIANTS: tuple[Variant, ...] = (
    Variant("lr-third", "learning rate ×⅓", _lr(1 / 3)),
    Variant("lr-triple", "learning rate ×3", _lr(3.0)),
    Variant("patience-half", "patience halved", _patience("half")),
    Variant("patience-double", "patience doubled", _patience("double")),
    Variant("steps-half", "optimiser steps per epoch halved", _steps("half")),
    Variant("steps-double", "optimiser steps per epoch doubled", _steps("double")),
    Variant("attention-flip", "attention activation flipped (sparsemax ↔ softmax)", _flip_attention),
    Variant("loss-flip", "loss flipped (BCE ↔ focal)", _flip_loss),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


def one_pass_steps(cfg: "RunConfig") -> int:
    """Optimiser steps of one pass over a cell's bought labels (what ``steps_per_epoch=None`` trains per epoch).

    Mirrors ``train.Trainer``: the training items are the bought slices (strong) or exams (weak,
    mixed), in batches of ``slices_per_step`` / ``exams_per_step``.
    """
    from ich.data import select_labels
    from ich.store import open_dataset

    t = cfg.train
    ds = open_dataset(cfg.data.dataset)
    sub = select_labels(ds.exams, ds.slices, supervision=t.supervision, budget=t.budget, seed=cfg.seed,
                        sampling=t.sampling, slice_fraction=t.slice_fraction)
    if t.supervision == "strong":
        return max(1, math.ceil(len(sub.slices) / t.slices_per_step))
    return max(1, math.ceil((len(sub.exam_ids) + len(sub.slice_exam_ids)) / t.exams_per_step))


@dataclass(frozen=True)
class VariantPlan:
    """How one variant runs: its study folders (``parts``: sub-folder -> spec) or why it is skipped."""

    name: str
    label: str
    overrides: tuple[tuple[str, Any], ...] = ()   # the change, when it is the same for every cell
    parts: tuple[tuple[str, "StudyConfig"], ...] = ()   # ("" = the variant folder itself, spec)
    skipped: str = ""                              # why the variant does not apply ("" = it runs)

    def describe_change(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.overrides:
            return ", ".join(f"{k} = {_short(v)}" for k, v in self.overrides)
        return f"set per cell ({len(self.parts)} study folders)"

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "overrides": dict(self.overrides),
                "parts": {p or ".": spec.to_dict()["overrides"] for p, spec in self.parts}, "skipped": self.skipped}


def _short(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _group_key(level: str, cell: "Cell") -> tuple:
    return () if level == "study" else (cell.arm, cell.budget) if level == "arm-budget" else (cell.name,)


def plan_variants(spec: "StudyConfig", names: Sequence[str] | None = None) -> list[VariantPlan]:
    """Resolve the variants of a study against its cells' configs.

    Args:
        spec: the base study, resolved (``study.resolve_study``; the spec ``study.read_study`` returns).
        names: variant names to plan (default all of ``VARIANTS``).

    Returns:
        One ``VariantPlan`` per variant. Its overrides are computed from every cell's resolved
        ``RunConfig``; when they are the same for every cell the variant is one study folder,
        otherwise one per (arm, budget), or per cell when even those differ. A variant that does
        not apply to the recipe, or whose configs are invalid, is skipped with the reason.

    Raises:
        ValueError: an unknown variant name (with the valid ones).
    """
    from ich.config import check_choice
    from ich.study import cell_config, plan_cells

    names = list(VARIANT_NAMES if names is None else names)
    for n in names:
        check_choice("robustness variant", n, VARIANT_NAMES)
    cells = plan_cells(spec)
    base = {c.name: cell_config(spec, c) for c in cells}
    out = []
    for v in (v for v in VARIANTS if v.name in names):
        changes = {}
        reason = ""
        for c in cells:
            try:
                ch = v.change(base[c.name])
            except ValueError as err:
                ch = str(err)
            if isinstance(ch, str):
                reason = ch
                break
            changes[c.name] = tuple(sorted(ch.items()))
        if reason:
            out.append(VariantPlan(v.name, v.label, skipped=reason))
            continue
        for level in ("study", "arm-budget", "cell"):
            groups: dict[tuple, list] = {}
            for c in cells:
                groups.setdefault(_group_key(level, c), []).append(c)
            if all(len({changes[c.name] for c in g}) == 1 for g in groups.values()):
                break
        parts = []
        try:
            for key, group in groups.items():
                ch = changes[group[0].name]
                sub = _sub_spec(spec, level, group, ch)
                assert [c.name for c in plan_cells(sub)] == [c.name for c in group]
                for c in plan_cells(sub):          # every variant config is valid before anything runs
                    cell_config(sub, c)
                folder = "" if level == "study" else f"{key[0]}-m{key[1]}" if level == "arm-budget" else key[0]
                parts.append((folder, sub))
        except ValueError as err:
            out.append(VariantPlan(v.name, v.label, skipped=f"the changed recipe is not valid: {err}"))
            continue
        uniform = changes[cells[0].name] if level == "study" else ()
        out.append(VariantPlan(v.name, v.label, overrides=uniform, parts=tuple(parts)))
    return out


def _sub_spec(spec: "StudyConfig", level: str, group: list, change: tuple) -> "StudyConfig":
    """The study of one group of cells with the variant's overrides on top of the study's own."""
    overrides = {**{k: v for k, v in spec.overrides}, **dict(change)}
    fields: dict[str, Any] = {"overrides": tuple(overrides.items())}
    if level != "study":
        c = group[0]
        fields.update(supervisions=(c.supervision,), budgets=(c.budget,), seeds=tuple(x.seed for x in group),
                      repeats="all")
        if c.slice_fraction is not None:
            fields["slice_fractions"] = (c.slice_fraction,)
    return dataclasses.replace(spec, **fields)


# ------------------------------------------------------------------------------ running
def robustness_dir(study: str | os.PathLike) -> Path:
    return Path(study) / DIR


def has_robustness(study: str | os.PathLike) -> bool:
    """Whether a study folder holds a robustness sweep (``robustness/robustness.json``)."""
    return (robustness_dir(study) / RECORD_FILE).is_file()


def read_record(study: str | os.PathLike) -> dict:
    """The robustness.json of a study (``{"format", "variants": [VariantPlan.to_dict(), ...]}``)."""
    p = robustness_dir(study) / RECORD_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{study} has no robustness sweep (no {DIR}/{RECORD_FILE}); run "
                                "`python -m ich study ... --robustness` on it")
    d = json.loads(p.read_text())
    if d.get("format") != FORMAT:
        raise ValueError(f"{p} has format {d.get('format')!r}, expected {FORMAT!r}")
    return d


def _write_record(study: Path, plans: list[VariantPlan]) -> None:
    d = robustness_dir(study)
    d.mkdir(parents=True, exist_ok=True)
    atomic.write_text(d / RECORD_FILE, json.dumps({"format": FORMAT, "variants": [v.to_dict() for v in plans]},
                                                  indent=2, default=str))


def run_robustness(spec: "StudyConfig", out: str | os.PathLike, *, variants: Sequence[str] | None = None,
                   on_progress: Callable[[dict], None] | None = None, **run_kwargs):
    """Run (or resume) a study, then the same grid under every recipe variant; returns the base ``(cells, aggregate)``.

    The base study runs first (its folder, progress and summary are exactly those of
    ``study.run_study``), so its answer arrives before any variant starts. Each variant then
    runs as its own study folder under ``out/robustness/`` (finished cells are skipped on a rerun).

    Args:
        spec: the base study (``study.make_study``).
        out: the base study folder.
        variants: variant names (default every one in ``VARIANTS``).
        on_progress: called with each progress dict; a variant's carry ``"variant"`` (its name).
        run_kwargs: passed to every ``study.run_study`` call (executor, workers, ...).

    Raises:
        What ``study.run_study`` raises; ValueError for an unknown variant name (before anything runs).
    """
    from ich.study import read_study, run_study

    if variants is not None:
        unknown = [n for n in variants if n not in VARIANT_NAMES]
        if unknown:
            raise ValueError(f"unknown robustness variant(s) {unknown}; choose from {list(VARIANT_NAMES)}")
    out = Path(out)
    base = run_study(spec, out, on_progress=on_progress, **run_kwargs)
    resolved, _ = read_study(out)
    plans = plan_variants(resolved, variants)
    _write_record(out, plans)
    for vp in plans:
        if vp.skipped:
            log.info("robustness variant %s skipped: %s", vp.name, vp.skipped)
            continue
        for part, sub in vp.parts:
            folder = robustness_dir(out) / vp.name / part if part else robustness_dir(out) / vp.name

            def relay(p: dict, name=vp.name if not part else f"{vp.name}/{part}") -> None:
                if on_progress is not None:
                    on_progress({**p, "variant": name})

            run_study(sub, folder, on_progress=relay, **run_kwargs)
    return base


# ------------------------------------------------------------------------------ the verdict
@dataclass(frozen=True)
class VariantOutcome:
    """One variant's cheapest plan and how it compares with the base study's."""

    name: str
    label: str
    change: str                  # the overrides in words, or why the variant was skipped
    state: str                   # done | incomplete (some cells unfinished) | skipped
    plan: Plan | None            # None: no plan reaches the target (or not done)
    flip: str                    # "" (same answer) | "arm changes" | "same arm, budget changes" |
                                 # "no plan reaches the target" | "a plan reaches the target"
    detail: str = ""             # incomplete: "k/n cells done"

    @property
    def flips(self) -> bool:
        return self.state == "done" and bool(self.flip)


@dataclass(frozen=True)
class Verdict:
    """The robustness verdict of a study at one target: base plan, every variant's plan, the flips, a sentence."""

    target: float
    criterion: str               # mean | ci_low (planner.CRITERIA)
    metric: str
    base: Plan | None
    variants: tuple[VariantOutcome, ...]
    sentence: str

    @property
    def flipped(self) -> list[VariantOutcome]:
        return [v for v in self.variants if v.flips]

    @property
    def robust(self) -> bool:
        """True when at least one variant finished and none flips the answer."""
        return any(v.state == "done" for v in self.variants) and not self.flipped

    def rows(self) -> list[dict]:
        """A small table: variant, change, cheapest plan, cost, flips? (plain words, no NaN)."""
        def plan_words(p: Plan | None, state: str) -> str:
            if state != "done":
                return "–"
            return describe_plan(p) if p else f"none reaches {self.target:g}"
        out = [{"variant": "the study's recipe", "change": "(base)", "cheapest plan": plan_words(self.base, "done"),
                "cost": _money(self.base), "flips?": ""}]
        for v in self.variants:
            flips = ("skipped" if v.state == "skipped" else f"not finished ({v.detail})" if v.state != "done"
                     else f"yes: {v.flip}" if v.flip else "no")
            out.append({"variant": v.label, "change": v.change, "cheapest plan": plan_words(v.plan, v.state),
                        "cost": _money(v.plan) if v.state == "done" else "–", "flips?": flips})
        return out


def _money(p: Plan | None) -> str:
    return f"{p.cost:,.0f} {p.currency}" if p is not None and math.isfinite(p.cost) else "–"


def describe_plan(p: Plan) -> str:
    """``"weak, 48 exam labels (13.3 h, 2,667 USD)"`` (finite numbers only)."""
    unit = {"weak": "exam labels", "strong": "slice labels"}.get(p.supervision, "labels")
    if p.supervision == "mixed" and p.slice_fraction is not None:
        unit = f"labels ({p.slice_fraction:.0%} slice labels)"
    hours = f"{annotator_time(p.hours)}, " if math.isfinite(p.hours) else ""
    return f"{p.arm}, {p.budget:,.0f} {unit} ({hours}{_money(p)})"


def _compare(base: Plan | None, other: Plan | None) -> str:
    if base is None and other is None:
        return ""
    if base is None:
        return "a plan reaches the target"
    if other is None:
        return "no plan reaches the target"
    if other.arm != base.arm:
        return "arm changes"
    if other.budget != base.budget:
        return "same arm, budget changes"
    return ""


def verdict(base_aggregate: "pd.DataFrame", variants: Sequence[Mapping[str, Any]], cost: CostModel, target: float,
            *, criterion: str = "mean", metric: str = "exam_auc") -> Verdict:
    """The robustness verdict from aggregate tables (pure: no file is read).

    Args:
        base_aggregate: the base study's aggregate table (``study.summarise_study(...)[1]``).
        variants: one mapping per variant with ``name``, ``label``, ``change`` (words), ``state``
            (``done`` | ``incomplete`` | ``skipped``), ``aggregate`` (a table, or None) and optionally
            ``detail`` (e.g. ``"12/30 cells done"``).
        cost: the cost model.
        target: the AUC to reach, in (0, 1].
        criterion: ``"mean"`` or ``"ci_low"`` (``planner.cheapest_plan``).
        metric: the figure (default exam AUC).

    Returns:
        A ``Verdict``; its sentence names the plan and either says it holds "under every recipe
        tried" or lists each variant that flips it, with what it flips to.
    """
    from ich.config import check_number, check_choice

    check_choice("criterion", criterion, CRITERIA)
    check_number("target", target, lo=0.0, hi=1.0, lo_open=True)

    def plan_of(agg) -> Plan | None:
        if agg is None or len(agg) == 0:
            return None
        return cheapest_plan(agg, cost, target, criterion=criterion, metric=metric)

    base = plan_of(base_aggregate)
    outcomes = []
    for v in variants:
        state = v.get("state", "done")
        plan = plan_of(v.get("aggregate")) if state == "done" else None
        outcomes.append(VariantOutcome(name=str(v["name"]), label=str(v.get("label", v["name"])),
                                       change=str(v.get("change", "")), state=state, plan=plan,
                                       flip=_compare(base, plan) if state == "done" else "",
                                       detail=str(v.get("detail", ""))))
    return Verdict(target=float(target), criterion=criterion, metric=metric, base=base, variants=tuple(outcomes),
                   sentence=_sentence(base, outcomes, target, criterion, metric))


def _sentence(base: Plan | None, outcomes: list[VariantOutcome], target: float, criterion: str, metric: str) -> str:
    what = {"exam_auc": "exam AUC", "slice_auc": "slice AUC", "sequence_f1": "sequence F1",
            "pixel_dice": "pixel Dice"}.get(metric, metric)
    rule = " (the lower bound of the 95% CI over seeds must reach it)" if criterion == "ci_low" else \
        " (mean over seeds)"
    goal = f"{what} ≥ {target:g}{rule}"
    done = [v for v in outcomes if v.state == "done"]
    flipped = [v for v in done if v.flip]
    waiting = [v for v in outcomes if v.state == "incomplete"]
    skipped = [v for v in outcomes if v.state == "skipped"]
    answer = describe_plan(base) if base else "that no plan reaches it"
    if not done:
        s = (f"The study's answer for {goal}: {describe_plan(base) if base else 'no plan reaches it'}. "
             "No recipe variant has finished yet, so its robustness is not known.")
    elif not flipped:
        tried = (f"under every recipe tried so far ({len(done)} of {len(done) + len(waiting)} finished)" if waiting
                 else f"under every recipe tried ({len(done)} of them)")
        s = f"The cheapest plan for {goal} is {answer} {tried}." if base else f"No plan reaches {goal} {tried}."
    else:
        def to(v: VariantOutcome) -> str:
            if v.plan is None:
                return f"{v.label}: no plan reaches {what} {target:g} under this recipe"
            if base is None:
                return f"{v.label}: {describe_plan(v.plan)} reaches it"
            return f"{v.label}: {v.flip}, to {describe_plan(v.plan)}"
        head = (f"The cheapest plan for {goal} is {answer} with the study's recipe" if base else
                f"With the study's recipe no plan reaches {goal}")
        s = (f"{head}, but {len(flipped)} of {len(done)} recipe changes tried "
             f"{'flips' if len(flipped) == 1 else 'flip'} it — "
             + "; ".join(to(v) for v in flipped) + ".")
    if waiting:
        s += f" Not finished yet: {', '.join(f'{v.label} ({v.detail})' if v.detail else v.label for v in waiting)}."
    if skipped:
        s += f" Not applicable to this recipe: {', '.join(v.label for v in skipped)}."
    return s


def variant_tables(study: str | os.PathLike) -> list[dict]:
    """Each variant of a study's sweep as ``verdict`` wants it: name, label, change, state, aggregate, detail."""
    import pandas as pd

    from ich.study import is_study, summarise_study

    record = read_record(study)
    out = []
    for v in record["variants"]:
        entry = {"name": v["name"], "label": v.get("label", v["name"]), "aggregate": None}
        if v.get("skipped"):
            out.append({**entry, "state": "skipped", "change": f"skipped: {v['skipped']}"})
            continue
        ov = v.get("overrides") or {}
        entry["change"] = (", ".join(f"{k} = {_short(x)}" for k, x in ov.items()) if ov
                           else f"set per cell ({len(v.get('parts') or {})} study folders)")
        root = robustness_dir(study) / v["name"]
        folders = [root / p if p != "." else root for p in (v.get("parts") or {".": None})]
        n_done = n_all = 0
        aggs = []
        for f in folders:
            if not is_study(f):
                continue
            cells, agg = summarise_study(f)
            n_all += len(cells)
            n_done += int((cells["state"] == "done").sum())
            aggs.append(agg)
        started = [f for f in folders if is_study(f)]
        complete = len(started) == len(folders) and n_done == n_all and n_all > 0
        detail = ("not started" if not started else f"{n_done}/{n_all} cells done" if len(started) == len(folders)
                  else f"{n_done} cells done, {len(folders) - len(started)} of {len(folders)} study folders not started")
        aggregate = pd.concat([a for a in aggs if len(a)], ignore_index=True) if any(len(a) for a in aggs) else None
        out.append({**entry, "state": "done" if complete else "incomplete", "aggregate": aggregate,
                    "detail": "" if complete else detail})
    return out


def study_verdict(study: str | os.PathLike, cost: CostModel, target: float, *, criterion: str = "mean",
                  metric: str = "exam_auc") -> Verdict:
    """The robustness verdict of a study folder that holds a sweep (``run_robustness``).

    Raises:
        FileNotFoundError: the folder has no robustness sweep.
    """
    from ich.study import summarise_study

    read_record(study)   # a clear refusal before any table is read
    _, aggregate = summarise_study(study)
    return verdict(aggregate, variant_tables(study), cost, target, criterion=criterion, metric=metric)
