"""Tests for ich.train: the loss, learning on an easy phantom, resume, cancel, the fast path, errors."""

import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _blobs import write_blob_dataset
from ich import runs
from ich.config import make_config, with_overrides
from ich.models import build_encoder, save_encoder
from ich.objective import focal_loss
from ich.train import fit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """32 exams of 8-12 slices at 64 px; positives hold a large, bright disc in a run of slices."""
    path = tmp_path_factory.mktemp("train") / "easy"
    write_blob_dataset(path, 32, seed=3, size=64, slices=(8, 12), contrast=60.0, noise=5.0, radius=0.1)
    return path


def tiny(easy, **kw):
    overrides = kw.pop("overrides", {})
    return make_config(str(easy), preset="tiny", overrides={"train.threads": 1, **overrides}, **kw)


def strip(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if "seconds" not in k}


# ------------------------------------------------------------------------------ loss
def test_focal_loss_matches_the_reference_formula():
    z = torch.tensor([-3.0, -0.5, 0.0, 0.4, 2.0, 4.0])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    p = torch.sigmoid(z)
    pt = torch.where(y == 1, p, 1 - p)
    gamma = torch.where(pt < 0.2, 5.0, 3.0)
    expected = (-0.86 * (1 - pt) ** gamma * torch.log(pt)).mean()
    torch.testing.assert_close(focal_loss(z, y, alpha=0.86), expected)


def test_focal_loss_is_stable_for_saturated_logits():
    z = torch.tensor([-200.0, 200.0], requires_grad=True)
    loss = focal_loss(z, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and loss > 10 and torch.isfinite(z.grad).all()
    assert focal_loss(torch.tensor([50.0]), torch.tensor([1.0])) == 0.0


# ------------------------------------------------------------------------------ learning
@pytest.mark.slow
@pytest.mark.parametrize("supervision", ["weak", "strong"])
def test_short_cpu_run_learns_an_easy_phantom(easy, tmp_path, supervision):
    summary = fit(tiny(easy, supervision=supervision, seed=0), tmp_path / "run")
    assert summary["state"] == "done"
    assert summary["test_exam_auc"] > 0.9 and summary["val_exam_auc"] > 0.9
    metrics = runs.read_metrics(tmp_path / "run")
    assert metrics.epoch.tolist() == [1, 2, 3, 4]
    assert {"train_loss", "val_exam_auc", "val_slice_auc", "seconds"} <= set(metrics.columns)
    exams, slices = runs.read_predictions(tmp_path / "run")
    ds_exams = pd.read_parquet(easy / "exams.parquet")
    test = ds_exams[ds_exams.split == "test"]
    assert sorted(exams.exam_id) == sorted(test.exam_id) and len(slices) == test.n_slices.sum()
    assert exams.exam_score.between(0, 1).all() and slices.slice_score.between(0, 1).all()
    if supervision == "weak":
        sums = slices.groupby("exam_id").attention.sum()
        np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    else:   # strong: exam score = max slice probability; no trained attention
        top = slices.groupby("exam_id").slice_score.max()
        np.testing.assert_allclose(exams.set_index("exam_id").exam_score[top.index], top, rtol=1e-6)
        assert slices.attention.isna().all()
    status = runs.read_status(tmp_path / "run")
    assert status["state"] == "done" and status["progress"] == 1.0 and "finished" in status
    assert runs.read_labels(tmp_path / "run").kind.eq("exam" if supervision == "weak" else "slice").all()
    model = runs.load_model(tmp_path / "run")
    assert not model.training


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_result(easy, tmp_path):
    cfg = tiny(easy, supervision="weak", budget=10, seed=2, overrides={"train.augment": True})
    full = fit(cfg, tmp_path / "full")

    def kill_after_epoch_2(event):
        if event["phase"] == "val" and event["epoch"] == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", on_progress=kill_after_epoch_2)
    assert runs.read_status(tmp_path / "cut")["state"] == "cancelled"
    assert runs.read_metrics(tmp_path / "cut").epoch.tolist() == [1, 2]
    resumed = fit(None, tmp_path / "cut", resume=True)
    assert strip(resumed) == strip(full)
    a, b = runs.read_metrics(tmp_path / "full"), runs.read_metrics(tmp_path / "cut")
    cols = ["epoch", "train_loss", "val_exam_auc", "val_slice_auc", "lr"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    pa, pb = runs.read_predictions(tmp_path / "full")[1], runs.read_predictions(tmp_path / "cut")[1]
    pd.testing.assert_frame_equal(pa, pb)
    assert "last" not in runs.load_checkpoint(tmp_path / "cut")
    assert fit(None, tmp_path / "cut", resume=True) == resumed       # a finished run just reports


def test_cancel_marker_stops_between_epochs(easy, tmp_path):
    run = tmp_path / "run"
    out = fit(tiny(easy, budget=6), run, on_progress=lambda e: e["phase"] == "val" and runs.request_cancel(run))
    assert out["state"] == "cancelled" and out["epochs_run"] == 1
    st = runs.read_status(run)
    assert st["state"] == "cancelled" and st["error"] == "cancelled by the user"
    assert runs.load_checkpoint(run)["epoch"] == 1


def test_mixed_run_records_both_label_kinds(easy, tmp_path):
    out = fit(tiny(easy, supervision="mixed", budget=20, overrides={"train.slice_fraction": 0.6,
                                                                   "train.epochs": 2}), tmp_path / "mixed")
    labels = runs.read_labels(tmp_path / "mixed")
    assert set(labels.kind) == {"exam", "slice"} and out["n_labels"] <= 20 and out["state"] == "done"


# ------------------------------------------------------------------------------ fast path
def test_fast_path_trains_the_head_on_cached_embeddings(easy, tmp_path):
    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain"], "input_size": 64, "method": "test"})
    over = {"model.init": str(path), "model.finetune": "none", "train.epochs": 3}
    weak = fit(tiny(easy, overrides=over), tmp_path / "weak")
    strong = fit(tiny(easy, supervision="strong", overrides=over), tmp_path / "strong")
    assert weak["state"] == strong["state"] == "done"
    entries = list((tmp_path / "enc.pt.embeddings").glob("*/info.json"))
    assert len(entries) == 1                                # computed once, reused by the second run
    ckpt = runs.load_checkpoint(tmp_path / "weak")
    assert ckpt["encoder_ref"]["path"] == str(path.resolve())
    assert not any(k.startswith("encoder.") for k in ckpt["model"])   # head only: the encoder is the file
    model = runs.load_model(tmp_path / "weak")
    exams, slices = runs.read_predictions(tmp_path / "weak")
    assert math.isfinite(weak["test_exam_auc"]) and len(slices) > 0
    # the full-image model reproduces the fast-path predictions
    from ich.predict import predict_volume
    first = exams.exam_id.iloc[0]
    from ich.store import open_dataset
    hu, _ = open_dataset(easy).load(first)
    score, _ = predict_volume(tmp_path / "weak", hu, device="cpu")
    assert score == pytest.approx(float(exams.exam_score.iloc[0]), abs=1e-4)
    assert model.head.weight.shape == (1, 32)


def test_fast_path_standardises_embeddings_with_training_split_statistics(easy, tmp_path):
    """The head's inputs are z-scored with the mean/std of every training-split slice embedding, whatever the
    budget (no label is involved), and the statistics travel with the run's checkpoint."""
    from ich.embed import embed_dataset
    from ich.store import open_dataset

    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})
    over = {"model.init": str(path), "model.finetune": "none", "train.epochs": 1}
    fit(tiny(easy, budget=4, overrides=over), tmp_path / "run")
    ds = open_dataset(easy)
    emb, rows = embed_dataset(ds, enc, {"windows": ["brain"], "input_size": 64}, tmp_path / "enc.pt.embeddings")
    train = np.concatenate([np.arange(*rows[e]) for e in ds.exams.loc[ds.exams.split == "train", "exam_id"]])
    model = runs.load_model(tmp_path / "run")
    np.testing.assert_allclose(model.norm.mean.numpy(), emb[train].mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.norm.std.numpy(), emb[train].std(0, ddof=1), rtol=1e-3, atol=1e-5)
    z = model.norm(torch.from_numpy(np.asarray(emb[train])))
    assert z.mean(0).abs().max() < 1e-3 and (z.std(0) - 1).abs().max() < 1e-3


def test_fast_path_and_full_finetuning_write_the_same_run_folder(easy, tmp_path):
    """Same files, status/summary keys, metrics columns, labels and prediction rows; both reload and predict."""
    from ich.predict import predict_volume
    from ich.store import open_dataset

    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})
    for finetune in ("none", "all"):
        fit(tiny(easy, budget=8, overrides={"model.init": str(path), "model.finetune": finetune, "train.epochs": 1}),
            tmp_path / finetune)
    fast, full = tmp_path / "none", tmp_path / "all"
    assert sorted(p.name for p in fast.iterdir()) == sorted(p.name for p in full.iterdir())
    assert runs.read_status(fast).keys() == runs.read_status(full).keys()
    assert runs.read_status(fast)["summary"].keys() == runs.read_status(full)["summary"].keys()
    assert list(runs.read_metrics(fast).columns) == list(runs.read_metrics(full).columns)
    pd.testing.assert_frame_equal(runs.read_labels(fast), runs.read_labels(full))
    for got, want in zip(runs.read_predictions(fast), runs.read_predictions(full)):
        assert list(got.columns) == list(want.columns)
        pd.testing.assert_frame_equal(got[["exam_id"]], want[["exam_id"]])
    hu, _ = open_dataset(easy).load(runs.read_labels(fast)["exam_id"].iloc[0])
    for run in (fast, full):
        score, _ = predict_volume(run, hu, device="cpu")
        assert 0.0 <= score <= 1.0


def test_a_run_reloads_with_its_encoders_own_architecture(easy, tmp_path):
    """Fine-tuned from a mean-pooled encoder file (not the default pooling), the run still reloads without it."""
    from ich.predict import predict_volume
    from ich.store import open_dataset

    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16, pool="mean")
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})
    fit(tiny(easy, budget=8, overrides={"model.init": str(path), "model.finetune": "all", "train.epochs": 1}),
        tmp_path / "run")
    path.unlink()                                             # a full fine-tune run does not need the file
    assert runs.load_model(tmp_path / "run").encoder.pool == "mean"
    exams, _ = runs.read_predictions(tmp_path / "run")
    hu, _ = open_dataset(easy).load(exams.exam_id.iloc[0])
    score, _ = predict_volume(tmp_path / "run", hu, device="cpu")
    assert score == pytest.approx(float(exams.exam_score.iloc[0]), abs=1e-3)


def test_fast_path_refuses_a_mismatched_encoder(easy, tmp_path):
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    path = save_encoder(tmp_path / "enc.pt", enc, {"windows": ["brain"], "input_size": 32})
    cfg = tiny(easy, overrides={"model.init": str(path), "model.finetune": "none"})
    with pytest.raises(ValueError, match="input_size: file 32 vs config 64"):
        fit(cfg, tmp_path / "run")
    assert runs.read_status(tmp_path / "run")["state"] == "failed"


# ------------------------------------------------------------------------------ errors
def test_bad_budget_and_folders(easy, tmp_path):
    with pytest.raises(ValueError, match=r"the maximum is 16 exams"):
        fit(tiny(easy, budget=17), tmp_path / "big")
    st = runs.read_status(tmp_path / "big")
    assert st["state"] == "failed" and "the maximum is 16 exams" in st["error"]
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        fit(None, tmp_path / "nothing", resume=True)
    with pytest.raises(ValueError, match="different config"):
        fit(with_overrides(tiny(easy, budget=17), {"seed": 9}), tmp_path / "big", resume=True)
    with pytest.raises(FileNotFoundError, match="is not an ich dataset"):
        fit(make_config(str(tmp_path / "nods"), preset="tiny"), tmp_path / "r")


def test_a_run_that_failed_at_setup_neither_blocks_its_folder_nor_resumes_its_bad_config(easy, tmp_path):
    with pytest.raises(ValueError, match="the maximum is 16 exams"):
        fit(tiny(easy, budget=17), tmp_path / "run")
    with pytest.raises(ValueError, match="failed before its first epoch.*the maximum is 16 exams.*without --resume"):
        fit(None, tmp_path / "run", resume=True)
    assert runs.read_status(tmp_path / "run")["state"] == "failed"
    out = fit(tiny(easy, budget=4, overrides={"train.epochs": 1}), tmp_path / "run")    # the folder is reusable
    assert out["state"] == "done" and runs.read_config(tmp_path / "run").train.budget == 4
    with pytest.raises(FileExistsError, match="pass --resume to continue it"):         # a real run is kept
        fit(tiny(easy, budget=4), tmp_path / "run")


def test_cli_train_and_predict(easy, tmp_path, capsys):
    from ich.cli import main
    rc = main(["train", "--dataset", str(easy), "--preset", "tiny", "--budget", "8", "--epochs", "1",
               "--out", str(tmp_path / "cli"), "--quiet", "--threads", "1", "--set", "train.lr=0.002"])
    assert rc == 0 and runs.read_config(tmp_path / "cli").train.lr == 0.002
    assert main(["predict", str(tmp_path / "cli"), "--dataset", str(easy), "--split", "val"]) == 0
    assert (tmp_path / "cli" / "predictions-easy-val.parquet").is_file()
    capsys.readouterr()
    assert main(["train", "--dataset", str(easy), "--pooling", "maxx", "--out", str(tmp_path / "bad")]) == 2
    assert "did you mean 'max'" in capsys.readouterr().err
    assert main(["train", "--dataset", str(easy), "--set", "train.lr", "--out", str(tmp_path / "bad2")]) == 2
    assert "--set needs KEY=VALUE" in capsys.readouterr().err


# ------------------------------------------------------------------------------ paid validation
def paid(easy, **kw):
    """The default recipe's validation (paid, learning-rate grid) on the tiny preset's model."""
    overrides = {"train.validation": "paid", "train.lr_factors": [0.5, 1.0], "train.epochs": 3,
                 "train.val_min_per_class": 2, **kw.pop("overrides", {})}
    return tiny(easy, overrides=overrides, **kw)


@pytest.mark.parametrize("supervision, kind, budget", [("weak", "exam", 16), ("strong", "slice", 40)])
def test_hold_out_validation_splits_the_bought_labels(easy, supervision, kind, budget):
    from ich.data import hold_out_validation, select_labels
    from ich.store import open_dataset

    ds = open_dataset(easy)
    bought = select_labels(ds.exams, ds.slices, supervision=supervision, budget=budget, seed=1)
    train, held = hold_out_validation(bought, ds.exams, ds.slices, fraction=0.25, min_per_class=2, seed=1)
    assert held.mode == "paid" and held.kind == kind
    assert train.n_labels + held.n_labels == bought.n_labels == budget   # held-out labels stay in the budget
    if kind == "exam":
        assert not set(held.exam_ids) & set(train.exam_ids) and set(held.exam_ids) <= set(bought.exam_ids)
        y = ds.exams.set_index("exam_id").loc[held.exam_ids, "label"]
    else:
        key = lambda df: set(zip(df["exam_id"], df["index"]))           # noqa: E731
        assert not key(held.slices) & key(train.slices) and key(held.slices) <= key(bought.slices)
        y = ds.slices.set_index(["exam_id", "index"])["label"].loc[list(key(held.slices))]
    assert (y == 1).sum() >= 2 and (y == 0).sum() >= 2


def test_too_few_labels_use_the_label_free_schedule(easy, tmp_path):
    out = fit(paid(easy, budget=4), tmp_path / "run")
    assert out["validation"] == "none" and out["val_labels"] == 0 and out["train_labels"] == 4
    assert out["criterion"] == "last_epoch" and out["lr_factor"] == 1.0
    assert out["best_epoch"] == out["epochs_run"] == 3                   # one learning rate, the last epoch kept
    assert "label-free schedule" in out["selection"]
    assert "val_exam_auc" not in runs.read_metrics(tmp_path / "run").columns   # no label outside the budget


def test_paid_validation_is_recorded_and_counted(easy, tmp_path):
    out = fit(paid(easy, budget=16), tmp_path / "run")
    assert out["validation"] == "paid" and out["val_label_kind"] == "exam"
    assert out["n_labels"] == 16 and out["train_labels"] + out["val_labels"] == 16 and out["val_labels"] >= 4
    labels = runs.read_labels(tmp_path / "run")
    assert labels["use"].value_counts().to_dict() == {"train": out["train_labels"], "val": out["val_labels"]}
    metrics = runs.read_metrics(tmp_path / "run")
    assert metrics["lr_factor"].tolist() == [0.5] * 3 + [1.0] * 3          # every learning rate of the grid ran
    assert out["lr"] == pytest.approx(3e-3 * out["lr_factor"])
    assert runs.read_config(tmp_path / "run").train.validation == "paid"


def test_free_validation_counts_the_val_split(easy, tmp_path):
    from ich.store import open_dataset

    out = fit(paid(easy, budget=16, overrides={"train.validation": "free"}), tmp_path / "run")
    ex = open_dataset(easy).exams
    assert out["validation"] == "free" and out["train_labels"] == 16
    assert out["val_labels"] == int(((ex["split"] == "val") & ex["label"].notna()).sum())


@pytest.mark.parametrize("supervision, budget", [("weak", 16), ("strong", 40)])
def test_model_selection_never_reads_the_test_split(easy, tmp_path, supervision, budget):
    """Flip every test label: the chosen learning rate and epoch, and every validation number, stay the same."""
    import shutil

    flipped = tmp_path / "flipped"
    shutil.copytree(easy, flipped)
    ex, sl = pd.read_parquet(flipped / "exams.parquet"), pd.read_parquet(flipped / "slices.parquet")
    test_ids = set(ex.loc[ex["split"] == "test", "exam_id"])
    ex.loc[ex["split"] == "test", "label"] = 1 - ex.loc[ex["split"] == "test", "label"]
    sl.loc[sl["exam_id"].isin(test_ids), "label"] = 1 - sl.loc[sl["exam_id"].isin(test_ids), "label"]
    ex.to_parquet(flipped / "exams.parquet", index=False)
    sl.to_parquet(flipped / "slices.parquet", index=False)
    a = fit(paid(easy, supervision=supervision, budget=budget), tmp_path / "a")
    b = fit(with_overrides(paid(easy, supervision=supervision, budget=budget), {"data.dataset": str(flipped)}),
            tmp_path / "b")
    assert a["validation"] == "paid"
    for key in ("best_epoch", "lr_factor", "val_exam_auc", "val_slice_auc", "selection"):
        assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key
    cols = [c for c in runs.read_metrics(tmp_path / "a").columns if c != "seconds"]
    pd.testing.assert_frame_equal(runs.read_metrics(tmp_path / "a")[cols], runs.read_metrics(tmp_path / "b")[cols])
    assert a["test_exam_auc"] == pytest.approx(1 - b["test_exam_auc"])    # the test split itself did change


def test_kill_and_resume_inside_the_learning_rate_grid(easy, tmp_path):
    cfg = paid(easy, budget=16)
    full = fit(cfg, tmp_path / "full")

    def kill_in_second_rate(event):
        if event["phase"] == "val" and event["epoch"] == 4:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut", on_progress=kill_in_second_rate)
    resumed = fit(None, tmp_path / "cut", resume=True)
    assert strip(resumed) == strip(full)
    pd.testing.assert_frame_equal(runs.read_predictions(tmp_path / "full")[1], runs.read_predictions(tmp_path / "cut")[1])


def test_old_run_configs_keep_their_free_validation(easy, tmp_path):
    import json

    fit(tiny(easy, budget=6, overrides={"train.epochs": 1}), tmp_path / "old")
    p = tmp_path / "old" / "config.json"
    d = json.loads(p.read_text())
    for key in ("validation", "lr_factors", "val_fraction", "val_min_per_class"):
        d["train"].pop(key)
    d["train"].pop("steps_per_epoch")
    p.write_text(json.dumps(d))
    cfg = runs.read_config(tmp_path / "old")
    assert cfg.train.validation == "free" and cfg.train.lr_factors == (1.0,) and cfg.train.steps_per_epoch is None

# ------------------------------------------------------------------------------ reliability
def _cancelled_after_epoch_1(easy, run, epochs=8):
    cfg = tiny(easy, budget=6, overrides={"train.epochs": epochs})
    fit(cfg, run, on_progress=lambda e: e["phase"] == "val" and runs.request_cancel(run))
    assert runs.read_metrics(run).epoch.tolist() == [1]


_AT_BARRIER = """import os, sys, time
ready, go = sys.argv[1], sys.argv[2]
from ich.cli import main
import ich.train
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
sys.exit(main(sys.argv[3:]))
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def test_two_resumes_of_one_run_one_proceeds(easy, tmp_path):
    """Two `train --resume` of one run started at the same instant (a barrier file): exactly one trains."""
    run = tmp_path / "run"
    _cancelled_after_epoch_1(easy, run)
    procs = [subprocess.Popen([sys.executable, "-c", _AT_BARRIER, str(tmp_path / f"ready{i}"), str(tmp_path / "go"),
                               "train", "--resume", "--out", str(run), "--quiet"], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in (0, 1)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    rcs = [p.returncode for p in procs]
    assert sorted(rcs) == [0, 2], outs
    winner = procs[rcs.index(0)].pid
    loser_err = outs[rcs.index(2)][1]
    assert f"being written by another process (pid {winner})" in loser_err and "Traceback" not in loser_err
    assert runs.read_metrics(run).epoch.tolist() == list(range(1, 9))       # strictly increasing, no repeat
    assert runs.read_status(run)["state"] == "done"


def test_sigterm_stops_training_like_ctrl_c(easy, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ich", "train", "--dataset", str(easy), "--preset", "tiny",
                             "--epochs", "40", "--out", str(run), "--quiet", "--threads", "1"], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while runs.read_metrics(run).empty and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert runs.read_status(run)["state"] == "cancelled"
    assert not list(run.glob(".*tmp*"))
    fit(None, run, resume=True)                              # and it resumes (the lock went with the process)
    assert runs.read_status(run)["state"] == "done"


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (needs root and mount; skipped otherwise): smaller than one resumable checkpoint."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {err}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_a_full_disk_fails_the_run_with_one_line_and_no_temp_files(easy, small_disk):
    run = small_disk / "run"
    with pytest.raises(RuntimeError, match="is full .*no space left on device.*checkpoint.pt"):
        fit(tiny(easy, budget=6, overrides={"train.epochs": 2}), run)
    st = runs.read_status(run)
    assert st["state"] == "failed" and "is full" in st["error"] and "\n" not in st["error"]
    assert not list(run.glob(".*tmp*")) and not runs.has_checkpoint(run)


@pytest.mark.parametrize("content", ["crafted", "empty", "random"])
def test_evaluate_refuses_a_crafted_or_damaged_checkpoint(tiny_dataset, tmp_path, capsys, content):
    """`ich evaluate RUN` on a phantom with masks loads the model (pixel scores): the checkpoint is read."""
    from ich.cli import main

    run, marker = tmp_path / "run", tmp_path / "MARKER"
    fit(tiny(tiny_dataset, budget=4, overrides={"train.epochs": 1}), run)

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = {"crafted": pickle.dumps({"kind": runs.CHECKPOINT_KIND, "x": RunsCode()}), "empty": b"",
            "random": np.random.default_rng(0).bytes(20000)}[content]
    (run / runs.CHECKPOINT_FILE).write_bytes(data)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.count("\n") == 1 and err.startswith("error:") and "checkpoint.pt" in err
    if content == "crafted":
        assert "--trust-checkpoint" in err


def test_trust_checkpoint_flag_converts_an_old_checkpoint(tiny_dataset, tmp_path, capsys):
    from ich.cli import main

    run = tmp_path / "run"
    fit(tiny(tiny_dataset, budget=4, overrides={"train.epochs": 1}), run)
    ckpt = runs.load_checkpoint(run)
    ckpt["best"] = {k: np.float64(v) if isinstance(v, float) else v for k, v in ckpt["best"].items()}
    torch.save(ckpt, run / runs.CHECKPOINT_FILE)               # numpy scalars, as an older writer left them
    assert main(["evaluate", str(run)]) == 2 and "--trust-checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--trust-checkpoint"]) == 0
    assert runs.load_checkpoint(run)["best"]["epoch"] == 1
