"""A study's answer, computed once: where it stands, curves and fits, plans, label ratio, ROC, weak-vs-strong DeLong.

``study_answer`` is what the Results page, the HTML report (``ich.report``) and ``python -m ich plan``
render; none of them computes a figure of its own, so the three always say the same. The helpers
below it read the run folders of a study's cell table (``study.summarise_study``) and return plain
dicts and DataFrames, so the app's Results page and the HTML report show the same numbers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ich import jobs, noise, runs
from ich.curves import PowerLawFit, common_targets, fit_study_curves, label_ratio
from ich.evaluate import compare_runs, exam_summary
from ich.planner import CostModel, Plan, arm_outcomes, cheapest_plan, choice_effects, fitted_plans
from ich.robustness import has_robustness, study_verdict
from ich.study import read_progress, read_study, summarise_study


#: Bootstrap replicates of the power-law fits, the same wherever the answer is shown.
N_BOOT = 200


@dataclass(frozen=True)
class TargetAnswer:
    """What a study says about one target (e.g. exam AUC 0.90)."""

    target: float
    plan: Plan | None                  # the cheapest observed plan by the criterion, or None when none reaches it
    outcomes: list[str]                # one sentence per arm (``planner.arm_outcomes``)
    effects: list[str]                 # how each buying choice moved the cost (``planner.choice_effects``)
    needed: dict[str, dict]            # arm -> ``PowerLawFit.labels_needed`` (fitted arms only)
    fitted: list[Plan]                 # plans read off the fits, cheapest first
    ratio: dict | None                 # slice labels per exam label at equal AUC (``curves.label_ratio``), or None
    robustness: Any = None             # ``robustness.Verdict`` when the study was run with --robustness


@dataclass(frozen=True)
class StudyAnswer:
    """A study's answer (``study_answer``): every figure the Results page, the report and ``plan`` show."""

    study: Path
    spec: Any                          # ``study.StudyConfig``
    status: dict                       # ``study_status``
    cells: pd.DataFrame                # one row per cell (``study.summarise_study``)
    aggregate: pd.DataFrame            # one row per arm and budget: mean and 95% CI over seeds
    fits: dict                         # arm -> ``PowerLawFit`` or the reason there is none
    cost: CostModel
    metric: str
    criterion: str
    validation: str                    # how the cells chose their models, in words
    noise: str                         # which arms trained on noisy labels, in words ("" when none)
    targets: tuple[TargetAnswer, ...]
    roc: list[dict] = field(default_factory=list)          # ROC of each arm's largest budget (test predictions)
    delong: pd.DataFrame = field(default_factory=pd.DataFrame)   # weak vs strong, paired DeLong, per budget and seed

    @property
    def good_fits(self) -> dict[str, PowerLawFit]:
        return {a: f for a, f in self.fits.items() if isinstance(f, PowerLawFit)}

    @property
    def arms(self) -> dict[str, tuple]:
        """arm -> (supervision, slice fraction, label noise, acquisition)."""
        return {a: (sup, frac, nz, acq) for a, sup, frac, nz, acq in self.spec.arm_table}


def reference_arms(arm_table) -> tuple[str | None, str | None]:
    """The weak and the strong arm the label ratio compares: clean labels, bought at random (not a noise or
    acquisition variant of them)."""
    plain = [(arm, sup) for arm, sup, _, noise_spec, strategy in arm_table
             if not noise_spec and strategy in ("random", "", None)]
    return (next((a for a, s in plain if s == "weak"), None), next((a for a, s in plain if s == "strong"), None))


def study_answer(study: str | os.PathLike, *, cost: CostModel | None = None, targets: Sequence[float] | None = None,
                 criterion: str = "mean", metric: str = "exam_auc", n_boot: int = N_BOOT,
                 job: jobs.Job | None = None) -> StudyAnswer:
    """Compute a study's answer once.

    Args:
        study: the study folder.
        cost: prices of labels (default ``CostModel()``).
        targets: the targets to answer; default: three AUCs every fitted arm reaches inside its budgets,
            else the best mean reached and 0.02 below it.
        criterion: ``mean`` (its mean over seeds reaches the target) or ``ci_low`` (its 95% CI's low end does).
        metric: the figure curves, fits and plans use (``exam_auc``, ``slice_auc``, ``sequence_f1``, ``pixel_dice``).
        n_boot: bootstrap replicates of the fits (``N_BOOT`` everywhere the app shows an answer).
        job: the study's job, if known (its state is used once its process is gone).

    Raises:
        FileNotFoundError: ``study`` is not a study folder.
    """
    cost = cost or CostModel()
    spec, _ = read_study(study)
    cells, aggregate = summarise_study(study)
    fits = fit_study_curves(cells, metric=metric, n_boot=n_boot) if len(cells) else {}
    good = {a: f for a, f in fits.items() if isinstance(f, PowerLawFit)}
    if targets is None:
        targets = common_targets(good)
        if not targets and len(aggregate) and aggregate[metric].notna().any():
            best = float(aggregate.groupby("arm")[metric].max().max())
            targets = sorted({t for t in (round(best - 0.02, 3), round(best, 3)) if 0 < t <= 1})
    guides = aggregate.groupby("arm")["guide_labels"].mean().to_dict() if len(aggregate) else {}
    arms = {a: (sup, frac, nz, acq, guides.get(a, 0.0)) for a, sup, frac, nz, acq in spec.arm_table}
    weak, strong = reference_arms(spec.arm_table)
    robust = has_robustness(study)
    answers = []
    for t in targets:
        observed = len(aggregate) > 0
        answers.append(TargetAnswer(
            target=float(t),
            plan=cheapest_plan(aggregate, cost, t, criterion=criterion, metric=metric) if observed else None,
            outcomes=arm_outcomes(aggregate, fits, cost, t, metric=metric) if observed else [],
            effects=choice_effects(aggregate, cost, t, criterion=criterion, metric=metric) if observed else [],
            needed={a: f.labels_needed(t) for a, f in good.items()},
            fitted=fitted_plans(good, arms, cost, t),
            ratio=label_ratio(good[strong], good[weak], t) if weak in good and strong in good else None,
            robustness=study_verdict(study, cost, t, criterion=criterion, metric=metric) if robust else None))
    return StudyAnswer(study=Path(study), spec=spec, status=study_status(study, job), cells=cells,
                       aggregate=aggregate, fits=fits, cost=cost, metric=metric, criterion=criterion,
                       validation=validation_note(cells), noise=noise_note(cells), targets=tuple(answers),
                       roc=roc_curves(cells), delong=weak_vs_strong(cells))


def ratio_sentence(r: dict | None, target: float) -> str:
    """The label ratio at a target in words, or "" when the study has no fitted weak and strong arm."""
    if r is None:
        return ""
    if not all(math.isfinite(v) for v in (r["ratio"], r["low"], r["high"])):
        return (f"Label ratio at AUC {target:.2f}: not estimable with these budgets (a fitted curve does not reach the "
                "target, or the seeds are too few for an interval).")
    return (f"At AUC {target:.2f} the fitted curves need **{r['ratio']:.1f}×** as many slice labels as exam labels "
            f"(95% interval {r['low']:.1f}–{r['high']:.1f}); the reference study reports ≈35× on RSNA.")


def largest_budget_runs(cells: pd.DataFrame) -> dict[str, str]:
    """arm -> run folder of its largest finished budget (lowest seed)."""
    out = {}
    done = cells[cells["state"] == "done"]
    for arm, grp in done.groupby("arm", sort=False):
        out[arm] = str(grp.sort_values(["budget", "seed"], ascending=[False, True]).iloc[0]["run"])
    return out


def roc_curves(cells: pd.DataFrame) -> list[dict]:
    """ROC points (test split) of each arm's largest finished budget: ``[{name, fpr, tpr, auc}]``."""
    curves = []
    done = cells[cells["state"] == "done"]
    for arm, run in largest_budget_runs(cells).items():
        exams, _ = runs.read_predictions(run)
        labelled = exams[exams["exam_label"].notna()]
        s = exam_summary(labelled["exam_label"].to_numpy(float), labelled["exam_score"].to_numpy(float))
        row = done[done["run"] == run].iloc[0]
        curves.append({"name": f"{arm}, {int(row['budget'])} labels, seed {int(row['seed'])}", "fpr": s["roc"]["fpr"], "tpr": s["roc"]["tpr"],
                       "auc": s["auc"]})
    return curves


def weak_vs_strong(cells: pd.DataFrame, *, alternative: str = "two-sided") -> pd.DataFrame:
    """Paired DeLong test of the weak against the strong learner at each budget and seed both finished.

    Both runs score the same test exams, so the test is paired (``metrics.delong_test``).
    ``alternative="greater"`` tests H1: AUC_weak > AUC_strong, as the reference's script did.

    Returns:
        One row per (budget, seed): ``budget, seed, auc_weak, auc_strong, diff, diff_ci_low,
        diff_ci_high, p_value``; empty when no budget has both.
    """
    cols = ["budget", "seed", "auc_weak", "auc_strong", "diff", "diff_ci_low", "diff_ci_high", "p_value"]
    done = cells[(cells["state"] == "done") & cells["supervision"].isin(["weak", "strong"])]
    rows = []
    for (budget, seed), grp in done.groupby(["budget", "seed"], sort=True):
        by = dict(zip(grp["supervision"], grp["run"]))
        if {"weak", "strong"} <= set(by):
            r = compare_runs(by["weak"], by["strong"], alternative=alternative)
            rows.append({"budget": int(budget), "seed": int(seed), "auc_weak": r["auc_a"], "auc_strong": r["auc_b"],
                         "diff": r["diff"], "diff_ci_low": r["diff_ci_low"], "diff_ci_high": r["diff_ci_high"],
                         "p_value": r["p_value"]})
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({"budget": "int64", "seed": "int64"}) if len(df) else df


def significant_count(table: pd.DataFrame, level: float = 0.05) -> tuple[int, int]:
    """(comparisons with p < level, comparisons with a p-value) of a ``weak_vs_strong`` table."""
    p = pd.to_numeric(table.get("p_value", pd.Series(dtype=float)), errors="coerce").dropna()
    return int((p < level).sum()), int(len(p))


def fraction_significant(table: pd.DataFrame, level: float = 0.05) -> float:
    """Share of the weak-vs-strong comparisons with p < level (NaN when there is none)."""
    p = pd.to_numeric(table.get("p_value", pd.Series(dtype=float)), errors="coerce").dropna()
    return float((p < level).mean()) if len(p) else float(np.nan)


def run_label(row) -> str:
    """A run as a selector shows it: "<study> / <run> · weak · 48 labels · test AUC 0.931" (a ``study.all_runs`` row)."""
    where = f"{row['study']} / " if row.get("study") else ""
    budget = "all labels" if pd.isna(row.get("budget")) else f"{int(row['budget'])} labels"
    auc = row.get("test_exam_auc")
    return (f"{where}{row['run']} · {row['supervision']} · {budget}"
            + (f" · test AUC {float(auc):.3f}" if auc is not None and pd.notna(auc) else ""))


def comparison_sentence(r: dict, name_a: str = "A", name_b: str = "B") -> str:
    """``evaluate.compare_runs``'s result in plain words: both AUCs, the difference with its CI, and what the
    DeLong p-value says (no raw nan: a figure that cannot be estimated is said so)."""
    def f(v, fmt="{:.3f}"):
        return fmt.format(v) if v is not None and np.isfinite(v) else "not estimable"

    pct = f"{100 * r['level']:g}%"
    shared = (f"On the {r['n_exams']} exams both runs scored ({r['n_positive']} with hemorrhage)"
              + (f"; {r['n_only_a']} only {name_a} scored and {r['n_only_b']} only {name_b} scored are left out"
                 if r["n_only_a"] or r["n_only_b"] else ""))
    diff = (f"{name_a} − {name_b} = {f(r['diff'], '{:+.3f}')} ({pct} CI {f(r['diff_ci_low'], '{:+.3f}')} to "
            f"{f(r['diff_ci_high'], '{:+.3f}')})")
    p = r.get("p_value")
    h1 = {"two-sided": "that they differ", "greater": f"that {name_a} is better",
          "less": f"that {name_b} is better"}[r["alternative"]]
    if p is None or not np.isfinite(p):
        verdict = "the DeLong test is not estimable on these exams (e.g. one class missing)"
    elif p < 1 - r["level"]:
        verdict = f"DeLong p = {p:.3g}: evidence {h1} at the {pct} level"
    else:
        verdict = f"DeLong p = {p:.3g}: no evidence {h1} at the {pct} level (they may still differ; more exams would tell)"
    return (f"{shared}, {name_a} reaches AUC {f(r['auc_a'])} and {name_b} {f(r['auc_b'])}: {diff}; {verdict}.")


def _how_read(n) -> str:
    """How a noise model's labels were made, in a few words."""
    if n.readers:
        return "the readers' recorded reads of its bought exams"
    if any(n.reads(k) > 1 for k in noise.KINDS if n.touches(k)):
        return "each read flips exactly that share of its bought labels, and the majority is seen"
    return "exactly that share of its bought labels flipped"


def noise_note(cells: pd.DataFrame) -> str:
    """One plain sentence per noisy arm of a study (``label_noise``), or "" when every arm bought clean labels."""
    if "label_noise" not in cells.columns:
        return ""
    arms = cells[["arm", "label_noise"]].drop_duplicates("arm")
    noisy = [(a, noise.parse(n)) for a, n in zip(arms["arm"], arms["label_noise"]) if isinstance(n, str) and n]
    if not noisy:
        return ""
    return ("Label noise: " + "; ".join(f"{a} trained on {n.words()} ({_how_read(n)}, validation included)"
                                         for a, n in noisy)
            + ". Every arm is tested against the clean labels.")


def validation_note(cells: pd.DataFrame) -> str:
    """One plain sentence on how a study's cells chose their models and which labels that cost.

    Reads the ``validation`` / ``val_labels`` columns of the cell table (``study.summarise_study``);
    studies from before paid validation used the free validation split.
    """
    done = cells[cells["state"] == "done"]
    if done.empty:
        return "Model selection: no finished cell yet."
    modes = done["validation"].fillna("free").replace("", "free") if "validation" in done else \
        pd.Series(["free"] * len(done))
    n = len(done)
    parts = []
    paid, none, free = (int((modes == m).sum()) for m in ("paid", "none", "free"))
    if paid:
        parts.append(f"{paid} of {n} cells held out part of their own bought labels for validation (counted in "
                     "their budget)")
    if none:
        parts.append(f"{none} of {n} cells had too few labels to hold any out and used the label-free schedule "
                     "(fixed epochs, last epoch kept)")
    if free:
        v = pd.to_numeric(done.loc[modes == "free", "val_labels"], errors="coerce").dropna() \
            if "val_labels" in done else pd.Series(dtype=float)
        size = f"{int(v.iloc[0])} exam labels" if len(v) else "its exam labels"
        parts.append(f"{free} of {n} cells selected on the fully labelled validation split ({size}, as the "
                     "reference study; not part of the budget — the planner adds them to the cost)")
    return "Model selection: " + "; ".join(parts) + ". The test split is never used to choose anything."


#: Column names as the app's tables show them (code names stay in summary.csv).
COLUMN_WORDS = {
    "budget": "labels", "seed": "seed", "auc_weak": "weak AUC", "auc_strong": "strong AUC",
    "diff": "weak − strong", "diff_ci_low": "difference, 95% CI low", "diff_ci_high": "difference, 95% CI high",
    "p_value": "p (DeLong)", "arm": "arm", "supervision": "label kind", "slice_fraction": "share of slice labels",
    "label_noise": "label noise", "acquisition": "how labels were chosen", "n_seeds": "seeds",
    "n_labels": "labels bought", "validation": "model selection", "train_labels": "training labels",
    "val_labels": "validation labels", "val_label_kind": "validation label kind",
    "labels_counted": "labels paid for", "lr": "learning rate", "state": "state", "exam_auc": "test exam AUC",
    "exam_auc_ci_low": "exam AUC, 95% CI low", "exam_auc_ci_high": "exam AUC, 95% CI high",
    "slice_auc": "test slice AUC", "slice_auc_ci_low": "slice AUC, CI low", "slice_auc_ci_high": "slice AUC, CI high",
    "sequence_f1": "slice-sequence F1", "sequence_f1_ci_low": "F1, CI low", "sequence_f1_ci_high": "F1, CI high",
    "pixel_dice": "pixel Dice", "pixel_dice_ci_low": "Dice, CI low", "pixel_dice_ci_high": "Dice, CI high",
    "seconds": "seconds", "run": "run folder",
}


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table with plain column names (``COLUMN_WORDS``) and blanks instead of None/NaN in text columns."""
    out = table.rename(columns={c: COLUMN_WORDS.get(c, c.replace("_", " ")) for c in table.columns})
    for c in out.columns:
        if pd.api.types.is_object_dtype(out[c]) or pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].fillna("")
    return out


def study_status(study: str | os.PathLike, job: jobs.Job | None = None) -> dict:
    """Where a study stands, in words, for the Results page and the report.

    Reads the study's progress.json (``jobs.cancel`` writes "cancelled" into it) and, before the
    study has written anything or after its process is gone, the state of its job.

    Returns:
        ``{"state", "done", "total", "fraction" (0-1), "sentence", "live"}``; ``live`` is True while
        it is queued or working (the page keeps refreshing), False once it ended.
    """
    p = read_progress(study)
    state, done, total = p.get("state"), int(p.get("done") or 0), int(p.get("total") or 0)
    if job is not None and job.state in jobs.FINAL_STATES and state not in ("done", "failed", "cancelled"):
        state = job.state                                      # the process ended without writing its end
    elif job is not None and job.state == "queued" and not p:
        state = "queued"
    of = f"{done} of {total} cells" if total else "no cell"
    eta = jobs.describe_eta(jobs.study_eta(p)) if state == "running" else ""
    sentence = {
        None: "Starting: nothing written yet.",
        "queued": "Queued: it starts when the job it waits for (encoder or an earlier job) has finished.",
        "preparing": f"Preparing; {of} finished so far.",
        "pretraining": f"Pretraining the encoder before the first cell ({p.get('detail') or 'starting'}).",
        "embedding": f"Embedding the slices once for every cell ({p.get('detail') or 'starting'}).",
        "running": f"Training: {of} finished" + (f", {eta} left." if eta else "."),
        "done": f"Finished: {of}.",
        "failed": f"Stopped with failures: {of} finished, {int(p.get('failed') or 0)} failed. Resume it on the "
                  "**Runs** page to retry them." if p.get("failed") else
                  f"Stopped: {of} finished when its job failed. Resume it on the **Runs** page.",
        "cancelled": f"Cancelled: {of} finished before it was stopped. Resume it on the **Runs** page to go on.",
    }.get(state, f"{state}: {of}.")
    return {"state": state, "done": done, "total": total, "fraction": done / total if total else 0.0,
            "sentence": sentence, "live": state not in ("done", "failed", "cancelled")}


def run_sentence(summary: dict) -> str:
    """A finished training run in plain words, from its summary (``train.fit``'s return, status.json's ``summary``)."""
    if summary.get("state") != "done":
        return f"The run ended {summary.get('state', 'unknown')}" + (f": {summary['error']}" if summary.get("error") else ".")
    kind = {"weak": "exam", "strong": "slice", "mixed": "exam and slice"}.get(summary.get("supervision"), "")
    bought = f"{summary.get('n_labels')} {kind} labels".replace("  ", " ")
    how = summary.get("acquisition") or "random"
    if how == "attention":
        bought += (f" that a weak guide trained on {summary.get('guide_exams')} bought exam labels pointed at "
                   "(attention-guided)")
    elif how != "random":
        bought += f" bought in rounds by {how}"
    val = summary.get("val_exam_auc") if summary.get("val_exam_auc") is not None else summary.get("val_slice_auc")
    which = "exam" if summary.get("val_exam_auc") is not None else "slice"
    paid = "held out of the labels it bought" if summary.get("validation") == "paid" else "of the validation split"
    chose = (f"; the kept model reached a validation {which} AUC of {val:.3f} on {summary.get('val_labels')} labels "
             f"{paid}" if isinstance(val, (int, float)) else "")
    noisy = f"; {summary['wrong_labels']} of its labels were wrong on purpose ({summary['label_noise']})" \
        if summary.get("wrong_labels") else ""
    return (f"Trained a {summary.get('supervision')} learner on {bought} (seed {summary.get('seed')}) in "
            f"{float(summary.get('seconds') or 0):.0f} s{chose}{noisy}. How the model was chosen: "
            f"{summary.get('selection') or 'not recorded'}. Score its test split on the **Inspect** page or with "
            "`python -m ich evaluate RUN`.")
