"""Scoring exams with a trained model: per-exam and per-slice probabilities and attention.

``score_bags`` turns a loader of (padded) bags into the prediction table of the run folder
(one row per slice: exam_id, index, split, exam_score, exam_label, slice_score, attention,
slice_label). The exam score is sigmoid(exam logit) for exam-supervised learners (weak,
mixed) and the maximum slice probability for the slice-supervised learner (strong), as the
reference did; the strong learner's attention column is NaN (its pooling is never trained).
``predict_dataset`` scores a dataset with a finished run; ``predict_volume`` scores one HU volume.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ich import ood, runs
from ich.config import check_choice
from ich.data import bag_loader, window_slices
from ich.device import autocast, resolve_device, resolve_precision
from ich.metrics import roc_auc
from ich.preprocess import resize
from ich.store import open_dataset

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


def exam_probability(supervision: str, exam_logit, slice_prob):
    """The exam score rule, written once: a weak or mixed learner's exam probability is sigmoid(its MIL exam
    logit); a strong learner has no exam head, so its exam score is its highest slice probability.

    Args:
        exam_logit: (B,) or a scalar; slice_prob: (B, S) or (S,), padded slices set to -inf (torch or numpy).

    Returns:
        (B,) or a float, of the type given.
    """
    if torch.is_tensor(slice_prob):
        return slice_prob.amax(dim=-1) if supervision == "strong" else torch.sigmoid(exam_logit)
    if supervision == "strong":
        return np.max(slice_prob, axis=-1) if np.ndim(slice_prob) > 1 else float(np.max(slice_prob))
    return 1.0 / (1.0 + np.exp(-np.asarray(exam_logit, dtype=np.float64))) if np.ndim(exam_logit) else \
        float(1.0 / (1.0 + np.exp(-float(exam_logit))))


def labelled_auc(y_true, y_score) -> float:
    """ROC AUC (``metrics.roc_auc``) over the items that carry a label and a score; NaN on one class or none."""
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(y_score, dtype=float)
    keep = ~np.isnan(y) & np.isfinite(s)
    return roc_auc(y[keep].astype(int), s[keep]) if keep.any() else float("nan")


@torch.no_grad()
def score_bags(model, loader, *, supervision: str, device: torch.device, precision: str = "fp32",
               split: str | None = None) -> pd.DataFrame:
    """Score every bag of a loader (batches from ``collate_bags``) -> the prediction table.

    Returns:
        One row per real slice with ``runs.PREDICTION_COLUMNS`` (labels as nullable Int8).
    """
    model.eval()
    parts = []
    for batch in loader:
        mask = batch["mask"].to(device)
        with autocast(device, precision):
            if "x" in batch:
                out = model(batch["x"].to(device), mask)
            else:
                out = model.forward_embeddings(batch["h"].to(device), mask)
        slice_prob = torch.sigmoid(out.slice_logits.float())                        # (B, S)
        exam = exam_probability(supervision, out.logit.float(), slice_prob.masked_fill(~mask, float("-inf")))
        attention = torch.full_like(slice_prob, float("nan")) if supervision == "strong" else out.attention.float()
        m = batch["mask"].numpy()
        counts = m.sum(axis=1)
        parts.append(pd.DataFrame({
            "exam_id": np.repeat(np.asarray(batch["exam_id"], dtype=object), counts),
            "index": batch["index"].numpy()[m].astype(np.int32),
            "exam_score": np.repeat(exam.cpu().numpy(), counts),
            "exam_label": np.repeat(batch["label"].numpy(), counts),
            "slice_score": slice_prob.cpu().numpy()[m],
            "attention": attention.cpu().numpy()[m],
            "slice_label": batch["slice_labels"].numpy()[m],
        }))
    if not parts:
        df = pd.DataFrame(columns=runs.PREDICTION_COLUMNS)
    else:
        df = pd.concat(parts, ignore_index=True)
    df.insert(2, "split", split if split is not None else "")
    for col in ("exam_label", "slice_label"):
        df[col] = pd.array(np.where(np.isnan(df[col].to_numpy(float)), None, df[col].to_numpy(float)),
                           dtype="Float64").astype("Int8")
    for col in ("exam_score", "slice_score", "attention"):
        df[col] = df[col].astype(np.float32)
    return df[runs.PREDICTION_COLUMNS]


def summarize(pred: pd.DataFrame) -> dict:
    """Exam AUC, slice AUC and counts of a prediction table (AUCs are NaN on one-class input)."""
    exams = pred.drop_duplicates("exam_id")          # exam score and label repeat on every slice row of an exam
    ey = exams["exam_label"].astype("Float64").to_numpy(float, na_value=np.nan)
    sy = pred["slice_label"].astype("Float64").to_numpy(float, na_value=np.nan)
    return {"exam_auc": labelled_auc(ey, exams["exam_score"].to_numpy(float)),
            "slice_auc": labelled_auc(sy, pred["slice_score"].to_numpy(float)),
            "n_exams": int(len(exams)), "n_positive_exams": int(np.nansum(ey))}


def predict_dataset(run: str | os.PathLike, dataset_path: str | os.PathLike, *, split: str | None = None,
                    name: str | None = None, device: str = "auto") -> Path:
    """Score a dataset with a finished run and write the prediction table into the run folder.

    Args:
        run: the run folder.
        dataset_path: an ich dataset folder.
        split: train | val | test | all; default: ``test`` for the run's own dataset, else ``all``.
        name: written as ``predictions-<name>.parquet``; default: the run's predictions.parquet for its
            own dataset's test split, else the dataset's name.

    Returns:
        The file written.
    """
    cfg = runs.read_config(run)
    dataset = open_dataset(dataset_path)
    own = Path(dataset_path).resolve() == Path(cfg.data.dataset).resolve()
    split = split or ("test" if own else "all")
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split must be one of ['train', 'val', 'test', 'all'], not {split!r}")
    exams = dataset.exams if split == "all" else dataset.exams[dataset.exams["split"] == split]
    if exams.empty:
        raise ValueError(f"dataset {dataset.name} has no exams in split {split!r}")
    dev = resolve_device(device)
    precision = resolve_precision(cfg.train.precision, dev)
    model = runs.load_model(run, dev)
    model.channels_last = dev.type == "cpu" and precision == "bf16"
    if model.channels_last:
        model.to(memory_format=torch.channels_last)
    frames = []
    for sp, grp in exams.groupby("split", sort=False):
        loader = bag_loader(dataset, grp.reset_index(drop=True), cfg)
        frames.append(score_bags(model, loader, supervision=cfg.train.supervision, device=dev, precision=precision,
                                 split=str(sp)))
    df = pd.concat(frames, ignore_index=True)
    if name is None and not (own and split == "test"):
        name = dataset.name if split == "all" else f"{dataset.name}-{split}"
    return runs.write_predictions(run, df, name=name)


@torch.no_grad()
def predict_volume(run: str | os.PathLike, hu: np.ndarray, *, device: str = "auto") -> tuple[float, pd.DataFrame]:
    """Score one exam given as a float HU volume (S, H, W) in slice order.

    Returns:
        (exam_score, slices) where slices has index, slice_score, attention.
    """
    cfg = runs.read_config(run)
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim != 3:
        raise ValueError(f"predict_volume expects a (S, H, W) HU volume, not shape {hu.shape}")
    size = cfg.data.input_size or hu.shape[-1]
    dev = resolve_device(device)
    precision = resolve_precision(cfg.train.precision, dev)
    model = runs.load_model(run, dev)
    x = window_slices(torch.from_numpy(resize(hu, size)), cfg.data.windows)          # (S, C, h, w)
    batch = {"x": x.unsqueeze(0), "mask": torch.ones(1, len(x), dtype=torch.bool), "label": torch.tensor([np.nan]),
             "slice_labels": torch.full((1, len(x)), float("nan")), "index": torch.arange(len(x)).unsqueeze(0),
             "exam_id": ["exam"]}
    df = score_bags(model, [batch], supervision=cfg.train.supervision, device=dev, precision=precision)
    return float(df["exam_score"].iloc[0]), df[["index", "slice_score", "attention"]].reset_index(drop=True)


def score_series(run: str | os.PathLike, volume, *, device: str = "auto") -> dict:
    """Score one checked series and say how far it lies from the run's training data.

    Args:
        run: a finished run folder.
        volume: a ``dicom.Volume`` that passed ``inputs.check_volume``.

    Returns:
        ``exam_score`` (float), ``slices`` (index, slice_score, attention), ``ood`` (bool), ``ood_score``,
        ``ood_threshold``, ``ood_reason`` (``ich.ood``; the threshold is fixed on validation exams).
    """
    score, slices = predict_volume(run, volume.hu, device=device)
    verdict = ood.score_hu(run, volume.hu, device="cpu" if device == "auto" else device)
    slices = slices.assign(ood_distance=verdict["slice_distance"].astype(np.float32))
    return {"exam_score": score, "slices": slices, "ood": verdict["ood"], "ood_score": verdict["ood_score"],
            "ood_threshold": verdict["threshold"], "ood_reason": verdict["reason"]}


def resolve_predictions(run, dataset_path, split: str | None) -> tuple[str | None, str]:
    """(prediction name, split) the ``predict`` verb uses for this run and dataset (see ``predict.predict_dataset``)."""
    cfg = runs.read_config(run)
    own = bool(cfg.data.dataset) and Path(dataset_path).resolve() == Path(cfg.data.dataset).resolve()
    split = split or ("test" if own else "all")
    check_choice("split", split, ("train", "val", "test", "all"))
    if own and split == "test":
        return None, split
    name = open_dataset(dataset_path).name
    return (name if split == "all" else f"{name}-{split}"), split


def load_predictions(run: str | os.PathLike, dataset: str | os.PathLike | None = None, *, split: str | None = None,
                     name: str | None = None, score_missing: bool = True,
                     device: str = "auto") -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    """A run's prediction tables for a dataset, scoring it first when the run has none.

    Args:
        run: run folder.
        dataset: dataset folder (default: the run's own).
        split: train | val | test | all (default: test for the run's own dataset, else all).
        name: read ``predictions-<name>.parquet`` (as ``predict --name``) instead of the default name.
        score_missing: run ``predict.predict_dataset`` when the file is missing and the run is done
            (the run's own test split is always written by training, never scored here).

    Returns:
        (exams, slices, name) as ``runs.read_predictions``, plus the prediction name (None for
        the run's own test split).
    """
    cfg = runs.read_config(run)
    dataset = dataset or cfg.data.dataset
    if not dataset:
        raise ValueError(f"run {Path(run).name} records no dataset; pass --dataset")
    default_name, split = resolve_predictions(run, dataset, split)
    name = name or default_name
    if not runs.predictions_path(run, name).is_file():
        state = runs.read_status(run).get("state")
        if not score_missing or name is None or state != "done":
            runs.read_predictions(run, name)          # raises the "no predictions (state: ...)" message
        log.info("run %s has no predictions for %s (%s); scoring it now", Path(run).name, dataset, split)
        predict_dataset(run, dataset, split=split, name=name, device=device)
    exams, slices = runs.read_predictions(run, name)
    return exams, slices, name
