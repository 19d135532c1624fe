"""Studies: spec validation and locking, cell order, a tiny study end to end, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ich import runs
from ich.study import (STUDY_PRESETS, Cell, StudyConfig, cell_config, check_budgets, make_study, plan_cells,
                       read_events, read_progress, read_study, reference_repeats, resolve_study, run_study,
                       summarise_study)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A random compact encoder file (64 px, D=32, width 16): the fast path's frozen start."""
    import torch

    from ich.models import build_encoder, save_encoder

    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    return save_encoder(tmp_path_factory.mktemp("enc") / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})


def tiny_spec(dataset, encoder) -> StudyConfig:
    return make_study("tiny", dataset=str(dataset), init=str(encoder))


# ------------------------------------------------------------------------------ spec
def test_spec_round_trip_and_defaults():
    spec = make_study("quick", dataset="/x")
    assert spec.budgets == (12, 24, 48, 96, 192) and spec.seeds == tuple(range(10))
    assert spec.supervisions == ("weak", "strong") and spec.finetune == "none"
    assert StudyConfig.from_json(spec.to_json()) == spec
    assert spec.overrides == ()    # the quick study uses the one recipe: no run override of its own


def test_make_study_fields_override_preset():
    spec = make_study("quick", dataset="/x", budgets=[8, 4], seeds=[3], overrides={"train.lr": 0.01})
    assert spec.budgets == (4, 8) and spec.seeds == (3,)
    assert dict(spec.overrides) == {"train.lr": 0.01}


def test_unknown_study_key():
    with pytest.raises(ValueError, match="did you mean 'budgets'"):
        StudyConfig.from_dict({"budget": [1, 2]})


def test_bad_supervision():
    with pytest.raises(ValueError, match="did you mean 'strong'"):
        StudyConfig(supervisions=("weak", "strnog"))


def test_mixed_needs_inner_fractions():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        StudyConfig(supervisions=("mixed",), slice_fractions=(0.0,))


def test_repeated_budget():
    with pytest.raises(ValueError, match="must not repeat"):
        StudyConfig(budgets=(12, 12))


def test_override_of_a_grid_field():
    with pytest.raises(ValueError, match="the study grid sets it"):
        StudyConfig(overrides={"train.budget": 3})


def test_unknown_study_preset():
    with pytest.raises(ValueError, match="did you mean 'quick'"):
        make_study("quik")


# ------------------------------------------------------------------------------ cells
def test_cells_give_every_budget_its_first_seed_first():
    spec = StudyConfig(supervisions=("weak", "strong", "mixed"), budgets=(12, 24, 48), seeds=(0, 1, 2),
                       slice_fractions=(0.25,))
    cells = plan_cells(spec)
    assert len(cells) == 3 * 3 * 3
    assert [c.name for c in cells[:3]] == ["weak-m12-s0", "strong-m12-s0", "mixed-f0.25-m12-s0"]
    first_seed1 = next(i for i, c in enumerate(cells) if c.seed == 1)
    assert {c.budget for c in cells[:first_seed1]} == {12, 24, 48}
    assert all(c.seed == 0 for c in cells[:first_seed1])
    assert len({c.name for c in cells}) == len(cells)


def test_label_noise_makes_an_arm_only_where_it_touches_a_bought_label():
    spec = make_study("quick", dataset="/x", init="random", supervisions=["weak", "strong", "mixed"],
                      label_noise=["clean", "exam=0.9/0.97"])
    assert spec.label_noise == ("", "exam=0.9/0.97")
    assert [(a, n) for a, _, _, n, _ in spec.arm_table] == [
        ("weak", ""), ("strong", ""), ("mixed-f0.5", ""), ("weak-exam-sens90-spec97", "exam=0.9/0.97"),
        ("mixed-f0.5-exam-sens90-spec97", "exam=0.9/0.97")]        # strong buys no exam label: no noisy twin
    cells = plan_cells(spec)
    assert {c.label_noise for c in cells if c.arm.startswith("weak-")} == {"exam=0.9/0.97"}
    assert len({c.name for c in cells}) == len(cells) and not any("/" in c.name for c in cells)
    assert StudyConfig.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="twice"):
        make_study("quick", dataset="/x", label_noise=["", "clean"])
    with pytest.raises(ValueError, match="train.label_noise"):
        make_study("quick", dataset="/x", overrides={"train.label_noise": "exam=0.9/0.9"})
    with pytest.raises(ValueError, match="between 0.5 and 1"):
        make_study("quick", dataset="/x", label_noise=["exam=0.2/0.9"])


def test_acquisition_strategies_make_weak_and_strong_arms():
    spec = make_study("acquisition", dataset="/x", init="random", supervisions=["weak", "strong", "mixed"])
    assert [(a, s) for a, _, _, _, s in spec.arm_table] == [
        ("weak", "random"), ("strong", "random"), ("mixed-f0.5", "random"), ("weak-uncertainty", "uncertainty"),
        ("strong-uncertainty", "uncertainty"), ("weak-coreset", "coreset"), ("strong-coreset", "coreset"),
        ("strong-attention", "attention")]      # attention picks slice labels: strong only
    assert {c.acquisition for c in plan_cells(spec) if c.arm == "strong-coreset"} == {"coreset"}
    both = make_study("acquisition", dataset="/x", supervisions=["weak"], label_noise=["", "exam=0.9/0.9"])
    assert [a for a, *_ in both.arm_table] == ["weak", "weak-exam-sens90-spec90", "weak-uncertainty",
                                               "weak-exam-sens90-spec90-uncertainty", "weak-coreset",
                                               "weak-exam-sens90-spec90-coreset"]     # the two axes cross
    assert {c.label_noise for c in plan_cells(both) if c.arm == "weak-exam-sens90-spec90-coreset"} == {"exam=0.9/0.9"}
    assert StudyConfig.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="uncertainty"):
        make_study("quick", dataset="/x", acquisition=["entropy"])
    with pytest.raises(ValueError, match="train.acquisition"):
        make_study("quick", dataset="/x", overrides={"train.acquisition": "coreset"})


def test_an_acquisition_arm_runs_as_a_study_cell(tiny_dataset, encoder_file, tmp_path):
    spec = make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), supervisions=["weak"], budgets=[8],
                      seeds=[0], acquisition=["random", "uncertainty"], pixel_slices=0,
                      overrides={"train.rounds": 2, "train.epochs": 2})
    cells, _ = run_study(spec, tmp_path / "s", executor="inline")
    assert list(cells["arm"]) == ["weak", "weak-uncertainty"] and (cells["state"] == "done").all()
    assert list(cells["acquisition"]) == ["random", "uncertainty"] and (cells["n_labels"] == 8).all()
    assert (tmp_path / "s" / "runs" / "weak-uncertainty-m8-s0" / "rounds" / "round-1").is_dir()


def test_a_noisy_arm_trains_on_noisy_labels_and_is_summarised_as_such(tiny_dataset, encoder_file, tmp_path):
    spec = make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), supervisions=["weak"], budgets=[8],
                      seeds=[0], label_noise=["", "exam=0.5/0.5"], pixel_slices=0)
    cells, aggregate = run_study(spec, tmp_path / "s", executor="inline")
    assert list(cells["arm"]) == ["weak", "weak-exam-sens50-spec50"] and (cells["state"] == "done").all()
    assert list(cells["label_noise"].fillna("")) == ["", "exam=0.5/0.5"]
    noisy, clean = (runs.read_status(tmp_path / "s" / "runs" / f"{a}-m8-s0")["summary"]
                    for a in ("weak-exam-sens50-spec50", "weak"))
    y = runs.read_labels(tmp_path / "s" / "runs" / "weak-exam-sens50-spec50-m8-s0")["clean_label"].astype(int)
    half = int(np.floor((y == 1).sum() / 2 + 0.5)) + int(np.floor((y == 0).sum() / 2 + 0.5))   # of the 8, exactly
    assert noisy["wrong_labels"] == half > 0 and clean["wrong_labels"] == 0
    csv = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert set(csv.loc[csv["row"] == "mean", "label_noise"].fillna("")) == {"", "exam=0.5/0.5"}


def test_reference_repeats_follow_the_paper():
    assert [reference_repeats(m) for m in (12, 252, 520, 796, 1000, 10000, 17000)] == [20, 20, 15, 10, 10, 6, 1]
    spec = make_study("reference", dataset="/x", init="random")
    cells = plan_cells(spec)
    per_learner = sum(1 for c in cells if c.supervision == "weak")
    assert per_learner == 241          # paper-protocol.md §7.2: 10*20 + 15 + 2*10 + 6 (+ 1 full-data run, not a budget)


def test_cell_config_takes_the_encoder_files_settings(tiny_dataset, encoder_file):
    spec, info = resolve_study(tiny_spec(tiny_dataset, encoder_file))
    assert info["checksum"] and Path(spec.init).is_absolute()
    cfg = cell_config(spec, Cell("strong", "strong", 8, 1, None))
    assert cfg.model.finetune == "none" and cfg.model.embed_dim == 32 and cfg.model.width == 16
    assert cfg.data.input_size == 64 and cfg.train.budget == 8 and cfg.seed == 1 and cfg.preset == "tiny"


def test_infeasible_budget_is_named(tiny_dataset, encoder_file):
    spec = make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), budgets=[4, 500])
    spec, _ = resolve_study(spec)
    with pytest.raises(ValueError, match="cannot buy its largest budget.*500"):
        check_budgets(spec)


def test_missing_dataset():
    with pytest.raises(ValueError, match="needs a dataset"):
        resolve_study(StudyConfig())


def test_dry_run_prints_cells(tiny_dataset, encoder_file, tmp_path, capsys):
    from ich.cli import main

    rc = main(["study", "--preset", "tiny", "--dataset", str(tiny_dataset), "--init", str(encoder_file),
               "--seeds", "1", "--out", str(tmp_path / "s"), "--dry-run"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["cells"] == ["weak-m4-s0", "strong-m4-s0", "weak-m8-s0", "strong-m8-s0"]
    assert not (tmp_path / "s").exists()


def test_refuses_a_folder_that_is_not_a_study(tiny_dataset, encoder_file, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a study folder"):
        run_study(tiny_spec(tiny_dataset, encoder_file), tmp_path, executor="inline")


def test_invalid_cell_config_leaves_no_folder(tiny_dataset, tmp_path):
    spec = make_study("tiny", dataset=str(tiny_dataset), init="random", finetune="none")
    with pytest.raises(ValueError, match="only useful for a pretrained encoder"):
        run_study(spec, tmp_path / "s", executor="inline")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------ end to end, kill and resume
@pytest.fixture(scope="module")
def killed_then_resumed(tiny_dataset, encoder_file, tmp_path_factory):
    """Start the tiny study (2 budgets x 2 seeds x weak/strong) from the CLI with one worker, kill its
    process group after 2 finished cells, then resume it in-process with the local executor (2 workers).

    The CLI run is pinned to one CPU, so its cells use 1 torch thread, as the resumed threads (on 2
    cores) and the inline run do: float sums over 2 threads are ordered otherwise (seen: 1e-7 in a loss)."""
    out = tmp_path_factory.mktemp("study") / "s"
    cmd = [sys.executable, "-m", "ich", "study", "--preset", "tiny", "--dataset", str(tiny_dataset), "--init",
           str(encoder_file), "--out", str(out), "--workers", "1", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    one_cpu = {min(os.sched_getaffinity(0))}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=lambda: os.sched_setaffinity(0, one_cpu))
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if read_progress(out).get("done", 0) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the study ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    before = {c.name: runs.read_status(out / "runs" / c.name).get("finished")
              for c in plan_cells(read_study(out)[0]) if (out / "runs" / c.name / "status.json").is_file()
              and runs.read_status(out / "runs" / c.name).get("state") == "done"}
    t0 = time.perf_counter()
    cells, aggregate = run_study(tiny_spec(tiny_dataset, encoder_file), out, executor="local", workers=2)
    return out, before, cells, aggregate, time.perf_counter() - t0


@pytest.mark.slow
def test_resume_after_kill_loses_no_cell_and_reruns_none(killed_then_resumed):
    out, before, cells, aggregate, _ = killed_then_resumed
    assert len(before) >= 2
    assert (cells["state"] == "done").all() and len(cells) == 8
    done_events = [e["cell"] for e in read_events(out) if e["event"] == "done"]
    assert sorted(done_events) == sorted(cells["run"].map(lambda r: Path(r).name)), "a cell ran twice or never"
    for name, finished in before.items():   # cells finished before the kill were not retrained
        assert runs.read_status(out / "runs" / name)["finished"] == finished
    progress = read_progress(out)
    assert progress["state"] == "done" and progress["done"] == progress["total"] == 8 and progress["running"] == 0


@pytest.mark.slow
def test_cells_give_the_same_numbers_in_threads_after_a_kill_as_inline(killed_then_resumed, tiny_dataset,
                                                                         encoder_file, tmp_path):
    """The resumed study ran its fast-path cells two at a time in threads of one process (the CPU default);
    dropout and initial weights must not leak between them, so every epoch matches a one-by-one run."""
    out = killed_then_resumed[0]
    assert {e.get("pid") for e in read_events(out) if e["event"] == "done" and e.get("t", 0) > 0} - {None}
    run_study(tiny_spec(tiny_dataset, encoder_file), tmp_path / "inline", executor="inline")

    def epochs(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    for run in sorted((out / "runs").iterdir()):
        assert epochs(run) == epochs(tmp_path / "inline" / "runs" / run.name), run.name


@pytest.mark.slow
def test_sigterm_stops_cells_running_in_threads_cleanly(tiny_dataset, encoder_file, tmp_path):
    """`jobs cancel` sends SIGTERM: the cells running in the study's threads stop at their epoch's end, the
    process exits within seconds and without a C++ abort, and the study is marked cancelled."""
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "ich", "study", "--preset", "tiny", "--dataset", str(tiny_dataset), "--init",
           str(encoder_file), "--out", str(out), "--workers", "2", "--set", "train.epochs=400", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and read_progress(out).get("running", 0) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    time.sleep(0.5)                                  # both cells are inside their epochs
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 15
    assert "terminate called" not in err.decode() and proc.returncode in (130, 143), err.decode()[-2000:]
    assert read_progress(out)["state"] == "cancelled"
    states = [runs.read_status(r).get("state") for r in (out / "runs").iterdir()]
    assert states.count("cancelled") == 2, states


@pytest.mark.slow
def test_summary_has_cells_and_means(killed_then_resumed):
    out, _, cells, aggregate, _ = killed_then_resumed
    csv = pd.read_csv(out / "summary.csv")
    assert (csv["row"] == "cell").sum() == 8 and (csv["row"] == "mean").sum() == 4
    assert set(aggregate["n_seeds"]) == {2}
    for stat in ("exam_auc", "slice_auc", "sequence_f1", "pixel_dice"):
        assert cells[stat].notna().all(), stat
        means = cells.groupby(["arm", "budget"])[stat].mean()
        got = aggregate.set_index(["arm", "budget"])[stat]
        assert got.loc[means.index].to_numpy() == pytest.approx(means.to_numpy())
        assert ((aggregate[f"{stat}_ci_low"] <= aggregate[stat] + 1e-12) &
                (aggregate[stat] <= aggregate[f"{stat}_ci_high"] + 1e-12)).all()
    assert (cells["n_labels"] == cells["budget"]).all()
    again, _ = summarise_study(out)
    pd.testing.assert_frame_equal(again, cells)


@pytest.mark.slow
def test_finished_study_reruns_nothing_and_refuses_another_spec(killed_then_resumed, tiny_dataset, encoder_file):
    out, _, cells, _, _ = killed_then_resumed
    n_events = len(read_events(out))
    run_study(tiny_spec(tiny_dataset, encoder_file), out, executor="inline")
    assert len(read_events(out)) == n_events
    other = make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), budgets=[4, 6])
    with pytest.raises(ValueError, match="another spec.*budgets"):
        run_study(other, out, executor="inline")


def test_study_presets_are_valid():
    for name in STUDY_PRESETS:
        make_study(name, dataset="/x", init="random")
