"""A study's tables: one row per cell from its run folder, and the mean with a 95% CI per arm and budget."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ich import atomic
from ich.study.folder import SUMMARY_FILE, cell_dir, cell_state, read_study
from ich.study.spec import Cell, plan_cells

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# ------------------------------------------------------------------------------ summary
CELL_COLUMNS = ["row", "arm", "supervision", "slice_fraction", "label_noise", "acquisition", "budget", "seed", "n_seeds", "n_labels", "validation",
                "train_labels", "val_labels", "val_label_kind", "labels_counted", "guide_labels", "lr", "state",
                "exam_auc", "exam_auc_ci_low", "exam_auc_ci_high", "slice_auc", "slice_auc_ci_low",
                "slice_auc_ci_high", "sequence_f1", "sequence_f1_ci_low", "sequence_f1_ci_high", "pixel_dice",
                "pixel_dice_ci_low", "pixel_dice_ci_high", "seconds", "run"]
STAT_COLUMNS = ("exam_auc", "slice_auc", "sequence_f1", "pixel_dice")


def cell_row(study: str | os.PathLike, cell: Cell) -> dict:
    """One summary row: the cell's grid position, state and figures (NaN until evaluated).

    Figures: exam AUC with its DeLong 95% CI; slice AUC of the slice probabilities; the
    sequence F1 of the supervision's own estimator (attention for weak and mixed, probability
    for strong); the median Otsu Dice of Grad-CAM maps against masks on lesion slices (when the
    dataset has masks); seconds = training + evaluation.
    """
    from ich import runs

    d = cell_dir(study, cell)
    nan = float("nan")
    row = {"row": "cell", "arm": cell.arm, "supervision": cell.supervision, "slice_fraction": cell.slice_fraction,
           "label_noise": cell.label_noise, "acquisition": cell.acquisition, "budget": cell.budget, "seed": cell.seed, "n_seeds": 1, "n_labels": nan, "validation": "",
           "train_labels": nan, "val_labels": nan, "val_label_kind": "", "labels_counted": nan, "guide_labels": nan,
           "lr": nan,
           "state": cell_state(study, cell),
           **{c: nan for c in CELL_COLUMNS if c.startswith(STAT_COLUMNS)}, "seconds": nan, "run": str(d)}
    if row["state"] not in ("done", "trained"):
        return row
    summary = runs.read_status(d).get("summary") or {}
    row["n_labels"] = summary.get("n_labels", nan)
    # labels used for model selection are counted: paid ones are part of n_labels, free ones come on top
    validation = summary.get("validation", "free")      # runs from before paid validation used the free split
    train_labels = _num(summary.get("train_labels", row["n_labels"]))
    val_labels = _num(summary.get("val_labels", nan))
    row.update(validation=validation, train_labels=train_labels, val_labels=val_labels,
               val_label_kind=summary.get("val_label_kind", "exam"), labels_counted=train_labels + val_labels,
               guide_labels=_num(summary.get("guide_exams", 0)), lr=_num(summary.get("lr", nan)))
    if row["state"] != "done":
        return row
    from ich.record import Evaluation      # here, like runs: both import torch, which `import ich.study` avoids

    m = Evaluation.read(d)
    row.update(exam_auc=m.exam_auc, exam_auc_ci_low=m.exam_auc_ci_low, exam_auc_ci_high=m.exam_auc_ci_high,
               slice_auc=m.slice_auc, sequence_f1=m.own_sequence_f1, pixel_dice=m.pixel_dice,
               seconds=_num(summary.get("seconds", nan)) + (m.seconds if m.seconds == m.seconds else 0.0))
    return row


def _clip01(v: float) -> float:
    return v if v != v else min(1.0, max(0.0, v))


def _num(v) -> float:
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def summarise_study(study: str | os.PathLike):
    """The study's tables from its run folders: ``(cells, aggregate)`` DataFrames.

    ``cells``: one row per planned cell (``CELL_COLUMNS``, ``row="cell"``). ``aggregate``: one row per
    (arm, budget) with finished cells (``row="mean"``): each figure's mean over seeds with a
    Student-t 95% CI (``metrics.mean_ci``, clipped to [0, 1]; NaN bounds with one seed),
    ``n_seeds``, mean seconds.
    """
    import pandas as pd

    from ich.metrics import mean_ci

    spec, _ = read_study(study)
    cells = pd.DataFrame([cell_row(study, c) for c in plan_cells(spec)], columns=CELL_COLUMNS)
    rows = []
    done = cells[cells["state"] == "done"]
    for (arm, budget), grp in done.groupby(["arm", "budget"], sort=False):
        first = grp.iloc[0]
        modes = sorted(set(grp["validation"]))
        r = {"row": "mean", "arm": arm, "supervision": first["supervision"], "slice_fraction": first["slice_fraction"],
             "label_noise": first["label_noise"], "acquisition": first["acquisition"], "budget": int(budget), "seed": None, "n_seeds": int(len(grp)), "n_labels": grp["n_labels"].mean(),
             "validation": "+".join(modes), "train_labels": grp["train_labels"].mean(),
             "val_labels": grp["val_labels"].mean(), "val_label_kind": first["val_label_kind"],
             "labels_counted": grp["labels_counted"].mean(), "guide_labels": grp["guide_labels"].mean(),
             "lr": float("nan"),
             "state": "done", "seconds": grp["seconds"].mean(), "run": ""}
        for stat in STAT_COLUMNS:   # all four figures live in [0, 1]: the t interval is clipped to it
            m, lo, hi = mean_ci(grp[stat].to_numpy(float))
            r[stat], r[f"{stat}_ci_low"], r[f"{stat}_ci_high"] = m, _clip01(lo), _clip01(hi)
        rows.append(r)
    aggregate = pd.DataFrame(rows, columns=CELL_COLUMNS)
    if len(aggregate):
        order = {a: i for i, (a, _, _) in enumerate(spec.arms)}
        aggregate = aggregate.sort_values(["arm", "budget"], key=lambda s: s.map(order) if s.name == "arm" else s,
                                          ignore_index=True)
    return cells, aggregate


def write_summary(study: str | os.PathLike):
    """Write summary.csv (cell rows, then mean rows) atomically; returns ``(cells, aggregate)``."""
    import pandas as pd

    cells, aggregate = summarise_study(study)
    both = pd.concat([cells, aggregate], ignore_index=True) if len(aggregate) else cells
    with atomic.writing(Path(study) / SUMMARY_FILE) as tmp:
        both.to_csv(tmp, index=False)
    return cells, aggregate
