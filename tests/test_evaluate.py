"""Tests of ich.evaluate (and the evaluate / compare / explain verbs): hand-made predictions with known figures,
and a trained tiny run whose explanations must beat a random map."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ich import metrics as M
from ich import runs
from ich.cli import main
from ich.config import make_config
from ich.evaluate import (compare_runs, evaluate_run, exam_summary, select_pixel_slices,
                          sequence_summary, summarise, summarise_pixels)
from ich.inspect import explain_run_exam
from ich.store import DatasetWriter, open_dataset
from ich.train import fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------ helpers
def pred_table(exams: list[dict], split: str = "test") -> pd.DataFrame:
    """One row per slice from {exam_id, score, label, slice_labels, slice_scores, attention} dicts."""
    rows = []
    for e in exams:
        n = len(e["slice_labels"])
        att = e.get("attention", [np.nan] * n)
        for i in range(n):
            rows.append({"exam_id": e["exam_id"], "index": i, "split": split, "exam_score": e["score"],
                         "exam_label": e["label"], "slice_score": e["slice_scores"][i] if "slice_scores" in e
                         else 0.5, "attention": att[i], "slice_label": e["slice_labels"][i]})
    df = pd.DataFrame(rows)
    for col in ("exam_label", "slice_label"):
        df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                            for v in df[col]], dtype="Int8")
    for col in ("exam_score", "slice_score", "attention"):
        df[col] = df[col].astype(np.float32)
    return df


def fake_run(root, name: str, exams: list[dict], *, supervision: str = "weak", dataset: str = "/nowhere/ds"):
    run = runs.create_run(root / name, make_config(dataset, preset="tiny", supervision=supervision))
    runs.write_predictions(run, pred_table(exams))
    # validation predictions with the same scores, so the cutoffs fixed on them are the hand cases' ones
    runs.write_predictions(run, pred_table(exams).assign(split="val"), name=runs.SELECTION_PREDICTIONS)
    return run


# The weak hand case. Exam ROC: t = 0.8 (TPR 1, FPR 1/4 is the point nearest (0, 1)).
WEAK = [
    # one true run (1-3), attention flags 1-3 (>= 1/6), top slice 2: hit -> F1 1
    {"exam_id": "E1", "score": 0.9, "label": 1, "slice_labels": [0, 1, 1, 1, 0, 0],
     "attention": [0, .3, .4, .3, 0, 0]},
    # two true runs, one found -> P 1, R 1/2, F1 2/3
    {"exam_id": "E2", "score": 0.8, "label": 1, "slice_labels": [0, 0, 1, 1, 0, 0, 1, 1],
     "attention": [0, 0, .5, .5, 0, 0, 0, 0]},
    # negative called positive (0.85 >= t) with a predicted run -> F1 0
    {"exam_id": "E4", "score": 0.85, "label": 0, "slice_labels": [0, 0, 0, 0, 0],
     "attention": [0, .5, .5, 0, 0]},
    # negatives below t: no predicted runs whatever the attention -> skipped
    {"exam_id": "E3", "score": 0.2, "label": 0, "slice_labels": [0, 0, 0, 0], "attention": [.25] * 4},
    {"exam_id": "E5", "score": 0.1, "label": 0, "slice_labels": [0, 0, 0], "attention": [1 / 3] * 3},
    {"exam_id": "E6", "score": 0.05, "label": 0, "slice_labels": [0, 0, 0], "attention": [1 / 3] * 3},
]

# The strong hand case: slice probabilities separate perfectly, so t = 0.9 and flags = labels.
STRONG = [
    {"exam_id": "S1", "score": 0.9, "label": 1, "slice_labels": [0, 1, 1, 1, 1, 1, 0],
     "slice_scores": [.1, .9, .92, .95, .9, .9, .1]},                              # run of 5 -> hit
    {"exam_id": "S2", "score": 0.9, "label": 1, "slice_labels": [0, 1, 1, 0, 0],
     "slice_scores": [.1, .9, .9, .1, .1]},                                         # run of 2 < 4 -> dropped
    {"exam_id": "S3", "score": 0.1, "label": 0, "slice_labels": [0, 0, 0, 0], "slice_scores": [.1] * 4},
]


@pytest.fixture
def weak_preds(tmp_path):
    return runs.read_predictions(fake_run(tmp_path, "weak", WEAK))


@pytest.fixture
def strong_preds(tmp_path):
    return runs.read_predictions(fake_run(tmp_path, "strong", STRONG, supervision="strong"))


# ------------------------------------------------------------------------------ exam level
def test_exam_figures_equal_sklearn_and_metrics(weak_preds):
    exams, slices = weak_preds
    m = summarise(exams, slices, supervision="weak")["exam"]
    y = exams["exam_label"].astype(int).to_numpy()
    s = exams["exam_score"].to_numpy(float)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    auc, lo, hi = M.auc_ci(y, s)
    assert (m["auc_ci_low"], m["auc_ci_high"]) == pytest.approx((lo, hi))
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(m["roc"]["fpr"], fpr)
    np.testing.assert_allclose(m["roc"]["tpr"], tpr)
    assert m["operating_points"]["closest"]["threshold"] == pytest.approx(0.8)
    assert m["operating_points"]["closest"]["sensitivity"] == 1.0
    assert m["operating_points"]["closest"]["specificity"] == 0.75
    assert m["n"] == 6 and m["n_positive"] == 2


def test_bootstrap_ci_is_seeded():
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    s = np.array([.1, .4, .35, .8, .3, .9, .5, .6])
    a = exam_summary(y, s, ci_method="bootstrap", n_boot=200, seed=1)
    b = exam_summary(y, s, ci_method="bootstrap", n_boot=200, seed=1)
    assert a["ci_method"] == "bootstrap" and a["auc_ci_low"] == b["auc_ci_low"] < a["auc"] < a["auc_ci_high"]


def test_one_class_exams_give_nan_not_an_error(tmp_path):
    only_negative = [dict(e, label=0, slice_labels=[0] * len(e["slice_labels"])) for e in WEAK]
    exams, slices = runs.read_predictions(fake_run(tmp_path, "neg", only_negative))
    m = summarise(exams, slices, supervision="weak")
    assert math.isnan(m["exam"]["auc"]) and math.isnan(m["exam"]["operating_points"]["closest"]["threshold"])
    assert math.isnan(m["sequence"]["attention"]["f1"]) and math.isnan(m["slice"]["attention"]["auc"])


def test_unlabelled_exams_are_left_out(tmp_path):
    extra = WEAK + [{"exam_id": "U1", "score": 0.99, "label": None, "slice_labels": [None, None],
                     "attention": [.5, .5]}]
    exams, slices = runs.read_predictions(fake_run(tmp_path, "unl", extra))
    m = summarise(exams, slices, supervision="weak")
    assert m["counts"]["exams"] == 7 and m["counts"]["labelled_exams"] == 6
    assert m["exam"]["auc"] == pytest.approx(roc_auc_score([1, 1, 0, 0, 0, 0], [.9, .8, .85, .2, .1, .05]))
    assert m["sequence"]["attention"]["n_scored"] + m["sequence"]["attention"]["n_skipped"] == 6


# ------------------------------------------------------------------------------ slice level
def test_weak_sequence_f1_by_hand(weak_preds):
    exams, slices = weak_preds
    s = summarise(exams, slices, supervision="weak")["sequence"]
    assert list(s) == ["attention"]
    a = s["attention"]
    assert a["threshold"] == pytest.approx(0.8) and a["min_length"] == 2
    assert a["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert a["precision"] == pytest.approx((1 + 1 + 0) / 3) and a["recall"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert (a["n_scored"], a["n_skipped"]) == (3, 3)
    assert (a["n_true_runs"], a["n_hit"]) == (3, 2) and a["tpr"] == pytest.approx(2 / 3)


def test_min_length_drops_short_runs(weak_preds):
    exams, slices = weak_preds
    a = sequence_summary(exams, slices, estimator="attention", min_length=4)
    assert a["f1"] == 0.0 and (a["n_scored"], a["n_skipped"]) == (2, 4)


def test_offset_widens_hits(tmp_path):
    near = [{"exam_id": "N1", "score": 0.9, "label": 1, "slice_labels": [1, 1, 0, 0, 0, 0],
             "attention": [0, 0, 0, .5, .5, 0]},
            {"exam_id": "N2", "score": 0.1, "label": 0, "slice_labels": [0] * 4, "attention": [.25] * 4}]
    exams, slices = runs.read_predictions(fake_run(tmp_path, "near", near))
    assert sequence_summary(exams, slices, estimator="attention", offset=0)["f1"] == 0.0
    assert sequence_summary(exams, slices, estimator="attention", offset=2)["f1"] == 1.0


def test_strong_sequence_f1_uses_the_pooled_slice_cutoff(strong_preds):
    exams, slices = strong_preds
    m = summarise(exams, slices, supervision="strong")
    p = m["sequence"]["probability"]
    assert p["threshold"] == pytest.approx(0.9, abs=1e-6) and p["min_length"] == 4
    assert p["f1"] == pytest.approx(0.5) and (p["n_scored"], p["n_skipped"]) == (2, 1)
    assert summarise(exams, slices, supervision="strong", min_length=2)["sequence"]["probability"]["f1"] == 1.0
    assert m["slice"]["probability"]["auc"] == 1.0
    assert m["slice"]["attention"]["n"] == 0                     # a strong run has no trained attention
    unavailable = sequence_summary(exams, slices, estimator="attention")
    assert unavailable["available"] is False and math.isnan(unavailable["f1"])


def test_attention_slice_auc_uses_relative_attention(weak_preds):
    exams, slices = weak_preds
    m = summarise(exams, slices, supervision="weak")
    n = slices.groupby("exam_id")["index"].transform("size").to_numpy()
    want = roc_auc_score(slices["slice_label"].astype(int), slices["attention"].to_numpy(float) * n)
    assert m["slice"]["attention"]["auc"] == pytest.approx(want)


def test_mixed_scores_both_estimators(weak_preds):
    exams, slices = weak_preds
    s = summarise(exams, slices, supervision="mixed", min_length={"probability": 1})["sequence"]
    assert set(s) == {"attention", "probability"}
    assert s["probability"]["min_length"] == 1 and s["attention"]["min_length"] == 2


def test_unknown_supervision(weak_preds):
    with pytest.raises(ValueError, match="did you mean 'strong'"):
        summarise(*weak_preds, supervision="stron")


def test_unknown_estimator(weak_preds):
    with pytest.raises(ValueError, match="estimator must be one of"):
        summarise(*weak_preds, supervision="weak", estimators=("attn",))


def test_missing_columns(weak_preds):
    exams, slices = weak_preds
    with pytest.raises(ValueError, match=r"slices lacks columns \['attention'\]"):
        summarise(exams, slices.drop(columns="attention"), supervision="weak")


def test_summarise_pixels_groups_by_subtype():
    scores = pd.DataFrame({
        "method": ["gradcam"] * 3, "exam_id": ["A", "A", "B"], "index": [0, 1, 0],
        "dice_mask": [0.2, 0.4, 0.9], "dice_boxes": [0.1, 0.3, 0.8], "pointing": [0.0, 1.0, 1.0],
        "lesion_pixels": [5, 6, 7], "subtypes": [["subdural"], ["subdural"], ["epidural", "subdural"]],
        "delta": [0.1, -0.3, 0.2], "seconds": [0.01] * 3})
    g = summarise_pixels(scores)["gradcam"]
    assert g["n_slices"] == 3 and g["median_abs_delta"] == pytest.approx(0.2)
    assert g["by_subtype"]["Any"]["n"] == 3 and g["by_subtype"]["Any"]["dice_mask"]["median"] == pytest.approx(0.4)
    assert g["by_subtype"]["Any"]["pointing"] == pytest.approx(2 / 3)
    assert g["by_subtype"]["subdural"]["n"] == 2 and g["by_subtype"]["subdural"]["pointing"] == 0.5
    assert "epidural" not in g["by_subtype"]                   # a two-subtype slice counts for Any only
    assert summarise_pixels(scores.iloc[:0]) == {}


# ------------------------------------------------------------------------------ comparing runs
def test_compare_runs_is_the_paired_delong_test(tmp_path):
    b_exams = [dict(e, score=s) for e, s in zip(WEAK, [0.7, 0.95, 0.3, 0.4, 0.2, 0.1])]
    a, b = fake_run(tmp_path, "a", WEAK), fake_run(tmp_path, "b", b_exams)
    r = compare_runs(a, b, alternative="greater")
    y = [1, 1, 0, 0, 0, 0]
    want = M.delong_test(y, [.9, .8, .85, .2, .1, .05], [.7, .95, .3, .4, .2, .1], alternative="greater")
    for k, v in want.items():
        assert r[k] == pytest.approx(v, nan_ok=True), k
    assert (r["n_exams"], r["n_positive"], r["n_only_a"], r["n_only_b"]) == (6, 2, 0, 0)
    boot = compare_runs(a, b, n_boot=200, seed=0)["bootstrap"]
    assert boot["diff"] == pytest.approx(want["diff"])


def test_compare_uses_shared_exams_only(tmp_path):
    a, b = fake_run(tmp_path, "a", WEAK), fake_run(tmp_path, "b", WEAK[:5])
    r = compare_runs(a, b)
    assert (r["n_exams"], r["n_only_a"], r["n_only_b"]) == (5, 1, 0)
    assert r["diff"] == 0.0 and r["p_value"] == 1.0


def test_compare_runs_with_no_shared_exam(tmp_path):
    other = [dict(e, exam_id="X" + e["exam_id"]) for e in WEAK]
    a, b = fake_run(tmp_path, "a", WEAK), fake_run(tmp_path, "b", other)
    with pytest.raises(ValueError, match="share no labelled exam"):
        compare_runs(a, b)


def test_compare_runs_with_conflicting_labels(tmp_path):
    flipped = [dict(e, label=1 - e["label"]) for e in WEAK]
    a, b = fake_run(tmp_path, "a", WEAK), fake_run(tmp_path, "b", flipped)
    with pytest.raises(ValueError, match="different labels"):
        compare_runs(a, b)


def test_compare_verb_prints_aucs_difference_ci_and_p(tmp_path, capsys):
    b_exams = [dict(e, score=s) for e, s in zip(WEAK, [0.7, 0.95, 0.3, 0.4, 0.2, 0.1])]
    a, b = fake_run(tmp_path, "a", WEAK), fake_run(tmp_path, "b", b_exams)
    assert main(["compare", str(a), str(b), "--alternative", "greater"]) == 0
    out = capsys.readouterr().out
    want = M.delong_test([1, 1, 0, 0, 0, 0], [.9, .8, .85, .2, .1, .05], [.7, .95, .3, .4, .2, .1],
                         alternative="greater")
    assert f"AUC A  {want['auc_a']:.3f}" in out and f"AUC B  {want['auc_b']:.3f}" in out
    assert f"difference A - B  {want['diff']:.3f}" in out and f"p = {want['p_value']:.4f}" in out
    assert "H1: AUC_A > AUC_B" in out
    assert main(["compare", str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["alternative"] == "two-sided"


def test_compare_verb_rejects_a_tiny_bootstrap(tmp_path, capsys):
    a = fake_run(tmp_path, "a", WEAK)
    assert main(["compare", str(a), str(a), "--bootstrap", "3"]) == 2
    assert "--bootstrap must be 0 (off) or at least 10" in capsys.readouterr().err


def test_evaluate_verb_without_pixels_writes_strict_json(tmp_path, capsys):
    run = fake_run(tmp_path, "w", WEAK)
    assert main(["evaluate", str(run), "--no-pixel"]) == 0
    out = capsys.readouterr().out
    assert "exam AUC" in out and "sequence F1 (attention" in out and "metrics.json" in out
    text = (run / "metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert m["exam"]["roc"]["thresholds"][0] is None            # +inf is written as null
    assert m["pixel"] is None and m["sequence"]["attention"]["f1"] == pytest.approx(5 / 9)
    assert runs.read_evaluation(run)["run"] == "w"


def test_evaluate_run_of_an_unfinished_run(tmp_path):
    run = runs.create_run(tmp_path / "r", make_config("/nowhere/ds", preset="tiny"))
    with pytest.raises(FileNotFoundError, match=r"no predictions.parquet \(state: queued\)"):
        evaluate_run(run, pixel=False)


def test_evaluate_run_unknown_pixel_method(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'gradcam'"):
        evaluate_run(fake_run(tmp_path, "w", WEAK), pixel_methods=("gradcm",))


def test_evaluate_run_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        evaluate_run(tmp_path / "nope", pixel=False)


# ------------------------------------------------------------------------------ a trained run
def write_disc_dataset(out, n_exams: int = 24, size: int = 64, seed: int = 0):
    """Bright discs (75 HU, masks with subtype codes) in a run of slices of every other exam."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    head = (xx / 0.42) ** 2 + (yy / 0.47) ** 2
    with DatasetWriter(out, source="phantom", size=size, split_fractions=(0.5, 0.25, 0.25), split_seed=seed) as w:
        for i in range(n_exams):
            S = int(rng.integers(8, 13))
            hu = np.full((S, size, size), -1000.0, np.float32)
            hu[:, head < 0.85] = 30.0
            hu[:, (head >= 0.85) & (head < 1.0)] = 900.0
            hu += rng.normal(0, 4, hu.shape).astype(np.float32) * (head < 1.0)
            mask = np.zeros(hu.shape, np.uint8)
            if i % 2 == 0:
                n = int(rng.integers(3, S // 2 + 1))
                start = int(rng.integers(0, S - n + 1))
                cy, cx = rng.uniform(-0.2, 0.2, size=2)
                disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < rng.uniform(0.08, 0.12) ** 2
                for s in range(start, start + n):
                    hu[s, disc] = 75.0 + rng.normal(0, 4, int(disc.sum()))
                    mask[s, disc] = 1 + int(rng.integers(0, 5))
            w.add_exam(f"EX{i:04d}", patient_key=f"P{i}", hu=hu, mask=mask)
    return open_dataset(out)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A strong tiny run on disc phantoms, trained to confident slice logits (relu'd Grad-CAM is blank on slices
    with a negative logit) and validated only at its last epoch, so that epoch is kept.

    The ``tiny_dataset`` phantoms are not used: tiny runs on 16 training phantoms do not generalise
    (test slice AUC about 0.5), so their maps would say nothing about the explainers."""
    from ich.train import fit

    root = tmp_path_factory.mktemp("evaluate")
    ds = write_disc_dataset(root / "discs")
    cfg = make_config(str(ds.path), preset="tiny", supervision="strong", seed=0,
                      overrides={"train.epochs": 4, "train.steps_per_epoch": 10, "train.val_every": 4, "train.threads": 1,
                                 "train.lr": 1e-2})
    fit(cfg, root / "run")
    return root / "run", ds


@pytest.mark.slow
def test_explanations_of_a_trained_run_beat_a_random_map(trained_run):
    run, ds = trained_run
    m = evaluate_run(run, pixel_methods=("gradcam", "ig", "saliency", "random"), n_steps=8, max_pixel_slices=24)
    assert m["exam"]["auc"] > 0.8 and m["slice"]["probability"]["auc"] > 0.8
    pix = m["pixel"]["methods"]
    rand, cam, ig, sal = (pix[k]["by_subtype"]["Any"] for k in ("random", "gradcam", "ig", "saliency"))
    assert rand["n"] == cam["n"] == ig["n"] == sal["n"] > 5
    # Grad-CAM is coarse here (4x4 cells at 64 px), so its Otsu region is large; it still beats chance
    assert cam["dice_mask"]["median"] > 1.3 * rand["dice_mask"]["median"]
    assert sal["dice_mask"]["median"] > 2 * rand["dice_mask"]["median"]
    assert ig["dice_mask"]["median"] > 5 * rand["dice_mask"]["median"]
    assert ig["dice_boxes"]["median"] > 5 * rand["dice_boxes"]["median"]
    assert ig["pointing"] > 0.8 > rand["pointing"] + 0.5
    assert math.isfinite(pix["ig"]["median_abs_delta"]) and pix["gradcam"]["median_abs_delta"] is None
    saved = runs.read_evaluation(run)
    assert saved["pixel"]["methods"]["ig"]["by_subtype"]["Any"]["n"] == ig["n"]

    # another split of the same dataset: scored first, then evaluated into its own file
    val = evaluate_run(run, split="val", pixel=False)
    assert val["prediction_name"] == "discs-val" and val["split"] == "val"
    assert runs.predictions_path(run, "discs-val").is_file()
    assert runs.evaluation_path(run, "discs-val").is_file()


@pytest.mark.slow
def test_pixel_slice_selection(trained_run):
    run, ds = trained_run
    exams, slices = runs.read_predictions(run)
    lesion = select_pixel_slices(ds, exams, slices, max_slices=None)
    truth = ds.slices.merge(lesion, on=["exam_id", "index"])
    assert len(lesion) > 0 and (truth["lesion_pixels"] > 0).all()
    assert set(lesion["exam_id"]) <= set(exams["exam_id"])
    want = ds.slices[(ds.slices["lesion_pixels"] > 0) & ds.slices["exam_id"].isin(exams["exam_id"])]
    assert len(lesion) == len(want)
    few = select_pixel_slices(ds, exams, slices, max_slices=3, seed=1)
    assert len(few) == 3 and few.equals(select_pixel_slices(ds, exams, slices, max_slices=3, seed=1))
    ref = select_pixel_slices(ds, exams, slices, supervision="strong", selection="reference", max_slices=None)
    assert set(map(tuple, ref.to_numpy())) <= set(map(tuple, lesion.to_numpy()))
    with pytest.raises(ValueError, match="did you mean 'lesion'"):
        select_pixel_slices(ds, exams, slices, selection="lesions")


@pytest.mark.slow
def test_explain_verb_writes_maps_and_overlays(trained_run, tmp_path, capsys):
    run, ds = trained_run
    exams, _ = runs.read_predictions(run)
    exam = exams.loc[exams["exam_label"] == 1, "exam_id"].iloc[0]
    assert main(["explain", str(run), "--exam", exam, "--method", "ig", "--slices", "0-2", "--n-steps", "8",
                 "--out", str(tmp_path / "x")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["slices"] == 3 and summary["png"] == 3 and "max_abs_ig_delta" in summary
    z = np.load(tmp_path / "x" / f"{exam}-ig.npz")
    assert z["maps"].shape == (3, 64, 64) and z["index"].tolist() == [0, 1, 2] and z["mask"].shape == (3, 64, 64)
    assert np.isfinite(z["delta"]).all() and z["attention"].shape == z["ablation"].shape == z["slice_prob"].shape
    assert len(list((tmp_path / "x").glob(f"{exam}-ig-*.png"))) == 3
    res = explain_run_exam(run, exam, method="gradcam")
    assert res["maps"].shape[0] == len(res["attention"]) and len(res["scores"]) == len(res["index"])
    assert res["exam_score"] == pytest.approx(float(exams.set_index("exam_id").loc[exam, "exam_score"]), abs=1e-4)
    assert main(["explain", str(run), "--exam", exam, "--slices", "99", "--out", str(tmp_path / "y")]) == 2
    assert "slices must be positions 0.." in capsys.readouterr().err


# ------------------------------------------------------------------------------ cutoffs fixed on validation
def test_operating_points_apply_validation_cutoffs_and_never_read_test_labels():
    """A cutoff read off the test ROC would differ; the validation one is applied unchanged, whatever test holds."""
    from ich.evaluate import exam_summary

    y_test = np.array([0, 0, 0, 1, 1, 1], float)
    s_test = np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.9])
    fixed = {"closest": 0.75, "youden": 0.75}
    on_val = exam_summary(y_test, s_test, thresholds=fixed)
    assert on_val["operating_points"]["closest"] == {"threshold": 0.75, "sensitivity": 2 / 3, "specificity": 1.0}
    assert on_val["threshold_source"] == "validation"
    own = exam_summary(y_test, s_test)                                   # the reference's rule, for reproduction
    assert own["operating_points"]["closest"]["threshold"] != 0.75
    flipped = exam_summary(1 - y_test, s_test, thresholds=fixed)
    assert flipped["operating_points"]["closest"]["threshold"] == 0.75   # labels change figures, not the cutoff


def test_evaluate_run_fixes_cutoffs_on_the_runs_validation_predictions(tmp_path):
    from ich.evaluate import validation_thresholds

    from _blobs import write_blob_dataset

    ds = write_blob_dataset(tmp_path / "blobs", 32, seed=3, size=64, slices=(8, 12), contrast=60.0, noise=5.0,
                            radius=0.1)
    cfg = make_config(str(ds.path), preset="tiny", supervision="weak", seed=0,
                      overrides={"train.epochs": 2, "train.threads": 1, "train.validation": "free"})
    fit(cfg, tmp_path / "run")
    th = validation_thresholds(tmp_path / "run")
    m = evaluate_run(tmp_path / "run", pixel=False, write=False)
    assert m["exam"]["threshold_source"] == "validation"
    assert m["exam"]["operating_points"]["closest"]["threshold"] == pytest.approx(th["exam"]["closest"])
    assert m["sequence"]["attention"]["threshold"] == pytest.approx(th["exam"]["closest"])
    # the thresholds come from predictions-selection.parquet only: deleting the test predictions' labels
    # cannot move them
    exams, _ = runs.read_predictions(tmp_path / "run", runs.SELECTION_PREDICTIONS)
    assert set(exams["split"]) == {"val"}


def test_a_run_without_validation_predictions_reports_no_operating_point(tmp_path):
    from ich.evaluate import validation_thresholds

    from _blobs import write_blob_dataset

    ds = write_blob_dataset(tmp_path / "blobs", 32, seed=3, size=64, slices=(8, 12), contrast=60.0, noise=5.0,
                            radius=0.1)
    cfg = make_config(str(ds.path), preset="tiny", supervision="weak", budget=4, seed=0,
                      overrides={"train.epochs": 1, "train.threads": 1, "train.validation": "paid"})
    fit(cfg, tmp_path / "run")                                           # 4 labels: the label-free schedule
    th = validation_thresholds(tmp_path / "run")
    assert "not available" in th["reason"] and math.isnan(th["exam"]["closest"])
    m = evaluate_run(tmp_path / "run", pixel=False, write=False)
    assert math.isnan(m["exam"]["operating_points"]["closest"]["sensitivity"])   # no fallback to the test ROC


def test_operating_point_is_fixed_on_validation_and_reported_on_test(tiny_phantom_run):
    from ich import runs
    from ich.inspect import validation_operating_point
    from ich.metrics import operating_point

    op = validation_operating_point(tiny_phantom_run, device="cpu")
    # the labels that chose the run's model (predictions-selection.parquet), never the test split
    val = runs.read_predictions(tiny_phantom_run, runs.SELECTION_PREDICTIONS)[0]
    y = val["exam_label"].astype(float).to_numpy()
    assert op["threshold"] == operating_point(y, val["exam_score"].to_numpy(float), rule="youden")["threshold"]
    test, _, _ = runs.read_predictions(tiny_phantom_run)[0], None, None
    t = op["test"]
    assert t["n"] == len(test) and t["tp"] + t["fn"] + t["tn"] + t["fp"] == t["n"]
    positives = test["exam_score"].to_numpy(float) >= op["threshold"]
    assert t["tp"] + t["fp"] == int(positives.sum())
    fixed = validation_operating_point(tiny_phantom_run, threshold=2.0, device="cpu")   # nothing is positive
    assert fixed["test"]["tp"] == 0 and fixed["test"]["fp"] == 0
