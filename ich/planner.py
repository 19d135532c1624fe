"""The cost planner: annotator time and money of label budgets, and the cheapest plan that reaches a target AUC.

A plan is an arm of a study (weak, strong or mixed at a slice fraction) at a budget. Its cost
follows from a ``CostModel``: weak buys ``m`` exam labels, strong ``m`` slice labels, and mixed
``f * m`` slice labels plus ``(1 - f) * m`` exam labels (``f`` the slice fraction)::

    seconds = n_exam_labels * seconds_per_exam_label + n_slice_labels * seconds_per_slice_label
    hours = seconds / 3600;  cost = hours * hourly_rate

Defaults (assumptions, change them for your site; README "Cost model"): 60 s per exam label
(scroll one head CT of ~35 slices and record present/absent), 5 s per slice label (one slice
judged with its neighbours; ~3 min for a whole exam), 200 per hour (roughly a US
radiologist's fully loaded hourly cost).

Noisy labels (arms with a ``label_noise`` model, ``ich.noise``) come from a cheaper source: each
read of a label of a kind the noise model touches costs ``seconds_per_noisy_label`` (default 1 s,
issue 16's "report-mined exam label": a script reads the report, nobody looks at the scan) at the
same hourly rate, so the majority of 3 reads (``exam=0.8/0.8x3``) costs 3 of them; a dataset's
recorded readers (``exam=R1``, ``exam=R1+R2+R3``) are radiologists, each read at the exam label's
price. Labels of a kind the model leaves clean keep the annotator's price.

Attention-guided slice labels (arms with ``acquisition="attention"``, ``ich.acquire``): a reader confirms
slices a weak guide pre-selected, each at ``seconds_per_confirmed_slice`` (default 2 s, an assumption:
the slice is shown, nothing is searched), and the guide's exam labels (``guide_labels`` of the summary)
are added at the exam label's price.

``cheapest_plan`` picks from observed study points (the aggregate table of
``study.summarise_study``): the cheapest (arm, budget) whose mean AUC, or the lower bound of
its 95% CI across seeds (``criterion="ci_low"``, the cautious choice), reaches the target.
``fitted_plans`` reads the same answer off the power-law fits (``ich.curves``), which
interpolates between budgets and may extrapolate beyond them (flagged).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ich import noise
from ich.config import check_number, check_choice, reject_unknown_keys

if TYPE_CHECKING:
    import pandas as pd

CRITERIA = ("mean", "ci_low")


@dataclass(frozen=True)
class CostModel:
    """What labels cost: annotator seconds per exam label and per slice label, and the hourly rate."""

    seconds_per_exam_label: float = 60.0     # one exam read for present/absent (weak labels)
    seconds_per_slice_label: float = 5.0     # one slice judged (strong labels)
    hourly_rate: float = 200.0               # annotator cost per hour, in `currency`
    currency: str = "USD"
    seconds_per_noisy_label: float = 1.0     # a label of a kind an arm's noise model touches (report-mined)
    seconds_per_confirmed_slice: float = 2.0 # a slice pre-selected by a weak guide, confirmed (acquisition=attention)

    def __post_init__(self):
        check_number("cost.seconds_per_exam_label", self.seconds_per_exam_label, lo=0.0)
        check_number("cost.seconds_per_slice_label", self.seconds_per_slice_label, lo=0.0)
        check_number("cost.hourly_rate", self.hourly_rate, lo=0.0)
        check_number("cost.seconds_per_noisy_label", self.seconds_per_noisy_label, lo=0.0)
        check_number("cost.seconds_per_confirmed_slice", self.seconds_per_confirmed_slice, lo=0.0)
        if not isinstance(self.currency, str) or not self.currency:
            raise ValueError(f"cost.currency must be a non-empty string, not {self.currency!r}")

    def label_counts(self, supervision: str, budget: float, slice_fraction: float | None = None) -> tuple[float, float]:
        """(exam labels, slice labels) a budget buys for a supervision."""
        check_choice("supervision", supervision, ("weak", "strong", "mixed"))
        if supervision == "weak":
            return float(budget), 0.0
        if supervision == "strong":
            return 0.0, float(budget)
        f = 0.5 if slice_fraction is None or (isinstance(slice_fraction, float) and math.isnan(slice_fraction)) \
            else float(slice_fraction)
        return (1.0 - f) * float(budget), f * float(budget)

    def hours(self, supervision: str, budget: float, slice_fraction: float | None = None,
              label_noise: str = "", acquisition: str = "random", guide_exams: float = 0.0) -> float:
        """Annotator hours of a budget: labels of a kind ``label_noise`` touches at the noisy source's price,
        attention-guided slices at the confirmation price plus ``guide_exams`` exam labels (module docstring)."""
        n = noise.parse(_text(label_noise))
        exams, slices = self.label_counts(supervision, budget, slice_fraction)
        simulated = n.touches("exam") and not n.readers          # recorded readers are radiologists: exam price
        exam_s = (self.seconds_per_noisy_label if simulated else self.seconds_per_exam_label) * n.reads("exam")
        slice_s = (self.seconds_per_noisy_label if n.touches("slice") else self.seconds_per_slice_label) * n.reads("slice")
        if acquisition == "attention":
            slice_s = self.seconds_per_confirmed_slice
        guide = float(guide_exams) if _finite(guide_exams) else 0.0
        return (exams * exam_s + slices * slice_s + guide * self.seconds_per_exam_label) / 3600.0

    def cost(self, supervision: str, budget: float, slice_fraction: float | None = None,
             label_noise: str = "", acquisition: str = "random", guide_exams: float = 0.0) -> float:
        """Money of a budget (``hours * hourly_rate``)."""
        return self.hours(supervision, budget, slice_fraction, label_noise, acquisition, guide_exams) * self.hourly_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CostModel":
        reject_unknown_keys(d, cls, what="cost")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "CostModel":
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Plan:
    """The answer of the planner: what to label, how many, and what it costs."""

    arm: str
    supervision: str
    slice_fraction: float | None
    budget: float              # labels (a study budget, or a fitted, possibly fractional, one)
    auc: float                 # mean AUC at that budget (observed) or the fitted AUC
    auc_ci_low: float
    auc_ci_high: float
    hours: float
    cost: float
    currency: str
    source: str                # observed | fit
    extrapolated: bool = False # fit: the labels needed lie outside the study's budgets
    budget_low: float = float("nan")   # fit: 95% interval of the labels needed (bootstrap over seeds)
    budget_high: float = float("nan")
    target: float = float("nan")       # the AUC asked for
    criterion: str = "mean"            # the rule by which the plan "reaches" it (CRITERIA)
    validation: str = ""               # paid | none | free (how the cells chose their model)
    val_labels: float = 0.0            # labels used for model selection (paid: inside budget; free: on top)
    label_noise: str = ""              # the labels' noise model (ich.noise spec); "" = clean
    acquisition: str = "random"        # how the labels were chosen (ich.acquire)
    guide_labels: float = 0.0          # attention: exam labels bought for the weak guide, counted in the cost

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def sentence(self) -> str:
        """The plan in plain words: what to buy, what it reaches by which rule, the validation labels, the cost."""
        what = _what(self.supervision, self.label_noise, self.acquisition, self.guide_labels)
        t = self.target
        ci = (f"95% CI {self.auc_ci_low:.3f}–{self.auc_ci_high:.3f}"
              if _finite(self.auc_ci_low, self.auc_ci_high) else "95% CI not estimable with these seeds")
        if self.source == "fit":
            reach = f"the fitted learning curve reaches AUC {t:.2f}"
        elif self.criterion == "ci_low":
            reach = f"reaches AUC {t:.2f} by the cautious rule: the lower end of its {ci} is at least {t:.2f}"
        elif _finite(self.auc_ci_low) and self.auc_ci_low >= t:
            reach = f"reaches AUC {t:.2f}: mean {self.auc:.3f}, and its whole {ci} lies at or above the target"
        else:
            reach = (f"its mean AUC {self.auc:.3f} reaches {t:.2f}, its {ci} does not: the target is met on "
                     "average, not with confidence")
        val = {"paid": f"; {self.val_labels:,.0f} of these labels chose the model (validation, paid from the budget)",
               "free": f"; plus {self.val_labels:,.0f} exam labels of a fully labelled validation split, counted "
                       "in the cost",
               "none": "; too few labels to set any aside: trained on all of them (label-free schedule)"}
        extra = " (extrapolated beyond the study's budgets)" if self.extrapolated else ""
        return (f"**{self.arm}** with **{self.budget:,.0f} {what}** — {reach}{val.get(self.validation, '')}; "
                f"{annotator_time(self.hours)} ≈ {self.cost:,.0f} {self.currency}{extra}.")

    def describe(self) -> str:
        what = {"weak": "exam labels", "strong": "slice labels"}.get(self.supervision,
                                                                    f"labels (slice fraction {self.slice_fraction:g})"
                                                                    if self.slice_fraction is not None else "labels")
        extra = " (extrapolated beyond the study's budgets)" if self.extrapolated else ""
        return (f"{self.arm}: {self.budget:,.0f} {what} -> AUC {self.auc:.3f}; {annotator_time(self.hours)}, "
                f"{self.cost:,.0f} {self.currency}{extra}")


def annotator_time(hours: float) -> str:
    """Annotator time in words: "12 annotator-minutes" under an hour, else "1.6 annotator-hours"."""
    if not _finite(hours):
        return "annotator time not estimable"
    if hours * 60 < 0.5:
        return "under 1 annotator-minute"
    if hours < 1.0:
        minutes = f"{hours * 60:,.0f}"
        return f"{minutes} annotator-minute" + ("" if minutes == "1" else "s")
    return f"{hours:,.1f} annotator-hours"


def _text(v) -> str:
    """A label-noise cell of a table as a spec string (NaN / None from a CSV = clean)."""
    return v if isinstance(v, str) else ""


def _what(supervision: str, label_noise="", acquisition="random", guide_labels=0.0) -> str:
    """ "exam labels", "slice labels" or "labels", with the noise model in words when there is one, and an
    attention guide's exam labels."""
    what = {"weak": "exam labels", "strong": "slice labels"}.get(supervision, "labels")
    n = noise.parse(_text(label_noise))
    if _strategy(acquisition) == "attention":
        guide = float(guide_labels) if _finite(guide_labels) else 0.0
        return f"confirmed {what} (pre-selected by a weak guide trained on {guide:,.0f} exam labels)"
    if n.clean:
        return what
    return f"{what} from recorded readers ({n.words()})" if n.readers else f"noisy {what} ({n.words()})"


def _price_words(cost: CostModel, label_noise: str) -> str:
    """What one label of a noisy arm costs, in words: "1 s each", "3 reads at 1 s = 3 s per exam label"
    (recorded readers are radiologists, each read priced as an exam label)."""
    n = noise.parse(_text(label_noise))
    parts = []
    for kind in noise.KINDS:
        if not n.touches(kind):
            continue
        per_read = cost.seconds_per_exam_label if (kind == "exam" and n.readers) else cost.seconds_per_noisy_label
        k = n.reads(kind)
        parts.append(f"{per_read:g} s each" if k == 1 and not n.readers else
                     f"{k} read{'s' if k > 1 else ''} at {per_read:g} s = {k * per_read:g} s per {kind} label")
    return "; ".join(parts)


def _finite(*values) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in values)
    except (TypeError, ValueError):
        return False


def _free_val_labels(df: pd.DataFrame) -> list[float]:
    """Validation labels a row pays on top of its budget: those of a free validation split (0 for paid/none,
    which spend part of the budget or nothing; 0 for studies from before these columns existed)."""
    if "validation" not in df.columns or "val_labels" not in df.columns:
        return [0.0] * len(df)
    out = []
    for mode, n in zip(df["validation"].astype(str), df["val_labels"]):
        out.append(float(n) if "free" in mode and _finite(n) else 0.0)
    return out


def plan_table(aggregate: pd.DataFrame, cost: CostModel) -> pd.DataFrame:
    """The aggregate table (one row per arm and budget) with ``exam_labels, slice_labels, hours, cost``.

    Every label used for model selection is counted: paid validation labels are part of the budget,
    a free validation split's exam labels are added (``val_labels`` of rows with ``validation="free"``).

    Args:
        aggregate: needs ``arm, supervision, slice_fraction, budget``.
    """
    need = ["arm", "supervision", "slice_fraction", "budget"]
    missing = [c for c in need if c not in aggregate.columns]
    if missing:
        raise ValueError(f"the aggregate table lacks columns {missing}; pass study.summarise_study(...)[1]")
    df = aggregate.copy()
    counts = [cost.label_counts(s, b, _frac(f)) for s, b, f in zip(df["supervision"], df["budget"],
                                                                    df["slice_fraction"])]
    free = _free_val_labels(df)
    guide = [float(g) if _finite(g) else 0.0 for g in df.get("guide_labels", [0.0] * len(df))]
    df["exam_labels"] = [c[0] + v + g for c, v, g in zip(counts, free, guide)]
    df["slice_labels"] = [c[1] for c in counts]
    noise_specs = [_text(n) for n in df["label_noise"]] if "label_noise" in df.columns else [""] * len(df)
    strategies = [_strategy(a) for a in df.get("acquisition", [""] * len(df))]
    df["hours"] = [cost.hours(s, b, _frac(f), n, a, g) + cost.hours("weak", v)
                   for s, b, f, n, a, g, v in zip(df["supervision"], df["budget"], df["slice_fraction"], noise_specs,
                                                  strategies, guide, free)]
    df["cost"] = df["hours"] * cost.hourly_rate
    return df


def _strategy(a) -> str:
    """An acquisition cell of a table as a strategy name (NaN / "" from a CSV = random)."""
    return a if isinstance(a, str) and a else "random"


def _frac(f):
    try:
        return None if f is None or math.isnan(float(f)) else float(f)
    except (TypeError, ValueError):
        return None


def cheapest_plan(aggregate: pd.DataFrame, cost: CostModel, target_auc: float, *, criterion: str = "mean",
                  metric: str = "exam_auc") -> Plan | None:
    """The cheapest observed (arm, budget) whose AUC reaches ``target_auc``; None when none does.

    Args:
        aggregate: one row per arm and budget with ``arm, supervision, slice_fraction, budget`` and
            ``<metric>``, ``<metric>_ci_low``, ``<metric>_ci_high`` (``study.summarise_study``).
        cost: the cost model.
        target_auc: the AUC to reach, in (0, 1].
        criterion: ``"mean"`` (mean over seeds >= target) or ``"ci_low"`` (the CI's lower bound >= target).
        metric: the figure column (default the exam AUC).

    Ties in cost go to the higher AUC.
    """
    import pandas as pd

    check_choice("criterion", criterion, CRITERIA)
    check_number("target_auc", target_auc, lo=0.0, hi=1.0, lo_open=True)
    col = metric if criterion == "mean" else f"{metric}_ci_low"
    if col not in aggregate.columns:
        raise ValueError(f"the aggregate table has no column {col!r}; pass study.summarise_study(...)[1]")
    df = plan_table(aggregate, cost)
    ok = df[pd.to_numeric(df[col], errors="coerce") >= target_auc]
    if ok.empty:
        return None
    best = ok.sort_values(["cost", metric], ascending=[True, False]).iloc[0]
    val = best.get("val_labels", 0.0)
    return Plan(arm=str(best["arm"]), supervision=str(best["supervision"]), slice_fraction=_frac(best["slice_fraction"]),
                budget=float(best["budget"]), auc=float(best[metric]),
                auc_ci_low=float(best.get(f"{metric}_ci_low", math.nan)),
                auc_ci_high=float(best.get(f"{metric}_ci_high", math.nan)), hours=float(best["hours"]),
                cost=float(best["cost"]), currency=cost.currency, source="observed", target=float(target_auc),
                criterion=criterion, validation=str(best.get("validation", "") or ""),
                val_labels=float(val) if _finite(val) else 0.0, label_noise=_text(best.get("label_noise", "")),
                acquisition=_strategy(best.get("acquisition", "")),
                guide_labels=float(best.get("guide_labels", 0.0)) if _finite(best.get("guide_labels", 0.0)) else 0.0)


def fitted_plans(fits: Mapping[str, Any], arms: Mapping[str, tuple[str, float | None]], cost: CostModel,
                 target_auc: float) -> list[Plan]:
    """Plans read off power-law fits: per arm, the labels needed for ``target_auc`` and their cost (cheapest first).

    Args:
        fits: ``{arm: curves.PowerLawFit}`` (other values, e.g. failure messages, are skipped).
        arms: ``{arm: (supervision, slice_fraction[, label_noise[, acquisition[, guide exam labels]]])}``
            (``StudyConfig.arm_table``; the guide's labels from the summary's ``guide_labels``).
        cost: the cost model.
        target_auc: the AUC to reach.

    Returns:
        One ``Plan`` per arm whose fit reaches the target, sorted by cost: ``budget`` = labels
        needed with its interval in ``budget_low``/``budget_high``; ``auc`` = the target.
    """
    from ich.curves import PowerLawFit

    out = []
    for arm, fit in fits.items():
        if not isinstance(fit, PowerLawFit) or arm not in arms:
            continue
        need = fit.labels_needed(target_auc)
        if not math.isfinite(need["n"]):
            continue
        sup, frac, *rest = arms[arm]
        spec, strategy, guide = (list(rest) + ["", "random", 0.0][len(rest):])[:3]
        priced = (sup, need["n"], frac, spec, _strategy(strategy), guide)
        out.append(Plan(arm=arm, supervision=sup, slice_fraction=frac, budget=need["n"], auc=float(target_auc),
                        auc_ci_low=float("nan"), auc_ci_high=float("nan"), hours=cost.hours(*priced),
                        cost=cost.cost(*priced), currency=cost.currency, source="fit",
                        extrapolated=need["extrapolated"], budget_low=need["low"], budget_high=need["high"],
                        target=float(target_auc), label_noise=spec, acquisition=_strategy(strategy),
                        guide_labels=float(guide) if _finite(guide) else 0.0))
    return sorted(out, key=lambda p: p.cost)


def arm_outcomes(aggregate: pd.DataFrame, fits: Mapping[str, Any], cost: CostModel, target_auc: float, *,
                 metric: str = "exam_auc") -> list[str]:
    """One plain sentence per arm of a study about ``target_auc``: no arm is dropped silently.

    Each says whether the arm's fitted curve reaches the target (and at how many labels), or that it
    does not (or could not be fitted), and the arm's best observed point with its cost; an arm whose
    observed points reach the target though its fit does not says so. No raw nan/inf.
    """
    from ich.curves import PowerLawFit

    df = plan_table(aggregate, cost)
    out = []
    for arm, grp in df.groupby("arm", sort=False):
        sup = str(grp["supervision"].iloc[0])
        head = grp.iloc[0]
        what = _what(sup, head.get("label_noise", ""), head.get("acquisition", ""), head.get("guide_labels", 0.0))
        vals = _numeric(grp[metric])
        seen = grp[vals.notna()]
        if seen.empty:
            out.append(f"{arm}: no finished cell yet.")
            continue
        top = seen.loc[vals[vals.notna()].idxmax()]
        best = (f"best observed: AUC {float(top[metric]):.3f} at {float(top['budget']):,.0f} {what} "
                f"({float(top['cost']):,.0f} {cost.currency})")
        reached = seen[vals[vals.notna()] >= target_auc]
        fit = fits.get(arm)
        if isinstance(fit, PowerLawFit):
            need = fit.labels_needed(target_auc)
            if _finite(need["n"]):
                interval = (f" [{need['low']:,.0f}–{need['high']:,.0f}]" if _finite(need["low"], need["high"])
                            else " (interval not estimable with these seeds)")
                line = (f"{arm}: the fitted curve reaches AUC {target_auc:.2f} at about {need['n']:,.0f} "
                        f"{what}{interval}" + (" (extrapolated)" if need["extrapolated"] else "") + f"; {best}.")
            else:
                line = f"{arm}: the fitted curve does not reach AUC {target_auc:.2f}; {best}."
        else:
            why = f" ({fit})" if isinstance(fit, str) and fit else ""
            line = f"{arm}: no learning curve could be fitted{why}; {best}."
        fit_reaches = isinstance(fit, PowerLawFit) and _finite(fit.labels_needed(target_auc)["n"])
        if len(reached) and not fit_reaches:
            first = reached.sort_values("cost").iloc[0]
            line += (f" Its observed mean does reach {target_auc:.2f} at {float(first['budget']):,.0f} {what} "
                     f"({float(first['cost']):,.0f} {cost.currency}).")
        out.append(line)
    return out


def _numeric(series):
    import pandas as pd

    return pd.to_numeric(series, errors="coerce")


def choice_effects(aggregate: pd.DataFrame, cost: CostModel, target_auc: float, *, criterion: str = "mean",
                   metric: str = "exam_auc") -> list[str]:
    """One sentence per arm that changed *how* labels are bought (a noisy source, an acquisition strategy): how
    much that choice moved the cheapest observed cost of reaching ``target_auc`` against the same learner with
    clean labels bought at random. Empty when the study has no such arm (or no such baseline)."""
    check_choice("criterion", criterion, CRITERIA)
    df = plan_table(aggregate, cost)
    col = metric if criterion == "mean" else f"{metric}_ci_low"
    if col not in df.columns:
        return []
    df = df.assign(_noise=[_text(v) for v in df.get("label_noise", [""] * len(df))],
                   _strategy=[_strategy(v) for v in df.get("acquisition", [""] * len(df))],
                   _frac=[-1.0 if _frac(f) is None else _frac(f) for f in df["slice_fraction"]])

    def cheapest(grp):
        ok = grp[_numeric(grp[col]) >= target_auc]
        return None if ok.empty else ok.sort_values(["cost", metric], ascending=[True, False]).iloc[0]

    out = []
    for arm, grp in df.groupby("arm", sort=False):
        first = grp.iloc[0]
        if not first["_noise"] and first["_strategy"] == "random":
            continue
        base = df[(df["supervision"] == first["supervision"]) & (df["_frac"] == first["_frac"])
                  & (df["_noise"] == "") & (df["_strategy"] == "random")]
        if base.empty:
            continue
        choice = []
        if first["_noise"]:
            choice.append(f"noisy labels ({noise.parse(first['_noise']).words()}, {_price_words(cost, first['_noise'])})")
        if first["_strategy"] == "attention":
            choice.append(f"slices pre-selected by a weak guide's attention and confirmed "
                          f"({cost.seconds_per_confirmed_slice:g} s each, plus {float(first.get('guide_labels', 0)):,.0f} "
                          "guide exam labels)")
        elif first["_strategy"] != "random":
            choice.append(f"buying by {first['_strategy']}")
        what = {"weak": "exam labels", "strong": "slice labels"}.get(str(first["supervision"]), "labels")
        a, b = cheapest(grp), cheapest(base)
        name, base_name = str(arm), str(base["arm"].iloc[0])
        rule = "mean" if criterion == "mean" else "lower 95% CI bound"
        if a is not None and b is not None:
            delta = float(a["cost"]) - float(b["cost"])
            moved = ("saves " if delta < 0 else "costs ") + f"{abs(delta):,.0f} {cost.currency}" + \
                (" more" if delta > 0 else "") if abs(delta) >= 0.5 else "leaves the cost unchanged"
            out.append(f"{name} ({' and '.join(choice)}): AUC {target_auc:.2f} ({rule}) at {float(a['budget']):,.0f} "
                       f"{what} ({float(a['cost']):,.0f} {cost.currency}) against {float(b['budget']):,.0f} for "
                       f"{base_name} ({float(b['cost']):,.0f} {cost.currency}): the choice {moved}.")
        elif a is not None:
            out.append(f"{name} ({' and '.join(choice)}) reaches AUC {target_auc:.2f} ({rule}) at "
                       f"{float(a['budget']):,.0f} {what} ({float(a['cost']):,.0f} {cost.currency}); {base_name} does "
                       "not within the study's budgets.")
        elif b is not None:
            out.append(f"{name} ({' and '.join(choice)}) does not reach AUC {target_auc:.2f} ({rule}) within the "
                       f"study's budgets; {base_name} does at {float(b['budget']):,.0f} {what} "
                       f"({float(b['cost']):,.0f} {cost.currency}).")
        else:
            out.append(f"Neither {name} ({' and '.join(choice)}) nor {base_name} reaches AUC {target_auc:.2f} "
                       f"({rule}) within the study's budgets.")
    return out
