"""Results: learning curves vs labels and annotator-hours, fits, ROC, weak-vs-strong DeLong and the planner."""

import pandas as pd
import streamlit as st

from ich import jobs, paths
from ich.figures import learning_curve_figure, roc_figure
from ich.planner import CostModel
from ich.report import render_report
from ich.results import readable, ratio_sentence, significant_count, study_answer, study_status
from ich.study import is_study

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
if study_status(study)["done"] == 0:
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
                 "every label in a study arm trained with label noise (a majority of 3 reads pays 3 such reads; "
                 "recorded readers such as CQ500's R1 are radiologists, each read priced as an exam label)"),
        seconds_per_confirmed_slice=st.number_input(
            "Seconds per confirmed slice", 0.0, 600.0, 2.0, key="results_confirm_s",
            help="A slice a weak learner pre-selected, which the reader only confirms (the attention strategy); "
                 "its guide's exam labels are priced as exam labels"),
    )

figures = st.container()                 # drawn once the answer below is computed
st.subheader("Plan the cheapest labelling")
target = st.slider("Target exam AUC", 0.50, 0.99, 0.85, 0.01, key="results_target")
criterion = st.radio("A plan reaches the target when", ["mean", "ci_low"], horizontal=True, key="results_criterion",
                     format_func={"mean": "its mean over seeds does", "ci_low": "the lower end of its 95% CI does "
                                  "(cautious)"}.get)
answer = study_answer(study, cost=cost, targets=[target], criterion=criterion)   # page, report and `plan` share it
at = answer.targets[0]

with figures:
    metric = st.radio("Figure", ["exam_auc", "sequence_f1", "slice_auc"], horizontal=True, key="results_metric",
                      format_func={"exam_auc": "exam AUC", "sequence_f1": "slice-sequence F1",
                                   "slice_auc": "slice AUC"}.get)
    fits = answer.good_fits if metric == "exam_auc" else None
    c = st.columns(2)
    c[0].plotly_chart(learning_curve_figure(answer.aggregate, cells=answer.cells, fits=fits, metric=metric,
                                            x="labels", title="vs number of labels"))
    c[1].plotly_chart(learning_curve_figure(answer.aggregate, cells=answer.cells, fits=fits, metric=metric,
                                            x="hours", cost=cost, title="vs annotator-hours"))
    for arm, fit in answer.fits.items():
        if arm not in answer.good_fits:
            st.caption(f"No power-law fit for {arm}: {fit}")
    st.info(answer.validation)
    if answer.noise:
        st.info(answer.noise)

if at.plan is None:
    st.warning(f"No arm of this study reached an exam AUC of {target:.2f} by this rule; lower the target, choose "
               "the other rule, or add larger budgets.")
else:
    (st.success if at.plan.criterion == "ci_low" or at.plan.auc_ci_low >= target else st.warning)(at.plan.sentence())
for line in at.outcomes:
    st.markdown(f"- {line}")
if at.effects:
    st.markdown("**How each way of buying moved the cost** (against the same learner with clean labels bought at "
                "random, by the rule chosen above):")
    for line in at.effects:
        st.markdown(f"- {line}")
if at.ratio is not None:
    (st.caption if "not estimable" in ratio_sentence(at.ratio, target) else st.markdown)(ratio_sentence(at.ratio, target))
if at.robustness is not None:   # run with --robustness: does the cheapest plan survive changes of the recipe?
    robust = at.robustness
    (st.success if robust.robust else st.warning if robust.flipped else st.info)(robust.sentence)
    st.dataframe(pd.DataFrame(robust.rows()), hide_index=True)
    st.caption("Each row reruns the whole study (same arms, budgets, seeds and encoder) with one change to the "
               "training recipe; “flips?” says whether the cheapest plan for this target changes arm or budget.")

st.subheader("ROC at the largest budgets")
st.caption("One run per arm: its largest finished budget, lowest seed (the legend names it); test split.")
st.plotly_chart(roc_figure(answer.roc))
st.subheader("Weak vs strong, paired DeLong")
if answer.delong.empty:
    st.info("Needs a weak and a strong run at the same budget and seed.")
else:
    shown = readable(answer.delong)
    st.dataframe(shown, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                        for c in shown.columns[2:]})
    k, n = significant_count(answer.delong)
    st.caption(f"{k} of {n} comparisons differ at p < 0.05 (two-sided)." if n else
               "No comparison has a p-value yet (each needs both classes in the test split).")

st.subheader("Every cell")
st.dataframe(readable(answer.cells.drop(columns=["row"])), hide_index=True, height=260)
d = st.columns(2)
d[0].download_button("Download summary.csv", pd.concat([answer.cells, answer.aggregate]).to_csv(index=False),
                     file_name="summary.csv", mime="text/csv")
d[1].download_button("Download the HTML report (this target and cost)", render_report(answer),
                     file_name="report.html", mime="text/html")
