"""The phantom importer: our own synthetic head-CT DICOM (`python -m ich synth`), read like any DICOM source."""

from __future__ import annotations

import json
from pathlib import Path

from ich import dicom
from ich.dicom import DicomError, SliceHeader
from ich.pool import WorkerPool
from ich.sources.common import (DicomExam, LabelLookup, ProgressFn, begin_import, finish_import, plan_series,
                                read_rsna_labels, scan_headers, slice_labels_from_table, write_dicom_exams)
from ich.store import check_exam_id

PHANTOM_GENERATOR = "ich.phantom"
PHANTOM_VERSION = 1


def import_phantom(src, out, *, size: int = 256, workers: int = 2, on_progress: ProgressFn | None = None,
                   on_error: str = "skip", overwrite: bool = False, split_seed: int = 0) -> dict:
    """Import a synthetic phantom folder written by ``python -m ich synth``.

    Layout: ``synth.json``, ``labels.csv`` (RSNA layout keyed by SOPInstanceUID),
    ``exams/<exam_id>/*.dcm`` (one CT series per exam), ``masks/<exam_id>.nii.gz`` (codes, axes (W, H, S)).
    Exam id = the folder name under ``exams/``.
    """
    src, writer, report = begin_import("phantom", src, out, size=size, workers=workers, on_error=on_error,
                                             overwrite=overwrite, split_seed=split_seed)
    with writer, WorkerPool(workers) as pool:
        info_path = src / "synth.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{src} has no synth.json, so it is not a phantom folder; create one with "
                                    "`python -m ich synth --out DIR`, or use another importer")
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{info_path}: not valid JSON ({err}); regenerate the phantoms") from err
        if info.get("generator") != PHANTOM_GENERATOR or info.get("version") != PHANTOM_VERSION:
            raise ValueError(f"{info_path}: generator {info.get('generator')!r} version {info.get('version')!r}; "
                             f"expected {PHANTOM_GENERATOR!r} version {PHANTOM_VERSION}. Regenerate with "
                             "`python -m ich synth`")
        report.info["synth"] = {k: info.get(k) for k in ("generator", "version", "seed", "exams", "size",
                                                           "difficulty")}
        table, stats = read_rsna_labels(src / "labels.csv")
        labels = LabelLookup.of(table)
        report.info["labels"] = stats
        exams_dir = src / "exams"
        if not exams_dir.is_dir():
            raise FileNotFoundError(f"{exams_dir} does not exist; a phantom folder holds exams/<exam_id>/*.dcm")
        headers = scan_headers(dicom.list_dicom_files(exams_dir), report, pool=pool, on_error=on_error,
                                      on_progress=on_progress)
        by_exam: dict[str, list[SliceHeader]] = {}
        for h in headers:
            by_exam.setdefault(Path(h.path).relative_to(exams_dir).parts[0], []).append(h)
        exams = []
        for exam_id, hs in sorted(by_exam.items()):
            try:
                check_exam_id(exam_id)
                if len({h.series_uid for h in hs}) > 1:
                    raise DicomError(f"{exams_dir / exam_id}: holds {len({h.series_uid for h in hs})} series; a "
                                     "phantom exam folder holds exactly one", kind="mixed_series")
            except (DicomError, ValueError) as err:
                if on_error == "raise":
                    raise
                report.drop(exam_id, getattr(err, "kind", "invalid"), str(err))
                continue
            plan = plan_series(hs, report, on_error, exam_id)
            if plan is None:
                continue
            e = DicomExam(exam_id, plan.headers[0].patient_key or exam_id, plan)
            found = slice_labels_from_table(plan.headers, labels)
            if found is None:
                msg = f"exam {exam_id}: labels.csv lacks labels for some of its {plan.n_slices} slices"
                if on_error == "raise":
                    raise ValueError(msg + "; regenerate the phantoms")
                report.drop(exam_id, "incomplete_labels", msg + "; imported without labels")
            else:
                e.slice_labels, e.slice_subtypes = found
            mask = src / "masks" / f"{exam_id}.nii.gz"
            e.mask_path = mask if mask.is_file() else None
            exams.append(e)
        write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        finish_import(writer, report, "exam")
    return writer.report
