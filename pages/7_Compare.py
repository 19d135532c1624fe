"""Compare: two finished runs' exam AUCs on the exams both scored, with the paired DeLong test, in plain words."""

import shlex

import streamlit as st

from ich import paths
from ich.evaluate import compare_runs
from ich.results import comparison_sentence, run_label
from ich.study import all_runs

st.set_page_config(page_title="Compare · ICH lab", layout="wide")
st.title("Compare two runs")
st.caption("Both runs are scored on the test exams they share; the paired DeLong test (DeLong et al. 1988) says "
           "whether the difference in AUC is larger than chance on those exams. Nothing here is re-trained.")

table = all_runs(paths.runs_dir(), paths.studies_dir())
table = table[table["state"] == "done"] if len(table) else table
if len(table) < 2:
    st.info("Comparing needs two finished runs. Train them on the **Train** page, or run a study.")
    st.stop()
labels = {row["path"]: run_label(row) for _, row in table.iterrows()}
paths_ = list(labels)
c = st.columns(2)
run_a = c[0].selectbox("Run A", paths_, format_func=labels.get, key="compare_a")
run_b = c[1].selectbox("Run B", paths_, index=1, format_func=labels.get, key="compare_b")
alternative = st.radio("Question", ["two-sided", "greater", "less"], horizontal=True, key="compare_alternative",
                       format_func={"two-sided": "Do they differ?", "greater": "Is A better than B?",
                                    "less": "Is B better than A?"}.get)
if run_a == run_b:
    st.warning("Pick two different runs.")
    st.stop()
try:
    r = compare_runs(run_a, run_b, alternative=alternative)
except ValueError as err:
    st.error(str(err))
    st.stop()
m = st.columns(3)
m[0].metric("AUC of A", "—" if r["auc_a"] != r["auc_a"] else f"{r['auc_a']:.3f}")
m[1].metric("AUC of B", "—" if r["auc_b"] != r["auc_b"] else f"{r['auc_b']:.3f}")
m[2].metric("Exams compared", r["n_exams"], help=f"{r['n_positive']} of them with hemorrhage")
st.markdown(comparison_sentence(r))
argv = ["python", "-m", "ich", "compare", run_a, run_b] + ([] if alternative == "two-sided"
                                                          else ["--alternative", alternative])
st.caption("The same from a terminal:")
st.code(shlex.join(argv), language="bash", wrap_lines=True)
