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


@pytest.mark.parametrize("text, spec, tag, words, reads", [
    ("exam=0.80/0.8x3", "exam=0.8/0.8x3", "exam-sens80-spec80-x3",
     "exam labels: the majority of 3 reads, each 80% sensitive, 80% specific", 3),
    ("exam=0.9/0.97x1", "exam=0.9/0.97", "exam-sens90-spec97", "exam labels 90% sensitive, 97% specific", 1),
    ("exam=1/1x3", "", "", "clean labels", 1),                      # a clean source needs no second read
    ("exam=R1", "exam=R1", "exam-R1", "exam labels as reader R1 read them", 1),
    (" exam = R1+R2+R3 ", "exam=R1+R2+R3", "exam-R1-R2-R3", "exam labels: the majority of readers R1, R2, R3", 3),
    ("exam=R2,slice=0.9/0.9x5", "exam=R2,slice=0.9/0.9x5", "exam-R2-slice-sens90-spec90-x5",
     "exam labels as reader R2 read them; slice labels: the majority of 5 reads, each 90% sensitive, 90% specific",
     1)])
def test_reader_sources_round_trip_in_plain_words(text, spec, tag, words, reads):
    n = noise.parse(text)
    assert (n.spec, n.tag, n.words(), n.reads("exam")) == (spec, tag, words, reads)
    assert noise.parse(n.spec) == n and TrainConfig(label_noise=text).label_noise == spec


@pytest.mark.parametrize("bad, words", [("exam=0.9", "KIND=SENSITIVITY/SPECIFICITY"), ("pixel=0.9/0.9", "exam or slice"),
                                        ("exam=0.4/0.9", "between 0.5 and 1"), ("exam=a/0.9", "numbers"),
                                        ("exam=1/1,exam=0.9/0.9", "twice"), ("exam=0.9/0.9x2", "odd number"),
                                        ("exam=0.9/0.9x11", "odd number from 1 to 9"), ("exam=0.9/0.9xa", "odd"),
                                        ("slice=R1", "exam labels only"), ("exam=R1+R2", "odd number of distinct"),
                                        ("exam=R1+R1+R2", "distinct"), ("exam=R1,exam=0.9/0.9", "twice")])
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


def test_the_majority_of_three_reads_is_worked_out_read_by_read():
    """By hand: each read flips its exact counts from its own stream (the first is the one-read model's); a label
    is seen wrong when at least 2 of the 3 reads got it wrong."""
    ex, sl = tables(n_exams=200)
    ids = ex["exam_id"].tolist()
    y = ex["label"].to_numpy()
    one = noise.apply(ex, sl, exam_ids=ids, slice_rows=sl.iloc[:0], noise=noise.parse("exam=0.8/0.8"), seed=7)[0]
    three = noise.apply(ex, sl, exam_ids=ids, slice_rows=sl.iloc[:0], noise=noise.parse("exam=0.8/0.8x3"), seed=7)[0]
    wrong = np.zeros(len(y), dtype=int)
    for key in ([7, 0xE4A], [7, 0xE4A, 0x4EAD, 1], [7, 0xE4A, 0x4EAD, 2]):
        wrong[noise._flip_positions(y, 0.8, 0.8, np.random.default_rng(key))] += 1
    first = noise._flip_positions(y, 0.8, 0.8, np.random.default_rng([7, 0xE4A]))    # one read: the plain model
    assert np.array_equal(np.flatnonzero(one["label"].to_numpy() != y), first)
    assert len(first) == sum(int(np.floor((y == c).sum() * 0.2 + 0.5)) for c in (0, 1))
    assert ((three["label"].to_numpy() != y) == (wrong >= 2)).all()
    assert 5 < (wrong >= 2).sum() < 40          # about 3 x 0.2^2 x 0.8 + 0.2^3 = 10% wrong, not 20%


def test_recorded_readers_give_their_own_reads_of_the_bought_exams_only():
    ex, sl = tables(n_exams=6)
    ex = ex.assign(label=[1, 1, 1, 0, 0, 0], read_R1=pd.array([1, 0, 1, 0, 1, 0], dtype="Int8"),
                   read_R2=pd.array([1, 1, 0, 0, 0, 1], dtype="Int8"), read_R3=pd.array([0, 1, 1, 1, 0, 0], dtype="Int8"))
    bought = ["E001", "E004", "E000", "E002"]
    seen = lambda spec: noise.apply(ex, sl, exam_ids=bought, slice_rows=sl.iloc[:0], noise=noise.parse(spec),
                                    seed=0)[0]["label"].tolist()
    assert seen("exam=R1") == [1, 0, 1, 0, 1, 0]
    assert seen("exam=R3") == [0, 1, 1, 0, 0, 0]                # E003 not bought: its label stays 0 though R3 read 1
    assert seen("exam=R1+R2+R3") == [1, 1, 1, 0, 0, 0]           # E000 2/3, E001 2/3, E002 2/3, E004 1/3
    with pytest.raises(ValueError, match="read_R4.*readers R1, R2, R3.*import cq500"):
        seen("exam=R4")
    with pytest.raises(ValueError, match="no recorded reader"):
        noise.apply(tables()[0], sl, exam_ids=["E001"], slice_rows=sl.iloc[:0], noise=noise.parse("exam=R1"), seed=0)
    gap = ex.assign(read_R2=pd.array([1, None, 0, 0, 0, 1], dtype="Int8"))
    with pytest.raises(ValueError, match="E001 has no read by every reader"):
        noise.apply(gap, sl, exam_ids=bought, slice_rows=sl.iloc[:0], noise=noise.parse("exam=R1+R2+R3"), seed=0)


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
    more = pd.DataFrame({"arm": ["weak-exam-sens80-spec80-x3", "weak-exam-R1"], "label_noise": ["exam=0.8/0.8x3", "exam=R1"]})
    note = noise_note(more)
    assert "the majority of 3 reads, each 80% sensitive, 80% specific (each read flips exactly" in note
    assert "weak-exam-R1 trained on exam labels as reader R1 read them (the readers' recorded reads" in note


def test_a_run_on_recorded_readers_trains_on_that_readers_reads(easy, tmp_path):
    """A dataset with recorded readers (as CQ500's import writes them): the run's labels are reader R2's reads of
    the exams it bought, the clean column keeps the dataset's label, and a dataset without readers refuses."""
    import shutil

    from ich import runs

    ds = tmp_path / "read"
    shutil.copytree(easy, ds)
    ex = pd.read_parquet(ds / "exams.parquet")
    rng = np.random.default_rng(0)
    for r in ("R1", "R2", "R3"):         # each reader gets a fifth of the labels wrong
        wrong = rng.random(len(ex)) < 0.2
        ex[f"read_{r}"] = pd.array(np.where(wrong, 1 - ex["label"], ex["label"]), dtype="Int8")
    ex.to_parquet(ds / "exams.parquet", index=False)
    out = noisy_run(ds, tmp_path / "r2", "exam=R2")
    labels = runs.read_labels(tmp_path / "r2").set_index("exam_id")
    reads = ex.set_index("exam_id")
    assert (labels["label"] == reads.loc[labels.index, "read_R2"].astype(int)).all()
    assert (labels["clean_label"] == reads.loc[labels.index, "label"].astype(int)).all()
    assert out["wrong_labels"] == int((labels["label"] != labels["clean_label"]).sum()) > 0
    with pytest.raises(ValueError, match="no recorded reader"):
        noisy_run(easy, tmp_path / "none", "exam=R1")

