"""The folder importer: any tree of DICOM series, one exam per series, labels from an optional RSNA-style CSV."""

from __future__ import annotations

import os
from pathlib import Path

from ich import dicom
from ich.pseudonyms import exam_pseudonym
from ich.pool import WorkerPool
from ich.sources.common import (DicomExam, LabelLookup, ProgressFn, begin_import, finish_import, plan_series,
                                read_rsna_labels, scan_headers, slice_labels_from_table, unique_name, write_dicom_exams)


def import_folder(src, out, *, labels: str | os.PathLike | None = None, size: int = 256, workers: int = 2,
                  on_progress: ProgressFn | None = None, on_error: str = "skip", overwrite: bool = False,
                  split_seed: int = 0) -> dict:
    """Import any tree of DICOM series: one exam per CT series (non-CT series are dropped and reported).

    Args:
        src: the root folder (searched recursively).
        out: the dataset folder to create.
        labels: optional RSNA-layout CSV (``ID,Label``, ``ID = <SOPInstanceUID or file stem>_<subtype>``)
            giving slice labels; exams it does not cover stay unlabelled.

    Raises:
        ValueError: the labels CSV names images that are not in ``src`` (always), empty source, ...
    """
    src, writer, report = begin_import("folder", src, out, size=size, workers=workers, on_error=on_error,
                                             overwrite=overwrite, split_seed=split_seed)
    with writer, WorkerPool(workers) as pool:
        files = dicom.list_dicom_files(src)
        table = None
        if labels is not None:
            table, stats = read_rsna_labels(labels)
            report.info["labels"] = stats
        headers = scan_headers(files, report, pool=pool, on_error=on_error, on_progress=on_progress)
        if table is not None:
            known = {h.sop_uid for h in headers} | {p.stem for p in files}
            unknown = [i for i in table.index if i not in known]
            if unknown:
                raise ValueError(f"{labels}: {len(unknown)} of {len(table)} labelled images are not in {src} "
                                 f"(by SOPInstanceUID or file name), e.g. {unknown[:3]}; use the labels CSV that "
                                 "belongs to this folder, or remove those rows")
        lookup = None if table is None else LabelLookup.of(table)
        groups = dicom.group_series(headers)
        exams, used_ids = [], set()
        for uid, hs in groups.items():
            rel = report.rel(Path(hs[0].path).parent)
            # keyed on the series UID, never on folder or file names (they often name the patient)
            exam_id = unique_name(exam_pseudonym(uid), used_ids)
            plan = plan_series(hs, report, on_error, f"{rel or '.'} (series {dicom.key_hash(uid)[:8]})")
            if plan is None:
                continue
            e = DicomExam(exam_id, plan.headers[0].patient_key or f"series:{uid}", plan)
            if table is not None:
                found = slice_labels_from_table(plan.headers, lookup)
                if found is not None:
                    e.slice_labels, e.slice_subtypes = found
                elif any(lookup.row_of(h) is not None for h in plan.headers):
                    msg = (f"exam {exam_id}: {labels} labels only some of its {plan.n_slices} slices (all six labels "
                           "are needed for every slice); the exam is imported without labels")
                    if on_error == "raise":
                        raise ValueError(msg + "; complete the CSV or import with on_error='skip'")
                    report.drop(exam_id, "partial_labels", msg)
            exams.append(e)
        write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        finish_import(writer, report, "series")
    return writer.report
