"""Training data: which labels a budget buys, and torch datasets of exam bags and slices.

Budgets (paper-protocol.md §7): ``stratified_order`` ranks a pool of labelled items (exams or
slices) so that every prefix has the wanted class counts; a budget of m labels is the first m
items. Hence subsets are seeded (same seed, same subset), stratified, and nested (for one seed
the subset of a smaller budget lies inside that of a larger one). Class counts of a prefix of
length m:

- ``"prevalence"`` (default): n_pos = floor(m * P / (P + N) + 1/2), the split's prevalence;
- ``"reference"``: n_pos = int(m * P / N), the reference's positive:negative-ratio quirk.

``select_labels`` applies this per supervision: weak buys exam labels of train exams, strong
buys slice labels of train slices, mixed buys the slice labels of whole exams with
``slice_fraction`` of the budget and exam labels of the next exams in the same order with the
rest. The training split's val/test exams are never bought.

Pixels: ``VolumeCache`` holds int16 HU volumes resized to the input size (from the store's
int16 cache); windows are applied per item (``window_slices``). Items of ``BagDataset``
(exams, (S, C, H, W)), ``SliceDataset`` (slices, (C, H, W)) and ``EmbeddingBagDataset``
(cached embeddings, (S, D)) are dicts; ``collate_bags`` pads bags to (B, S, ...) with a mask.
Per-item randomness comes from ``(seed, epoch, item)``, so a resumed run draws the same bags.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ich.config import RunConfig, check_choice
from ich.preprocess import resize, stack_windows

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

SAMPLINGS = ("prevalence", "reference")


# ------------------------------------------------------------------------------ budgets
def _n_pos(m: np.ndarray, n_pos: int, n_neg: int, sampling: str) -> np.ndarray:
    """Positives in a prefix of length m under the sampling rule."""
    if sampling == "prevalence":
        return np.floor(m * (n_pos / (n_pos + n_neg)) + 0.5).astype(np.int64)
    return np.floor(m * (n_pos / n_neg) + 1e-9).astype(np.int64)  # int(m * a), guarded against 0.999...


def max_budget(labels, *, sampling: str = "prevalence") -> int:
    """The largest budget ``stratified_order`` can fill from a pool with these 0/1 labels."""
    y = np.asarray(labels).astype(np.int64)
    P, N = int(y.sum()), int(len(y) - y.sum())
    if sampling == "prevalence" or P + N == 0:
        return P + N
    if N == 0:
        return 0
    m = np.arange(0, P + N + 1)
    pos = _n_pos(m, P, N, sampling)
    ok = (pos <= P) & (m - pos <= N) & (m - pos >= 0) & (np.diff(pos, prepend=0) <= 1)
    bad = np.flatnonzero(~ok)
    return int(bad[0] - 1) if len(bad) else P + N


def stratified_order(labels, *, seed: int, sampling: str = "prevalence") -> np.ndarray:
    """A seeded ranking of a pool whose every prefix of length m has the rule's class counts.

    Args:
        labels: (n,) 0/1 labels of the pool.
        seed: the same seed gives the same order.
        sampling: ``"prevalence"`` or ``"reference"`` (see the module docstring).

    Returns:
        (m_max,) positions into ``labels``; ``m_max = max_budget(labels, sampling=...)``.
    """
    check_choice("sampling", sampling, SAMPLINGS)
    y = np.asarray(labels).astype(np.int64)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be a 1-D array of 0/1")
    P, N = int(y.sum()), int(len(y) - y.sum())
    if sampling == "reference" and (P == 0 or N == 0) and P + N > 0:
        raise ValueError(f"sampling='reference' draws positives at the P:N ratio and needs both classes; "
                         f"the pool has {P} positive and {N} negative items. Use sampling='prevalence'")
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)[rng.permutation(P)]
    neg = np.flatnonzero(y == 0)[rng.permutation(N)]
    m_max = max_budget(y, sampling=sampling)
    if m_max == 0:
        return np.zeros(0, dtype=np.int64)
    take_pos = np.diff(_n_pos(np.arange(0, m_max + 1), P, N, sampling)).astype(bool)  # (m_max,)
    order = np.empty(m_max, dtype=np.int64)
    order[take_pos] = pos[: int(take_pos.sum())]
    order[~take_pos] = neg[: int((~take_pos).sum())]
    return order


def sample_budget(labels, budget: int, *, seed: int, sampling: str = "prevalence", what: str = "items") -> np.ndarray:
    """Positions of the ``budget`` items bought from a pool (the first ``budget`` of ``stratified_order``).

    Raises:
        ValueError: budget < 1, or larger than the pool can supply (the message names the maximum).
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget must be a positive integer, not {budget!r}")
    order = stratified_order(labels, seed=seed, sampling=sampling)
    if budget > len(order):
        y = np.asarray(labels).astype(int)
        raise ValueError(f"budget {budget} is larger than the training split can supply: the maximum is "
                         f"{len(order)} {what} ({int(y.sum())} positive, {int(len(y) - y.sum())} negative, "
                         f"sampling={sampling!r}); lower --budget")
    return order[:budget]


@dataclass
class LabelSubset:
    """The labels a run bought. Exams in ``exam_ids`` are trained with their exam label; exams in
    ``slice_exam_ids`` with every slice label; ``slices`` rows (exam_id, index) with their slice label."""

    supervision: str
    exam_ids: list[str] = field(default_factory=list)
    slice_exam_ids: list[str] = field(default_factory=list)
    slices: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"exam_id": [], "index": []}))
    n_labels: int = 0
    batches: tuple[int, ...] = ()   # weak/strong labels bought per acquisition round, in purchase order (() = one)

    def to_frame(self) -> pd.DataFrame:
        """One row per bought label: kind (exam | slice), exam_id, index (<NA> for exam labels)."""
        parts = [pd.DataFrame({"kind": "exam", "exam_id": self.exam_ids, "index": pd.array([None] * len(self.exam_ids),
                                                                                          dtype="Int32")})]
        if len(self.slices):
            parts.append(pd.DataFrame({"kind": "slice", "exam_id": self.slices["exam_id"].to_numpy(),
                                       "index": pd.array(self.slices["index"].to_numpy(), dtype="Int32")}))
        out = pd.concat(parts, ignore_index=True)
        out["kind"] = out["kind"].astype(str)
        return out


def select_labels(exams: pd.DataFrame, slices: pd.DataFrame, *, supervision: str, budget: int | None, seed: int,
                  sampling: str = "prevalence", slice_fraction: float = 0.5, split: str = "train") -> LabelSubset:
    """Buy a label budget from one split of a dataset (see the module docstring).

    Args:
        exams, slices: the dataset's tables (``ich.store.Dataset.exams`` / ``.slices``).
        supervision: weak | strong | mixed.
        budget: labels to buy (exams, slices, or slices + exams for mixed); None buys every label.
        seed, sampling: see ``stratified_order``.
        slice_fraction: mixed only, the share of the budget spent on slice labels.

    Raises:
        ValueError: no labels of the needed kind, or a budget above the maximum (named).
    """
    check_choice("supervision", supervision, ("weak", "strong", "mixed"))
    ex = exams[(exams["split"] == split) & exams["label"].notna()].reset_index(drop=True)
    if supervision == "weak":
        if ex.empty:
            raise ValueError(f"the {split} split has no exam with an exam label; weak supervision needs some")
        y = ex["label"].astype(int).to_numpy()
        if budget is None:
            pos = np.random.default_rng(seed).permutation(len(ex))
        else:
            pos = sample_budget(y, budget, seed=seed, sampling=sampling, what="exams")
        ids = ex["exam_id"].to_numpy()[pos].tolist()
        return LabelSubset("weak", exam_ids=ids, n_labels=len(ids))

    split_ids = set(exams.loc[exams["split"] == split, "exam_id"])
    sl = slices[slices["exam_id"].isin(split_ids)]
    if supervision == "strong":
        sl = sl[sl["label"].notna()].reset_index(drop=True)
        if sl.empty:
            raise ValueError(f"the {split} split has no slice labels; strong supervision needs a dataset with "
                             "slice labels (phantom, RSNA, CT-ICH)")
        y = sl["label"].astype(int).to_numpy()
        if budget is None:
            pos = np.random.default_rng(seed).permutation(len(sl))
        else:
            pos = sample_budget(y, budget, seed=seed, sampling=sampling, what="slices")
        rows = sl.iloc[pos][["exam_id", "index"]].reset_index(drop=True)
        return LabelSubset("strong", slices=rows, n_labels=len(rows))

    # mixed: exams whose every slice is labelled, ranked once; slice part first, exam part next
    if budget is None:
        raise ValueError("mixed supervision needs --budget (and --slice-fraction): it splits a label budget")
    complete = sl.groupby("exam_id")["label"].agg(lambda s: bool(s.notna().all()))
    ex = ex[ex["exam_id"].map(complete).fillna(False).astype(bool)].reset_index(drop=True)
    if ex.empty:
        raise ValueError(f"mixed supervision needs exams with slice labels in the {split} split; found none")
    order = stratified_order(ex["label"].astype(int).to_numpy(), seed=seed, sampling=sampling)
    n_sl = ex["n_slices"].to_numpy()[order].astype(np.int64)
    cum = np.cumsum(n_sl)                                                     # slices of the first k exams

    def fill(n: np.ndarray):
        slice_budget = np.floor(n * slice_fraction + 0.5).astype(np.int64)
        k = np.searchsorted(cum, slice_budget, side="right")                  # whole exams that fit
        used = np.where(k > 0, cum[np.maximum(k - 1, 0)], 0)
        return k, used, k + (n - used)                                        # exams needed in total

    k, used, need = (int(v[0]) for v in fill(np.array([budget])))
    if need > len(order):
        n = np.arange(1, int(cum[-1]) + 1 if len(cum) else 1)
        feasible = n[fill(n)[2] <= len(order)]
        top = int(feasible.max()) if len(feasible) else 0
        raise ValueError(f"budget {budget} with slice_fraction {slice_fraction} needs {need} exams, but the {split} "
                         f"split has {len(order)} exams with slice labels; the maximum is {top} labels at this "
                         "slice fraction; lower --budget")
    ids = ex["exam_id"].to_numpy()[order]
    slice_ids, exam_ids = ids[:k].tolist(), ids[k:need].tolist()
    rows = sl[sl["exam_id"].isin(set(slice_ids))][["exam_id", "index"]].reset_index(drop=True)
    return LabelSubset("mixed", exam_ids=exam_ids, slice_exam_ids=slice_ids, slices=rows,
                       n_labels=int(used) + len(exam_ids))


@dataclass
class HeldOut:
    """The bought labels a run uses for model selection instead of training (``hold_out_validation``).

    ``mode``: ``"paid"`` (labels held out of the budget: ``exam_ids`` with their exam labels, or
    ``slices`` rows with their slice labels), ``"free"`` (the dataset's fully labelled val split,
    outside the budget) or ``"none"`` (too few labels to hold out: the label-free schedule trains on
    every bought label for a fixed number of steps and keeps the last epoch). ``kind`` is the label
    kind used (``"exam"``, ``"slice"`` or ``""``); ``n_labels`` how many; ``reason`` says why in words.
    """

    mode: str
    kind: str = ""
    exam_ids: list[str] = field(default_factory=list)
    slices: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"exam_id": [], "index": []}))
    n_labels: int = 0
    reason: str = ""


def _held_out_positions(y: np.ndarray, fraction: float, min_per_class: int, seed: int):
    """Positions (into y) of a stratified ``fraction`` of each class, or (None, reason) when too few."""
    y = np.asarray(y).astype(np.int64)
    rng = np.random.default_rng([seed, 0x7A1])            # its own stream: independent of the budget draw
    take = []
    for cls in (1, 0):
        pool = np.flatnonzero(y == cls)
        k = int(np.floor(len(pool) * fraction + 0.5))
        if k < min_per_class or len(pool) - k < 1:
            name = "positive" if cls else "negative"
            return None, (f"{len(pool)} {name} labels bought: holding out {fraction:g} of them gives {k}, fewer "
                          f"than the {min_per_class} per class model selection needs")
        take.append(pool[rng.permutation(len(pool))[:k]])
    return np.sort(np.concatenate(take)), ""


def hold_out_validation(subset: LabelSubset, exams: pd.DataFrame, slices: pd.DataFrame, *, fraction: float,
                        min_per_class: int, seed: int) -> tuple[LabelSubset, HeldOut]:
    """Split the labels a run bought into training labels and paid validation labels of the same kind.

    Weak and mixed runs hold out exam labels (mixed: from its exam-label part only), strong runs
    hold out slice labels: a stratified ``fraction`` of each class, drawn with ``seed``. When a class
    would keep fewer than ``min_per_class`` held-out labels, nothing is held out and the run uses
    the label-free schedule (``HeldOut.mode == "none"``). The held-out labels stay counted in the
    budget: ``train.n_labels + held_out.n_labels == subset.n_labels``.

    Returns:
        (training subset, held-out labels).
    """
    if subset.supervision == "strong":
        lab = slices.set_index(["exam_id", "index"])["label"]
        y = lab.loc[list(zip(subset.slices["exam_id"], subset.slices["index"]))].astype(int).to_numpy()
        pos, reason = _held_out_positions(y, fraction, min_per_class, seed)
        if pos is None:
            return subset, HeldOut("none", reason=reason)
        keep = np.setdiff1d(np.arange(len(y)), pos)
        train = LabelSubset("strong", slices=subset.slices.iloc[keep].reset_index(drop=True), n_labels=len(keep))
        held = subset.slices.iloc[pos].reset_index(drop=True)
        return train, HeldOut("paid", "slice", slices=held, n_labels=len(pos),
                              reason=f"{len(pos)} of the {len(y)} bought slice labels held out for model selection")
    label = exams.set_index("exam_id")["label"]
    ids = list(subset.exam_ids)
    y = label.loc[ids].astype(int).to_numpy() if ids else np.zeros(0, np.int64)
    pos, reason = _held_out_positions(y, fraction, min_per_class, seed)
    if pos is None:
        return subset, HeldOut("none", reason=reason)
    held = [ids[i] for i in pos]
    rest = [e for i, e in enumerate(ids) if i not in set(pos.tolist())]
    train = LabelSubset(subset.supervision, exam_ids=rest, slice_exam_ids=list(subset.slice_exam_ids),
                        slices=subset.slices, n_labels=subset.n_labels - len(held))
    return train, HeldOut("paid", "exam", exam_ids=held, n_labels=len(held),
                          reason=f"{len(held)} of the {len(ids)} bought exam labels held out for model selection")


# ------------------------------------------------------------------------------ pixels
class VolumeCache:
    """int16 HU volumes of a dataset resized to ``input_size`` (S, h, w), kept in memory (LRU up to ``max_bytes``)."""

    def __init__(self, dataset, input_size: int | None, *, max_bytes: int = 2 << 30):
        self.dataset, self.max_bytes = dataset, max_bytes
        self.size = int(input_size or dataset.size)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, exam_id: str) -> torch.Tensor:
        """(S, h, w) int16 tensor (shared; do not modify)."""
        t = self._cache.get(exam_id)
        if t is not None:
            self._cache.move_to_end(exam_id)
            return t
        raw = np.array(self.dataset.load_raw(exam_id))                       # (S, H, W) int16, writable copy
        t = torch.from_numpy(resize(raw, self.size))                         # (S, h, w) int16
        self._cache[exam_id] = t
        self._bytes += t.numel() * 2
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.numel() * 2
        return t


def window_slices(hu: torch.Tensor, windows: tuple[str, ...]) -> torch.Tensor:
    """(..., H, W) HU (any dtype) -> (..., C, H, W) float32 in [0, 1], one channel per window."""
    return stack_windows(hu.float(), tuple(windows))


def make_augment():
    """A torchio pipeline for (S, C, H, W) bags or (C, H, W) slices in [0, 1].

    Random flips of both in-plane axes, a small in-plane affine (scale 0.9-1.1, rotation
    +-10 degrees, shift +-4 px), Gaussian noise (std up to 0.03) and gamma (log-gamma +-0.12).
    A bag gets one draw for all its slices (a whole scan moves together; the reference drew per
    slice). Parameters come from torch's global RNG, which ``train.fit`` seeds per epoch.
    """
    import torchio as tio

    transform = tio.Compose([
        tio.RandomFlip(axes=(0, 1), flip_probability=0.5),
        tio.RandomAffine(scales=(0.9, 1.1, 0.9, 1.1, 1, 1), degrees=(0, 0, 0, 0, -10, 10),
                         translation=(-4, 4, -4, 4, 0, 0), image_interpolation="linear", p=0.75),
        tio.RandomNoise(std=(0, 0.03), p=0.5),
        tio.RandomGamma(log_gamma=(-0.12, 0.12), p=0.5),
    ])

    def apply(x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 3
        v = x.unsqueeze(0) if squeeze else x                                 # (S, C, H, W)
        t = v.permute(1, 2, 3, 0).contiguous()                               # (C, H, W, S): torchio's 4-D image
        out = transform(tio.ScalarImage(tensor=t)).data.permute(3, 0, 1, 2)  # (S, C, H, W)
        out = out.clamp(min=0.0).contiguous()  # gamma needs >= 0 next time; noise may undershoot
        return out[0] if squeeze else out

    return apply


def _bag_positions(n: int, min_slices: int | None, rng: np.random.Generator) -> np.ndarray:
    """Reference bag augmentation: k ~ randint(min, n) (upper bound exclusive) slices, sorted."""
    if min_slices is None or n <= min_slices:
        return np.arange(n)
    k = int(rng.integers(min_slices, n))
    return np.sort(rng.choice(n, size=k, replace=False))


class BagDataset(torch.utils.data.Dataset):
    """Exams as bags of windowed slices.

    Item: ``{"x": (k, C, H, W) float32, "label": float (nan if unknown), "slice_labels": (k,)
    float32 (nan where unknown or not bought), "index": (k,) int64 slice positions, "exam_id"}``.

    Args:
        volumes: a ``VolumeCache``.
        exams: rows with ``exam_id`` and ``label``.
        slice_labels: exam_id -> (S,) labels the learner may see (missing exams: all nan).
        windows: window names (C).
        bag_min_slices: reference bag augmentation (None = whole exam, in order).
        augment: a callable from ``make_augment`` or None.
        seed: with ``set_epoch`` fixes each item's random bag.
    """

    def __init__(self, volumes: VolumeCache, exams: pd.DataFrame, *, windows: tuple[str, ...],
                 slice_labels: dict[str, np.ndarray] | None = None, bag_min_slices: int | None = None,
                 augment=None, seed: int = 0):
        self.volumes, self.windows = volumes, tuple(windows)
        self.exam_ids = exams["exam_id"].tolist()
        self.labels = exams["label"].astype("Float64").to_numpy(dtype=np.float32, na_value=np.nan)
        self.slice_labels = slice_labels or {}
        self.bag_min_slices, self.augment, self.seed, self.epoch = bag_min_slices, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.exam_ids)

    def __getitem__(self, i: int) -> dict:
        exam_id = self.exam_ids[i]
        vol = self.volumes.get(exam_id)                                      # (S, h, w) int16
        rng = np.random.default_rng((self.seed, self.epoch, i))
        pos = _bag_positions(vol.shape[0], self.bag_min_slices, rng)
        x = window_slices(vol[torch.from_numpy(pos)], self.windows)         # (k, C, h, w)
        if self.augment is not None:
            x = self.augment(x)
        sl = self.slice_labels.get(exam_id)
        sl = np.full(len(pos), np.nan, np.float32) if sl is None else np.asarray(sl, np.float32)[pos]
        return {"x": x, "label": float(self.labels[i]), "slice_labels": torch.from_numpy(sl),
                "index": torch.from_numpy(pos.astype(np.int64)), "exam_id": exam_id}


class EmbeddingBagDataset(torch.utils.data.Dataset):
    """Exams as bags of cached slice embeddings (the fast path); items like ``BagDataset`` with ``"h": (k, D)``.

    Args:
        embeddings: (N_slices, D) float32 array aligned with the dataset's slices table.
        rows: exam_id -> (start, stop) rows of ``embeddings`` (from ``ich.embed.embed_dataset``).
    """

    def __init__(self, embeddings: np.ndarray, rows: dict[str, tuple[int, int]], exams: pd.DataFrame, *,
                 slice_labels: dict[str, np.ndarray] | None = None, bag_min_slices: int | None = None, seed: int = 0,
                 keep_epoch_items: bool = False):
        self.embeddings, self.rows = embeddings, rows
        self.exam_ids = exams["exam_id"].tolist()
        self.labels = exams["label"].astype("Float64").to_numpy(dtype=np.float32, na_value=np.nan)
        self.slice_labels = slice_labels or {}
        self.bag_min_slices, self.seed, self.epoch = bag_min_slices, seed, 0
        # An item depends on (seed, epoch, i) only, and an epoch that cycles a small labelled set asks for each
        # item several times: with keep_epoch_items the current epoch's items are kept (at most one epoch's worth).
        self.kept: dict[int, dict] | None = {} if keep_epoch_items else None

    __len__ = BagDataset.__len__

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch and self.kept is not None:
            self.kept = {}
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict:
        if self.kept is None:
            return self._draw(i)
        if i not in self.kept:
            self.kept[i] = self._draw(i)
        return self.kept[i]

    def _draw(self, i: int) -> dict:
        exam_id = self.exam_ids[i]
        start, stop = self.rows[exam_id]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        pos = _bag_positions(stop - start, self.bag_min_slices, rng)
        h = torch.from_numpy(np.asarray(self.embeddings[start + pos], dtype=np.float32))  # (k, D)
        sl = self.slice_labels.get(exam_id)
        sl = np.full(len(pos), np.nan, np.float32) if sl is None else np.asarray(sl, np.float32)[pos]
        return {"h": h, "label": float(self.labels[i]), "slice_labels": torch.from_numpy(sl),
                "index": torch.from_numpy(pos.astype(np.int64)), "exam_id": exam_id}


class SliceDataset(torch.utils.data.Dataset):
    """Single labelled slices (strong supervision). Item: ``{"x": (C, H, W), "label": float}``.

    The chosen slices are read once into memory at the input size (int16).
    """

    def __init__(self, dataset, rows: pd.DataFrame, labels: np.ndarray, *, input_size: int | None,
                 windows: tuple[str, ...], augment=None):
        size = int(input_size or dataset.size)
        self.windows, self.augment = tuple(windows), augment
        self.labels = np.asarray(labels, dtype=np.float32)
        parts = np.empty((len(rows), size, size), dtype=np.int16)
        for exam_id, grp in rows.reset_index(drop=True).groupby("exam_id", sort=False):
            raw = dataset.load_raw(exam_id)
            parts[grp.index.to_numpy()] = resize(np.asarray(raw[grp["index"].to_numpy()]), size)
        self.hu = torch.from_numpy(parts)                                    # (N, h, w) int16

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        x = window_slices(self.hu[i], self.windows)                         # (C, h, w)
        if self.augment is not None:
            x = self.augment(x)
        return {"x": x, "label": float(self.labels[i])}


class EmbeddingSliceDataset(torch.utils.data.Dataset):
    """Single labelled slices as cached embeddings (fast path). Item: ``{"h": (D,), "label": float}``."""

    def __init__(self, embeddings: np.ndarray, row_ids: np.ndarray, labels: np.ndarray):
        self.h = torch.from_numpy(np.asarray(embeddings[np.asarray(row_ids)], dtype=np.float32))  # (N, D)
        self.labels = np.asarray(labels, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"h": self.h[i], "label": float(self.labels[i])}


def collate_bags(items: list[dict]) -> dict:
    """Pad bags to the longest: ``x`` (B, S, C, H, W) or ``h`` (B, S, D), ``mask`` (B, S) bool,
    ``label`` (B,), ``slice_labels`` (B, S) (nan on padding), ``index`` (B, S) (-1 on padding), ``exam_id``."""
    key = "x" if "x" in items[0] else "h"
    pad = torch.nn.utils.rnn.pad_sequence
    lengths = torch.tensor([it[key].shape[0] for it in items])
    return {key: pad([it[key] for it in items], batch_first=True),
            "mask": torch.arange(int(lengths.max())) < lengths[:, None],
            "label": torch.tensor([it["label"] for it in items], dtype=torch.float32),
            "slice_labels": pad([it["slice_labels"] for it in items], batch_first=True, padding_value=float("nan")),
            "index": pad([it["index"] for it in items], batch_first=True, padding_value=-1),
            "exam_id": [it["exam_id"] for it in items]}


def collate_slices(items: list[dict]) -> dict:
    """Stack slice items: ``x`` (N, C, H, W) or ``h`` (N, D), ``label`` (N,)."""
    key = "x" if "x" in items[0] else "h"
    return {key: torch.stack([it[key] for it in items]),
            "label": torch.tensor([it["label"] for it in items], dtype=torch.float32)}


def epoch_order(n: int, *, seed: int, epoch: int, epoch_size: int | None = None) -> np.ndarray:
    """Item order of one epoch: a seeded shuffle of range(n), cycled with fresh shuffles up to ``epoch_size``."""
    rng = np.random.default_rng((seed, epoch, 7919))
    size = n if epoch_size is None else int(epoch_size)
    reps = -(-size // n) if n else 0
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:size] if reps else np.zeros(0, np.int64)


def exam_slice_labels(slices: pd.DataFrame, exam_ids) -> dict[str, np.ndarray]:
    """exam_id -> (S,) float32 slice labels in slice order (nan where unknown)."""
    wanted = set(exam_ids)
    sub = slices[slices["exam_id"].isin(wanted)].sort_values(["exam_id", "index"])
    lab = sub["label"].astype("Float64").to_numpy(dtype=np.float32, na_value=np.nan)
    out, ids = {}, sub["exam_id"].to_numpy()
    if len(ids):
        bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(ids)]):
            out[ids[s]] = lab[s:e]
    return out


def bag_loader(dataset, exams: pd.DataFrame, cfg: RunConfig, *, volumes: VolumeCache | None = None,
               batch_exams: int = 1) -> torch.utils.data.DataLoader:
    """A loader of whole exams (all slices, in order, no augmentation), with their slice labels."""
    volumes = volumes or VolumeCache(dataset, cfg.data.input_size)
    ds = BagDataset(volumes, exams, windows=cfg.data.windows,
                    slice_labels=exam_slice_labels(dataset.slices, exams["exam_id"]))
    return torch.utils.data.DataLoader(ds, batch_size=batch_exams, shuffle=False, collate_fn=collate_bags,
                                       generator=torch.Generator())    # never draws from torch's global RNG
