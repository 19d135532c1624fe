"""The evaluation record: metrics.json as a typed, versioned dataclass, and the one reader of its nested layout.

``evaluate.evaluate_run`` writes metrics.json (format ``FORMAT``); summaries, pages and the report
read its headline figures through ``Evaluation`` instead of walking the nested dict themselves.
Records written before the format field existed are format 1 (the same layout).

metrics.json, in short::

    {"format": 2, "run", "dataset", "split", "supervision", "seconds",
     "exam":     {"auc", "auc_ci_low", "auc_ci_high", "roc": {"fpr", "tpr"}, "operating_points", ...},
     "slice":    {"probability": {"auc", ...}, "attention": {...}},
     "sequence": {"attention": {"f1", ...}, "probability": {"f1", ...}},
     "pixel":    {"methods": {"gradcam": {"by_subtype": {"Any": {"dice_mask": {"median"}}}}}} | null,
     "thresholds", "counts", ...}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ich import runs

FORMAT = 2
NAN = float("nan")


def _num(v) -> float:
    try:
        return float(v) if v is not None else NAN
    except (TypeError, ValueError):
        return NAN


def _at(d: Mapping | None, *keys) -> Any:
    """``d[k1][k2]...``, or None where a level is missing or null."""
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


@dataclass(frozen=True)
class Evaluation:
    """The headline figures of one evaluation (NaN where a figure does not apply or could not be computed)."""

    run: str
    split: str
    supervision: str
    exam_auc: float                       # test exam AUC
    exam_auc_ci_low: float                # its DeLong 95% CI
    exam_auc_ci_high: float
    slice_auc: float                      # AUC of the slice probabilities
    sequence_f1: Mapping[str, float]      # hemorrhage-sequence F1 per estimator: attention, probability
    pixel_dice: float                     # median Otsu Dice of Grad-CAM maps on lesion slices (all subtypes)
    seconds: float                        # time the evaluation took
    format: int = FORMAT
    detail: Mapping = field(default_factory=dict, repr=False, compare=False)   # the whole record as written

    @property
    def own_sequence_f1(self) -> float:
        """The sequence F1 of the learner's own estimator: slice probabilities for strong, attention otherwise."""
        return self.sequence_f1.get("probability" if self.supervision == "strong" else "attention", NAN)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Evaluation":
        """Parse a metrics.json dict (format 1 or 2).

        Raises:
            ValueError: the record is from a newer format than this code reads.
        """
        fmt = int(d.get("format", 1))
        if fmt > FORMAT:
            raise ValueError(f"metrics.json of run {d.get('run')!r} has format {fmt}, newer than this code reads "
                             f"({FORMAT}); update the lab, or re-evaluate with `python -m ich evaluate RUN`")
        seq = {k: _num(_at(v, "f1")) for k, v in (d.get("sequence") or {}).items() if isinstance(v, Mapping)}
        return cls(run=str(d.get("run", "")), split=str(d.get("split", "")), supervision=str(d.get("supervision", "")),
                   exam_auc=_num(_at(d, "exam", "auc")), exam_auc_ci_low=_num(_at(d, "exam", "auc_ci_low")),
                   exam_auc_ci_high=_num(_at(d, "exam", "auc_ci_high")),
                   slice_auc=_num(_at(d, "slice", "probability", "auc")), sequence_f1=seq,
                   pixel_dice=_num(_at(d, "pixel", "methods", "gradcam", "by_subtype", "Any", "dice_mask", "median")),
                   seconds=_num(d.get("seconds")), format=fmt, detail=dict(d))

    def to_dict(self) -> dict:
        """The record as metrics.json holds it."""
        return {**self.detail, "format": self.format}

    @classmethod
    def read(cls, run: str | os.PathLike, name: str | None = None) -> "Evaluation":
        """The run's metrics.json (``metrics-<name>.json`` for another dataset) as an ``Evaluation``."""
        return cls.from_dict(runs.read_evaluation(run, name))
