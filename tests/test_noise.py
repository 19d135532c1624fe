"""Tests for ich.noise: the spec strings, exact flip counts, and that only bought labels change."""

import numpy as np
import pandas as pd
import pytest

from ich import noise
from ich.config import TrainConfig


def tables(n_exams=40, n_slices=5, seed=0):
    rng = np.random.default_rng(seed)
    ex = pd.DataFrame({"exam_id": [f"E{i:03d}" for i in range(n_exams)], "label": rng.integers(0, 2, n_exams)})
    sl = pd.DataFrame({"exam_id": np.repeat(ex["exam_id"], n_slices).to_numpy(),
                       "index": np.tile(np.arange(n_slices), n_exams),
                       "label": rng.integers(0, 2, n_exams * n_slices).astype(float)})
    return ex, sl


@pytest.mark.parametrize("text, exam, slice_", [
    ("", (1.0, 1.0), (1.0, 1.0)), ("clean", (1.0, 1.0), (1.0, 1.0)),
    ("exam=0.90/0.97", (0.9, 0.97), (1.0, 1.0)),
    (" slice=0.8/1 , exam=1/0.95 ", (1.0, 0.95), (0.8, 1.0))])
def test_spec_strings_round_trip(text, exam, slice_):
    n = noise.parse(text)
    assert (n.exam, n.slice) == (exam, slice_)
    assert noise.parse(n.spec) == n


@pytest.mark.parametrize("bad, words", [("exam=0.9", "KIND=SENSITIVITY/SPECIFICITY"), ("pixel=0.9/0.9", "exam or slice"),
                                        ("exam=0.4/0.9", "between 0.5 and 1"), ("exam=a/0.9", "numbers"),
                                        ("exam=1/1,exam=0.9/0.9", "twice")])
def test_bad_specs_say_how_to_write_one(bad, words):
    with pytest.raises(ValueError, match=words):
        noise.parse(bad)
    with pytest.raises(ValueError, match=words):
        TrainConfig(label_noise=bad)


def test_train_config_normalises_the_spec():
    assert TrainConfig(label_noise="clean").label_noise == ""
    assert TrainConfig(label_noise="exam=0.900/0.97").label_noise == "exam=0.9/0.97"


@pytest.mark.parametrize("sens, spec", [(0.9, 0.9), (0.8, 1.0), (1.0, 0.75)])
def test_exact_counts_of_bought_exam_labels_flip(sens, spec):
    ex, sl = tables()
    bought = ex["exam_id"].iloc[:30].tolist()
    seen, seen_sl = noise.apply(ex, sl, exam_ids=bought, slice_rows=sl.iloc[:0], noise=noise.parse(f"exam={sens}/{spec}"),
                                seed=1)
    y, z = ex.set_index("exam_id")["label"], seen.set_index("exam_id")["label"]
    pos = [e for e in bought if y[e] == 1]
    neg = [e for e in bought if y[e] == 0]
    assert sum(z[e] == 0 for e in pos) == int(np.floor(len(pos) * (1 - sens) + 0.5))
    assert sum(z[e] == 1 for e in neg) == int(np.floor(len(neg) * (1 - spec) + 0.5))
    rest = ex["exam_id"].iloc[30:]
    assert (z[rest] == y[rest]).all()                                   # labels not bought never change
    pd.testing.assert_frame_equal(seen_sl, sl)                          # slice labels clean
    assert (ex["label"] == tables()[0]["label"]).all()                  # the input tables are not modified


def test_slice_noise_is_seeded_and_flips_only_bought_slices():
    ex, sl = tables()
    rows = sl.iloc[::3][["exam_id", "index"]].reset_index(drop=True)
    n = noise.parse("slice=0.8/0.9")
    a = noise.apply(ex, sl, exam_ids=[], slice_rows=rows, noise=n, seed=4)[1]
    b = noise.apply(ex, sl, exam_ids=[], slice_rows=rows, noise=n, seed=4)[1]
    c = noise.apply(ex, sl, exam_ids=[], slice_rows=rows, noise=n, seed=5)[1]
    pd.testing.assert_frame_equal(a, b)
    assert not a["label"].equals(c["label"])
    changed = set(map(tuple, sl.loc[a["label"] != sl["label"], ["exam_id", "index"]].to_numpy().tolist()))
    bought = set(map(tuple, rows.to_numpy().tolist()))
    assert changed and changed <= bought
    y = sl.iloc[::3]["label"].to_numpy()
    assert len(changed) == int(np.floor((y == 1).sum() * 0.2 + 0.5)) + int(np.floor((y == 0).sum() * 0.1 + 0.5))


@pytest.mark.parametrize("kind", ["exam", "slice"])
def test_labels_bought_in_rounds_are_read_round_by_round_exactly_and_never_reread(kind):
    """Rounds of 9, 7 and 8 labels in purchase order (not table order): each round flips exactly its own
    counts, and a learner that owns only the first rounds reads their labels as the final run does."""
    ex, sl = tables(n_exams=60)
    rng = np.random.default_rng(3)
    n = noise.parse(f"{kind}=0.7/0.8")
    if kind == "exam":
        order = ex["exam_id"].to_numpy()[rng.permutation(60)[:24]].tolist()
        seen = lambda k, b: noise.apply(ex, sl, exam_ids=order[:k], slice_rows=sl.iloc[:0], noise=n, seed=2,
                                        batches=b)[0].set_index("exam_id").loc[order[:k], "label"].to_numpy()
        truth = ex.set_index("exam_id").loc[order, "label"].to_numpy()
    else:
        rows = sl.iloc[rng.permutation(len(sl))[:24]][["exam_id", "index"]].reset_index(drop=True)
        key = lambda df: list(zip(df["exam_id"], df["index"]))
        seen = lambda k, b: noise.apply(ex, sl, exam_ids=[], slice_rows=rows.iloc[:k], noise=n, seed=2, batches=b)[1] \
            .set_index(["exam_id", "index"]).loc[key(rows.iloc[:k]), "label"].to_numpy()
        truth = sl.set_index(["exam_id", "index"]).loc[key(rows), "label"].to_numpy()
    final = seen(24, (9, 7, 8))
    for start, size in ((0, 9), (9, 7), (16, 8)):            # exact counts within each round
        y, z = truth[start:start + size], final[start:start + size]
        assert ((y == 1) & (z == 0)).sum() == int(np.floor((y == 1).sum() * 0.3 + 0.5))
        assert ((y == 0) & (z == 1)).sum() == int(np.floor((y == 0).sum() * 0.2 + 0.5))
    assert (seen(9, (9,)) == final[:9]).all() and (seen(16, (9, 7)) == final[:16]).all()   # no round rereads
    with pytest.raises(ValueError, match="do not add up"):
        seen(16, (9, 8))


def test_mixed_exams_take_their_label_from_their_seen_slices():
    ex, sl = tables()
    ids = ex["exam_id"].iloc[:10].tolist()
    rows = sl[sl["exam_id"].isin(ids)][["exam_id", "index"]]
    seen_ex, seen_sl = noise.apply(ex, sl, exam_ids=[], slice_rows=rows, noise=noise.parse("slice=0.5/0.6"), seed=0,
                                   slice_exam_ids=ids)
    implied = seen_sl[seen_sl["exam_id"].isin(ids)].groupby("exam_id")["label"].max()
    assert (seen_ex.set_index("exam_id").loc[ids, "label"] == implied.loc[ids]).all()


def test_words_and_tags():
    n = noise.parse("exam=0.9/0.97")
    assert n.words() == "exam labels 90% sensitive, 97% specific"
    assert n.tag == "exam-sens90-spec97" and "/" not in noise.parse("exam=0.9/0.9,slice=0.95/0.99").tag
    assert noise.LabelNoise().words() == "clean labels" and noise.LabelNoise().tag == ""


# ------------------------------------------------------------------------------ a noisy run
@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    from _blobs import write_blob_dataset

    path = tmp_path_factory.mktemp("noise") / "easy"
    write_blob_dataset(path, 32, seed=3, size=64, slices=(8, 12), contrast=60.0, noise=5.0, radius=0.1)
    return path


def noisy_run(easy, out, spec, supervision="weak", budget=16):
    from ich.config import make_config
    from ich.train import fit

    cfg = make_config(str(easy), preset="tiny", supervision=supervision, budget=budget,
                      overrides={"train.threads": 1, "train.epochs": 2, "train.validation": "paid",
                                 "train.lr_factors": [1.0], "train.val_min_per_class": 2,
                                 "train.label_noise": spec})
    return fit(cfg, out)


def test_a_noisy_run_records_seen_and_clean_labels_and_tests_on_clean_ones(easy, tmp_path):
    from ich import runs
    from ich.store import open_dataset

    out = noisy_run(easy, tmp_path / "noisy", "exam=0.5/0.5")
    labels = runs.read_labels(tmp_path / "noisy")
    truth = open_dataset(easy).exams.set_index("exam_id")["label"]
    assert (labels["clean_label"].astype(int).to_numpy() == truth.loc[labels["exam_id"]].astype(int).to_numpy()).all()
    y = labels["clean_label"].astype(int)
    expected = int(np.floor((y == 1).sum() * 0.5 + 0.5)) + int(np.floor((y == 0).sum() * 0.5 + 0.5))
    assert out["wrong_labels"] == int((labels["label"] != labels["clean_label"]).sum()) == expected > 0
    assert out["label_noise"] == "exam=0.5/0.5" and runs.read_config(tmp_path / "noisy").train.label_noise == out["label_noise"]
    # the test split is scored against the dataset's clean labels, whatever the bought labels said
    preds = pd.read_parquet(tmp_path / "noisy" / runs.PREDICTIONS_FILE).drop_duplicates("exam_id")
    assert (preds["exam_label"].to_numpy() == truth.loc[preds["exam_id"]].to_numpy()).all()
    # the paid validation labels chose the model as the buyer has them (noisy), not as the truth says
    sel = pd.read_parquet(tmp_path / "noisy" / "predictions-selection.parquet").drop_duplicates("exam_id")
    seen_val = labels[labels["use"] == "val"].set_index("exam_id")["label"]
    assert len(sel) == len(seen_val) >= 4
    assert (sel["exam_label"].to_numpy() == seen_val.loc[sel["exam_id"]].astype(float).to_numpy()).all()
    clean = noisy_run(easy, tmp_path / "clean", "")
    assert clean["wrong_labels"] == 0 and clean["label_noise"] == ""
    # the same exams are bought (the draw reads clean labels, as the reference protocol); which of them are held
    # out for validation is stratified on the labels as the buyer sees them
    assert set(runs.read_labels(tmp_path / "clean")["exam_id"]) == set(labels["exam_id"])


def test_slice_noise_reaches_the_strong_learners_training_labels(easy, tmp_path):
    from ich import runs

    out = noisy_run(easy, tmp_path / "s", "slice=0.5/0.9", supervision="strong", budget=40)
    labels = runs.read_labels(tmp_path / "s")
    assert set(labels["kind"]) == {"slice"} and out["wrong_labels"] == int((labels["label"] != labels["clean_label"]).sum()) > 0


def test_the_noise_note_names_each_noisy_arm_in_words():
    from ich.results import noise_note

    cells = pd.DataFrame({"arm": ["weak", "weak-exam-sens90-spec97", "weak"], "label_noise": [np.nan, "exam=0.9/0.97", ""]})
    note = noise_note(cells)
    assert "weak-exam-sens90-spec97 trained on exam labels 90% sensitive, 97% specific" in note
    assert "clean labels" in note and "nan" not in note
    assert noise_note(cells.iloc[[0]]) == "" and noise_note(cells.drop(columns="label_noise")) == ""
