"""Active acquisition: which exams or slices a run buys next, chosen only from the labels it has bought so far.

The reference study drew its label subsets at random (``data.select_labels``, the ``random``
strategy: one stratified draw). Here a budget can instead be bought in ``train.rounds`` rounds:

1. a *seed set*: a seeded, unstratified random draw of round(budget / rounds) labels from the
   labellable pool (which items carry a label is known; what the labels say is not read);
2. in round k the run's own learner is trained on the labels bought so far (an ordinary run
   folder, ``<run>/rounds/round-<k>``, resumable like any run), it scores the rest of the pool,
   and the strategy picks the next round(budget x k / rounds) - (labels so far);
3. the run itself then trains on the whole purchase, as any run does.

Strategies (``STRATEGIES``), all label-free on the pool — ``next_batch`` receives scores and
features, never a label, and ``tests/test_acquire.py`` scrambles every label a run did not buy and
gets the same purchase:

- ``uncertainty``: the pool items whose predicted probability is closest to 0.5 (exams for weak,
  slices for strong). Lewis & Gale 1994, "A sequential algorithm for training text classifiers".
- ``coreset``: greedy k-centre on the frozen embeddings (exam: mean of its standardised slice
  embeddings; slice: its standardised embedding): each pick is the pool item farthest from
  everything bought so far. Sener & Savarese 2018, https://arxiv.org/abs/1708.00489. Needs no
  model, so its rounds only fix the seed set.
- ``attention`` (strong only; ``buy_guided``): a reader confirms pre-selected slices. A seeded random set
  of ``train.guide_exams`` exams gets exam labels (priced as exam labels, on top of the slice budget); a
  weak learner (the *guide*, ``<run>/rounds/guide``) trains on them; then the slice budget is spent in
  those exams only: in exams whose bought exam label is positive, the slices the guide attends to most;
  in negative exams (nothing to point at), slices in a seeded random order. Rank 1 of every guide exam,
  then rank 2, and so on, alternating positive and negative exams, positives first. Reads only the
  guide's bought exam labels and its attention, never a slice label before buying it. Attention as a
  slice pointer: Ilse et al. 2018, https://arxiv.org/abs/1802.04712; the confirmation price is
  ``cost.seconds_per_confirmed_slice``.
  ``train.guide_negatives="attended"`` ranks negative exams' slices by attention too (hard negatives).
  Chosen on the calibration phantom (``synth --seed 100``, never reported; the seed-0 encoder; strong,
  24 guide exams, 3 seeds, test exam AUC at 24/48/96 slice labels): random negatives 0.81/0.90/0.97,
  attended 0.78/0.78/0.75 (the slice learner never sees an ordinary negative slice and does not improve
  with more labels), random slice labels 0.91/0.985/0.987 (``data/studies/calib-attention-*``).
- ``random``: the reference protocol's single stratified draw (no rounds).

With ``train.label_noise`` every round reads the labels it buys as the noisy source gives them, exact
counts per round (``noise.apply``'s ``batches``): a label read wrong in round 1 stays wrong for every
later round's learner and for the run itself. ``attention`` is not combined with noise (refused).

Acquisition runs on the fast path (frozen encoder, ``model.finetune = none``): every round is a
head trained on cached embeddings, and the pool is scored from the same cache. Weak and strong
arms only; mixed buys two label kinds and is refused with a clear message.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ich import runs
from ich.config import ACQUISITIONS as STRATEGIES   # random | uncertainty | coreset | attention
from ich.config import with_overrides
from ich.data import LabelSubset
ROUNDS_DIR = "rounds"


def round_sizes(budget: int, rounds: int) -> list[int]:
    """Labels owned after each round: round(budget x k / rounds), k = 1..rounds, strictly increasing, last = budget."""
    sizes = [max(1, int(math.floor(budget * k / rounds + 0.5))) for k in range(1, rounds + 1)]
    sizes[-1] = budget
    for i in range(1, len(sizes)):
        if sizes[i] <= sizes[i - 1]:
            raise ValueError(f"a budget of {budget} cannot be bought in {rounds} rounds (each round must buy at least "
                             f"one label); lower train.rounds to at most {budget}")
    return sizes


def pool(exams: pd.DataFrame, slices: pd.DataFrame, supervision: str, split: str = "train") -> pd.DataFrame:
    """The labellable items of a split: ``exam_id`` (weak) or ``exam_id, index`` (strong), in table order.

    Which items *carry* a label is read (an unlabelled item cannot be bought); what the labels say is not.
    """
    ex = exams[(exams["split"] == split) & exams["label"].notna()]
    if supervision == "weak":
        return ex[["exam_id"]].reset_index(drop=True)
    sl = slices[slices["exam_id"].isin(set(exams.loc[exams["split"] == split, "exam_id"])) & slices["label"].notna()]
    return sl[["exam_id", "index"]].astype({"index": int}).reset_index(drop=True)


def seed_set(items: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded, unstratified random draw of ``n`` items of the pool (no label read)."""
    if n > len(items):
        raise ValueError(f"cannot buy {n} labels from a pool of {len(items)}; lower the budget")
    order = np.random.default_rng([seed, 0xAC0]).permutation(len(items))
    return items.iloc[np.sort(order[:n])].reset_index(drop=True)


def next_batch(strategy: str, n: int, *, candidates: pd.DataFrame, scores: np.ndarray | None = None,
               features: np.ndarray | None = None, owned_features: np.ndarray | None = None,
               seed: int = 0) -> pd.DataFrame:
    """The ``n`` candidates a strategy buys next. Receives no label.

    Args:
        strategy: uncertainty | coreset.
        candidates: the pool items not bought yet (rows in the order of ``scores`` / ``features``).
        scores: uncertainty: the current model's probability per candidate, (N,).
        features: coreset: one embedding per candidate, (N, D); ``owned_features``: those of the items bought
            so far, (M, D).
        seed: breaks ties (equal scores or distances) by a seeded order.
    """
    if n > len(candidates):
        raise ValueError(f"cannot buy {n} more labels from the {len(candidates)} left in the pool; lower the budget")
    tie = np.random.default_rng([seed, 0x71E]).permutation(len(candidates))
    if strategy == "uncertainty":
        p = np.asarray(scores, dtype=np.float64)
        p = np.where(np.isfinite(p), p, 0.5)
        picked = np.lexsort((tie, np.abs(p - 0.5)))[:n]
    elif strategy == "coreset":
        x = np.asarray(features, dtype=np.float64)
        c = np.asarray(owned_features, dtype=np.float64)
        dist = np.full(len(x), np.inf) if c.size == 0 else _min_dist(x, c)
        picked = []
        for _ in range(n):
            j = int(np.lexsort((tie, -dist))[0])         # farthest from every centre; ties by the seeded order
            picked.append(j)
            dist = np.minimum(dist, np.linalg.norm(x - x[j], axis=1))
            dist[j] = -np.inf
        picked = np.asarray(picked)
    else:
        raise ValueError(f"next_batch picks with uncertainty or coreset, not {strategy!r}")
    return candidates.iloc[np.sort(picked)].reset_index(drop=True)


def _min_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row of x (N, D) to its nearest row of c (M, D): (N,), without an N x M x D array."""
    d2 = (x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * x @ c.T
    return np.sqrt(np.maximum(d2, 0.0).min(1))


def features(items: pd.DataFrame, embeddings: np.ndarray, rows: dict, train_ids, supervision: str) -> np.ndarray:
    """Coreset features, (N, D): slice embeddings standardised with every training-split slice's mean and sd
    (no label read); an exam's feature is the mean of its slices'."""
    train_rows = np.concatenate([np.arange(*rows[e]) for e in train_ids if e in rows])
    ref = np.asarray(embeddings[np.sort(train_rows)], dtype=np.float64)
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    if supervision == "weak":
        return np.stack([(np.asarray(embeddings[slice(*rows[e])], np.float64) - mu).mean(0) / sd
                         for e in items["exam_id"]])
    at = np.array([rows[e][0] + int(i) for e, i in zip(items["exam_id"], items["index"])], dtype=np.int64)
    return (np.asarray(embeddings[at], dtype=np.float64) - mu) / sd


def _subset(owned: pd.DataFrame, supervision: str, sizes: list[int]) -> LabelSubset:
    """The labels owned after the rounds of ``sizes`` (labels owned after each), in purchase order."""
    batches = tuple(int(b) for b in np.diff([0, *sizes]))
    if supervision == "weak":
        return LabelSubset("weak", exam_ids=owned["exam_id"].tolist(), n_labels=len(owned), batches=batches)
    return LabelSubset("strong", slices=owned[["exam_id", "index"]].reset_index(drop=True), n_labels=len(owned),
                       batches=batches)


def _key(df: pd.DataFrame, supervision: str) -> pd.Index:
    return pd.Index(df["exam_id"]) if supervision == "weak" else pd.MultiIndex.from_frame(df[["exam_id", "index"]])


def buy_in_rounds(cfg, run_dir, ds, embeddings: np.ndarray, rows: dict, *, fit, on_round=None):
    """Buy ``cfg.train.budget`` labels in ``cfg.train.rounds`` rounds with ``cfg.train.acquisition`` (module docstring).

    Args:
        cfg: the run's ``RunConfig``; run_dir: its folder (round runs go to ``<run_dir>/rounds/round-<k>``).
        ds: the dataset (``ich.store.Dataset``); embeddings, rows: its cached slice embeddings (fast path).
        fit: ``ich.train.fit`` (passed in: this module sits below training).
        on_round: called with the round number before each round.

    Returns:
        ``data.LabelSubset`` of every label bought, in purchase order.
    """
    t = cfg.train
    items = pool(ds.exams, ds.slices, t.supervision)
    sizes = round_sizes(t.budget, t.rounds)
    if sizes[-1] > len(items):
        raise ValueError(f"cannot buy {t.budget} {'exam' if t.supervision == 'weak' else 'slice'} labels: the training "
                         f"split holds {len(items)}; lower the budget")
    owned = seed_set(items, sizes[0], cfg.seed)
    feats = None
    if t.acquisition == "coreset":
        train_ids = ds.exams.loc[ds.exams["split"] == "train", "exam_id"]
        feats = features(items, embeddings, rows, train_ids, t.supervision)
    for k in range(1, t.rounds):
        if on_round is not None:
            on_round(k)
        left = ~_key(items, t.supervision).isin(_key(owned, t.supervision))
        candidates = items[left].reset_index(drop=True)
        n = sizes[k] - sizes[k - 1]
        if t.acquisition == "uncertainty":
            round_dir = Path(run_dir) / ROUNDS_DIR / f"round-{k}"
            round_cfg = with_overrides(cfg, {"train.budget": sizes[k - 1]})
            fit(round_cfg, round_dir, resume=runs.is_run(round_dir), bought=_subset(owned, t.supervision, sizes[:k]),
                score_exams=sorted(set(candidates["exam_id"])))
            ex, sl = runs.read_predictions(round_dir, "pool")
            if t.supervision == "weak":
                score = ex.set_index("exam_id")["exam_score"]
                scores = score.reindex(candidates["exam_id"]).to_numpy(float)
            else:
                score = sl.astype({"index": int}).set_index(["exam_id", "index"])["slice_score"]
                scores = score.reindex(pd.MultiIndex.from_frame(candidates[["exam_id", "index"]])).to_numpy(float)
            picked = next_batch("uncertainty", n, candidates=candidates, scores=scores, seed=cfg.seed * 1000 + k)
        else:
            owned_pos = np.flatnonzero(~left)
            picked = next_batch("coreset", n, candidates=candidates, features=feats[np.flatnonzero(left)],
                                owned_features=feats[owned_pos], seed=cfg.seed * 1000 + k)
        owned = pd.concat([owned, picked], ignore_index=True)
    return _subset(owned, t.supervision, sizes)


# ------------------------------------------------------------------------------ attention-guided slice labels
GUIDE_DIR = "guide"


def guided_slices(guide: pd.DataFrame, attention: pd.DataFrame, n: int, seed: int,
                  negatives: str = "random") -> pd.DataFrame:
    """The ``n`` slices a reader confirms: rank 1 of every guide exam, then rank 2, ... (module docstring).

    Args:
        guide: the guide's exams with their *bought* exam labels, ``exam_id, label`` (0/1).
        attention: the guide's attention on the labellable slices of those exams, ``exam_id, index, attention``.
        n: the slice budget; seed: orders exams within a class and breaks attention ties.
        negatives: how slices of negative exams are ranked: ``random`` (a seeded order) or ``attended``
            (by the guide's attention, as in positive exams).

    Returns:
        ``exam_id, index`` of the chosen slices, in table order of ``attention``. No slice label is read.
    """
    if n > len(attention):
        raise ValueError(f"cannot buy {n} slice labels in the {len(guide)} guide exams ({len(attention)} labellable "
                         "slices); raise train.guide_exams or lower the budget")
    rng = np.random.default_rng([seed, 0xA77])
    a = attention.reset_index(drop=True)
    tie = rng.permutation(len(a))
    score = a["attention"].to_numpy(float)
    score = np.where(np.isfinite(score), score, -np.inf)
    label = guide.set_index("exam_id")["label"].astype(int)
    if negatives == "random":
        score = np.where(a["exam_id"].map(label).to_numpy() == 0, 0.0, score)   # ties: the seeded order decides
    order = np.lexsort((tie, -score))                       # most attended first, ties by the seeded order
    rank = np.empty(len(a), dtype=np.int64)
    for _, pos in pd.Series(order).groupby(a["exam_id"].to_numpy()[order], sort=False):
        rank[pos.to_numpy()] = np.arange(len(pos))          # rank of each slice within its exam
    place = {}
    for cls in (1, 0):                                      # the exams of each class in a seeded order
        ids = sorted(label.index[label == cls])
        for j, e in enumerate(np.asarray(ids, dtype=object)[rng.permutation(len(ids))]):
            place[e] = j
    cls_first = 1 - a["exam_id"].map(label).to_numpy()      # positive exams (0) before negative ones (1)
    where = a["exam_id"].map(place).to_numpy()
    picked = np.lexsort((cls_first, where, rank))[:n]
    return a.loc[np.sort(picked), ["exam_id", "index"]].astype({"index": int}).reset_index(drop=True)


def buy_guided(cfg, run_dir, ds, *, fit) -> tuple[LabelSubset, int]:
    """Buy ``cfg.train.budget`` slice labels guided by a weak learner's attention (module docstring, ``attention``).

    Args:
        cfg: the strong run's ``RunConfig``; run_dir: its folder (the guide trains in ``<run_dir>/rounds/guide``,
            resumable like any run); ds: the dataset; fit: ``ich.train.fit``.

    Returns:
        (the slice labels bought, the number of guide exam labels bought).
    """
    t = cfg.train
    exams = pool(ds.exams, ds.slices, "weak")
    if t.guide_exams > len(exams):
        raise ValueError(f"train.guide_exams={t.guide_exams} but the training split holds {len(exams)} exam labels; "
                         "lower train.guide_exams")
    guide = seed_set(exams, t.guide_exams, cfg.seed)
    guide_dir = Path(run_dir) / ROUNDS_DIR / GUIDE_DIR
    guide_cfg = with_overrides(cfg, {"train.supervision": "weak", "train.budget": t.guide_exams,
                                     "train.acquisition": "random"})
    fit(guide_cfg, guide_dir, resume=runs.is_run(guide_dir), score_exams=sorted(guide["exam_id"]),
        bought=LabelSubset("weak", exam_ids=guide["exam_id"].tolist(), n_labels=len(guide)))
    bought_labels = runs.read_labels(guide_dir)                         # the guide's exam labels, as bought
    labels = bought_labels[bought_labels["kind"] == "exam"][["exam_id", "label"]]
    _, attended = runs.read_predictions(guide_dir, "pool")
    slices = pool(ds.exams, ds.slices, "strong")
    slices = slices[slices["exam_id"].isin(set(guide["exam_id"]))]
    attended = attended[["exam_id", "index", "attention"]].astype({"index": int, "attention": float})
    attention = slices.merge(attended, on=["exam_id", "index"], how="left")     # every labellable slice, once
    picked = guided_slices(labels, attention, t.budget, cfg.seed, negatives=t.guide_negatives)
    return LabelSubset("strong", slices=picked, n_labels=len(picked)), len(guide)
