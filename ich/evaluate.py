"""Evaluation of a run: exam, slice and pixel figures with the reference study's statistics, written to metrics.json.

Three levels (paper-protocol.md §8):

- **Exam** (``summarise``): AUC with a 95% CI (DeLong, or a stratified bootstrap), the ROC
  points, and sensitivity/specificity at the reference's operating points (the ROC point
  nearest (0, 1), "closest" = the reference's cutoff "d"; and Youden's J). For a run, every
  cutoff (operating points, sequence F1, the reference pixel selection) is fixed on the labels
  the run used for model selection (``validation_thresholds``) and applied unchanged to the
  test split; reading it off the test ROC, as the reference did, is kept only to reproduce the
  published figures (``summarise(..., thresholds=None)``).
- **Slice** (``summarise``): slice AUC and average precision of the slice probabilities and of
  the attention weights (as relative attention a·n, n = slices in the exam, so that the weak
  flag rule a >= 1/n is a >= 1 on every exam); and the hemorrhage-sequence F1 (§8.2) per
  estimator: ``"probability"`` (slice probabilities; cutoff t from the ROC pooled over slices,
  an exam is called when its maximum slice probability >= t, slices flagged when >= t, runs
  shorter than 4 dropped) and ``"attention"`` (cutoff t from the exam ROC, an exam is called
  when its exam score >= t, slices flagged when a >= 1/n, runs shorter than 2 dropped).
- **Pixel** (``pixel_scores`` + ``summarise_pixels``): heatmaps of lesion slices
  (``ich.explain``), Otsu-binarised, scored by Dice against the mask and against the union of
  its components' bounding boxes, and by the pointing game; median/IQR per subtype.

``evaluate_run`` ties them together for one run folder and one dataset (scoring the dataset
first when the run has no predictions for it) and writes ``metrics.json`` (or
``metrics-<name>.json`` for another dataset) atomically; ``compare_runs`` is the paired
DeLong test of two runs on the exams they share.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ich import metrics as M
from ich import runs
from ich.config import check_choice
from ich.labels import SUBTYPES
from ich.predict import load_predictions, resolve_predictions
from ich.record import FORMAT as RECORD_FORMAT

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

ESTIMATORS = ("probability", "attention")
#: Estimators scored by default for each supervision (the reference's pairing).
DEFAULT_ESTIMATORS = {"weak": ("attention",), "strong": ("probability",), "mixed": ("attention", "probability")}
#: Default minimum predicted-run length per estimator (paper-protocol.md §8.2 step 4).
ESTIMATOR_MIN_LENGTH = {"probability": M.DEFAULT_MIN_LENGTH["strong"], "attention": M.DEFAULT_MIN_LENGTH["weak"]}
SELECTIONS = ("lesion", "reference")
DEFAULT_PIXEL_METHODS = ("gradcam", "random")


# ------------------------------------------------------------------------------ helpers
def _float_array(series: pd.Series) -> np.ndarray:
    """Nullable / object column -> float64 with NaN for missing."""
    return pd.to_numeric(series, errors="coerce").astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _check_frames(exams: pd.DataFrame, slices: pd.DataFrame) -> None:
    need_e = ["exam_id", "exam_score", "exam_label"]
    need_s = ["exam_id", "index", "slice_score", "attention", "slice_label"]
    for name, df, need in (("exams", exams, need_e), ("slices", slices, need_s)):
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"{name} must be a DataFrame (from runs.read_predictions), not {type(df).__name__}")
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(f"{name} lacks columns {missing}; expected at least {need} (runs.read_predictions)")


def _auc_block(y: np.ndarray, s: np.ndarray) -> dict:
    """AUC and AP of labelled, finite scores (NaN on one-class input)."""
    keep = np.isfinite(y) & np.isfinite(s)
    y, s = y[keep], s[keep]
    if y.size == 0:
        return {"auc": float("nan"), "average_precision": float("nan"), "n": 0, "n_positive": 0}
    return {"auc": M.roc_auc(y, s), "average_precision": M.average_precision(y, s),
            "n": int(y.size), "n_positive": int(y.sum())}


def _resolve_min_length(min_length: int | Mapping[str, int] | None, estimator: str) -> int:
    if min_length is None:
        return ESTIMATOR_MIN_LENGTH[estimator]
    if isinstance(min_length, Mapping):
        return int(min_length.get(estimator, ESTIMATOR_MIN_LENGTH[estimator]))
    return min_length


# ------------------------------------------------------------------------------ exam + slice
def exam_summary(y_true, y_score, *, level: float = 0.95, ci_method: str = "delong", n_boot: int = 2000,
                 seed: int = 0, roc: bool = True, thresholds: Mapping[str, float] | None = None) -> dict:
    """Exam-level figures: AUC with CI, AP, ROC points and the two operating points.

    Args:
        y_true: (N,) 0/1 exam labels (no missing values).
        y_score: (N,) exam scores (probabilities).
        level, ci_method, n_boot, seed: see ``metrics.auc_ci``.
        roc: include the ROC points (fpr, tpr, thresholds; the first threshold is +inf).
        thresholds: {rule: threshold} fixed on other data (a run's validation split) and applied here;
            None reads each rule's cutoff off this data's own ROC, as the reference study did (used to
            reproduce its published figures, never to report a run of ours).

    Returns:
        dict with ``auc, auc_ci_low, auc_ci_high, ci_method, level, average_precision, n,
        n_positive, operating_points`` ({"closest": {threshold, sensitivity, specificity},
        "youden": {...}}) and ``roc``. One-class input gives NaN figures.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    auc, lo, hi = M.auc_ci(y, s, level=level, method=ci_method, n_boot=n_boot, seed=seed)
    out = {"auc": auc, "auc_ci_low": lo, "auc_ci_high": hi, "ci_method": ci_method, "level": level,
           "average_precision": M.average_precision(y, s), "n": int(y.size), "n_positive": int(y.sum()),
           "operating_points": ({rule: M.operating_point(y, s, rule) for rule in ("closest", "youden")}
                                if thresholds is None else
                                {rule: M.at_threshold(y, s, thresholds.get(rule, float("nan")))
                                 for rule in ("closest", "youden")}),
           "threshold_source": "this split's ROC (reference)" if thresholds is None else "validation"}
    if roc:
        fpr, tpr, thr = M.roc_points(y, s)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}
    return out


def _exam_groups(slices: pd.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per exam in slice order: (exam_id, labels (S,), probabilities (S,), attention (S,))."""
    df = slices.sort_values(["exam_id", "index"], kind="mergesort")
    ids = df["exam_id"].to_numpy()
    lab, prob, att = _float_array(df["slice_label"]), _float_array(df["slice_score"]), _float_array(df["attention"])
    out = []
    if len(ids):
        bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(ids)]):
            out.append((ids[a], lab[a:b], prob[a:b], att[a:b]))
    return out


def sequence_summary(exams: pd.DataFrame, slices: pd.DataFrame, *, estimator: str, cutoff: str = "closest",
                     min_length: int | None = None, offset: int = 0, threshold: float | None = None) -> dict:
    """Hemorrhage-sequence detection F1 of one estimator (paper-protocol.md §8.2), over exams
    whose every slice is labelled.

    Args:
        exams, slices: prediction tables (``runs.read_predictions``).
        estimator: ``"probability"`` (strong rule) or ``"attention"`` (weak rule); see the module docstring.
        cutoff: ``"closest"`` (the reference's "d") or ``"youden"``; the ROC it is read from is the
            pooled slice ROC for probability and the exam ROC for attention.
        min_length: minimum predicted-run length (default 4 probability, 2 attention).
        offset: slices of tolerance around each true run (0: TPR notebooks; 4: label-budget notebook).
        threshold: the cutoff fixed on other data (a run's validation split); None reads it off this
            data's own ROC, as the reference did.

    Returns:
        dict with ``estimator, cutoff, threshold, min_length, offset, f1, precision, recall,
        n_scored, n_skipped, n_true_runs, n_hit, tpr`` (hit true runs / all true runs, exams
        below the cutoff included); ``available: False`` and NaN figures when the estimator's
        column is empty (attention of a strong run) or nothing is labelled.
    """
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("cutoff", cutoff, ("closest", "youden"))
    min_length = ESTIMATOR_MIN_LENGTH[estimator] if min_length is None else min_length
    nan = float("nan")
    out = {"estimator": estimator, "cutoff": cutoff, "threshold": nan, "min_length": min_length, "offset": offset,
           "f1": nan, "precision": nan, "recall": nan, "n_scored": 0, "n_skipped": 0, "n_true_runs": 0,
           "n_hit": 0, "tpr": nan, "available": True}
    groups = [g for g in _exam_groups(slices) if np.isfinite(g[1]).all()]
    if estimator == "attention":
        groups = [g for g in groups if np.isfinite(g[3]).all()]
    if not groups:
        out["available"] = False
        return out
    if estimator == "probability":
        y = np.concatenate([g[1] for g in groups])
        s = np.concatenate([g[2] for g in groups])
        t = M.operating_point(y, s, cutoff)["threshold"] if threshold is None else float(threshold)
        called = {g[0]: bool(np.max(g[2]) >= t) for g in groups}
    else:
        ex = exams.set_index("exam_id")
        ey, es = _float_array(ex["exam_label"]), _float_array(ex["exam_score"])
        keep = np.isfinite(ey) & np.isfinite(es)
        t = M.operating_point(ey[keep], es[keep], cutoff)["threshold"] if threshold is None else float(threshold)
        score = dict(zip(ex.index, es))
        called = {g[0]: bool(score.get(g[0], nan) >= t) for g in groups}
    out["threshold"] = t
    if np.isnan(t):
        return out                                           # one-class ROC: no cutoff
    rows, n_true, n_hit = [], 0, 0
    for exam_id, lab, prob, att in groups:
        if estimator == "probability":
            values, flags = prob, M.strong_flags(prob, t)
        else:
            values, flags = att, M.weak_flags(att)
        rows.append((lab, values, called[exam_id], flags))
        r = M.sequence_f1(lab, values, flags if called[exam_id] else np.zeros_like(flags),
                          min_length=min_length, offset=offset)
        n_true += r["gt"]
        n_hit += sum(r["hit"])
    agg = M.mean_sequence_f1(rows, min_length=min_length, offset=offset)
    out.update({k: agg[k] for k in ("f1", "precision", "recall", "n_scored", "n_skipped")})
    out.update(n_true_runs=n_true, n_hit=n_hit, tpr=n_hit / n_true if n_true else nan)
    return out


def summarise(exams: pd.DataFrame, slices: pd.DataFrame, *, supervision: str, level: float = 0.95,
              ci_method: str = "delong", n_boot: int = 2000, seed: int = 0, cutoff: str = "closest",
              estimators: Sequence[str] | None = None, min_length: int | Mapping[str, int] | None = None,
              offset: int = 0, thresholds: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Exam- and slice-level figures of a run's predictions.

    Args:
        exams: one row per exam: ``exam_id, exam_score, exam_label`` (``runs.read_predictions``).
        slices: one row per slice: ``exam_id, index, slice_score, attention, slice_label``.
        supervision: weak | strong | mixed; picks the default sequence estimators
            (``DEFAULT_ESTIMATORS``).
        level, ci_method, n_boot, seed: the exam AUC's confidence interval (``metrics.auc_ci``).
        cutoff: the sequence-F1 cutoff rule, ``"closest"`` (reference "d") or ``"youden"``.
        estimators: sequence-F1 estimators to score (``ESTIMATORS``); default by supervision.
        min_length: an int for every estimator, or {estimator: int}; default 4 probability, 2 attention.
        offset: hit tolerance in slices (``metrics.sequence_f1``).
        thresholds: ``{"exam": {rule: t}, "slice": {rule: t}}`` fixed on the run's validation split
            (``validation_thresholds``): exam operating points and the attention estimator's cutoff use
            the exam ones, the probability estimator's cutoff the slice ones. None reads them off these
            predictions' own ROCs, as the reference did.

    Returns:
        ``{"exam": exam_summary(...), "slice": {"probability": {auc, average_precision, n,
        n_positive}, "attention": {...}}, "sequence": {estimator: sequence_summary(...)},
        "counts": {...}}``. Unlabelled exams and slices are left out of the figures that need
        labels; one-class input gives NaN figures, never an error.
    """
    check_choice("supervision", supervision, tuple(DEFAULT_ESTIMATORS))
    _check_frames(exams, slices)
    estimators = tuple(DEFAULT_ESTIMATORS[supervision] if estimators is None else estimators)
    for e in estimators:
        check_choice("estimator", e, ESTIMATORS)
    ey, es = _float_array(exams["exam_label"]), _float_array(exams["exam_score"])
    keep = np.isfinite(ey) & np.isfinite(es)
    exam = exam_summary(ey[keep], es[keep], level=level, ci_method=ci_method, n_boot=n_boot, seed=seed,
                        thresholds=None if thresholds is None else thresholds.get("exam", {}))

    sy, sp = _float_array(slices["slice_label"]), _float_array(slices["slice_score"])
    sa = _float_array(slices["attention"])
    n_per_exam = slices.groupby("exam_id")["index"].transform("size").to_numpy(dtype=np.float64)
    slice_part = {"probability": _auc_block(sy, sp), "attention": _auc_block(sy, sa * n_per_exam)}
    def fixed(e: str) -> float | None:
        if thresholds is None:
            return None
        return thresholds.get("exam" if e == "attention" else "slice", {}).get(cutoff, float("nan"))

    sequence = {e: sequence_summary(exams, slices, estimator=e, cutoff=cutoff,
                                    min_length=_resolve_min_length(min_length, e), offset=offset,
                                    threshold=fixed(e))
                for e in estimators}
    counts = {"exams": int(len(exams)), "labelled_exams": int(keep.sum()), "positive_exams": int(np.nansum(ey)),
              "slices": int(len(slices)), "labelled_slices": int(np.isfinite(sy).sum()),
              "positive_slices": int(np.nansum(sy))}
    return {"supervision": supervision, "counts": counts, "exam": exam, "slice": slice_part, "sequence": sequence}


# ------------------------------------------------------------------------------ pixel level
def select_pixel_slices(dataset, exams: pd.DataFrame, slices: pd.DataFrame, *, supervision: str = "weak",
                        selection: str = "lesion", cutoff: str = "closest", max_slices: int | None = 200,
                        seed: int = 0, thresholds: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """The slices whose heatmaps are scored: rows (exam_id, index) of predicted exams with a lesion mask.

    Args:
        dataset: the ``ich.store.Dataset`` the predictions are about.
        exams, slices: prediction tables.
        supervision: the run's supervision (reference selection rule).
        selection: ``"lesion"`` = every slice with lesion pixels (the same set for every run,
            so runs compare); ``"reference"`` = §8.3: exams scored >= the cutoff, then slices
            flagged by the model (strong: probability >= the pooled-slice cutoff; weak and
            mixed: attention >= 1/n, standing in for the reference's bag h-Shap), then
            restricted to lesion slices.
        max_slices: a seeded random subset of at most this many slices (None = all).
        seed: seeds that subset.
        thresholds: validation cutoffs (``validation_thresholds``) for the reference selection; None
            reads them off these predictions' ROC, as the reference did.

    Returns:
        DataFrame (exam_id, index) sorted by exam and slice; empty when nothing qualifies.
    """
    check_choice("selection", selection, SELECTIONS)
    if max_slices is not None and (isinstance(max_slices, bool) or not isinstance(max_slices, (int, np.integer))
                                   or max_slices < 1):
        raise ValueError(f"max_slices must be a positive integer or None, not {max_slices!r}")
    with_mask = set(dataset.exams.loc[dataset.exams["has_mask"].astype(bool), "exam_id"])
    truth = dataset.slices[["exam_id", "index", "lesion_pixels"]]
    cand = slices[slices["exam_id"].isin(with_mask)][["exam_id", "index", "slice_score", "attention"]]
    cand = cand.merge(truth, on=["exam_id", "index"], how="inner")
    cand = cand[pd.to_numeric(cand["lesion_pixels"], errors="coerce").fillna(0) > 0]
    if selection == "reference" and len(cand):
        if supervision == "strong":
            y, s = _float_array(slices["slice_label"]), _float_array(slices["slice_score"])
            keep = np.isfinite(y)
            t = (M.operating_point(y[keep], s[keep], cutoff)["threshold"] if thresholds is None
                 else thresholds.get("slice", {}).get(cutoff, float("nan")))
            called = slices.groupby("exam_id")["slice_score"].max() >= t
            flag = _float_array(cand["slice_score"]) >= t
        else:
            ey, es = _float_array(exams["exam_label"]), _float_array(exams["exam_score"])
            keep = np.isfinite(ey) & np.isfinite(es)
            t = (M.operating_point(ey[keep], es[keep], cutoff)["threshold"] if thresholds is None
                 else thresholds.get("exam", {}).get(cutoff, float("nan")))
            called = pd.Series(es >= t, index=exams["exam_id"].to_numpy())
            n = slices.groupby("exam_id")["index"].size()
            flag = _float_array(cand["attention"]) >= 1.0 / cand["exam_id"].map(n).to_numpy(dtype=np.float64)
        flag &= cand["exam_id"].map(called).fillna(False).to_numpy(dtype=bool)
        cand = cand[flag]
    rows = cand[["exam_id", "index"]].sort_values(["exam_id", "index"]).reset_index(drop=True)
    if max_slices is not None and len(rows) > max_slices:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_slices, replace=False))
        rows = rows.iloc[pick].reset_index(drop=True)
    return rows


def exam_input(dataset, exam_id: str, *, windows: Sequence[str], input_size: int | None):
    """One exam as model input and truth: (x (S, C, h, w) float32 tensor in [0, 1], mask (S, H, W) uint8 or None).

    ``x`` is resized to the run's input size exactly as in training (``data.VolumeCache``);
    the mask stays at the dataset's cached size.
    """
    from ich.data import VolumeCache, window_slices

    vol = VolumeCache(dataset, input_size, max_bytes=0).get(exam_id)            # (S, h, w) int16
    x = window_slices(vol, tuple(windows))                                       # (S, C, h, w)
    mask = dataset.load_mask(exam_id)
    return x, (None if mask is None else np.asarray(mask))


def take_slices(x, idx: np.ndarray):
    """Rows ``idx`` of a tensor (a copy of the positions, so read-only arrays index cleanly)."""
    import torch

    return x[torch.from_numpy(np.array(idx, dtype=np.int64))]


def _mask_subtypes(mask2d: np.ndarray) -> list[str]:
    codes = np.unique(mask2d[mask2d > 0])
    return [SUBTYPES[int(c) - 1] for c in codes if 1 <= int(c) <= len(SUBTYPES)]


def pixel_scores(model, dataset, rows: pd.DataFrame, *, windows: Sequence[str], input_size: int | None,
                 methods: Sequence[str] = DEFAULT_PIXEL_METHODS, batch_size: int = 16, n_steps: int = 32,
                 internal_batch_size: int | None = 16, seed: int = 0, nbins: int = 1024,
                 plus_one: bool = False) -> pd.DataFrame:
    """Explain the given lesion slices with each method and score the maps against the masks.

    Maps are computed at the model's input size and resized bilinearly to the mask's size
    before scoring (``explain.score_map``: Otsu Dice against the mask and against the union of
    boxes, pointing game).

    Args:
        model: the run's ``MILModel``.
        dataset: the ``ich.store.Dataset`` holding the slices and masks.
        rows: (exam_id, index) of the slices to score (``select_pixel_slices``).
        windows, input_size: the run's ``data`` config.
        methods: ``explain.METHODS`` names (``"random"`` is the control map).
        batch_size, n_steps, internal_batch_size: passed to ``explain.explain_slices``.
        seed: seeds the random control (per exam: seed + exam position).

    Returns:
        One row per (method, slice): ``method, exam_id, index, dice_mask, dice_boxes, pointing,
        lesion_pixels, subtypes`` (list of subtype names in the slice's mask), ``delta`` (IG's
        convergence delta in logit units; NaN for other methods), ``seconds`` (explanation time
        per slice). Slices of exams without a mask are skipped.
    """
    from ich.explain import METHODS, explain_slices, resize_maps, score_map

    for m in methods:
        check_choice("pixel method", m, METHODS)
    out = []
    for k, (exam_id, grp) in enumerate(rows.groupby("exam_id", sort=True)):
        x, mask = exam_input(dataset, exam_id, windows=windows, input_size=input_size)
        if mask is None:
            continue
        idx = grp["index"].to_numpy(dtype=np.int64)
        for method in methods:
            t0 = time.perf_counter()
            maps, delta = explain_slices(model, take_slices(x, idx), method=method, batch_size=batch_size,
                                         n_steps=n_steps, internal_batch_size=internal_batch_size, seed=seed + k,
                                         return_delta=True)
            seconds = (time.perf_counter() - t0) / max(1, len(idx))
            maps = resize_maps(maps, mask.shape[1:])                             # (k, H, W)
            for j, i in enumerate(idx):
                sc = score_map(maps[j], mask[i], nbins=nbins, plus_one=plus_one)
                out.append({"method": method, "exam_id": exam_id, "index": int(i), **sc,
                            "subtypes": _mask_subtypes(mask[i]), "delta": float(delta[j]), "seconds": seconds})
    cols = ["method", "exam_id", "index", "dice_mask", "dice_boxes", "pointing", "lesion_pixels", "subtypes",
            "delta", "seconds"]
    return pd.DataFrame(out, columns=cols)


def summarise_pixels(scores: pd.DataFrame) -> dict:
    """Per method: median (IQR) Dice against masks and boxes, and the pointing-game hit rate, per subtype.

    Subtype rule of §8.3: a slice with one subtype counts for it and for "Any"; a slice with
    several counts for "Any" only.

    Returns:
        ``{method: {"n_slices": int, "seconds_per_slice": float, "median_abs_delta": IG's median
        |convergence delta| (None for other methods), "by_subtype": {subtype: {"n",
        "dice_mask": {median, q1, q3, iqr}, "dice_boxes": {...}, "pointing": hit rate}}}}``.
    """
    out: dict = {}
    if scores.empty:
        return out
    for method, grp in scores.groupby("method", sort=False):
        by: dict = {}
        for value in ("dice_mask", "dice_boxes"):
            table = M.summarize_by_subtype(grp, value=value)
            for r in table.to_dict("records"):
                d = by.setdefault(r["subtype"], {"n": int(r["n"])})
                d[value] = {k: r[k] for k in ("median", "q1", "q3", "iqr")}
        for sub, hits in _pointing_by_subtype(grp).items():
            by.setdefault(sub, {"n": len(hits)})["pointing"] = float(np.mean(hits))
        delta = np.abs(grp["delta"].to_numpy(dtype=np.float64)) if "delta" in grp else np.array([np.nan])
        out[str(method)] = {"n_slices": int(len(grp)), "seconds_per_slice": float(grp["seconds"].mean()),
                            "median_abs_delta": float(np.median(delta)) if np.isfinite(delta).all() else None,
                            "by_subtype": by}
    return out


def _pointing_by_subtype(scores: pd.DataFrame) -> dict[str, list[float]]:
    """Pointing hits grouped with ``summarize_by_subtype``'s rule ("Any" first)."""
    out: dict[str, list[float]] = {"Any": []}
    for subs, hit in zip(scores["subtypes"], scores["pointing"]):
        if not np.isfinite(hit) or len(subs) == 0:
            continue
        out["Any"].append(float(hit))
        if len(subs) == 1:
            out.setdefault(subs[0], []).append(float(hit))
    return {k: v for k, v in out.items() if v}


# ------------------------------------------------------------------------------ run level
def validation_thresholds(run: str | os.PathLike) -> dict:
    """Cutoffs fixed on the labels a run used for model selection, to apply unchanged to test data.

    Reads ``predictions-selection.parquet`` (written by training: the validation exams or slices
    that chose the epoch and learning rate). Returns ``{"exam": {rule: t}, "slice": {rule: t},
    "reason": str}``: exam cutoffs from the validation exam ROC, slice cutoffs from the pooled
    validation slice ROC, ``nan`` where those labels do not exist (a weak run's paid validation has
    exam labels only; the label-free schedule has none), with the reason in words. The test split
    is never read here.
    """
    nan = float("nan")
    out = {"exam": {r: nan for r in ("closest", "youden")}, "slice": {r: nan for r in ("closest", "youden")}}
    if not runs.predictions_path(run, runs.SELECTION_PREDICTIONS).is_file():
        out["reason"] = ("operating point not available: the run kept no validation predictions (label-free "
                         "schedule, or trained before validation predictions were kept)")
        return out
    exams, slices = runs.read_predictions(run, runs.SELECTION_PREDICTIONS)
    ey, es = _float_array(exams["exam_label"]), _float_array(exams["exam_score"])
    keep = np.isfinite(ey) & np.isfinite(es)
    sy, sp = _float_array(slices["slice_label"]), _float_array(slices["slice_score"])
    skeep = np.isfinite(sy) & np.isfinite(sp)
    for rule in ("closest", "youden"):
        if keep.any():
            out["exam"][rule] = M.operating_point(ey[keep], es[keep], rule)["threshold"]
        if skeep.any():
            out["slice"][rule] = M.operating_point(sy[skeep], sp[skeep], rule)["threshold"]
    out["reason"] = (f"cutoffs fixed on the run's validation labels ({int(keep.sum())} exam, {int(skeep.sum())} "
                     "slice labels) and applied unchanged")
    return out


def evaluate_run(run: str | os.PathLike, dataset: str | os.PathLike | None = None, *, split: str | None = None,
                 name: str | None = None, pixel: bool = True, pixel_methods: Sequence[str] = DEFAULT_PIXEL_METHODS,
                 selection: str = "lesion", max_pixel_slices: int | None = 200, device: str = "auto",
                 write: bool = True, level: float = 0.95, ci_method: str = "delong", n_boot: int = 2000,
                 seed: int = 0, cutoff: str = "closest", estimators: Sequence[str] | None = None,
                 min_length: int | Mapping[str, int] | None = None, offset: int = 0,
                 n_steps: int = 32, internal_batch_size: int | None = 16) -> dict:
    """Evaluate a finished run on a dataset and write ``metrics.json`` (``metrics-<name>.json`` for another dataset).

    Args:
        run: the run folder.
        dataset: dataset folder (default: the run's own; its test split).
        split, name: see ``load_predictions``.
        pixel: score heatmaps against masks when the dataset has masks for the evaluated exams.
        pixel_methods, selection, max_pixel_slices: see ``pixel_scores`` / ``select_pixel_slices``.
        device: where the model runs for pixel scores (explanations are float32).
        write: write the metrics file (atomically).
        level, ci_method, n_boot, seed, cutoff, estimators, min_length, offset: see ``summarise``.
        n_steps, internal_batch_size: Integrated Gradients settings when ``"ig"`` is a pixel method.

    Returns:
        The metrics dict: ``run, dataset, split, prediction_name, supervision, created, exam, slice,
        sequence, counts, pixel`` (None when there are no masks or ``pixel`` is False), ``seconds``.
    """
    from ich.store import open_dataset

    from ich.explain import METHODS

    t0 = time.perf_counter()
    for m in pixel_methods if pixel else ():
        check_choice("pixel method", m, METHODS)
    check_choice("selection", selection, SELECTIONS)
    cfg = runs.read_config(run)
    dataset = str(dataset or cfg.data.dataset)
    default_name, split = resolve_predictions(run, dataset, split)
    exams, slices, name = load_predictions(run, dataset, split=split, name=name or default_name, device=device)
    supervision = cfg.train.supervision
    result = {"format": RECORD_FORMAT, "run": Path(run).name, "dataset": dataset, "split": split,
              "prediction_name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    thresholds = validation_thresholds(run)      # never this split's own ROC: no test peeking
    result.update(summarise(exams, slices, supervision=supervision, level=level, ci_method=ci_method,
                            n_boot=n_boot, seed=seed, cutoff=cutoff, estimators=estimators,
                            min_length=min_length, offset=offset, thresholds=thresholds))
    result["thresholds"] = thresholds
    result["pixel"] = None
    if pixel:
        ds = open_dataset(dataset)
        rows = select_pixel_slices(ds, exams, slices, supervision=supervision, selection=selection,
                                   cutoff=cutoff, max_slices=max_pixel_slices, seed=seed, thresholds=thresholds)
        if len(rows):
            from ich.device import resolve_device

            model = runs.load_model(run, resolve_device(device))
            scores = pixel_scores(model, ds, rows, windows=cfg.data.windows, input_size=cfg.data.input_size,
                                  methods=pixel_methods, n_steps=n_steps, internal_batch_size=internal_batch_size,
                                  seed=seed)
            result["pixel"] = {"selection": selection, "max_slices": max_pixel_slices,
                               "methods": summarise_pixels(scores)}
    result["seconds"] = time.perf_counter() - t0
    if write:
        runs.write_evaluation(run, result, name=name)
    return result


# ------------------------------------------------------------------------------ two runs
def compare_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, *, dataset: str | os.PathLike | None = None,
                 split: str | None = None, alternative: str = "two-sided", level: float = 0.95,
                 n_boot: int | None = None, seed: int = 0, device: str = "auto") -> dict:
    """Paired DeLong test of two runs' exam AUCs on the exams both scored (``metrics.delong_test``).

    Args:
        run_a, run_b: run folders; ``alternative="greater"`` tests H1: AUC_a > AUC_b (the
            reference's one-sided test had the weak learner as ``a``).
        dataset: dataset folder for both (default: each run's own; then the test split).
        split: see ``load_predictions``.
        alternative: two-sided | greater | less.
        level: level of the CI of the difference.
        n_boot: also run the paired stratified bootstrap with this many resamples (a cross-check).
        seed: seeds the bootstrap.

    Returns:
        dict with ``run_a, run_b, n_exams, n_positive, n_only_a, n_only_b, alternative, level,
        auc_a, auc_b, diff, diff_ci_low, diff_ci_high, z, p_value`` and, with ``n_boot``,
        ``bootstrap`` (``metrics.bootstrap_auc_diff``'s dict).

    Raises:
        ValueError: the runs share no labelled exam, or give one exam different labels.
    """
    frames = []
    for run in (run_a, run_b):
        exams, _, _ = load_predictions(run, dataset, split=split, device=device)
        e = exams[["exam_id", "exam_score", "exam_label"]].copy()
        e["exam_label"], e["exam_score"] = _float_array(e["exam_label"]), _float_array(e["exam_score"])
        frames.append(e[np.isfinite(e["exam_label"]) & np.isfinite(e["exam_score"])])
    a, b = frames
    both = a.merge(b, on="exam_id", suffixes=("_a", "_b"))
    if both.empty:
        raise ValueError(f"runs {Path(run_a).name} and {Path(run_b).name} share no labelled exam: they were "
                         "scored on different datasets or splits; compare them on one dataset with --dataset")
    bad = both["exam_label_a"] != both["exam_label_b"]
    if bad.any():
        raise ValueError(f"runs {Path(run_a).name} and {Path(run_b).name} give {int(bad.sum())} shared exams different "
                         f"labels (e.g. {both.loc[bad, 'exam_id'].iloc[0]}); they were scored on different datasets")
    y = both["exam_label_a"].to_numpy()
    sa, sb = both["exam_score_a"].to_numpy(), both["exam_score_b"].to_numpy()
    out = {"run_a": Path(run_a).name, "run_b": Path(run_b).name, "n_exams": int(len(both)),
           "n_positive": int(y.sum()), "n_only_a": int(len(a) - len(both)), "n_only_b": int(len(b) - len(both)),
           "alternative": alternative, "level": level}
    out.update(M.delong_test(y, sa, sb, alternative=alternative, level=level))
    if n_boot:
        out["bootstrap"] = M.bootstrap_auc_diff(y, sa, sb, alternative=alternative, level=level, n_boot=n_boot,
                                                seed=seed)
    return out
