"""Inspect: one run and one exam — the slice-score strip, the slice, its Captum heatmap and the truth."""

import time

import pandas as pd
import streamlit as st

from ich import paths, runs
from ich.evaluate import explain_run_exam, load_predictions
from ich.explain import overlay
from ich.figures import slice_strip_figure
from ich.store import open_dataset
from ich.uploads import import_upload
from ich.views import render_slice

st.set_page_config(page_title="Inspect · ICH lab", layout="wide")
st.title("Inspect")

roots = [paths.runs_dir(), *sorted(p / "runs" for p in paths.studies_dir().glob("*") if (p / "runs").is_dir())]
table = pd.concat([runs.list_runs(r) for r in roots], ignore_index=True)
table = table[table["state"] == "done"] if len(table) else table
if table.empty:
    st.info("No finished run yet. Train one on the **Train** page (or run the quick study on the home page).")
    st.stop()
labels = {p: f"{r} · {s} · budget {b if pd.notna(b) else 'all'} · test AUC {a:.3f}" if pd.notna(a) else f"{r} · {s}"
          for p, r, s, b, a in zip(table["path"], table["run"], table["supervision"], table["budget"],
                                   table["test_exam_auc"])}
run = st.selectbox("Run", list(labels), format_func=labels.get, key="inspect_run")

with st.expander("Score your own series (upload a zip of one DICOM series)"):
    upload = st.file_uploader("DICOM zip", type=["zip"], key="inspect_upload")
    if upload is not None and st.button("Import the upload", key="inspect_import"):
        try:
            ds_path = import_upload(upload.getvalue(), f"upload-{time.strftime('%Y%m%d-%H%M%S')}",
                                    paths.uploads_dir(), size=256)
            st.session_state["inspect_dataset"] = str(ds_path)
        except (ValueError, FileExistsError, RuntimeError) as err:
            st.error(str(err))
dataset = st.session_state.get("inspect_dataset") or None


@st.cache_data(show_spinner="Scoring exams…")
def predictions(run_path: str, dataset_path: str | None):
    exams, slices, _ = load_predictions(run_path, dataset_path)
    return exams, slices


@st.cache_data(show_spinner="Computing the heatmap…")
def explanation(run_path: str, exam_id: str, dataset_path: str | None, method: str, slices: tuple | None):
    return explain_run_exam(run_path, exam_id, dataset=dataset_path, method=method,
                            slices=list(slices) if slices else None)


try:
    exams, slices = predictions(run, dataset)
except (ValueError, FileNotFoundError, RuntimeError) as err:
    st.error(str(err))
    st.stop()
exams = exams.sort_values("exam_score", ascending=False)
exam_labels = {e: f"{e} · score {s:.2f} · label {'?' if pd.isna(y) else int(y)}"
               for e, s, y in zip(exams["exam_id"], exams["exam_score"], exams["exam_label"])}
exam_id = st.selectbox("Exam (highest score first)", list(exam_labels), format_func=exam_labels.get,
                       key="inspect_exam")
exam_slices = slices[slices["exam_id"] == exam_id].sort_values("index")
n = len(exam_slices)

st.caption("Along the slices: the ground-truth slice label, the slice probability and the attention weight "
           "(weak learners). Click a slice to show it below.")
event = st.plotly_chart(slice_strip_figure(slices, exam_id), on_select="rerun", selection_mode="points",
                        key="inspect_strip")
points = (event or {}).get("selection", {}).get("points", []) if hasattr(event, "get") else []
if points:
    st.session_state["inspect_slice"] = int(points[0]["x"])
default = int(exam_slices["slice_score"].fillna(0).to_numpy().argmax()) if n else 0
index = st.slider("Slice", 0, max(n - 1, 0), st.session_state.get("inspect_slice", default), key="inspect_slice")

c = st.columns([1, 1, 2])
method = c[0].selectbox("Heatmap", ["gradcam", "saliency", "ig", "occlusion"], key="inspect_method",
                        help="Grad-CAM and Saliency explain the whole exam at once; Integrated Gradients and "
                             "Occlusion take seconds per slice, so only the shown slice is explained.")
window_name = c[1].radio("Window", ["brain", "subdural", "bone"], horizontal=True, key="inspect_window")
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
cols = st.columns(3)
cols[0].image(render_slice(hu[index], window_name), caption=f"slice {index}", width="stretch")
cols[1].image(overlay(image, heat, mask), caption=f"{method} heatmap (truth outlined in green)", width="stretch")
cols[2].image(render_slice(hu[index], window_name, full_mask[index] if full_mask is not None else None),
              caption="ground-truth mask" if full_mask is not None else "no mask for this exam", width="stretch")

m = st.columns(4)
m[0].metric("Exam score", f"{ex['exam_score']:.3f}")
m[1].metric("Slice probability", f"{ex['slice_prob'][index]:.3f}")
if ex["scores"] is not None and ex["scores"][k]["lesion_pixels"] > 0:
    m[2].metric("Dice (Otsu map vs mask)", f"{ex['scores'][k]['dice_mask']:.2f}")
    m[3].metric("Pointing game", "hit" if ex["scores"][k]["pointing"] else "miss")
else:
    m[2].caption("No lesion on this slice: Dice and pointing game need one.")
if heat.max() <= 0:
    st.warning("The map is empty: Grad-CAM keeps only evidence *for* hemorrhage, and the model scores this slice "
               "negative. Try Integrated Gradients or Saliency.")
if method == "ig":
    st.caption(f"Integrated Gradients convergence delta: {float(ex['delta'][k]):.2e} (closer to 0 is better).")
