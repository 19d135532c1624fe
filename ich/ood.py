"""Out-of-distribution warnings: how far a series' slice embeddings lie from the slices a run was trained on.

A run's *reference* is the Gaussian of its encoder's slice embeddings (D features) over the
training split of its own dataset: the mean and a Ledoit-Wolf shrunk covariance (sklearn), fitted
on pixels only, never on labels. A slice's distance is its Mahalanobis distance to that Gaussian;
an exam's *OOD score* is the mean distance of its slices. The threshold is the
``THRESHOLD_QUANTILE`` quantile of the OOD scores of the **validation** split's exams: it is fixed
on validation data only (never on the test split), so about 1% of in-distribution exams are
flagged by design. The reference is fitted once per run and cached in the run folder
(``runs.ood_path``).

``score_dataset`` scores every exam of a dataset; ``score_hu`` one HU volume (``predict --dicom``).
Each result carries ``ood`` (bool) and ``reason``: a plain sentence for the app and the CLI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ich import runs
from ich.data import bag_loader, window_slices
from ich.device import resolve_device
from ich.preprocess import resize
from ich.store import open_dataset

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

THRESHOLD_QUANTILE = 0.99      # of validation exams' OOD scores (validation split only)
MAX_REFERENCE_SLICES = 4000    # training slices embedded for the reference (a seeded sample of exams)
VERSION = 1


@dataclass(frozen=True)
class Reference:
    """The training-slice Gaussian of one run and its validation-fixed threshold.

    Attributes:
        mean: (D,) mean slice embedding over the training split.
        precision: (D, D) inverse of the Ledoit-Wolf covariance.
        threshold: exam OOD scores above it are flagged (``THRESHOLD_QUANTILE`` of ``val_scores``).
        val_scores: (V,) OOD scores of the validation exams (sorted).
        n_train_slices: training slices the Gaussian was fitted on.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    val_scores: np.ndarray
    n_train_slices: int

    def distances(self, emb: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (N,) of slice embeddings (N, D) to the training Gaussian."""
        d = np.asarray(emb, dtype=np.float64) - self.mean                        # (N, D)
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def assess(self, emb: np.ndarray) -> dict:
        """The verdict for one exam's slice embeddings (S, D): ``ood_score, threshold, ood, reason``."""
        dist = self.distances(emb)
        score = float(dist.mean())
        ood = bool(score > self.threshold)
        typical = float(np.median(self.val_scores))
        if ood:
            reason = (f"the slices lie far from the images this model was trained on (typicality distance "
                      f"{score:.1f}; validation exams score {typical:.1f} typically, and above {self.threshold:.1f} "
                      "is flagged). The score is not reliable for this series")
        else:
            reason = (f"the slices resemble the training images (typicality distance {score:.1f}, flagged above "
                      f"{self.threshold:.1f})")
        return {"ood_score": score, "threshold": float(self.threshold), "ood": ood, "reason": reason,
                "slice_distance": dist}


def _embed_exams(model, dataset, exams: pd.DataFrame, cfg, device: torch.device):
    """Yield (exam_id, slice embeddings (S, D) float32) for every exam, in order, one exam at a time."""
    exams = exams.assign(label=exams["label"] if "label" in exams else np.nan)
    with torch.no_grad():
        for batch in bag_loader(dataset, exams.reset_index(drop=True), cfg):
            mask = batch["mask"].to(device)
            h = model.embed(batch["x"].to(device).float(), mask)                 # (B, S, D)
            for b, exam_id in enumerate(batch["exam_id"]):
                yield exam_id, h[b][mask[b]].float().cpu().numpy()               # (S, D)


def embed_volume(model, hu: np.ndarray, cfg, device: torch.device) -> np.ndarray:
    """Slice embeddings (S, D) of one HU volume (S, H, W), prepared as ``predict.predict_volume`` does."""
    size = cfg.data.input_size or hu.shape[-1]
    x = window_slices(torch.from_numpy(resize(np.asarray(hu, np.float32), size)), cfg.data.windows)  # (S, C, h, w)
    with torch.no_grad():
        return model.embed(x.unsqueeze(0).to(device))[0].float().cpu().numpy()  # (S, D)


def fit_reference(run: str | os.PathLike, *, device: str = "cpu", seed: int = 0,
                  max_slices: int = MAX_REFERENCE_SLICES) -> Reference:
    """Fit a run's reference on its dataset's training split and fix the threshold on its validation split.

    Args:
        run: a finished run folder.
        device: where the encoder runs.
        seed: picks which training exams are embedded when they hold more than ``max_slices`` slices.
        max_slices: cap on training slices embedded (the Gaussian needs a few thousand at most).

    Raises:
        ValueError: the run's dataset has no training or no validation exams.
    """
    from sklearn.covariance import LedoitWolf

    cfg = runs.read_config(run)
    dataset = open_dataset(cfg.data.dataset)
    dev = resolve_device(device)
    model = runs.load_model(run, dev)
    exams = dataset.exams
    train = exams[exams["split"] == "train"]
    val = exams[exams["split"] == "val"]       # the threshold comes from validation exams only, never test
    if train.empty or val.empty:
        raise ValueError(f"dataset {dataset.name} needs training and validation exams for the out-of-distribution "
                         f"reference; found {len(train)} training and {len(val)} validation exams")
    order = np.random.default_rng(seed).permutation(len(train))
    keep = np.cumsum(train["n_slices"].to_numpy()[order]) <= max_slices
    keep[0] = True
    train = train.iloc[np.sort(order[keep])]
    emb = np.concatenate([e for _, e in _embed_exams(model, dataset, train, cfg, dev)])      # (N, D)
    lw = LedoitWolf().fit(emb.astype(np.float64))
    partial = Reference(mean=lw.location_, precision=lw.precision_, threshold=np.inf, val_scores=np.zeros(1),
                        n_train_slices=len(emb))
    val_scores = np.sort([float(partial.distances(e).mean()) for _, e in _embed_exams(model, dataset, val, cfg, dev)])
    threshold = float(np.quantile(val_scores, THRESHOLD_QUANTILE))
    log.info("OOD reference of %s: %d training slices, threshold %.2f from %d validation exams",
             os.path.basename(os.fspath(run)), len(emb), threshold, len(val_scores))
    return Reference(mean=lw.location_, precision=lw.precision_, threshold=threshold, val_scores=val_scores,
                     n_train_slices=len(emb))


def load_reference(run: str | os.PathLike, *, device: str = "cpu") -> Reference:
    """The run's cached reference, fitted and saved on first use (a finished run only)."""
    saved = runs.read_ood_reference(run)
    if saved is not None and int(saved.get("version", 0)) == VERSION:
        return Reference(mean=saved["mean"], precision=saved["precision"], threshold=float(saved["threshold"]),
                         val_scores=saved["val_scores"], n_train_slices=int(saved["n_train_slices"]))
    state = runs.read_status(run).get("state")
    if state != "done":
        raise ValueError(f"run {os.path.basename(os.fspath(run))} is {state}, not done: the out-of-distribution "
                         "check needs a finished run")
    ref = fit_reference(run, device=device)
    runs.write_ood_reference(run, {"version": np.int64(VERSION), "mean": ref.mean, "precision": ref.precision,
                                   "threshold": np.float64(ref.threshold), "val_scores": ref.val_scores,
                                   "n_train_slices": np.int64(ref.n_train_slices)})
    return ref


def score_dataset(run: str | os.PathLike, dataset_path: str | os.PathLike, *, exam_ids=None,
                  device: str = "cpu") -> pd.DataFrame:
    """The OOD verdict of every exam of a dataset (or of ``exam_ids``).

    Returns:
        One row per exam: ``exam_id, ood_score, threshold, ood, reason``.
    """
    ref = load_reference(run, device=device)
    cfg = runs.read_config(run)
    dataset = open_dataset(dataset_path)
    exams = dataset.exams if exam_ids is None else dataset.exams[dataset.exams["exam_id"].isin(list(exam_ids))]
    dev = resolve_device(device)
    model = runs.load_model(run, dev)
    rows = []
    for exam_id, emb in _embed_exams(model, dataset, exams, cfg, dev):
        verdict = ref.assess(emb)
        verdict.pop("slice_distance")
        rows.append({"exam_id": exam_id, **verdict})
    return pd.DataFrame(rows, columns=["exam_id", "ood_score", "threshold", "ood", "reason"])


def score_hu(run: str | os.PathLike, hu: np.ndarray, *, device: str = "cpu") -> dict:
    """The OOD verdict of one HU volume (S, H, W): ``ood_score, threshold, ood, reason, slice_distance``."""
    ref = load_reference(run, device=device)
    dev = resolve_device(device)
    return ref.assess(embed_volume(runs.load_model(run, dev), hu, runs.read_config(run), dev))
