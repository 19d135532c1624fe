"""Train: choose supervision, label budget, model and seeds; see the resolved config; launch in the background."""

import argparse
import time
from pathlib import Path

import streamlit as st

from ich import jobs, paths
from ich.commands import train as train_cmd
from ich.store import list_datasets

st.set_page_config(page_title="Train · ICH lab", layout="wide")
st.title("Train")

datasets = list_datasets(paths.datasets_dir())
if datasets.empty:
    st.info("No dataset yet. Create one on the **Data** page first.")
    st.stop()
names = dict(zip(datasets["path"], datasets["name"]))
current = st.session_state.get("dataset_path", datasets["path"].iloc[0])
dataset = st.selectbox("Dataset", list(names), format_func=names.get,
                       index=list(names).index(current) if current in names else 0, key="train_dataset")

c = st.columns(3)
supervision = c[0].radio("Supervision", ["weak", "strong", "mixed"], horizontal=True, key="train_supervision",
                         help="weak = one label per exam (attention MIL); strong = one label per slice; "
                              "mixed = slice labels for some exams, exam labels for others")
budget = c[1].number_input("Label budget (exams for weak, slices for strong, labels for mixed)", 1, 10**6, 48,
                           key="train_budget")
slice_fraction = c[2].slider("Share of the budget spent on slice labels", 0.05, 0.95, 0.5,
                             disabled=supervision != "mixed", key="train_slice_fraction")

encoders = sorted(str(p) for p in paths.encoders_dir().glob("*.pt"))
c = st.columns(4)
encoder = c[0].selectbox("Encoder", ["compact", "resnet18"], key="train_encoder")
init = c[1].selectbox("Encoder start", [*encoders, "random"], key="train_init",
                      help="A label-free pretrained encoder (see `python -m ich pretrain`) gives weak and strong "
                           "learners the same start and makes each run take seconds.")
pooling = c[2].selectbox("Pooling", ["attention", "gated_attention", "mean", "max"], key="train_pooling")
epochs = c[3].number_input("Max epochs", 1, 1000, 30, key="train_epochs")
c = st.columns(2)
mode = c[0].radio("Launch", ["single run", "study grid (budgets x seeds)"], horizontal=True, key="train_mode")
seeds = c[1].number_input("Seeds", 1, 20, 1 if mode == "single run" else 3, key="train_seeds")

args = argparse.Namespace(
    dataset=dataset, supervision=supervision, budget=int(budget),
    slice_fraction=slice_fraction if supervision == "mixed" else None, sampling=None, seed=0, out=None,
    preset="default", encoder=None if init != "random" else encoder, pooling=pooling, attention_activation=None,
    init=init, finetune=None, windows=None, input_size=None, epochs=int(epochs), loss=None, device=None,
    threads=None, set=[], resume=False, quiet=True,
)
try:
    cfg = train_cmd.build_config(args)
except (ValueError, FileNotFoundError) as err:
    st.error(str(err))
    st.stop()

stamp = time.strftime("%Y%m%d-%H%M%S")
if mode == "single run":
    out = paths.runs_dir() / f"{stamp}-{supervision}-m{int(budget)}-s0"
    argv = ["train", "--dataset", dataset, "--supervision", supervision, "--budget", str(int(budget)),
            "--pooling", pooling, "--epochs", str(int(epochs)), "--init", init, "--out", str(out), "--quiet"]
    if init == "random":
        argv += ["--encoder", encoder]
    if supervision == "mixed":
        argv += ["--slice-fraction", str(slice_fraction)]
else:
    arms = st.multiselect("Compare", ["weak", "strong", "mixed"], default=["weak", "strong"], key="train_arms")
    budgets = st.text_input("Budgets (comma-separated)", "12,24,48,96,192", key="train_budgets")
    out = paths.studies_dir() / f"{stamp}-{'-'.join(arms)}"
    argv = ["study", "--dataset", dataset, "--supervision", ",".join(arms), "--budgets", budgets,
            "--seeds", str(int(seeds)), "--out", str(out)]
    if init != "random":
        argv += ["--init", init]
    if "mixed" in arms:
        argv += ["--slice-fractions", str(slice_fraction)]
    if not arms:
        st.error("Pick at least one supervision level to compare.")
        st.stop()

with st.expander("Resolved configuration (what the run will record in config.json)"):
    st.json(cfg.to_dict())
st.code("python -m ich " + " ".join(argv), language="bash")

if st.button("Launch", type="primary", key="train_launch"):
    job = jobs.submit(paths.jobs_db(), argv, kind=argv[0], out_dir=out, title=Path(out).name)
    st.session_state["runs_last_job"] = job.id
    st.success(f"Job #{job.id} is {job.state}. Follow it on the **Runs** page.")
