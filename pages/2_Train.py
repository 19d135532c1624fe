"""Train: choose supervision, label budget and the recipe's fairness settings; see the exact command; launch it."""

import shlex
import time

import streamlit as st

from ich import jobs, noise, paths, recipe
from ich.config import RunConfig
from ich.store import list_datasets, recorded_readers
from ich.study import default_encoder_path, make_study

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

mode = st.radio("Launch", ["study grid (budgets x seeds)", "single run"], horizontal=True, key="train_mode")
c = st.columns(3)
if mode == "single run":
    supervision = c[0].radio("Supervision", ["weak", "strong", "mixed"], horizontal=True, key="train_supervision",
                             help="weak = one label per exam (attention MIL); strong = one label per slice; "
                                  "mixed = slice labels for some exams, exam labels for others")
    arms = [supervision]
    budget = c[1].number_input("Label budget (exams for weak, slices for strong, labels for mixed)", 1, 10**6, 48,
                               key="train_budget")
    seed = c[2].number_input("Seed", 0, 10**6, 0, key="train_seed")
else:
    arms = c[0].multiselect("Compare", ["weak", "strong", "mixed"], default=["weak", "strong"], key="train_arms")
    budgets_text = c[1].text_input("Budgets (comma-separated)", "12,24,48,96,192", key="train_budgets")
    n_seeds = c[2].number_input("Seeds per budget", 1, 50, len(make_study("quick", dataset=dataset).seeds),
                                key="train_seeds")
slice_fraction = st.slider("Share of the budget spent on slice labels (mixed)", 0.05, 0.95, 0.5,
                           disabled="mixed" not in arms, key="train_slice_fraction")

st.subheader("Label quality")
NOISE_HELP = ("A cheaper source (a report-mining script, one hurried reader) gets some labels wrong. Sensitivity: "
              "the share of truly positive labels it calls positive; specificity: the share of negatives it calls "
              "negative. Exactly that share of the bought labels is flipped (seeded); the test split stays clean.")
READS_HELP = ("Buy each label this many times from independent fallible reads and keep the majority: fewer wrong "
              "labels, at that many times the price.")
readers = recorded_readers(dataset)      # CQ500's R1, R2, R3: the dataset's own reads of each exam
READS_WORDS = {1: "one read", 3: "majority of 3 reads", 5: "majority of 5 reads"}
READER_HELP = (f"This dataset records each reader's exam read ({', '.join(readers)}): train on one reader's reads, "
               "or on their majority (each read priced as an exam label).")
if mode == "single run":
    c = st.columns(4)
    noisy = c[0].toggle("Labels from a fallible source", key="train_noisy", help=NOISE_HELP)
    sens = c[1].number_input("Sensitivity", 0.5, 1.0, 0.9, 0.01, disabled=not noisy, key="train_noise_sens")
    spec_ = c[2].number_input("Specificity", 0.5, 1.0, 0.97, 0.01, disabled=not noisy, key="train_noise_spec")
    reads = c[3].selectbox("Reads per label", list(READS_WORDS), format_func=READS_WORDS.get, disabled=not noisy,
                           key="train_reads", help=READS_HELP)
    pair = (float(sens), float(spec_)) if noisy else (1.0, 1.0)
    kinds = {"weak": ("exam",), "strong": ("slice",)}.get(supervision, ("exam", "slice"))
    label_noises = [noise.LabelNoise(**{k: pair for k in kinds}, **{f"{k}_reads": int(reads) for k in kinds}).spec]
    if readers and supervision != "strong":
        source = st.selectbox("Exam labels from", ["the dataset's label", *readers, "+".join(readers)],
                              key="train_reader", help=READER_HELP,
                              format_func=lambda r: r if r.startswith("the") else f"reader {r}" if "+" not in r
                              else f"the majority of readers {r.replace('+', ', ')}")
        if not source.startswith("the"):
            label_noises = [noise.parse(f"exam={source}").spec]
else:
    c = st.columns([3, 1])
    flipped = c[0].multiselect("Compare label noise (share of each class's bought labels flipped)", [0, 5, 10, 20],
                               default=[0], format_func=lambda p: "clean labels" if p == 0 else f"{p}% wrong",
                               key="train_noise_levels", help=NOISE_HELP + " Each level is an arm of its own.")
    reads = c[1].multiselect("Reads per noisy label", list(READS_WORDS), default=[1], format_func=READS_WORDS.get,
                             key="train_reads_grid", help=READS_HELP + " Each choice is an arm of its own.") or [1]
    label_noises = list(dict.fromkeys(
        noise.LabelNoise(exam=(1 - p / 100, 1 - p / 100), slice=(1 - p / 100, 1 - p / 100), exam_reads=int(k),
                         slice_reads=int(k)).spec for p in sorted(flipped) for k in sorted(reads))) or [""]
    if readers:
        chosen_readers = st.multiselect("Compare recorded readers", [*readers, "+".join(readers)], key="train_readers",
                                        help=READER_HELP + " Each is an arm of its own.")
        label_noises += [noise.parse(f"exam={r}").spec for r in chosen_readers]

st.subheader("Which labels to buy")
ACQUISITION_WORDS = {"random": "at random (the reference study)", "uncertainty": "where the model is least sure",
                     "coreset": "the most varied scans (coreset)",
                     "attention": "slices a weak model points at, confirmed (slice labels only)"}
ACQUISITION_HELP = ("random: one stratified draw. The others buy the budget in rounds: a random seed set, then each "
                    "round the model trained on the labels bought so far picks the exams or slices it is least sure "
                    "of (uncertainty), or the scans least like anything bought yet (coreset, from the frozen "
                    "embeddings). Attention (slice labels): a weak model trained on a few exam labels points at the "
                    "slices it attends to, and a reader confirms them (cheaper than judging free slices; the exam "
                    "labels are paid too). Only labels already bought are ever read. Needs a pretrained encoder "
                    "start; weak and strong only.")
c = st.columns(3)
if mode == "single run":
    strategies = [c[0].selectbox("Buy", list(ACQUISITION_WORDS), format_func=ACQUISITION_WORDS.get,
                                 key="train_acquisition", help=ACQUISITION_HELP)]
else:
    strategies = c[0].multiselect("Compare ways of choosing", list(ACQUISITION_WORDS), default=["random"],
                                  format_func=ACQUISITION_WORDS.get, key="train_acquisitions",
                                  help=ACQUISITION_HELP + " Each strategy is an arm of its own.") or ["random"]
rounds = c[1].number_input("Rounds", 2, 20, RunConfig().train.rounds, key="train_rounds",
                           disabled=not set(strategies) & {"uncertainty", "coreset"},
                           help="A seed set, then rounds - 1 chosen by the strategy.")
guide_exams = c[2].number_input("Guide exam labels", 2, 10_000, RunConfig().train.guide_exams, key="train_guide",
                                disabled="attention" not in strategies,
                                help="Attention: exam labels bought to train the weak guide; priced as exam labels, "
                                     "on top of the slice budget.")

st.subheader("Encoder")
encoders = sorted(str(p) for p in paths.encoders_dir().glob("*.pt"))
c = st.columns(3)
init = c[0].selectbox("Encoder start", ["auto", *encoders, "random"], key="train_init",
                      help="auto = the dataset's label-free pretrained encoder (pretrained once if missing), as the "
                           "quick study uses. It gives weak and strong learners the same start and makes each run "
                           "take seconds.")
encoder = c[1].selectbox("Encoder (random start only)", ["compact", "resnet18"], disabled=init != "random",
                         key="train_encoder")
pooling = c[2].selectbox("Pooling", ["attention", "gated_attention", "mean", "max"], key="train_pooling")

# The settings that decide whether the arms are compared fairly: shown with the recipe's values.
defaults = RunConfig().train
model_defaults = RunConfig().model
st.subheader("Recipe (the same for every arm)")
c = st.columns(5)
steps = c[0].number_input("Optimiser steps per epoch", 1, 10_000, defaults.steps_per_epoch, key="train_steps")
epochs = c[1].number_input("Epochs (per learning rate)", 1, 1000, defaults.epochs, key="train_epochs")
patience = c[2].number_input("Patience (0 = never stop early)", 0, 1000, defaults.patience or 0,
                             key="train_patience", help="Stop a learning rate after this many validations "
                                                        "without improvement; 0 never stops early.")
lr = c[3].number_input("Learning rate", 1e-6, 1.0, defaults.lr, format="%g", key="train_lr")
factors = c[4].text_input("Learning rates tried (x rate)", ",".join(f"{f:g}" for f in defaults.lr_factors),
                          key="train_factors", help="Each is trained; the one with the best validation score "
                                                    "is kept. Validation labels only, never the test split.")
c = st.columns(4)
loss = c[0].selectbox("Loss", ["bce", "focal"], index=["bce", "focal"].index(defaults.loss), key="train_loss")
attention = c[1].selectbox("Attention", ["softmax", "sparsemax"],
                           index=["softmax", "sparsemax"].index(model_defaults.attention_activation),
                           key="train_attention")
validation = c[2].selectbox(
    "Validation labels", ["paid", "free"], index=["paid", "free"].index(defaults.validation), key="train_validation",
    format_func={"paid": "paid: held out of the budget", "free": "free: the full validation split (reference)"}.get,
    help="paid: a share of the bought labels (of the arm's own kind) selects the epoch and learning rate, and is "
         "counted in the cost; too few labels -> a label-free schedule (last epoch). free: the dataset's fully "
         "labelled validation split, as the reference study did; its labels are added to the planner's cost.")
val_fraction = c[3].slider("Share held out for validation (paid)", 0.1, 0.5, defaults.val_fraction,
                           disabled=validation != "paid", key="train_val_fraction")

try:
    lr_factors = [float(v) for v in factors.split(",") if v.strip()]
except ValueError:
    st.error(f"Learning rates tried must be comma-separated numbers such as 0.3,1,3, not {factors!r}.")
    st.stop()
chosen = {"train.steps_per_epoch": int(steps), "train.epochs": int(epochs), "train.patience": int(patience) or None,
          "train.lr": float(lr), "train.lr_factors": lr_factors, "train.loss": loss,
          "model.attention_activation": attention, "train.validation": validation,
          "train.val_fraction": float(val_fraction), "model.pooling": pooling}
if init == "random":
    chosen["model.encoder"] = encoder
if mode == "single run":
    chosen["train.label_noise"] = label_noises[0]
    chosen["train.acquisition"] = strategies[0]
if set(strategies) & {"uncertainty", "coreset"}:
    chosen["train.rounds"] = int(rounds)
if "attention" in strategies:
    chosen["train.guide_exams"] = int(guide_exams)
overrides = recipe.changed_settings(chosen)      # only what differs from the recipe

stamp = time.strftime("%Y%m%d-%H%M%S")
try:
    if mode == "single run":
        start = str(default_encoder_path(dataset)) if init == "auto" else init
        request = dict(supervision=supervision, budget=int(budget), seed=int(seed),
                       slice_fraction=slice_fraction if supervision == "mixed" else None, init=start,
                       overrides=overrides)
        if init == "auto" and not default_encoder_path(dataset).is_file():
            st.warning("This dataset has no pretrained encoder yet: run a study first (it pretrains one) or pick "
                       "another start.")
            st.stop()
        cfg = recipe.run_config(dataset, **request)
        out = paths.runs_dir() / f"{stamp}-{supervision}-m{int(budget)}-s{int(seed)}"
        argv = recipe.train_argv(dataset, out, **request)
        with st.expander("Resolved configuration (what the run records in config.json)"):
            st.json(cfg.to_dict())
    else:
        if not arms:
            st.error("Pick at least one supervision level to compare.")
            st.stop()
        budgets = [int(b) for b in budgets_text.split(",") if b.strip()]
        spec = make_study(None, dataset=dataset, supervisions=arms, budgets=budgets, seeds=list(range(int(n_seeds))),
                          slice_fractions=[slice_fraction], init=init, finetune="none" if init != "random" else None,
                          overrides=overrides, label_noise=label_noises, acquisition=strategies)
        out = paths.studies_dir() / f"{stamp}-{'-'.join(arms)}"
        argv = recipe.study_argv(spec, out)
        with st.expander("Resolved study (what the study records in study.json)"):
            st.json(spec.to_dict())
except (ValueError, FileNotFoundError) as err:
    st.error(str(err))
    st.stop()

if overrides:
    st.caption("Changed from the recipe: " + ", ".join(f"{k} = {v}" for k, v in overrides.items()))
else:
    st.caption("The standard recipe: the same settings as the quick study and `python -m ich train`.")
st.code(shlex.join(["python", "-m", "ich", *argv]), language="bash", wrap_lines=True)

if st.button("Launch", type="primary", key="train_launch"):
    job = jobs.submit(paths.jobs_db(), argv, kind=argv[0], out_dir=out, title=out.name)
    st.session_state["runs_last_job"] = job.id
    st.success(f"Job #{job.id} is {job.state}. Follow it on the **Runs** page.")
