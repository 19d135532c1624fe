"""Label noise: the bought labels as a fallible source would give them (one reader, a majority of reads, recorded readers).

A label bought from a report-mining script or a single hurried reader is sometimes wrong. A noise
model says, per label kind (``exam`` or ``slice``), how often a truly positive label comes back
positive (*sensitivity*) and a truly negative one comes back negative (*specificity*), and how many
independent reads of each label are bought (the label seen is their majority). Written as a spec
string (``parse`` / ``LabelNoise.spec``)::

    ""                          clean labels (the default)
    "exam=0.90/0.97"            exam labels: one read, sensitivity 0.90, specificity 0.97; slice labels clean
    "exam=0.9/0.9,slice=0.95/0.99"
    "exam=0.8/0.8x3"            exam labels: the majority of 3 independent reads, each 80% sensitive, 80% specific
    "exam=R1"                   exam labels as recorded reader R1 read them (a dataset with read_R1, e.g. CQ500)
    "exam=R1+R2+R3"             the majority of the recorded readers R1, R2 and R3 (an odd number of them)

A simulated read flips exact counts, each read with a stream of its own; "one reader" against "the
majority of three" at three times the reads is then a study of two arms (README). Recorded readers
are the dataset's own reads (``labels.read_columns``; CQ500's ``reads.csv``), so no rate is assumed.

``apply`` flips an *exact* number of the bought labels, not a random number: of the n positive
labels of a kind, round(n x (1 - sensitivity)) come back negative, chosen with a seeded
permutation, and likewise for negatives, so a 10 % noise level is 10 % of the labels every time.
Labels bought in acquisition rounds (``batches``, ``ich.acquire``) are read round by round: each
round's purchase gets its exact counts from a stream of its own, so a label read wrong in round 1 is
read the same way by every later round's learner and by the final run. Only the labels a run bought
are changed; the test split (and a free validation split) stay clean, because a study measures what
noisy *training* labels cost, always against clean truth.
Stratified sampling (``data.select_labels``) still draws the budget on the clean labels, as the
reference protocol does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ich.labels import READ_PREFIX, READER_NAME, read_columns

KINDS = ("exam", "slice")


MAX_READS = 9


@dataclass(frozen=True)
class LabelNoise:
    """The source of the bought labels of each kind: rates and reads, or recorded readers (clean by default)."""

    exam: tuple[float, float] = (1.0, 1.0)    # (sensitivity, specificity) of one read of an exam label
    slice: tuple[float, float] = (1.0, 1.0)   # (sensitivity, specificity) of one read of a slice label
    exam_reads: int = 1                       # independent reads per exam label; the label seen is their majority
    slice_reads: int = 1                      # independent reads per slice label
    readers: tuple[str, ...] = ()             # exam labels from these recorded readers (majority), e.g. ("R1",)

    def __post_init__(self):
        object.__setattr__(self, "readers", tuple(self.readers))
        if self.readers and self.exam != (1.0, 1.0):
            raise ValueError("exam labels come from recorded readers or from simulated reads, not both")
        for k in KINDS:      # a clean source needs no second read: keep one spelling per model
            if getattr(self, k) == (1.0, 1.0):
                object.__setattr__(self, f"{k}_reads", 1)

    def touches(self, kind: str) -> bool:
        """Whether labels of ``kind`` come from a source other than the clean truth."""
        if kind == "exam" and self.readers:
            return True
        return getattr(self, kind) != (1.0, 1.0)

    def reads(self, kind: str) -> int:
        """Reads bought per label of ``kind`` (what the planner prices): 1, k, or the number of recorded readers."""
        if kind == "exam" and self.readers:
            return len(self.readers)
        return getattr(self, f"{kind}_reads")

    def only(self, kinds) -> "LabelNoise":
        """This model restricted to the label kinds in ``kinds`` (the others clean)."""
        keep = {k: (getattr(self, k), getattr(self, f"{k}_reads")) for k in kinds}
        return LabelNoise(**{k: v[0] for k, v in keep.items()}, **{f"{k}_reads": v[1] for k, v in keep.items()},
                          readers=self.readers if "exam" in kinds else ())

    @property
    def clean(self) -> bool:
        return not any(self.touches(k) for k in KINDS)

    def _sources(self) -> list[tuple[str, tuple[str, ...], float, float, int]]:
        """(kind, recorded readers, sensitivity, specificity, reads) of each kind the model touches."""
        return [(k, self.readers if k == "exam" else (), *getattr(self, k), self.reads(k))
                for k in KINDS if self.touches(k)]

    @property
    def spec(self) -> str:
        """The spec string (``parse(noise.spec) == noise``); "" when clean."""
        return ",".join(f"{k}=" + ("+".join(readers) if readers else f"{_num(s)}/{_num(p)}" + (f"x{n}" if n > 1 else ""))
                        for k, readers, s, p, n in self._sources())

    @property
    def tag(self) -> str:
        """A short name for arm and folder names: "" when clean, else e.g. "exam-sens90-spec97" (or "-x3",
        "exam-R1-R2-R3")."""
        return "-".join(f"{k}-" + ("-".join(readers) if readers else f"sens{_pct(s)}-spec{_pct(p)}" +
                                   (f"-x{n}" if n > 1 else ""))
                        for k, readers, s, p, n in self._sources())

    def words(self) -> str:
        """Plain words, e.g. "exam labels 90% sensitive, 97% specific" or "clean labels"."""
        parts = []
        for k, readers, s, p, n in self._sources():
            if readers:
                parts.append(f"exam labels as reader {readers[0]} read them" if len(readers) == 1 else
                             f"exam labels: the majority of readers {', '.join(readers)}")
            else:
                rates = f"{_pct(s)}% sensitive, {_pct(p)}% specific"
                parts.append(f"{k} labels {rates}" if n == 1 else f"{k} labels: the majority of {n} reads, each {rates}")
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
    fields: dict = {}
    for part in text.split(","):
        kind, sep, rates = part.strip().partition("=")
        kind, rates = kind.strip(), rates.strip()
        if kind in found or (kind == "exam" and "readers" in fields):
            raise ValueError(f"label noise {spec!r} names {kind} labels twice; give each kind once")
        names = rates.split("+")
        if sep and kind in KINDS and all(READER_NAME.match(n.strip()) for n in names):
            fields["readers"] = _readers(spec, kind, [n.strip() for n in names])
            continue
        rates, x, reads = rates.partition("x")
        sens, slash, spec_ = rates.partition("/")
        if not sep or not slash or kind not in KINDS:
            raise ValueError(f"label noise {spec!r}: each part must read KIND=SENSITIVITY/SPECIFICITY with KIND exam or "
                             f"slice, e.g. 'exam=0.90/0.97' (add x3 for the majority of 3 reads), or exam=R1 / "
                             f"exam=R1+R2+R3 for a dataset's recorded readers; found {part.strip()!r}")
        if x:
            if not reads.strip().isdigit() or int(reads) % 2 == 0 or not 1 <= int(reads) <= MAX_READS:
                raise ValueError(f"label noise {spec!r}: the reads after x must be an odd number from 1 to {MAX_READS} "
                                 f"(the label seen is their majority, so an even number could tie); found x{reads}")
            fields[f"{kind}_reads"] = int(reads)
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
    return LabelNoise(**found, **fields)


def _readers(spec: str, kind: str, names: list[str]) -> tuple[str, ...]:
    """Recorded readers of a spec part, checked (exam labels only, distinct, an odd number)."""
    if kind != "exam":
        raise ValueError(f"label noise {spec!r}: recorded readers give exam labels only (CQ500's reads.csv); use "
                         "slice=SENSITIVITY/SPECIFICITY for slice labels")
    if len(set(names)) != len(names) or len(names) % 2 == 0:
        raise ValueError(f"label noise {spec!r}: name an odd number of distinct readers (exam=R1 or exam=R1+R2+R3), "
                         f"so their majority cannot tie; found {'+'.join(names)}")
    return tuple(names)


def _flip_positions(y: np.ndarray, sens: float, spec: float, rng: np.random.Generator) -> np.ndarray:
    """Positions (into y, 0/1) to flip: exactly round(n_pos (1 - sens)) positives and round(n_neg (1 - spec)) negatives."""
    out = []
    for cls, keep in ((1, sens), (0, spec)):
        pool = np.flatnonzero(y == cls)
        k = int(np.floor(len(pool) * (1.0 - keep) + 0.5))
        out.append(pool[rng.permutation(len(pool))[:k]])
    return np.sort(np.concatenate(out)).astype(np.int64)


def _majority_flips(y: np.ndarray, sens: float, spec: float, key: list[int], reads: int) -> np.ndarray:
    """Positions of y that the majority of ``reads`` independent reads gets wrong; each read flips exact counts
    (``_flip_positions``) from a stream of its own, the first one ``key`` itself (so one read is the plain model)."""
    wrong = np.zeros(len(y), dtype=np.int64)
    for r in range(reads):
        wrong[_flip_positions(y, sens, spec, np.random.default_rng(key if r == 0 else [*key, 0x4EAD, r]))] += 1
    return np.flatnonzero(2 * wrong > reads).astype(np.int64)


def _flips_by_batch(y: np.ndarray, sens: float, spec: float, seed: int, stream: int, batches,
                    reads: int = 1) -> np.ndarray:
    """``_majority_flips`` over ``y`` (purchase order), exact within each batch; ``()`` = one purchase."""
    if not batches:
        return _majority_flips(y, sens, spec, [seed, stream], reads)
    if sum(batches) != len(y):
        raise ValueError(f"purchase batches {list(batches)} do not add up to the {len(y)} labels bought")
    starts = np.cumsum([0, *batches[:-1]])
    return np.concatenate([s + _majority_flips(y[s:s + n], sens, spec, [seed, stream, k], reads)
                           for k, (s, n) in enumerate(zip(starts, batches))]).astype(np.int64)


def recorded_reads(exams: pd.DataFrame, exam_ids, readers: tuple[str, ...]) -> np.ndarray:
    """The majority of the recorded ``readers``' exam reads of ``exam_ids`` (0/1, in that order).

    Raises:
        ValueError: the dataset has no such reader, or a bought exam was not read by all of them.
    """
    cols = [READ_PREFIX + r for r in readers]
    missing = [c for c in cols if c not in exams.columns]
    if missing:
        have = read_columns(exams.columns)
        raise ValueError(f"label noise exam={'+'.join(readers)} needs the recorded reads {missing} in the dataset's "
                         f"exams table; it has {'readers ' + ', '.join(have) if have else 'no recorded reader'}. "
                         "Import CQ500 with its reads.csv (python -m ich import cq500), or simulate a reader with "
                         "exam=SENSITIVITY/SPECIFICITY")
    reads = exams.set_index("exam_id").loc[list(exam_ids), cols]
    if reads.isna().any().any():
        raise ValueError(f"exam {reads.index[reads.isna().any(axis=1)][0]} has no read by every reader of "
                         f"{'+'.join(readers)}; choose readers who read every exam")
    return (2 * reads.astype(int).sum(axis=1) > len(readers)).astype(int).to_numpy()


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
    if ids and noise.readers:
        pos = pd.Index(pd.Series(exams.index, index=exams["exam_id"]).loc[ids].to_numpy())
        exams.loc[pos, "label"] = recorded_reads(exams, ids, noise.readers)
    elif ids and noise.touches("exam"):
        pos = exams.index[exams["exam_id"].isin(set(ids))]
        if batches:                                   # in purchase order, so each round is read on its own
            pos = pd.Index(pd.Series(exams.index, index=exams["exam_id"]).loc[ids].to_numpy())
        y = exams.loc[pos, "label"].astype(int).to_numpy()
        flip = _flips_by_batch(y, *noise.exam, seed, 0xE4A, batches, noise.exam_reads)
        exams.loc[pos[flip], "label"] = 1 - y[flip]
    if len(slice_rows) and noise.touches("slice"):
        key = pd.MultiIndex.from_frame(slices[["exam_id", "index"]].astype({"index": int}))
        wanted = pd.MultiIndex.from_arrays([slice_rows["exam_id"].to_numpy(), slice_rows["index"].astype(int).to_numpy()])
        pos = np.flatnonzero(key.isin(wanted))
        if batches:                                   # in purchase order, so each round is read on its own
            pos = pd.Series(np.arange(len(slices)), index=key).loc[wanted].to_numpy()
        y = slices["label"].to_numpy()[pos].astype(int)
        flip = _flips_by_batch(y, *noise.slice, seed, 0x51C, batches, noise.slice_reads)
        col = slices.columns.get_loc("label")
        slices.iloc[pos[flip], col] = 1 - y[flip]
        derived = slices[slices["exam_id"].isin(set(slice_exam_ids))].groupby("exam_id")["label"].max()
        rows = exams["exam_id"].isin(derived.index)
        if rows.any():
            exams.loc[rows, "label"] = exams.loc[rows, "exam_id"].map(derived).astype(exams["label"].dtype).to_numpy()
    return exams, slices
