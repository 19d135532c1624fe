"""ICH label-budget lab: weak (exam) vs strong (slice) supervision for hemorrhage detection on head CT.

The flat public API is re-exported here (``import ich; ich.open_dataset(...)``); names
are imported lazily, so ``import ich`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "open_dataset": "ich.store",
    "Dataset": "ich.store",
    "DatasetWriter": "ich.store",
    "SUBTYPES": "ich.labels",
    "WINDOWS": "ich.labels",
    "list_datasets": "ich.store",
    "StudyConfig": "ich.study",
    "STUDY_PRESETS": "ich.study",
    "make_study": "ich.study",
    "plan_cells": "ich.study",
    "run_study": "ich.study",
    "summarise_study": "ich.study",
    "read_summary": "ich.study",
    "read_study": "ich.study",
    "read_progress": "ich.study",
    "make_executor": "ich.executors",
    "LocalExecutor": "ich.executors",
    "RayExecutor": "ich.executors",
    "InlineExecutor": "ich.executors",
    "fit_power_law": "ich.curves",
    "PowerLawFit": "ich.curves",
    "fit_study_curves": "ich.curves",
    "label_ratio": "ich.curves",
    "power_law": "ich.curves",
    "CostModel": "ich.planner",
    "Plan": "ich.planner",
    "cheapest_plan": "ich.planner",
    "fitted_plans": "ich.planner",
    "plan_table": "ich.planner",
    "learning_curve_figure": "ich.figures",
    "roc_figure": "ich.figures",
    "slice_strip_figure": "ich.figures",
    "build_report": "ich.report",
    "write_report": "ich.report",
    "run_benchmarks": "ich.bench",
    "BENCHMARKS": "ich.bench",
    "read_report": "ich.bench",
    "roc_curves": "ich.results",
    "weak_vs_strong": "ich.results",
    "read_series": "ich.dicom",
    "Volume": "ich.dicom",
    "write_series": "ich.dicom",
    "DicomError": "ich.dicom",
    "DecoderMissingError": "ich.dicom",
    "read_nifti": "ich.nifti",
    "read_nifti_mask": "ich.nifti",
    "write_nifti": "ich.nifti",
    "import_folder": "ich.sources",
    "import_rsna": "ich.sources",
    "import_cq500": "ich.sources",
    "import_ctich": "ich.sources",
    "import_phantom": "ich.sources",
    "IMPORTERS": "ich.sources",
    "PhantomConfig": "ich.phantom",
    "PHANTOM_PRESETS": "ich.phantom",
    "sample_phantom_params": "ich.phantom",
    "render_phantom": "ich.phantom",
    "make_phantoms": "ich.phantom",
    "write_phantom_dataset": "ich.phantom",
    "write_synth_dataset": "ich.synth",
    "RunConfig": "ich.config",
    "DataConfig": "ich.config",
    "ModelConfig": "ich.config",
    "TrainConfig": "ich.config",
    "make_config": "ich.config",
    "PRESETS": "ich.config",
    "build_model": "ich.models",
    "MILModel": "ich.models",
    "MILOutput": "ich.models",
    "save_encoder": "ich.models",
    "load_encoder": "ich.models",
    "sample_budget": "ich.data",
    "select_labels": "ich.data",
    "embed_dataset": "ich.embed",
    "fit": "ich.train",
    "list_runs": "ich.runs",
    "load_model": "ich.runs",
    "read_predictions": "ich.runs",
    "request_cancel": "ich.runs",
    "predict_dataset": "ich.predict",
    "predict_volume": "ich.predict",
    "explain_slices": "ich.explain",
    "explain_exam": "ich.explain",
    "slice_ablation": "ich.explain",
    "score_map": "ich.explain",
    "summarise": "ich.evaluate",
    "evaluate_run": "ich.evaluate",
    "compare_runs": "ich.evaluate",
    "explain_run_exam": "ich.evaluate",
    "safe_extract_zip": "ich.uploads",
    "import_upload": "ich.uploads",
    "roc_auc": "ich.metrics",
    "roc_points": "ich.metrics",
    "average_precision": "ich.metrics",
    "delong_auc_variance": "ich.metrics",
    "auc_ci": "ich.metrics",
    "delong_test": "ich.metrics",
    "bootstrap_auc_diff": "ich.metrics",
    "operating_point": "ich.metrics",
    "find_runs": "ich.metrics",
    "strong_flags": "ich.metrics",
    "weak_flags": "ich.metrics",
    "sequence_f1": "ich.metrics",
    "mean_sequence_f1": "ich.metrics",
    "otsu_binarize": "ich.metrics",
    "dice": "ich.metrics",
    "boxes_from_mask": "ich.metrics",
    "mask_from_boxes": "ich.metrics",
    "pointing_game": "ich.metrics",
    "summarize_by_subtype": "ich.metrics",
    "mean_ci": "ich.metrics",
    "DEFAULT_MIN_LENGTH": "ich.metrics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ich' has no attribute {name!r}")


def __dir__():
    return __all__
