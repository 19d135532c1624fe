"""Tests for ich.data: budget sampling properties, label selection, bag and slice datasets."""

import numpy as np
import pandas as pd
import pytest
import torch

from _blobs import write_blob_dataset
from ich.data import (BagDataset, EmbeddingBagDataset, SliceDataset, VolumeCache, collate_bags, epoch_order,
                      exam_slice_labels, make_augment, max_budget, sample_budget, select_labels, stratified_order)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_dataset(tmp_path_factory.mktemp("data") / "ds", 24, seed=0, size=32, slices=(6, 12))


LABELS = np.array([1] * 30 + [0] * 70)


@pytest.mark.parametrize("m", [1, 7, 10, 33, 100])
def test_budget_size_and_prevalence_stratification(m):
    pos = sample_budget(LABELS, m, seed=1)
    assert len(pos) == m == len(set(pos.tolist()))
    assert LABELS[pos].sum() == int(np.floor(m * 0.3 + 0.5))


def test_budgets_are_nested_and_seeded():
    small, large = sample_budget(LABELS, 12, seed=4), sample_budget(LABELS, 52, seed=4)
    assert set(small) <= set(large)
    np.testing.assert_array_equal(sample_budget(LABELS, 52, seed=4), large)
    assert set(sample_budget(LABELS, 52, seed=5)) != set(large)
    # every prefix of the order is stratified
    order = stratified_order(LABELS, seed=2)
    counts = np.cumsum(LABELS[order])
    m = np.arange(1, len(order) + 1)
    assert np.all(np.abs(counts - m * 0.3) <= 0.5 + 1e-9)


def test_reference_ratio_rule_and_its_maximum():
    # reference: int(m * P / N) positives; 30/70 -> a = 0.4286
    pos = sample_budget(LABELS, 100 - 30, seed=0, sampling="reference")
    assert LABELS[pos].sum() == int(70 * 30 / 70)
    top = max_budget(LABELS, sampling="reference")
    assert top < 100    # the ratio rule runs out of negatives before using every item
    with pytest.raises(ValueError, match=f"the maximum is {top} items"):
        sample_budget(LABELS, top + 1, seed=0, sampling="reference")
    with pytest.raises(ValueError, match="needs both classes"):
        stratified_order(np.ones(5), seed=0, sampling="reference")


def test_budget_errors():
    with pytest.raises(ValueError, match="the maximum is 100 exams"):
        sample_budget(LABELS, 101, seed=0, what="exams")
    with pytest.raises(ValueError, match="positive integer"):
        sample_budget(LABELS, 0, seed=0)
    with pytest.raises(ValueError, match="sampling must be one of"):
        stratified_order(LABELS, seed=0, sampling="ratio")


def test_select_labels_weak_strong(blobs):
    ex, sl = blobs.exams, blobs.slices
    train_ids = set(ex.loc[ex.split == "train", "exam_id"])
    weak = select_labels(ex, sl, supervision="weak", budget=6, seed=0)
    assert len(weak.exam_ids) == 6 == weak.n_labels and set(weak.exam_ids) <= train_ids
    assert ex.set_index("exam_id").loc[weak.exam_ids, "label"].sum() == 3
    strong = select_labels(ex, sl, supervision="strong", budget=20, seed=0)
    assert len(strong.slices) == 20 and set(strong.slices.exam_id) <= train_ids
    both = strong.to_frame()
    assert list(both.columns) == ["kind", "exam_id", "index"] and (both.kind == "slice").all()
    full = select_labels(ex, sl, supervision="weak", budget=None, seed=0)
    assert set(full.exam_ids) == set(ex.loc[(ex.split == "train"), "exam_id"])
    with pytest.raises(ValueError, match=r"the maximum is \d+ slices"):
        select_labels(ex, sl, supervision="strong", budget=10_000, seed=0)


def test_select_labels_mixed_buys_whole_exams(blobs):
    ex, sl = blobs.exams, blobs.slices
    sub = select_labels(ex, sl, supervision="mixed", budget=20, seed=1, slice_fraction=0.6)
    n_slices = ex.set_index("exam_id").loc[sub.slice_exam_ids, "n_slices"].sum()
    assert len(sub.slice_exam_ids) >= 1 and n_slices <= 12
    assert len(sub.slices) == n_slices                      # every slice of those exams is bought
    assert not set(sub.slice_exam_ids) & set(sub.exam_ids)
    assert sub.n_labels == n_slices + len(sub.exam_ids) <= 20
    bigger = select_labels(ex, sl, supervision="mixed", budget=22, seed=1, slice_fraction=0.6)
    assert set(sub.slice_exam_ids + sub.exam_ids) <= set(bigger.slice_exam_ids + bigger.exam_ids)
    with pytest.raises(ValueError, match="needs --budget"):
        select_labels(ex, sl, supervision="mixed", budget=None, seed=1)
    with pytest.raises(ValueError, match=r"the maximum is \d+ labels at this slice fraction"):
        select_labels(ex, sl, supervision="mixed", budget=500, seed=1, slice_fraction=0.5)


def test_strong_needs_slice_labels(blobs):
    sl = blobs.slices.assign(label=pd.array([None] * len(blobs.slices), dtype="Int8"))
    with pytest.raises(ValueError, match="no slice labels"):
        select_labels(blobs.exams, sl, supervision="strong", budget=5, seed=0)


def test_bag_dataset_windows_and_bag_augmentation(blobs):
    exams = blobs.exams[blobs.exams.split == "train"].reset_index(drop=True)
    vc = VolumeCache(blobs, 16)
    ds = BagDataset(vc, exams, windows=("brain", "bone"), bag_min_slices=4, seed=3,
                    slice_labels=exam_slice_labels(blobs.slices, exams.exam_id))
    item = ds[0]
    n = int(exams.n_slices[0])
    assert item["x"].shape[1:] == (2, 16, 16) and 4 <= item["x"].shape[0] < n
    assert float(item["x"].min()) >= 0.0 and float(item["x"].max()) <= 1.0
    assert torch.equal(item["index"], item["index"].sort().values)
    truth = blobs.exam_slices(exams.exam_id[0])["label"].to_numpy(float)
    np.testing.assert_array_equal(item["slice_labels"].numpy(), truth[item["index"].numpy()])
    again = ds[0]
    assert torch.equal(again["index"], item["index"])           # same (seed, epoch, item): same bag
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        seen.add(tuple(ds[0]["index"].tolist()))
    assert len(seen) > 1                                        # bags change between epochs
    whole = BagDataset(vc, exams, windows=("brain",))[0]
    assert whole["x"].shape == (n, 1, 16, 16) and np.isnan(whole["slice_labels"].numpy()).all()


def test_collate_pads_with_a_mask(blobs):
    exams = blobs.exams.reset_index(drop=True)
    ds = BagDataset(VolumeCache(blobs, 16), exams, windows=("brain",))
    items = [ds[0], ds[1], ds[2]]
    b = collate_bags(items)
    S = max(len(i["index"]) for i in items)
    assert b["x"].shape == (3, S, 1, 16, 16) and b["mask"].shape == (3, S)
    assert b["mask"].sum(1).tolist() == [len(i["index"]) for i in items]
    assert (b["index"][~b["mask"]] == -1).all() and torch.isnan(b["slice_labels"][~b["mask"]]).all()
    for row, item in enumerate(items):
        k = len(item["index"])
        assert torch.equal(b["x"][row, :k], item["x"]) and not b["x"][row, k:].any()
        assert torch.equal(b["index"][row, :k], item["index"])


def test_kept_epoch_items_are_the_items_drawn_afresh(blobs):
    """The fast path keeps an epoch's bags (asked for several times per epoch): the same bags as fresh draws,
    new ones in the next epoch, and the first epoch's again when a learning rate of the grid restarts."""
    exams = blobs.exams.reset_index(drop=True)
    rows, start = {}, 0
    for exam_id, n in zip(exams.exam_id, exams.n_slices):
        rows[exam_id], start = (start, start + int(n)), start + int(n)
    emb = np.random.default_rng(0).normal(size=(start, 8)).astype(np.float32)
    labels = exam_slice_labels(blobs.slices, exams.exam_id)
    kept = EmbeddingBagDataset(emb, rows, exams, slice_labels=labels, bag_min_slices=4, seed=5, keep_epoch_items=True)
    fresh = EmbeddingBagDataset(emb, rows, exams, slice_labels=labels, bag_min_slices=4, seed=5)
    for epoch in (1, 1, 2, 1):
        kept.set_epoch(epoch), fresh.set_epoch(epoch)
        for i in (0, 3, 0, 7):
            a, b = kept[i], fresh[i]
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["h"], b["h"])
            assert np.array_equal(a["slice_labels"].numpy(), b["slice_labels"].numpy(), equal_nan=True)
            assert torch.equal(a["h"], torch.from_numpy(emb[rows[exams.exam_id[i]][0] + a["index"].numpy()]))
        assert len(kept.kept) == 3                                # this epoch's items only
    kept.set_epoch(2)
    assert [tuple(kept[i]["index"].tolist()) for i in range(len(exams))] != \
        [tuple(fresh[i]["index"].tolist()) for i in range(len(exams))]      # fresh is still on epoch 1


def test_slice_dataset_and_augment(blobs):
    rows = blobs.slices.iloc[[0, 5, 9]][["exam_id", "index"]]
    ds = SliceDataset(blobs, rows, np.array([0, 1, 0]), input_size=None, windows=("brain",), augment=make_augment())
    torch.manual_seed(0)
    item = ds[1]
    assert item["x"].shape == (1, 32, 32) and item["label"] == 1.0 and float(item["x"].min()) >= 0
    aug = make_augment()
    bag = torch.rand(5, 2, 16, 16)
    assert aug(bag).shape == (5, 2, 16, 16)


def test_epoch_order_cycles_and_is_seeded():
    a = epoch_order(5, seed=1, epoch=2, epoch_size=12)
    assert len(a) == 12 and sorted(a[:5].tolist()) == list(range(5))
    np.testing.assert_array_equal(a, epoch_order(5, seed=1, epoch=2, epoch_size=12))
    assert not np.array_equal(epoch_order(50, seed=1, epoch=2), epoch_order(50, seed=1, epoch=3))
