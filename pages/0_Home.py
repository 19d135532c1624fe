"""Home: what the lab answers, the active dataset, and one button for the quick study."""

import time

import streamlit as st

from ich import firstrun, jobs, paths, recipe
from ich.store import list_datasets, open_dataset
from ich.study import make_study

st.set_page_config(page_title="ICH label-budget lab", page_icon="🧠", layout="wide")
st.title("ICH label-budget lab")
st.markdown(
    "**What kind of labels should you buy, and how many?** Radiologist slice labels are expensive; "
    "exam labels are cheap (one per scan, often from the report). This lab trains hemorrhage detectors "
    "on head CT under a label budget — *weak* (exam labels, attention MIL), *strong* (slice labels) or "
    "*mixed* — and shows which reaches your target accuracy for the least annotator time. It reproduces "
    "Teneggi, Yi & Sulam (Radiology: AI 2024) on your own data."
)

# ---- First run (ich.firstrun): the default phantom and its encoder, built in the background ----------
STEP_WORDS = {"done": "done", "running": "running", "queued": "next",
              "failed": "stopped", "cancelled": "cancelled", "missing": "not started"}


@st.fragment(run_every=2)
def first_run_panel(no_dataset: bool) -> None:
    rows = firstrun.chain_status()
    states = {r["state"] for r in rows}
    stopped = next((r for r in rows if r["state"] == "failed" or (no_dataset and r["state"] == "cancelled")), None)
    if stopped or (no_dataset and states == {"missing"}):
        if stopped:
            st.warning(f"Setting up the default phantom stopped at: {stopped['title'].lower()}. "
                       + (stopped["error"] or "") + " Resuming keeps what is already built.")
        if st.button("Resume setting it up" if stopped else "Build the default phantom"):
            firstrun.start_chain()
            st.rerun()
    elif states & {"queued", "running"}:
        st.session_state["home_first_run_active"] = True
        st.subheader("Setting up the default phantom")
        left = jobs.describe_eta(firstrun.remaining_s(rows))
        st.caption("The app is ready to use meanwhile. Everything is built once, in the background"
                   + (f"; {left} left." if left else "."))
        for r in rows:
            eta = jobs.describe_eta(r["eta_s"]) if r["state"] in ("queued", "running") else ""
            when = (f" ({eta} left)" if r["state"] == "running" else f" (takes {eta})") if eta else ""
            st.progress(float(r["progress"] or 0.0), text=f"{r['title']}: {STEP_WORDS[r['state']]}{when}")
        if no_dataset and "home_first_run_study" not in st.session_state and st.button(
                "Queue the quick study", type="primary", help="It starts by itself as soon as the encoder is ready."):
            job = firstrun.queue_quick_study(paths.studies_dir() / f"quick-{time.strftime('%Y%m%d-%H%M%S')}")
            st.session_state["runs_last_job"] = st.session_state["home_first_run_study"] = job.id
        if "home_first_run_study" in st.session_state:
            st.success(f"The quick study is queued (job {st.session_state['home_first_run_study']}); it starts by "
                       "itself when the encoder is ready. Follow it on the **Runs** page.")
    elif st.session_state.pop("home_first_run_active", False):
        st.rerun()     # the chain just finished: show the dataset below


# ---- end of the first-run block ---------------------------------------------------------------------

datasets = list_datasets(paths.datasets_dir())
first_run_panel(no_dataset=datasets.empty)
if datasets.empty:
    st.info(f"No dataset yet in `{paths.datasets_dir()}`. The default phantom appears here once `make run` "
            "has built it, or generate or import one on the **Data** page.")
    st.stop()

if "dataset_path" not in st.session_state or st.session_state["dataset_path"] not in set(datasets["path"]):
    st.session_state["dataset_path"] = datasets["path"].iloc[0]
names = dict(zip(datasets["path"], datasets["name"]))
chosen = st.selectbox("Active dataset", list(names), format_func=names.get,
                      index=list(names).index(st.session_state["dataset_path"]))
st.session_state["dataset_path"] = chosen

summary = open_dataset(chosen).summary()
cols = st.columns(5)
cols[0].metric("Exams", summary["exams"])
cols[1].metric("Slices", summary["slices"])
cols[2].metric("Positive exams", summary["positive_exams"])
cols[3].metric("Positive slices", summary["positive_slices"])
cols[4].metric("Exams with masks", summary["exams_with_masks"])
st.caption("Split sizes (exams): " + ", ".join(f"{k} {v['exams']}" for k, v in summary["splits"].items()))

st.subheader("Quick study")
quick = make_study("quick", dataset=chosen)
st.write(f"Weak vs strong supervision at {len(quick.budgets)} label budgets ({', '.join(map(str, quick.budgets))}) "
         f"with {len(quick.seeds)} seeds each. The first point of both curves arrives within about a minute; the "
         "full study takes a few minutes on a laptop CPU.")
if st.button("Run the quick study", type="primary"):
    out = paths.studies_dir() / f"quick-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = recipe.study_argv(quick, out)   # the same recipe as every other launch
    job = jobs.submit(paths.jobs_db(), argv, kind="study", out_dir=out, title=f"quick study on {names[chosen]}",
                      after=firstrun.study_after(chosen))
    st.session_state["results_study"] = str(out)
    st.session_state["runs_last_job"] = job.id
    st.switch_page("pages/4_Results.py")
