"""Results: learning curves vs labels and annotator-hours, fits, ROC, weak-vs-strong DeLong and the planner."""

import math

import pandas as pd
import streamlit as st

from ich import jobs, paths
from ich.curves import PowerLawFit, fit_study_curves, label_ratio
from ich.figures import learning_curve_figure, roc_figure
from ich.planner import CostModel, arm_outcomes, cheapest_plan, choice_effects
from ich.report import build_report
from ich.results import (noise_note, readable, roc_curves, significant_count, study_status, validation_note,
                         weak_vs_strong)
from ich.robustness import has_robustness, study_verdict
from ich.study import is_study, summarise_study

st.set_page_config(page_title="Results · ICH lab", layout="wide")
st.title("Results")

db = paths.jobs_db()
studies = sorted((p for p in paths.studies_dir().glob("*") if is_study(p)), key=lambda p: p.name, reverse=True)
waiting = [j.out_dir for j in jobs.list_jobs(db) if j.kind == "study" and j.state in ("queued", "running")
           and not is_study(j.out_dir)]                       # launched, but nothing to show yet
names = list(dict.fromkeys(waiting + [str(p) for p in studies]))
if not names:
    st.info("No study yet. Run the quick study from the home page, or a study grid from the **Train** page.")
    st.stop()
current = st.session_state.get("results_study")
study = st.selectbox("Study", names, index=names.index(current) if current in names else 0,
                     format_func=lambda p: p.rsplit("/", 1)[-1], key="results_pick")
st.session_state["results_study"] = study


@st.fragment(run_every=3)
def live_status():
    """Where the study stands; the whole page redraws when a cell finishes or the study ends."""
    status = study_status(study, next((j for j in jobs.list_jobs(db) if j.out_dir == study), None))
    if status["live"]:
        st.progress(status["fraction"], text=status["sentence"])
    elif status["state"] in ("cancelled", "failed"):
        st.warning(status["sentence"])
    seen = st.session_state.get("results_seen")
    now = (study, status["done"], status["live"], is_study(study))
    st.session_state["results_seen"] = now
    if seen is not None and seen[0] == study and seen != now:
        st.rerun()


live_status()
if not is_study(study):
    st.info("The study has not written its first results yet; this page updates by itself.")
    st.stop()
cells, aggregate = summarise_study(study)
if aggregate.empty:
    st.info("No cell has finished yet; the first points appear here as soon as one has (this page updates by "
            "itself).")
    st.stop()

with st.sidebar:
    st.subheader("Cost of a label")
    cost = CostModel(
        seconds_per_exam_label=st.number_input("Seconds per exam label", 0.0, 3600.0, 60.0, key="results_exam_s"),
        seconds_per_slice_label=st.number_input("Seconds per slice label", 0.0, 600.0, 5.0, key="results_slice_s"),
        hourly_rate=st.number_input("Annotator rate per hour (USD)", 0.0, 5000.0, 200.0, key="results_rate"),
        seconds_per_noisy_label=st.number_input(
            "Seconds per noisy label", 0.0, 3600.0, 1.0, key="results_noisy_s",
            help="A label from a cheaper, fallible source (e.g. mined from the report by a script): the price of "
                 "every label in a study arm trained with label noise"),
    )

fits = fit_study_curves(cells, n_boot=200)
good = {arm: fit for arm, fit in fits.items() if isinstance(fit, PowerLawFit)}
metric = st.radio("Figure", ["exam_auc", "sequence_f1", "slice_auc"], horizontal=True, key="results_metric",
                  format_func={"exam_auc": "exam AUC", "sequence_f1": "slice-sequence F1",
                               "slice_auc": "slice AUC"}.get)
c = st.columns(2)
c[0].plotly_chart(learning_curve_figure(aggregate, cells=cells, fits=good if metric == "exam_auc" else None,
                                        metric=metric, x="labels", title="vs number of labels"))
c[1].plotly_chart(learning_curve_figure(aggregate, cells=cells, fits=good if metric == "exam_auc" else None,
                                        metric=metric, x="hours", cost=cost, title="vs annotator-hours"))
for arm, fit in fits.items():
    if not isinstance(fit, PowerLawFit):
        st.caption(f"No power-law fit for {arm}: {fit}")
st.info(validation_note(cells))
noisy = noise_note(cells)
if noisy:
    st.info(noisy)

st.subheader("Plan the cheapest labelling")
target = st.slider("Target exam AUC", 0.50, 0.99, 0.85, 0.01, key="results_target")
criterion = st.radio("A plan reaches the target when", ["mean", "ci_low"], horizontal=True, key="results_criterion",
                     format_func={"mean": "its mean over seeds does", "ci_low": "the lower end of its 95% CI does "
                                  "(cautious)"}.get)
plan = cheapest_plan(aggregate, cost, target, criterion=criterion)
if plan is None:
    st.warning(f"No arm of this study reached an exam AUC of {target:.2f} by this rule; lower the target, choose "
               "the other rule, or add larger budgets.")
else:
    (st.success if plan.criterion == "ci_low" or plan.auc_ci_low >= target else st.warning)(plan.sentence())
for line in arm_outcomes(aggregate, fits, cost, target):
    st.markdown(f"- {line}")
effects = choice_effects(aggregate, cost, target, criterion=criterion)
if effects:
    st.markdown("**How each way of buying moved the cost** (against the same learner with clean labels bought at "
                "random, by the rule chosen above):")
    for line in effects:
        st.markdown(f"- {line}")
weak = next((f for a, f in good.items() if a.startswith("weak")), None)
strong = next((f for a, f in good.items() if a.startswith("strong")), None)
r = label_ratio(strong, weak, target) if weak and strong else None
if r is not None and not all(math.isfinite(v) for v in (r["ratio"], r["low"], r["high"])):
    st.caption(f"Label ratio at AUC {target:.2f}: not estimable with these budgets (a fitted curve does not "
               "reach the target, or the seeds are too few for an interval).")
elif r is not None:
    st.markdown(f"At AUC {target:.2f} the fitted curves need **{r['ratio']:.1f}×** as many slice labels as exam "
                f"labels (95% interval {r['low']:.1f}–{r['high']:.1f}); the reference study reports ≈35× on RSNA.")
if has_robustness(study):   # run with --robustness: does the cheapest plan survive changes of the training recipe?
    robust = study_verdict(study, cost, target)
    (st.success if robust.robust else st.warning if robust.flipped else st.info)(robust.sentence)
    st.dataframe(pd.DataFrame(robust.rows()), hide_index=True)
    st.caption("Each row reruns the whole study (same arms, budgets, seeds and encoder) with one change to the "
               "training recipe; “flips?” says whether the cheapest plan for this target changes arm or budget.")

c = st.columns(2)
with c[0]:
    st.subheader("ROC at the largest budgets")
    st.plotly_chart(roc_figure(roc_curves(cells)))
with c[1]:
    st.subheader("Weak vs strong, paired DeLong")
    table = weak_vs_strong(cells)
    if table.empty:
        st.info("Needs a weak and a strong run at the same budget and seed.")
    else:
        shown = readable(table)
        st.dataframe(shown, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                            for c in shown.columns[2:]})
        k, n = significant_count(table)
        st.caption(f"{k} of {n} comparisons differ at p < 0.05 (two-sided)." if n else
                   "No comparison has a p-value yet (each needs both classes in the test split).")

st.subheader("Every cell")
st.dataframe(readable(cells.drop(columns=["row"])), hide_index=True, height=260)
d = st.columns(2)
d[0].download_button("Download summary.csv", pd.concat([cells, aggregate]).to_csv(index=False),
                     file_name="summary.csv", mime="text/csv")
d[1].download_button("Download the HTML report", build_report(study, cost=cost, n_boot=200),
                     file_name="report.html", mime="text/html")
