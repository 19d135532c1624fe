"""The RSNA 2019 importer: Kaggle stage 2 (stage_2_train.csv and its DICOM files), one exam per series."""

from __future__ import annotations

import os
from pathlib import Path

from ich import dicom
from ich.pool import WorkerPool
from ich.sources.common import (DicomExam, LabelLookup, ProgressFn, begin_import, finish_import, log, plan_series,
                                read_rsna_labels, scan_headers, slice_labels_from_table, write_dicom_exams)
from ich.store import safe_exam_id


def import_rsna(src, out, *, csv: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                size: int = 256, workers: int = 2, on_progress: ProgressFn | None = None, on_error: str = "skip",
                overwrite: bool = False, split_seed: int = 0) -> dict:
    """Import the Kaggle RSNA 2019 training set: exam = SeriesInstanceUID, patient = PatientID (hashed).

    Layout: ``src/stage_2_train.csv`` and ``src/stage_2_train/ID_<hex>.dcm`` (data-formats.md §1).
    Slice labels come from the CSV (``any`` + 5 subtypes); exam labels are their maximum.
    Corrupt files (e.g. ``ID_6431af929.dcm``) are dropped and counted under on_error="skip".

    Args:
        csv: the label CSV (default ``src/stage_2_train.csv``).
        images: the DICOM folder (default ``src/stage_2_train``).
    """
    src, writer, report = begin_import("rsna", src, out, size=size, workers=workers, on_error=on_error,
                                             overwrite=overwrite, split_seed=split_seed)
    csv = Path(csv) if csv is not None else src / "stage_2_train.csv"
    images = Path(images) if images is not None else src / "stage_2_train"
    for path, what in ((csv, "the label CSV"), (images, "the DICOM folder")):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist ({what}); the RSNA importer expects SRC/stage_2_train.csv and "
                "SRC/stage_2_train/ID_<hex>.dcm as unzipped from Kaggle (or pass csv=/images=)")
    with writer, WorkerPool(workers) as pool:
        table, stats = read_rsna_labels(csv)
        labels = LabelLookup.of(table)
        files = dicom.list_dicom_files(images)
        headers = scan_headers(files, report, pool=pool, on_error=on_error, on_progress=on_progress)
        labelled, seen = [], set()
        for h in headers:
            row = labels.row_of(h)
            if row is None:
                report.drop(report.rel(h.path), "unlabelled", f"{report.rel(h.path)}: image {h.sop_uid} is not in "
                                                              f"{csv.name}; dropped")
                continue
            seen.add(row)
            labelled.append(h)
        stats["labels_without_file"] = int(len(table) - len(seen))
        stats["paper_images"] = 752_422  # the count the reference paper reports (data-formats.md §1.2)
        report.info["labels"] = stats
        if stats["labels_without_file"]:
            log.info("%d images of %s have no DICOM file under %s (a partial download or subset?)",
                     stats["labels_without_file"], csv.name, images)
        exams = []
        for uid, hs in dicom.group_series(labelled).items():
            exam_id = safe_exam_id(uid)
            plan = plan_series(hs, report, on_error, f"series {exam_id}")
            if plan is None:
                continue
            e = DicomExam(exam_id, plan.headers[0].patient_key or f"series:{uid}", plan)
            e.slice_labels, e.slice_subtypes = slice_labels_from_table(plan.headers, labels) or (None, None)
            if e.slice_labels is None:
                msg = f"series {exam_id}: some slices lack one of the six labels in {csv.name}"
                if on_error == "raise":
                    raise ValueError(msg + "; fix the CSV or import with on_error='skip'")
                report.drop(exam_id, "incomplete_labels", msg + "; imported without labels")
            exams.append(e)
        write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        finish_import(writer, report, "series")
    return writer.report
