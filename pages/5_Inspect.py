"""Inspect: one run and one exam (or your own series) — the slice strip, the slice, its heatmap, the truth and the warnings."""

import pandas as pd
import streamlit as st

from ich import paths, runs
from ich.inspect import explain_run_exam, validation_operating_point
from ich.explain import overlay
from ich.figures import hu_slice_figure, slice_strip_figure
from ich.labels import WINDOWS
from ich.ood import score_dataset
from ich.predict import load_predictions
from ich.results import run_label
from ich.store import open_dataset
from ich.study import all_runs
from ich.uploads import (import_in_process, list_uploads, remove_upload, score_in_process, stage_upload,
                         upload_name)
from ich.views import heat_legend_image, render_slice, subtype_legend_html, triptych_png, window_values

st.set_page_config(page_title="Inspect · ICH lab", layout="wide")
st.title("Inspect")

# ------------------------------------------------------------------ the run
table = all_runs(paths.runs_dir(), paths.studies_dir())
table = table[table["state"] == "done"] if len(table) else table
if table.empty:
    st.info("No finished run yet. Train one on the **Train** page (or run the quick study on the home page).")
    st.stop()
labels = {row["path"]: run_label(row) for _, row in table.iterrows()}
run = st.selectbox("Run", list(labels), format_func=labels.get, key="inspect_run")

# ------------------------------------------------------------------ your own series
uploads_root = paths.uploads_dir()
with st.expander("Score your own series (a zip of one DICOM series, or its .dcm files)"):
    st.caption("The series is checked first (CT, axial, complete, a head), imported in a separate process with a "
               "memory and time limit, then scored. The uploaded DICOM files hold full headers: they are deleted "
               "after import unless you tick the box.")
    with st.form("inspect_upload_form", clear_on_submit=True):
        files = st.file_uploader("DICOM series", type=["zip", "dcm"], accept_multiple_files=True,
                                 key="inspect_upload_files")
        keep_raw = st.checkbox("Keep the uploaded DICOM files", key="inspect_keep_raw")
        submitted = st.form_submit_button("Import and score", type="primary")
    if submitted:
        if not files:
            st.error("Choose a zip or the .dcm files of one series first.")
        else:
            try:
                with st.spinner("Checking and importing the series…"):
                    staged = stage_upload([(f.name, f.getvalue()) for f in files], uploads_root)
                    new = import_in_process(staged, upload_name(uploads_root), uploads_root, keep_raw=keep_raw)
                st.session_state["inspect_source"] = str(new)
            except (ValueError, FileExistsError, OSError) as err:
                st.error(f"The upload was not scored: {err}")

uploads = {u["dataset"]: u for u in list_uploads(uploads_root)}
OWN = "own"
sources = [OWN, *uploads]
if st.session_state.get("inspect_source") not in sources:
    st.session_state["inspect_source"] = OWN


def source_label(s: str) -> str:
    if s == OWN:
        return "Test exams of the run's dataset (with ground truth)"
    u = uploads[s]
    n_slices = u.get("check", {}).get("facts", {}).get("n_slices", "?")
    return f"Your series {u['name']} ({n_slices} slice{'' if n_slices == 1 else 's'}, no ground truth)"


def forget_upload(dataset_path: str) -> None:
    remove_upload(uploads_root, uploads[dataset_path]["name"])
    st.session_state["inspect_source"] = OWN


c = st.columns([4, 1])
source = c[0].selectbox("Exams", sources, format_func=source_label, key="inspect_source")
if source != OWN:
    c[1].button("Remove this upload", on_click=forget_upload, args=(source,), key="inspect_remove")
    for w in uploads[source].get("check", {}).get("warnings", []):
        st.warning(w[:1].upper() + w[1:])
dataset = None if source == OWN else source
pred_name = None if source == OWN else f"upload-{uploads[source]['name']}"


@st.cache_data(show_spinner="Scoring exams…")
def predictions(run_path: str, dataset_path: str | None, name: str | None):
    if name is not None and not runs.predictions_path(run_path, name).is_file():
        score_in_process(run_path, dataset_path, name)        # an upload: scored in a child process, not here
    exams, slices, _ = load_predictions(run_path, dataset_path, name=name, score_missing=False)
    return exams, slices


@st.cache_data(show_spinner="Computing the heatmap…")
def explanation(run_path: str, exam_id: str, dataset_path: str | None, method: str, slices: tuple | None):
    return explain_run_exam(run_path, exam_id, dataset=dataset_path, method=method,
                            slices=list(slices) if slices else None)


@st.cache_data(show_spinner="Checking how typical this series is (the first time for a run takes longer)…")
def typicality(run_path: str, dataset_path: str, exam_id: str) -> dict:
    return score_dataset(run_path, dataset_path, exam_ids=[exam_id]).iloc[0].to_dict()


@st.cache_data(show_spinner="Reading the validation labels…")
def op_point(run_path: str, rule: str) -> dict:
    return validation_operating_point(run_path, rule=rule)


try:
    exams, slices = predictions(run, dataset, pred_name)
except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
    st.error(str(err))
    st.stop()
exams = exams.sort_values("exam_score", ascending=False)


def truth_word(y) -> str:
    return "no ground truth" if pd.isna(y) else ("hemorrhage" if int(y) else "no hemorrhage")


exam_labels = {e: f"{e} · score {s:.2f} · truth: {truth_word(y)}"
               for e, s, y in zip(exams["exam_id"], exams["exam_score"], exams["exam_label"])}
exam_id = st.selectbox("Exam (highest score first)", list(exam_labels), format_func=exam_labels.get,
                       key=f"inspect_exam::{run}::{source}")
exam_slices = slices[slices["exam_id"] == exam_id].sort_values("index")
n = len(exam_slices)
exam_row = exams[exams["exam_id"] == exam_id].iloc[0]

# ------------------------------------------------------------------ out-of-distribution verdict
try:
    verdict = typicality(run, dataset or runs.read_config(run).data.dataset, exam_id)
except (ValueError, FileNotFoundError, RuntimeError) as err:
    verdict = None
    st.info(f"The out-of-distribution check could not run: {err}")
if verdict is not None and verdict["ood"]:
    st.warning(f"**Out of distribution: do not trust this score.** {verdict['reason'][:1].upper()}{verdict['reason'][1:]}.")

# ------------------------------------------------------------------ the strip and the slice
slice_key = f"inspect_slice::{run}::{source}::{exam_id}"
default = int(exam_slices["slice_score"].fillna(0).to_numpy().argmax()) if n else 0
if slice_key not in st.session_state or not 0 <= st.session_state[slice_key] < max(n, 1):
    st.session_state[slice_key] = default
index = int(st.session_state[slice_key])

st.caption("Along the slices: the ground truth (when known), the slice probability and the attention weight "
           "(weak learners). **Click a dot in the bottom row to show that slice.**")
event = st.plotly_chart(slice_strip_figure(slices, exam_id, current=index), on_select="rerun",
                        selection_mode="points", key=f"inspect_strip::{run}::{source}::{exam_id}")
points = [p for p in ((event or {}).get("selection", {}).get("points", []) if hasattr(event, "get") else [])
          if p.get("curve_number") == 4]          # the row of dots (figures.slice_strip_figure)
pick = int(points[0]["x"]) if points else None
if pick is not None and pick != st.session_state.get("inspect_last_pick") and 0 <= pick < n:
    st.session_state["inspect_last_pick"] = pick
    st.session_state[slice_key] = pick
    st.rerun()
if n > 1:
    index = st.slider("Slice", 0, n - 1, key=slice_key)
else:
    st.caption("This series has one slice.")
    index = 0

c = st.columns([1, 2, 1, 1])
method = c[0].selectbox("Heatmap", ["gradcam", "saliency", "ig", "occlusion"], key="inspect_method",
                        help="Grad-CAM and Saliency explain the whole exam at once; Integrated Gradients and "
                             "Occlusion take seconds per slice, so only the shown slice is explained.")
window_name = c[1].radio("Window", [*WINDOWS, "custom"], horizontal=True, key="inspect_window")
if window_name == "custom":
    level = c[2].number_input("Level (HU)", -1000.0, 3000.0, 40.0, step=10.0, key="inspect_level")
    width = c[3].number_input("Width (HU)", 1.0, 4000.0, 80.0, step=10.0, key="inspect_width")
    win = (level, width)
else:
    win = window_name
level, width = window_values(win)

per_slice = method in ("ig", "occlusion")
try:
    ex = explanation(run, exam_id, dataset, method, (index,) if per_slice else None)
except (ValueError, FileNotFoundError, RuntimeError) as err:
    st.error(str(err))
    st.stop()
k = 0 if per_slice else index
heat, image = ex["maps"][k], ex["image"][k][0]
mask = ex["mask"][k] if ex["mask"] is not None else None

hu, full_mask = open_dataset(dataset or runs.read_config(run).data.dataset).load(exam_id)
has_truth = full_mask is not None or pd.notna(exam_row["exam_label"])
heat_rgb = overlay(image, heat, mask)
truth_rgb = render_slice(hu[index], win, full_mask[index] if full_mask is not None else None)
cols = st.columns(3)
with cols[0]:
    st.plotly_chart(hu_slice_figure(hu[index], level, width, title=f"slice {index} · HU under the cursor"),
                    key="inspect_hu", config={"displayModeBar": False})
with cols[1]:
    st.image(heat_rgb, caption=f"{method} heatmap" + (" (truth outlined in green)" if mask is not None else ""),
             width="stretch")
    st.image(heat_legend_image(), caption="heat: none (black) → strongest evidence for hemorrhage on this slice (yellow)",
             width="stretch")
with cols[2]:
    st.image(truth_rgb, caption="ground-truth mask" if full_mask is not None else "no ground-truth mask for this exam",
             width="stretch")
    if full_mask is not None:
        st.markdown(subtype_legend_html(), unsafe_allow_html=True)
st.download_button("Download slice, heatmap and truth (PNG)", key="inspect_png", mime="image/png",
                   file_name=f"{exam_id}-slice{index}-{method}.png",
                   data=triptych_png([render_slice(hu[index], win), heat_rgb, truth_rgb],
                                     [f"{exam_id} slice {index}", f"{method} heatmap",
                                      "truth" if full_mask is not None else "no ground truth"]))

m = st.columns(4)
unreliable = verdict is not None and verdict["ood"]
if unreliable:
    m[0].markdown(f"Exam score<br><span style='font-size:2rem;color:#9e9e9e'>{ex['exam_score']:.3f}</span><br>"
                  "<span style='color:#9e9e9e'>not reliable: out of distribution</span>", unsafe_allow_html=True)
else:
    m[0].metric("Exam score", f"{ex['exam_score']:.3f}")
m[1].metric("Slice probability", f"{ex['slice_prob'][index]:.3f}")
if ex["scores"] is not None and ex["scores"][k]["lesion_pixels"] > 0:
    m[2].metric("Dice (Otsu map vs mask)", f"{ex['scores'][k]['dice_mask']:.2f}")
    m[3].metric("Pointing game", "hit" if ex["scores"][k]["pointing"] else "miss")
elif not has_truth or full_mask is None:
    m[2].caption("No ground truth for this series: there is no lesion mask, so Dice and the pointing game cannot be "
                 "computed. This says nothing about whether there is a lesion.")
else:
    m[2].caption("No lesion on this slice in the ground truth: Dice and the pointing game need one.")
if verdict is not None and not verdict["ood"]:
    m[3].caption(f"Typical of the training images ({verdict['reason'].split('(')[-1].rstrip(')')}).")
if heat.max() <= 0:
    st.warning("The map is empty: Grad-CAM keeps only evidence *for* hemorrhage, and the model scores this slice "
               "negative. Try Integrated Gradients or Saliency.")
if method == "ig":
    st.caption(f"Integrated Gradients convergence delta: {float(ex['delta'][k]):.2e} (closer to 0 is better).")

# ------------------------------------------------------------------ operating point
if source == OWN:
    with st.expander("Operating point: a cutoff fixed on validation exams, applied to the test exams"):
        rule = st.radio("Cutoff rule", ["youden", "closest"], horizontal=True, key="inspect_rule",
                        format_func={"youden": "best sensitivity + specificity",
                                     "closest": "closest to perfect (top-left of the ROC)"}.get)
        try:
            op = op_point(run, rule)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            st.info(str(err))
        else:
            t = op["test"]
            o = st.columns(3)
            o[0].metric("Cutoff (from validation)", f"{op['threshold']:.3f}")
            o[1].metric("Sensitivity on test", "—" if pd.isna(t["sensitivity"]) else f"{t['sensitivity']:.0%}",
                        help=f"{t['tp']} of {t['tp'] + t['fn']} exams with hemorrhage scored at or above the cutoff")
            o[2].metric("Specificity on test", "—" if pd.isna(t["specificity"]) else f"{t['specificity']:.0%}",
                        help=f"{t['tn']} of {t['tn'] + t['fp']} exams without hemorrhage scored below the cutoff")
            st.caption(f"On the test exams: {t['tp']} true positives, {t['fn']} missed, {t['tn']} true negatives, "
                       f"{t['fp']} false alarms. The cutoff was chosen on the validation exams only.")
