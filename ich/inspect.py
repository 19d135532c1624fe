"""One exam of one run, as the Inspect page and `python -m ich explain` show it: scores, attention, maps, truth.

``explain_run_exam`` scores the exam exactly as ``predict`` does (one exam-score rule,
``predict.exam_probability``) and explains its slices (``ich.explain``); ``validation_operating_point``
reads the exam cutoff off the run's validation labels (never the test split) and says what it gives on test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ich import runs
from ich.config import check_choice
from ich.device import resolve_device, resolve_precision
from ich.evaluate import exam_input, take_slices, validation_thresholds
from ich.explain import explain_exam, explain_slices, resize_maps, score_map
from ich.predict import exam_probability, load_predictions
from ich.preprocess import resize
from ich.store import open_dataset


def explain_run_exam(run: str | os.PathLike, exam_id: str, *, dataset: str | os.PathLike | None = None,
                     method: str = "gradcam", target: str = "slice", slices: Sequence[int] | None = None,
                     device: str = "auto", batch_size: int = 16, n_steps: int = 32,
                     internal_batch_size: int | None = 16, seed: int = 0) -> dict:
    """Explain one exam of a dataset with a run's model: pixel maps, exam-level importance, scores.

    Args:
        run: the run folder.
        exam_id: the exam to explain.
        dataset: dataset folder (default: the run's own).
        method, target, batch_size, n_steps, internal_batch_size, seed: see ``explain.explain_slices``.
        slices: slice positions to explain (default: all; IG and occlusion cost seconds per slice).
        device: where the model runs.

    Returns:
        dict of numpy arrays and numbers: ``exam_id, method, target, index`` (k,) explained slice
        positions, ``maps`` (k, h, w) at the run's input size, ``delta`` (k,) IG convergence
        delta (NaN otherwise), ``image`` (k, C, h, w) the windowed input, ``mask`` (k, h, w) uint8
        (nearest-resized to the input size; None without a mask), ``scores`` (list of
        ``explain.score_map`` dicts per slice, scored at the mask's resolution; None without a
        mask), ``exam_logit``, ``exam_score``, and per slice of the exam (S,): ``attention``,
        ``slice_logits``, ``slice_prob``, ``ablation``.
    """
    cfg = runs.read_config(run)
    ds = open_dataset(dataset or cfg.data.dataset)
    x, mask = exam_input(ds, exam_id, windows=cfg.data.windows, input_size=cfg.data.input_size)
    S = x.shape[0]
    idx = np.arange(S) if slices is None else np.asarray(list(slices), dtype=np.int64)
    if idx.size == 0 or idx.min() < 0 or idx.max() >= S:
        raise ValueError(f"slices must be positions 0..{S - 1} of exam {exam_id}, got {idx.tolist()}")
    if target == "exam" and slices is not None:
        raise ValueError("target='exam' explains the whole bag; leave out --slices")
    device = resolve_device(device)
    model = runs.load_model(run, device)
    exam = explain_exam(model, x, precision=resolve_precision(cfg.train.precision, device))   # as predict scores
    maps, delta = explain_slices(model, take_slices(x, idx), method=method, target=target, batch_size=batch_size,
                                 n_steps=n_steps, internal_batch_size=internal_batch_size, seed=seed,
                                 return_delta=True)
    out = {"exam_id": exam_id, "method": method, "target": target, "index": idx, "maps": maps, "delta": delta,
           "image": take_slices(x, idx).numpy(), "mask": None, "scores": None, "exam_logit": exam["exam_logit"],
           "attention": exam["attention"], "slice_logits": exam["slice_logits"],
           "slice_prob": 1 / (1 + np.exp(-exam["slice_logits"])), "ablation": exam["ablation"]}
    out["exam_score"] = exam_probability(cfg.train.supervision, exam["exam_logit"], out["slice_prob"])   # as predict
    if mask is not None:
        m = mask[idx]
        out["mask"] = resize(np.ascontiguousarray(m), maps.shape[-1], nearest=True)
        big = resize_maps(maps, m.shape[1:])
        out["scores"] = [score_map(big[j], m[j]) for j in range(len(idx))]
    return out


def validation_operating_point(run: str | os.PathLike, *, rule: str = "youden", threshold: float | None = None,
                               device: str = "auto") -> dict:
    """An exam-level cutoff fixed on the run's validation labels, and the sensitivity/specificity it gives on test.

    The cutoff is ``validation_thresholds(run)["exam"][rule]``: read off the ROC of the labels that chose
    the run's model (paid from its budget, or the free validation split), never the test split; or given.

    Args:
        run: a finished run folder.
        rule: ``youden`` (max sensitivity + specificity - 1) or ``closest`` (nearest to the top-left corner).
        threshold: use this cutoff instead of the validation one (e.g. a slider).
        device: where the model runs if the test split has to be scored.

    Returns:
        ``threshold, rule, val`` and ``test``, each ``{sensitivity, specificity, tp, fn, tn, fp, n}``
        (rates NaN where a class is missing; ``val`` empty when the run kept no validation predictions).

    Raises:
        ValueError: no cutoff given and the run's validation labels cannot fix one (the reason says why).
    """
    check_choice("rule", rule, ("closest", "youden"))

    def at(exams: pd.DataFrame, t: float) -> dict:
        y = pd.to_numeric(exams["exam_label"], errors="coerce").to_numpy(float)
        s = exams["exam_score"].to_numpy(float)
        keep = ~np.isnan(y)
        y, pos = y[keep], s[keep] >= t
        tp, fn = int(((y == 1) & pos).sum()), int(((y == 1) & ~pos).sum())
        tn, fp = int(((y == 0) & ~pos).sum()), int(((y == 0) & pos).sum())
        return {"sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
                "specificity": tn / (tn + fp) if tn + fp else float("nan"),
                "tp": tp, "fn": fn, "tn": tn, "fp": fp, "n": int(keep.sum())}

    if threshold is None:
        fixed = validation_thresholds(run)
        threshold = fixed["exam"][rule]
        if not np.isfinite(threshold):
            raise ValueError(f"run {Path(run).name}: no exam cutoff from its validation labels "
                             f"({fixed['reason']}); set one by hand instead")
    has_val = runs.predictions_path(run, runs.SELECTION_PREDICTIONS).is_file()
    val = runs.read_predictions(run, runs.SELECTION_PREDICTIONS)[0] if has_val else None
    test, _, _ = load_predictions(run, device=device)
    return {"threshold": float(threshold), "rule": rule, "val": at(val, threshold) if has_val else {},
            "test": at(test, threshold)}
