"""Label noise: the bought labels as a fallible reader would give them (sensitivity and specificity per label kind).

A label bought from a report-mining script or a single hurried reader is sometimes wrong. A noise
model says, per label kind (``exam`` or ``slice``), how often a truly positive label comes back
positive (*sensitivity*) and a truly negative one comes back negative (*specificity*). Written as
a spec string (``parse`` / ``LabelNoise.spec``)::

    ""                          clean labels (the default)
    "exam=0.90/0.97"            exam labels: sensitivity 0.90, specificity 0.97; slice labels clean
    "exam=0.9/0.9,slice=0.95/0.99"

``apply`` flips an *exact* number of the bought labels, not a random number: of the n positive
labels of a kind, round(n x (1 - sensitivity)) come back negative, chosen with a seeded
permutation, and likewise for negatives, so a 10 % noise level is 10 % of the labels every time.
Labels bought in acquisition rounds (``batches``, ``ich.acquire``) are read round by round: each
round's purchase gets its exact counts from a stream of its own, so a label read wrong in round 1 is
read the same way by every later round's learner and by the final run. Only the labels a run bought
are changed; the test split (and a free validation split) stay clean, because a study measures what noisy *training* labels cost, always against clean truth.
Stratified sampling (``data.select_labels``) still draws the budget on the clean labels, as the
reference protocol does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("exam", "slice")


@dataclass(frozen=True)
class LabelNoise:
    """Sensitivity and specificity of the bought labels of each kind (1.0 / 1.0 = clean)."""

    exam: tuple[float, float] = (1.0, 1.0)    # (sensitivity, specificity) of exam labels
    slice: tuple[float, float] = (1.0, 1.0)   # (sensitivity, specificity) of slice labels

    @property
    def clean(self) -> bool:
        return self.exam == (1.0, 1.0) and self.slice == (1.0, 1.0)

    @property
    def spec(self) -> str:
        """The spec string (``parse(noise.spec) == noise``); "" when clean."""
        return ",".join(f"{k}={_num(s)}/{_num(p)}" for k in KINDS
                        for s, p in [getattr(self, k)] if (s, p) != (1.0, 1.0))

    @property
    def tag(self) -> str:
        """A short name for arm and folder names: "" when clean, else e.g. "exam-sens90-spec97"."""
        return "-".join(f"{k}-sens{_pct(s)}-spec{_pct(p)}" for k in KINDS for s, p in [getattr(self, k)]
                        if (s, p) != (1.0, 1.0))

    def words(self) -> str:
        """Plain words, e.g. "exam labels 90% sensitive, 97% specific" or "clean labels"."""
        parts = [f"{k} labels {_pct(s)}% sensitive, {_pct(p)}% specific"
                 for k in KINDS for s, p in [getattr(self, k)] if (s, p) != (1.0, 1.0)]
        return "; ".join(parts) if parts else "clean labels"


def _num(x: float) -> str:
    return f"{x:g}"


def _pct(x: float) -> str:
    return f"{100 * x:g}"


def parse(spec: str) -> LabelNoise:
    """A ``LabelNoise`` from its spec string (module docstring); raises ``ValueError`` naming the fix."""
    if not isinstance(spec, str):
        raise ValueError(f"label noise must be a string like 'exam=0.90/0.97', not {spec!r}")
    text = spec.strip()
    if text in ("", "clean", "none"):
        return LabelNoise()
    found: dict[str, tuple[float, float]] = {}
    for part in text.split(","):
        kind, sep, rates = part.strip().partition("=")
        kind = kind.strip()
        sens, slash, spec_ = rates.partition("/")
        if not sep or not slash or kind not in KINDS:
            raise ValueError(f"label noise {spec!r}: each part must read KIND=SENSITIVITY/SPECIFICITY with KIND exam or "
                             f"slice, e.g. 'exam=0.90/0.97'; found {part.strip()!r}")
        if kind in found:
            raise ValueError(f"label noise {spec!r} names {kind} labels twice; give each kind once")
        try:
            pair = (float(sens), float(spec_))
        except ValueError:
            raise ValueError(f"label noise {spec!r}: sensitivity and specificity must be numbers between 0.5 and 1 "
                             f"(e.g. exam=0.90/0.97); found {rates!r}") from None
        for name, v in zip(("sensitivity", "specificity"), pair):
            if not (math.isfinite(v) and 0.5 <= v <= 1.0):
                raise ValueError(f"label noise {spec!r}: {kind} {name} must lie between 0.5 and 1 (below 0.5 the "
                                 f"labels say the opposite of the truth more often than not); found {v:g}")
        found[kind] = pair
    return LabelNoise(**found)


def _flip_positions(y: np.ndarray, sens: float, spec: float, rng: np.random.Generator) -> np.ndarray:
    """Positions (into y, 0/1) to flip: exactly round(n_pos (1 - sens)) positives and round(n_neg (1 - spec)) negatives."""
    out = []
    for cls, keep in ((1, sens), (0, spec)):
        pool = np.flatnonzero(y == cls)
        k = int(np.floor(len(pool) * (1.0 - keep) + 0.5))
        out.append(pool[rng.permutation(len(pool))[:k]])
    return np.sort(np.concatenate(out)).astype(np.int64)


def _flips_by_batch(y: np.ndarray, sens: float, spec: float, seed: int, stream: int, batches) -> np.ndarray:
    """``_flip_positions`` over ``y`` (purchase order), exact within each batch; ``()`` = one purchase."""
    if not batches:
        return _flip_positions(y, sens, spec, np.random.default_rng([seed, stream]))
    if sum(batches) != len(y):
        raise ValueError(f"purchase batches {list(batches)} do not add up to the {len(y)} labels bought")
    starts = np.cumsum([0, *batches[:-1]])
    return np.concatenate([s + _flip_positions(y[s:s + n], sens, spec, np.random.default_rng([seed, stream, k]))
                           for k, (s, n) in enumerate(zip(starts, batches))]).astype(np.int64)


def apply(exams: pd.DataFrame, slices: pd.DataFrame, *, exam_ids, slice_rows: pd.DataFrame, noise: LabelNoise,
          seed: int, slice_exam_ids=(), batches=()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The dataset's label tables as the buyer sees them: the bought labels passed through ``noise``.

    Args:
        exams, slices: the dataset's tables (``label`` columns hold the clean truth; not modified).
        exam_ids: the exams whose exam label was bought.
        slice_rows: ``exam_id, index`` of the slices whose slice label was bought.
        noise: the noise model; seed: the flips' seed (one stream per kind, independent of the budget draw).
        slice_exam_ids: exams labelled through every slice (mixed supervision): their exam label becomes
            the largest of their seen slice labels, as the reader's slice labels imply.
        batches: weak or strong runs bought in acquisition rounds: labels per round, in the order of
            ``exam_ids`` (weak) or ``slice_rows`` (strong); each round's labels are flipped on their own.

    Returns:
        (exams, slices) copies whose ``label`` is the seen label on bought rows and unchanged elsewhere.
    """
    exams, slices = exams.copy(), slices.copy()
    if noise.clean:
        return exams, slices
    ids = list(exam_ids)
    if ids and noise.exam != (1.0, 1.0):
        pos = exams.index[exams["exam_id"].isin(set(ids))]
        if batches:                                   # in purchase order, so each round is read on its own
            pos = pd.Index(pd.Series(exams.index, index=exams["exam_id"]).loc[ids].to_numpy())
        y = exams.loc[pos, "label"].astype(int).to_numpy()
        flip = _flips_by_batch(y, *noise.exam, seed, 0xE4A, batches)
        exams.loc[pos[flip], "label"] = 1 - y[flip]
    if len(slice_rows) and noise.slice != (1.0, 1.0):
        key = pd.MultiIndex.from_frame(slices[["exam_id", "index"]].astype({"index": int}))
        wanted = pd.MultiIndex.from_arrays([slice_rows["exam_id"].to_numpy(), slice_rows["index"].astype(int).to_numpy()])
        pos = np.flatnonzero(key.isin(wanted))
        if batches:                                   # in purchase order, so each round is read on its own
            pos = pd.Series(np.arange(len(slices)), index=key).loc[wanted].to_numpy()
        y = slices["label"].to_numpy()[pos].astype(int)
        flip = _flips_by_batch(y, *noise.slice, seed, 0x51C, batches)
        col = slices.columns.get_loc("label")
        slices.iloc[pos[flip], col] = 1 - y[flip]
        derived = slices[slices["exam_id"].isin(set(slice_exam_ids))].groupby("exam_id")["label"].max()
        rows = exams["exam_id"].isin(derived.index)
        if rows.any():
            exams.loc[rows, "label"] = exams.loc[rows, "exam_id"].map(derived).astype(exams["label"].dtype).to_numpy()
    return exams, slices
