"""Runs: every background job with live status, progress and validation AUC; cancel, resume, logs; archive."""

import pandas as pd
import streamlit as st

from ich import archive, jobs, paths, runs
from ich.figures import epoch_figure
from ich.results import run_sentence

st.set_page_config(page_title="Runs · ICH lab", layout="wide")
st.title("Runs")
st.caption("Training, studies, phantom generation and imports run in the background, one at a time on a "
           "CPU (one per GPU). This page refreshes every 2 seconds.")


@st.fragment(run_every=2)
def job_table():
    rows = jobs.overview(paths.jobs_db())
    if not rows:
        st.info("No jobs yet. Start a run on the **Train** page, or the quick study on the home page.")
        return
    table = pd.DataFrame(rows)[["id", "state", "kind", "title", "progress", "time_left", "detail", "val_exam_auc",
                                "error", "created"]]
    table["val_exam_auc"] = [f"{v:.3f}" if v is not None and pd.notna(v) else "" for v in table["val_exam_auc"]]
    table["error"] = table["error"].fillna("")                    # blank, never "None"
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "id": st.column_config.NumberColumn("job", format="%d"),
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
            "time_left": st.column_config.TextColumn("time left", help="At the pace so far"),
            "val_exam_auc": st.column_config.TextColumn(
                "validation exam AUC",
                help="Of the model the run kept (the best so far while it trains); blank when the run held out "
                     "no validation labels"),
        },
    )


job_table()


def act(button: str, key: str, action, disabled: bool = False) -> None:
    """A button that runs a housekeeping action; what happened (or why it was refused) shows after the rerun."""
    if st.button(button, key=key, disabled=disabled):
        try:
            st.session_state["runs_housekeeping"] = ("success", action())
        except (ValueError, FileExistsError) as err:
            st.session_state["runs_housekeeping"] = ("error", str(err))
        st.rerun()                                   # the lists below show the folder where it is now


with st.expander("Rename or archive finished runs and studies (archived ones are moved, never deleted)",
                 expanded="runs_housekeeping" in st.session_state):
    if "runs_housekeeping" in st.session_state:
        kind, text = st.session_state.pop("runs_housekeeping")
        (st.success if kind == "success" else st.error)(text)
    listed = archive.current()
    if listed:
        c = st.columns([4, 1])
        pick = c[0].selectbox("Run or study", listed, key="runs_archive_pick", format_func=archive.label)
        with c[1]:
            act("Archive", "runs_archive", lambda: f"Archived to {archive.archive(pick)}. It no longer appears in "
                                                   "the lists; restore it below.")
        c = st.columns([4, 1])
        new_name = c[0].text_input("New name", key="runs_new_name", placeholder="e.g. weak-vs-strong-december")
        with c[1]:
            act("Rename", "runs_rename", lambda: f"Renamed to {archive.rename(pick, new_name).name}.",
                disabled=not new_name.strip())
    else:
        st.caption("No run or study to archive.")
    stored = archive.archived()
    if stored:
        c = st.columns([4, 1])
        back = c[0].selectbox("Archived", stored, key="runs_restore_pick", format_func=archive.label)
        with c[1]:
            act("Restore", "runs_restore", lambda: f"Restored to {archive.restore(back)}.")

rows = jobs.overview(paths.jobs_db())
if not rows:
    st.stop()
st.subheader("One job")
by_id = {r["id"]: r for r in rows}
job_id = st.selectbox("Job", list(by_id), format_func=lambda i: f"#{i} {by_id[i]['title']} · {by_id[i]['kind']}",
                      key="runs_job")                         # its state is shown live below, never stale here
job = by_id[job_id]
c = st.columns(3)
if c[0].button("Cancel", disabled=job["state"] not in ("queued", "running")):
    jobs.cancel(paths.jobs_db(), job_id)
    st.rerun()
if c[1].button("Resume", disabled=job["state"] not in ("failed", "cancelled")):
    new = jobs.resume(paths.jobs_db(), job_id)
    st.success(f"Resumed as job #{new.id}.")
if job["error"]:
    st.error(job["error"])
st.markdown(f"Writes to `{job['out_dir']}`")


@st.fragment(run_every=2)
def live_job(job_id: int) -> None:
    """The job's latest state, time left, epoch curves (a single run) and log; refreshed every 2 seconds."""
    job = jobs.overview_row(jobs.get(paths.jobs_db(), job_id))
    left = f" · {job['time_left']} left" if job["time_left"] else ""
    st.markdown(f"**{job['state'].capitalize()}**{left}" + (f" · {job['detail']}" if job["detail"] else ""))
    if runs.is_run(job["out_dir"]):
        summary = runs.read_status(job["out_dir"]).get("summary")
        if summary:
            st.success(run_sentence(summary))
        epochs = epoch_figure(runs.read_metrics(job["out_dir"]), title="One run, epoch by epoch")
        if epochs is not None:
            st.plotly_chart(epochs, key=f"runs_epochs_{job_id}")
    st.code(jobs.tail_log(jobs.get(paths.jobs_db(), job_id), 30) or "(no output yet)", language=None)


live_job(job_id)
