"""Data: generate a phantom or import a dataset, then browse its exams slice by slice."""

import streamlit as st

from ich import jobs, paths, sources
from ich.labels import SUBTYPES, WINDOWS
from ich.store import list_datasets, open_dataset
from ich.views import render_slice

st.set_page_config(page_title="Data · ICH lab", layout="wide")
st.title("Data")

with st.expander("Generate a synthetic head-CT phantom"):
    with st.form("data_synth"):
        c = st.columns(4)
        name = c[0].text_input("Name", "phantom-new")
        n_exams = c[1].number_input("Exams", 10, 5000, 200, step=10)
        size = c[2].selectbox("Image size", [128, 256, 512], index=1)
        difficulty = c[3].selectbox(
            "Difficulty", ["easy", "default", "hard"], index=1,
            help="easy: large, bright bleeds. default: calibrated so that label budgets matter for a learner "
                 "that sees 128 px slices. hard: small, faint bleeds are common; at 128 px every learner "
                 "stays near AUC 0.5-0.65.")
        c = st.columns(4)
        seed = c[0].number_input("Seed", 0, 10**6, 0)
        anatomy = c[1].selectbox(
            "Anatomy", ["geometric", "atlas"], index=0, key="data_anatomy",
            format_func={"geometric": "Geometric shapes (fast)", "atlas": "Brain atlas (MNI152, slower)"}.get,
            help="Geometric: a drawn head (ellipses, sulci, ventricles). Brain atlas: the MNI152 brain of the "
                 "installed nilearn package turned into CT, with bleeds placed where each type occurs; "
                 "about 10 CPU-seconds per exam at 512 px.")
        if st.form_submit_button("Generate"):
            try:
                name = paths.check_name(name)
                dicom_out = sources.check_new_dataset(paths.dicom_dir() / name)
                store_out = sources.check_new_dataset(paths.datasets_dir() / name)
                synth = jobs.submit(paths.jobs_db(), ["synth", "--out", str(dicom_out), "--exams", str(n_exams),
                                                      "--size", str(size), "--difficulty", difficulty, "--seed",
                                                      str(seed), "--anatomy", anatomy],
                                    kind="synth", out_dir=dicom_out, title=f"synth {name}")
                jobs.submit(paths.jobs_db(), ["import", "phantom", str(dicom_out), "--out", str(store_out),
                                              "--size", str(size)], kind="import", out_dir=store_out,
                            title=f"import {name}", after=synth.id)      # starts once the phantom is written
            except (ValueError, FileExistsError) as err:
                st.error(str(err))
            else:
                st.success(f"Queued: generate then import `{name}`. Follow it on the **Runs** page.")

with st.expander("Import a dataset from disk (RSNA 2019, CQ500, CT-ICH, any DICOM folder)"):
    with st.form("data_import"):
        source = st.selectbox("Format", ["folder", "rsna", "cq500", "ctich", "phantom"])
        src = st.text_input("Source folder on this machine", placeholder="/path/to/stage_2_train")
        name = st.text_input("Dataset name", "my-dataset")
        size = st.selectbox("Cached image size", [128, 256, 512], index=1)
        if st.form_submit_button("Import"):
            try:                                    # refused here, before a job is queued
                name = paths.check_name(name)
                folder = sources.check_source(source, src.strip())
                out = sources.check_new_dataset(paths.datasets_dir() / name)
                jobs.submit(paths.jobs_db(), ["import", source, str(folder), "--out", str(out), "--size", str(size)],
                            kind="import", out_dir=out, title=f"import {name}")
            except (ValueError, OSError) as err:
                st.error(str(err))
            else:
                st.success(f"Queued the import of `{folder}`. Follow it on the **Runs** page.")

datasets = list_datasets(paths.datasets_dir())
if datasets.empty:
    st.info("No dataset yet. Generate a phantom above, or run `make run` once.")
    st.stop()

paths_list = list(datasets["path"])
current = st.session_state.get("dataset_path", paths_list[0])
chosen = st.selectbox("Dataset", paths_list, index=paths_list.index(current) if current in paths_list else 0,
                      format_func=lambda p: datasets.set_index("path").loc[p, "name"])
st.session_state["dataset_path"] = chosen
ds = open_dataset(chosen)
st.dataframe(ds.exams, hide_index=True, height=220)

st.subheader("Slice viewer")
exam_id = st.selectbox("Exam", list(ds.exams["exam_id"]), key="data_exam")
exam = ds.exams.set_index("exam_id").loc[exam_id]
hu, mask = ds.load(exam_id)
c = st.columns([3, 2])
with c[1]:
    index = st.slider("Slice", 0, hu.shape[0] - 1, hu.shape[0] // 2, key="data_slice")
    window_name = st.radio("Window", list(WINDOWS), horizontal=True, key="data_window")
    show_mask = st.toggle("Show ground-truth mask", value=mask is not None, disabled=mask is None)
    label = exam["label"]
    st.markdown(f"**Exam label:** {'unknown' if label is None or str(label) == '<NA>' else int(label)}  ·  "
                f"split **{exam['split']}**  ·  {int(exam['n_slices'])} slices")
    row = ds.exam_slices(exam_id).iloc[index]
    present = [s for s in SUBTYPES if str(row[s]) == "1"]
    st.markdown(f"**Slice label:** {row['label']}" + (f" ({', '.join(present)})" if present else ""))
with c[0]:
    st.image(render_slice(hu[index], window_name, mask[index] if show_mask and mask is not None else None),
             caption=f"{exam_id} · slice {index}", width="stretch")
