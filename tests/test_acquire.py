"""Active acquisition (ich.acquire): label-free choices, exact round sizes, seeded and resumable rounds."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from _blobs import write_blob_dataset
from ich import acquire, runs
from ich.config import with_overrides
from ich.recipe import run_config
from ich.train import fit


# ------------------------------------------------------------------------------ pure choices
def test_round_sizes_end_at_the_budget_and_refuse_empty_rounds():
    assert acquire.round_sizes(12, 3) == [4, 8, 12]
    assert acquire.round_sizes(10, 3) == [3, 7, 10]
    assert acquire.round_sizes(5, 5) == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="at most 3"):
        acquire.round_sizes(3, 4)


def test_uncertainty_buys_the_scores_closest_to_one_half():
    cand = pd.DataFrame({"exam_id": list("abcdef")})
    scores = np.array([0.99, 0.48, 0.02, 0.6, np.nan, 0.3])
    got = acquire.next_batch("uncertainty", 2, candidates=cand, scores=scores)
    assert sorted(got["exam_id"]) == ["b", "e"]            # |0.48 - 0.5| and an unscored item (treated as 0.5)
    assert sorted(acquire.next_batch("uncertainty", 3, candidates=cand, scores=scores)["exam_id"]) == ["b", "d", "e"]


def test_coreset_buys_the_points_farthest_from_everything_bought():
    cand = pd.DataFrame({"exam_id": ["near", "far", "middle", "far2"]})
    x = np.array([[0.1, 0.0], [10.0, 0.0], [5.0, 0.0], [10.0, 0.5]])
    got = acquire.next_batch("coreset", 2, candidates=cand, features=x, owned_features=np.zeros((1, 2)))
    # first pick: far2 (distance 10.01); then "far" is 0.5 from it while "middle" is 5 from everything
    assert sorted(got["exam_id"]) == ["far2", "middle"]
    with pytest.raises(ValueError, match="left in the pool"):
        acquire.next_batch("coreset", 5, candidates=cand, features=x, owned_features=np.zeros((1, 2)))


def test_the_seed_set_is_seeded_and_reads_no_label():
    items = pd.DataFrame({"exam_id": [f"E{i}" for i in range(30)]})
    a, b, c = (acquire.seed_set(items, 5, s) for s in (0, 0, 1))
    assert a.equals(b) and not a.equals(c) and len(a) == 5


def test_attention_buys_the_most_attended_slices_rank_by_rank_positive_and_negative_exams_in_turn():
    """Worked by hand: two positive exams (P1, P2) and one negative (N1), three slices each."""
    guide = pd.DataFrame({"exam_id": ["P1", "P2", "N1"], "label": [1, 1, 0]})
    att = pd.DataFrame({"exam_id": ["P1"] * 3 + ["P2"] * 3 + ["N1"] * 3, "index": [0, 1, 2] * 3,
                        "attention": [0.1, 0.7, 0.2, 0.5, 0.3, 0.2, 0.6, 0.3, 0.1]})
    ranks = {("P1", 1), ("P2", 0), ("N1", 0)}                  # rank 1 of every exam
    got = acquire.guided_slices(guide, att, 3, seed=0, negatives="attended")
    assert set(zip(got["exam_id"], got["index"])) == ranks
    four = acquire.guided_slices(guide, att, 4, seed=0, negatives="attended")   # then a positive exam's rank 2
    extra = set(zip(four["exam_id"], four["index"])) - ranks
    assert extra in ({("P1", 2)}, {("P2", 1)})
    assert acquire.guided_slices(guide, att, 4, seed=0, negatives="attended").equals(four)
    # by default a negative exam's slices come in a seeded random order (its attention is not read)
    flipped = att.assign(attention=np.where(att["exam_id"] == "N1", att["attention"][::-1], att["attention"]))
    for s in range(6):
        a, b = (acquire.guided_slices(guide, x, 3, seed=s) for x in (att, flipped))
        assert a.equals(b) and {("P1", 1), ("P2", 0)} <= set(zip(a["exam_id"], a["index"]))
    negs = {s: acquire.guided_slices(guide, att, 3, seed=s).query("exam_id == 'N1'")["index"].tolist()
            for s in range(6)}
    assert all(len(v) == 1 for v in negs.values()) and len({v[0] for v in negs.values()}) > 1   # seeded, not fixed
    with pytest.raises(ValueError, match="raise train.guide_exams"):
        acquire.guided_slices(guide, att, 10, seed=0)


# ------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 40-exam blob dataset and a random frozen encoder (the fast path acquisition needs)."""
    from ich.models import build_encoder, save_encoder

    root = tmp_path_factory.mktemp("acquire")
    ds = root / "ds"
    write_blob_dataset(ds, 40, seed=5, size=64, slices=(8, 12), contrast=60.0, noise=5.0, radius=0.1,
                       split=(0.6, 0.2, 0.2))
    torch.manual_seed(0)
    enc = save_encoder(root / "enc.pt", build_encoder("compact", in_channels=1, embed_dim=32, width=16),
                       {"windows": ["brain"], "input_size": 64})
    return ds, enc


def config(ds, enc, strategy, supervision="weak", budget=12, rounds=3):
    return run_config(str(ds), supervision=supervision, budget=budget, seed=3, preset="tiny", init=str(enc),
                      overrides={"train.acquisition": strategy, "train.rounds": rounds, "train.epochs": 2,
                                 "train.guide_exams": 8,
                                 "train.lr_factors": [1.0], "train.threads": 1, "train.validation": "paid",
                                 "train.val_min_per_class": 2})


def bought(run) -> list[tuple]:
    lab = runs.read_labels(run)
    return sorted(zip(lab["kind"], lab["exam_id"], lab["index"].fillna(-1).astype(int)))


@pytest.mark.parametrize("strategy, supervision, budget", [("uncertainty", "weak", 12), ("uncertainty", "strong", 30),
                                                          ("coreset", "weak", 12), ("coreset", "strong", 30),
                                                          ("attention", "strong", 30)])
def test_strategies_never_see_a_label_they_did_not_buy(setup, tmp_path, strategy, supervision, budget):
    """Scramble every label of the training split that the run did not buy: the purchase is the same."""
    ds, enc = setup
    out = fit(config(ds, enc, strategy, supervision, budget), tmp_path / "a")
    assert out["state"] == "done" and out["n_labels"] == budget and out["acquisition"] == strategy
    got = bought(tmp_path / "a")
    assert len(got) == budget
    scrambled = tmp_path / "scrambled"
    shutil.copytree(ds, scrambled)
    ex, sl = pd.read_parquet(scrambled / "exams.parquet"), pd.read_parquet(scrambled / "slices.parquet")
    mine_exams = {e for _, e, _ in got}
    mine_slices = {(e, i) for k, e, i in got if k == "slice"}
    train = ex["split"] == "train"
    if supervision == "weak":
        hidden = train & ~ex["exam_id"].isin(mine_exams)
        ex.loc[hidden, "label"] = 1 - ex.loc[hidden, "label"]
        sl["label"] = 1 - sl["label"]                 # a weak run buys no slice label at all
    else:   # a strong run buys no exam label, but for an attention guide's
        guide = set(runs.read_labels(tmp_path / "a" / "rounds" / "guide")["exam_id"]) if strategy == "attention" else set()
        assert len(guide) == (acquire_guide := (8 if strategy == "attention" else 0))
        assert out["guide_exams"] == acquire_guide
        hidden_exams = train & ~ex["exam_id"].isin(guide)
        ex.loc[hidden_exams, "label"] = 1 - ex.loc[hidden_exams, "label"]
        key = list(zip(sl["exam_id"], sl["index"].astype(int)))
        hidden = np.array([k not in mine_slices for k in key]) & sl["exam_id"].isin(set(ex.loc[train, "exam_id"]))
        sl.loc[hidden, "label"] = 1 - sl.loc[hidden, "label"]
    ex.to_parquet(scrambled / "exams.parquet", index=False)
    sl.to_parquet(scrambled / "slices.parquet", index=False)
    fit(with_overrides(config(ds, enc, strategy, supervision, budget), {"data.dataset": str(scrambled)}),
        tmp_path / "b")
    assert bought(tmp_path / "b") == got
    rounds = sorted(p.name for p in (tmp_path / "a" / acquire.ROUNDS_DIR).glob("round-*")) \
        if (tmp_path / "a" / acquire.ROUNDS_DIR).is_dir() else []
    assert rounds == (["round-1", "round-2"] if strategy == "uncertainty" else [])   # coreset needs no model
    if strategy == "attention":    # the slices bought lie in the guide's exams only
        assert {e for _, e, _ in got} <= guide
    if strategy == "uncertainty":     # each round trained on exactly the labels owned by then
        assert [runs.read_status(tmp_path / "a" / "rounds" / r)["summary"]["n_labels"] for r in rounds] == \
            acquire.round_sizes(budget, 3)[:2]


def test_rounds_are_seeded_and_a_rerun_retrains_no_finished_round(setup, tmp_path):
    ds, enc = setup
    cfg = config(ds, enc, "uncertainty")
    from ich.store import open_dataset
    from ich.train import _Trainer

    t = _Trainer(cfg, tmp_path / "run", None)
    t.cfg, t.dataset = cfg, open_dataset(ds)
    t.device, t.precision, t.input_size = torch.device("cpu"), "fp32", 64
    from ich.models import build_model

    t.model, t.fast = build_model(cfg), True
    t._setup_embeddings()
    (tmp_path / "run").mkdir()
    first = acquire.buy_in_rounds(cfg, tmp_path / "run", t.dataset, t.embeddings, t.rows, fit=fit)
    finished = {r: runs.read_status(tmp_path / "run" / "rounds" / r)["finished"] for r in ("round-1", "round-2")}
    trained = []

    def spy(*args, **kw):
        out = fit(*args, **kw)
        trained.append(out.get("train_seconds"))
        return out

    again = acquire.buy_in_rounds(cfg, tmp_path / "run", t.dataset, t.embeddings, t.rows, fit=spy)
    assert again.exam_ids == first.exam_ids and len(trained) == 2
    assert {r: runs.read_status(tmp_path / "run" / "rounds" / r)["finished"] for r in finished} == finished
    other = acquire.buy_in_rounds(with_overrides(cfg, {"seed": 4}), tmp_path / "other", t.dataset, t.embeddings,
                                  t.rows, fit=fit)
    assert other.exam_ids != first.exam_ids


def test_the_attention_guide_is_seeded_and_a_rerun_retrains_nothing(setup, tmp_path):
    ds, enc = setup
    cfg = config(ds, enc, "attention", "strong", 20)
    from ich.store import open_dataset

    dataset = open_dataset(ds)
    first, n_guide = acquire.buy_guided(cfg, tmp_path / "run", dataset, fit=fit)
    assert n_guide == 8 and first.n_labels == 20
    finished = runs.read_status(tmp_path / "run" / "rounds" / "guide")["finished"]
    again, _ = acquire.buy_guided(cfg, tmp_path / "run", dataset, fit=fit)
    assert again.slices.equals(first.slices)
    assert runs.read_status(tmp_path / "run" / "rounds" / "guide")["finished"] == finished   # not retrained
    other, _ = acquire.buy_guided(with_overrides(cfg, {"seed": 4}), tmp_path / "other", dataset, fit=fit)
    assert not other.slices.equals(first.slices)


@pytest.mark.parametrize("overrides, words", [
    ({"train.acquisition": "coreset", "model.finetune": "all"}, "finetune=none"),
    ({"train.acquisition": "uncertainty", "train.rounds": 1}, "at least 2"),
    ({"train.acquisition": "entropy"}, "uncertainty"),
    ({"train.acquisition": "attention"}, "strong supervision"),
])
def test_settings_that_cannot_run_name_the_fix(setup, overrides, words):
    ds, enc = setup
    with pytest.raises(ValueError, match=words):
        run_config(str(ds), supervision="weak", budget=12, init=str(enc), overrides=overrides)
    with pytest.raises(ValueError, match="mixed"):
        run_config(str(ds), supervision="mixed", budget=12, slice_fraction=0.5, init=str(enc),
                   overrides={"train.acquisition": "coreset"})
    with pytest.raises(ValueError, match="not supported"):
        run_config(str(ds), supervision="strong", budget=12, init=str(enc),
                   overrides={"train.acquisition": "attention", "train.label_noise": "slice=0.9/0.9"})


def test_noisy_labels_bought_in_rounds_stay_as_first_read(setup, tmp_path):
    """Every round's learner reads the labels it owns as the final run reads them, and each round's purchase
    has its exact share wrong (labels.parquet of each round folder against the run's)."""
    ds, enc = setup
    cfg = with_overrides(config(ds, enc, "uncertainty", "weak", 15), {"train.label_noise": "exam=0.7/0.7"})
    out = fit(cfg, tmp_path / "run")
    assert out["state"] == "done" and out["wrong_labels"] > 0
    final = runs.read_labels(tmp_path / "run").set_index("exam_id")
    sizes = acquire.round_sizes(15, 3)
    for k, size in enumerate(sizes[:2], start=1):
        mine = runs.read_labels(tmp_path / "run" / "rounds" / f"round-{k}").set_index("exam_id")
        assert len(mine) == size
        assert (mine["label"] == final.loc[mine.index, "label"]).all()      # never reread
    assert final["clean_label"].ne(final["label"]).sum() == out["wrong_labels"]
