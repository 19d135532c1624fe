"""Robustness sweeps: variant overrides read from the cells' configs, resume of a half-run sweep, the verdict."""

from __future__ import annotations

import json
import re
import sys

import pandas as pd
import pytest

from ich.planner import CostModel
from ich.robustness import (VARIANT_NAMES, has_robustness, one_pass_steps, plan_variants, read_record,
                            robustness_dir, run_robustness, study_verdict, verdict)
from ich.study import cell_config, make_study, plan_cells, read_events, resolve_study


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A random compact encoder file (64 px, D=32, width 16): the fast path's frozen start."""
    import torch

    from ich.models import build_encoder, save_encoder

    torch.manual_seed(0)
    enc = build_encoder("compact", in_channels=1, embed_dim=32, width=16)
    return save_encoder(tmp_path_factory.mktemp("enc") / "enc.pt", enc, {"windows": ["brain"], "input_size": 64})


# ------------------------------------------------------------------------------ variant overrides
def test_variant_overrides_are_read_from_the_cell_config(tiny_dataset, encoder_file):
    spec, _ = resolve_study(make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), overrides={
        "train.lr": 0.006, "train.patience": 5, "train.steps_per_epoch": 6}))
    plans = {p.name: p for p in plan_variants(spec)}
    assert list(plans) == list(VARIANT_NAMES)
    ov = {name: dict(p.overrides) for name, p in plans.items()}
    assert ov["lr-third"] == {"train.lr": 0.002} and ov["lr-triple"] == {"train.lr": 0.018}
    assert ov["patience-half"] == {"train.patience": 3} and ov["patience-double"] == {"train.patience": 10}
    assert ov["steps-half"] == {"train.steps_per_epoch": 3} and ov["steps-double"] == {"train.steps_per_epoch": 12}
    base = cell_config(spec, plan_cells(spec)[0])
    flipped = {"softmax": "sparsemax", "sparsemax": "softmax"}[base.model.attention_activation]
    assert ov["attention-flip"] == {"model.attention_activation": flipped}
    assert ov["loss-flip"] == {"train.loss": "focal" if base.train.loss == "bce" else "bce"}
    # one study folder per variant, with the study's own overrides kept under the change
    (part, sub), = plans["lr-third"].parts
    assert part == "" and sub.budgets == spec.budgets and sub.seeds == spec.seeds and sub.init == spec.init
    cfg = cell_config(sub, plan_cells(sub)[-1])
    assert cfg.train.lr == 0.002 and cfg.train.epochs == 3 and cfg.train.steps_per_epoch == 6


def test_missing_patience_tries_early_stopping_and_one_pass_steps_are_per_cell(tiny_dataset, encoder_file):
    spec, _ = resolve_study(make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file)))
    assert cell_config(spec, plan_cells(spec)[0]).train.patience is None     # the tiny run preset
    assert cell_config(spec, plan_cells(spec)[0]).train.steps_per_epoch is None
    plans = {p.name: p for p in plan_variants(spec, ["patience-half", "steps-half", "steps-double"])}
    # no early stopping in the recipe: the variants stop after a quarter (half) of the 3 epochs
    assert dict(plans["patience-half"].overrides) == {"train.patience": 1} and not plans["patience-half"].skipped
    # one pass: weak 4 exams / 4 per step = 1 step, weak 8 = 2, strong 4 or 8 slices / 32 per step = 1
    steps = {c.name: one_pass_steps(cell_config(spec, c)) for c in plan_cells(spec)}
    assert steps == {"weak-m4-s0": 1, "strong-m4-s0": 1, "weak-m8-s0": 2, "strong-m8-s0": 1,
                     "weak-m4-s1": 1, "strong-m4-s1": 1, "weak-m8-s1": 2, "strong-m8-s1": 1}
    assert dict(plans["steps-half"].overrides) == {"train.steps_per_epoch": 1}       # the same for every cell
    double = plans["steps-double"]
    assert double.overrides == () and [p for p, _ in double.parts] == ["weak-m4", "strong-m4", "weak-m8", "strong-m8"]
    for part, sub in double.parts:
        assert sub.seeds == (0, 1) and len(sub.supervisions) == 1 and len(sub.budgets) == 1
        want = 4 if part == "weak-m8" else 2
        assert all(cell_config(sub, c).train.steps_per_epoch == want for c in plan_cells(sub))


def test_unknown_variant_is_refused(tiny_dataset, encoder_file, tmp_path):
    spec, _ = resolve_study(make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file)))
    with pytest.raises(ValueError, match="did you mean 'lr-third'"):
        plan_variants(spec, ["lr-thrid"])
    with pytest.raises(ValueError, match="unknown robustness variant"):
        run_robustness(spec, tmp_path / "s", variants=["lr-thrid"], executor="inline")
    assert not (tmp_path / "s").exists()       # refused before the base study started


# ------------------------------------------------------------------------------ a sweep, half run then resumed
def _starts(study) -> list[str]:
    return [e["cell"] for e in read_events(study) if e.get("event") == "start"]


@pytest.fixture(scope="module")
def half_then_resumed(tiny_dataset, encoder_file, tmp_path_factory):
    """A 2-cell tiny study with one variant run, one variant cell deleted, then resumed with a second variant."""
    out = tmp_path_factory.mktemp("rob") / "studies" / "s"     # <data root>/studies/s: the Results page finds it
    spec = make_study("tiny", dataset=str(tiny_dataset), init=str(encoder_file), budgets=[8], seeds=[0],
                      overrides={"train.epochs": 2})
    seen = []
    run_robustness(spec, out, variants=["lr-triple"], executor="inline", on_progress=seen.append)
    first = {"base": _starts(out), "lr": _starts(robustness_dir(out) / "lr-triple")}
    import shutil

    shutil.rmtree(robustness_dir(out) / "lr-triple" / "runs" / "strong-m8-s0")   # as if killed before it ran
    run_robustness(spec, out, variants=["lr-triple", "loss-flip"], executor="inline")
    return out, first, seen


@pytest.mark.slow
def test_variants_run_after_the_base_study(half_then_resumed):
    out, first, seen = half_then_resumed
    assert first == {"base": ["weak-m8-s0", "strong-m8-s0"], "lr": ["weak-m8-s0", "strong-m8-s0"]}
    firsts = [i for i, p in enumerate(seen) if p.get("variant")]
    assert firsts and all(p.get("variant") is None for p in seen[:firsts[0]])
    assert seen[firsts[0] - 1]["state"] == "done"                 # the base answer is complete first
    assert json.loads((out / "progress.json").read_text())["total"] == 2   # the base study's progress is its own


@pytest.mark.slow
def test_resume_skips_finished_cells(half_then_resumed):
    out, first, _ = half_then_resumed
    assert _starts(out) == first["base"]                                  # the base study: nothing rerun
    assert _starts(robustness_dir(out) / "lr-triple") == ["weak-m8-s0", "strong-m8-s0", "strong-m8-s0"]
    assert _starts(robustness_dir(out) / "loss-flip") == ["weak-m8-s0", "strong-m8-s0"]
    cfg = json.loads((robustness_dir(out) / "lr-triple" / "runs" / "weak-m8-s0" / "config.json").read_text())
    assert cfg["train"]["lr"] == pytest.approx(3 * 3e-3) and cfg["train"]["epochs"] == 2
    assert [v["name"] for v in read_record(out)["variants"]] == ["lr-triple", "loss-flip"]


@pytest.mark.slow
def test_study_verdict_plan_command_and_report(half_then_resumed, capsys):
    from ich.cli import main
    from ich.report import build_report

    out, _, _ = half_then_resumed
    assert has_robustness(out)
    v = study_verdict(out, CostModel(), 0.5)
    assert [o.state for o in v.variants] == ["done", "done"]
    assert "under every recipe tried" in v.sentence or "flip it" in v.sentence
    assert main(["plan", str(out), "--target", "0.5"]) in (0, 1)
    printed = capsys.readouterr().out
    assert "robustness: " + v.sentence in printed and "learning rate ×3" in printed
    html = build_report(out, targets=[0.5], n_boot=20)
    assert "Robustness of the answer" in html and "loss flipped" in html


# ------------------------------------------------------------------------------ the verdict, checked by hand
def _agg(points: dict) -> pd.DataFrame:
    """{(arm, budget): mean AUC} -> an aggregate table (CI +-0.05 around the mean)."""
    rows = [{"arm": a, "supervision": a, "slice_fraction": float("nan"), "budget": b, "exam_auc": m,
             "exam_auc_ci_low": m - 0.05, "exam_auc_ci_high": m + 0.05} for (a, b), m in points.items()]
    return pd.DataFrame(rows)


# default cost: an exam label 60 s, a slice label 5 s, 200 USD/h -> weak 24 = 80 USD, strong 192 = 53 USD
BASE = {("weak", 12): 0.80, ("weak", 24): 0.90, ("weak", 48): 0.93, ("strong", 96): 0.70, ("strong", 192): 0.80}


def _done(name, label, points):
    return {"name": name, "label": label, "change": "x", "state": "done", "aggregate": _agg(points)}


def test_same_plan_under_every_recipe():
    v = verdict(_agg(BASE), [_done("lr-third", "learning rate ×⅓", {**BASE, ("weak", 24): 0.88}),
                             _done("loss-flip", "loss flipped (BCE ↔ focal)", BASE)], CostModel(), 0.85)
    assert (v.base.arm, v.base.budget, round(v.base.cost)) == ("weak", 24, 80)
    assert v.robust and v.flipped == []
    assert v.sentence == ("The cheapest plan for exam AUC ≥ 0.85 (mean over seeds) is weak, 24 exam labels "
                          "(24 annotator-minutes, 80 USD) under every recipe tried (2 of them).")
    assert [r["flips?"] for r in v.rows()] == ["", "no", "no"]


def test_a_variant_that_flips_the_arm_is_named():
    arm = {**BASE, ("strong", 192): 0.88}                        # strong 192 (53 USD) now beats weak 24 (80 USD)
    budget = {**BASE, ("weak", 24): 0.84}                        # weak still, but 48 labels (160 USD)
    v = verdict(_agg(BASE), [_done("lr-third", "learning rate ×⅓", BASE),
                             _done("lr-triple", "learning rate ×3", arm),
                             _done("loss-flip", "loss flipped (BCE ↔ focal)", budget)], CostModel(), 0.85)
    assert [o.flip for o in v.variants] == ["", "arm changes", "same arm, budget changes"]
    assert [o.name for o in v.flipped] == ["lr-triple", "loss-flip"] and not v.robust
    assert v.sentence == (
        "The cheapest plan for exam AUC ≥ 0.85 (mean over seeds) is weak, 24 exam labels (24 annotator-minutes, 80 USD) with the "
        "study's recipe, but 2 of 3 recipe changes tried flip it — learning rate ×3: arm changes, to strong, 192 "
        "slice labels (16 annotator-minutes, 53 USD); loss flipped (BCE ↔ focal): same arm, budget changes, to weak, 48 exam "
        "labels (48 annotator-minutes, 160 USD).")
    assert v.rows()[2]["flips?"] == "yes: arm changes" and v.rows()[2]["cost"] == "53 USD"


def test_no_nan_or_inf_in_sentences_or_tables():
    nan = float("nan")
    empty = pd.DataFrame([{"arm": "weak", "supervision": "weak", "slice_fraction": nan, "budget": 12,
                           "exam_auc": nan, "exam_auc_ci_low": nan, "exam_auc_ci_high": nan}])
    one_seed = _agg(BASE).assign(exam_auc_ci_low=nan, exam_auc_ci_high=nan)   # one seed: no CI
    variants = [_done("lr-third", "learning rate ×⅓", {("weak", 12): 0.5}),
                {"name": "lr-triple", "label": "learning rate ×3", "change": "x", "state": "done", "aggregate": empty},
                {"name": "steps-half", "label": "steps halved", "change": "x", "state": "incomplete",
                 "aggregate": None, "detail": "3/30 cells done"},
                {"name": "patience-half", "label": "patience halved", "change": "skipped: no early stopping", "state": "skipped",
                 "aggregate": None}]
    bad = re.compile(r"\b(nan|inf|none)\b", re.IGNORECASE)
    for base in (_agg(BASE), one_seed, empty):
        for criterion in ("mean", "ci_low"):
            v = verdict(base, variants, CostModel(), 0.85, criterion=criterion)
            text = v.sentence + json.dumps(v.rows(), ensure_ascii=False)
            assert not bad.search(text.replace("none reaches", "")), text
            assert "Not finished yet: steps halved (3/30 cells done)" in v.sentence
            assert "Not applicable to this recipe: patience halved" in v.sentence
    v = verdict(_agg(BASE), variants[:1], CostModel(), 0.85)
    assert "learning rate ×⅓: no plan reaches exam AUC 0.85 under this recipe" in v.sentence
    v = verdict(empty, variants[:2], CostModel(), 0.85)
    assert v.sentence.startswith("No plan reaches exam AUC ≥ 0.85 (mean over seeds) under every recipe tried")
    v = verdict(empty, [_done("loss-flip", "loss flipped (BCE ↔ focal)", BASE)], CostModel(), 0.85)
    assert [o.flip for o in v.variants] == ["a plan reaches the target"]
    assert v.sentence == ("With the study's recipe no plan reaches exam AUC ≥ 0.85 (mean over seeds), but 1 of 1 "
                          "recipe changes tried flips it — loss flipped (BCE ↔ focal): weak, 24 exam labels (24 annotator-minutes, "
                          "80 USD) reaches it.")


@pytest.mark.slow
def test_results_page_shows_the_verdict(half_then_resumed, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    out = half_then_resumed[0]
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("ICH_DATA", str(out.parent.parent))
    monkeypatch.chdir(repo)
    at = AppTest.from_file(str(repo / "pages" / "4_Results.py"), default_timeout=60)
    at.session_state["results_target"] = 0.5
    main = sys.modules["__main__"]
    try:
        at.run()
    finally:
        sys.modules["__main__"] = main   # AppTest runs the page as __main__; spawn-based pools would rerun it
    assert not at.exception, at.exception
    sentence = study_verdict(out, CostModel(), 0.5).sentence
    shown = [e.value for kind in ("success", "warning", "info") for e in getattr(at, kind)]
    assert sentence in shown
    table = [d.value for d in at.dataframe if "flips?" in d.value.columns]
    assert len(table) == 1 and list(table[0]["variant"])[1:] == ["learning rate ×3", "loss flipped (BCE ↔ focal)"]
