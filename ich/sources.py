"""Importers: turn a public dataset (or any DICOM tree) into an ich dataset folder.

One function per source, all with the same core signature and all registered in
``IMPORTERS``::

    import_folder(src, out, *, labels=None, ...)     any tree of DICOM series; exam = series
    import_rsna(src, out, *, csv=None, ...)          Kaggle RSNA 2019 stage 2 (stage_2_train.csv + DICOMs)
    import_cq500(src, out, *, reads=None, bhx=None, series="reference", ...)   CQ500 (+ BHX boxes)
    import_ctich(src, out, ...)                      PhysioNet CT-ICH v1.3.x (NIfTI)
    import_phantom(src, out, ...)                    our own synthetic phantoms (``python -m ich synth``)

Shared keywords: ``size`` (cached in-plane size), ``workers`` (processes), ``on_error``
("skip": drop a bad file/series/exam and record it in the report; "raise": stop at the
first), ``on_progress(stage, done, total)``, ``overwrite``, ``split_seed``. Each returns the
import report, which is also stored in ``dataset.json`` (counts, drops with reasons,
transfer syntaxes, decoders, 12-bit fixes, label-file statistics).

``workers`` is an upper bound: the header scan uses the process pool from 500 files on,
decoding only for compressed or resized slices (see ``PARALLEL_MIN_FILES``); the report
records what was used (``scan_workers``, ``decode_workers``).

Policies (see data-formats.md for the layouts):

- Problems that concern the *environment or the command* always raise, whatever
  ``on_error``: a missing decoder, an empty or missing source, a labels CSV that names
  images that are not there (folder importer), an output folder that holds something.
- RSNA: the CSV is de-duplicated on ``ID``; images missing from the folder are counted
  (``labels_without_file``), not fatal, so a subset of RSNA imports cleanly; DICOM files
  missing from the CSV are dropped.
- CQ500: exam label = majority of the three readers (>= 2 of 3), same for subtypes;
  every series that passes the reference selection rule becomes an exam (patient =
  ``CQ500-CT-<n>``). No slice labels, unless BHX boxes are given: then each boxed series
  gets a mask (union of filled boxes, code by ``labelName``, Chronic -> subdural; where
  boxes of two types overlap, the smaller box wins) and slice labels (boxed = 1, other
  slices of that series = 0). Series without boxes keep slice labels missing.
- CT-ICH: masks are binary; each mask slice gets the code of the one subtype the CSV marks
  positive on that slice. When the CSV marks several (or none) on a slice that has mask
  pixels, the code is the subtype marked on the most slices of that exam among the
  candidates (ties: ``labels.SUBTYPES`` order), falling back to intraparenchymal when the
  exam has no subtype at all; those slices are counted in the report. Slice labels and
  subtypes always come from the CSV, never from the guessed codes.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ich import dicom
from ich.dicom import DicomError, SeriesPlan, SliceHeader
from ich.labels import SUBTYPE_ABBREV, SUBTYPES
from ich.preprocess import resize
from ich.pseudonyms import exam_pseudonym
from ich.store import DatasetWriter, check_exam_id, safe_exam_id

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

ProgressFn = Callable[[str, int, int], None]
RSNA_LABELS = (*SUBTYPES, "any")
CQ500_FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
                  "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift")
CQ500_COLUMNS = ("name", "Category", *(f"R{r}:{f}" for r in (1, 2, 3) for f in CQ500_FINDINGS))
CQ500_SERIES_RULES = ("reference", "all")
_CQ500_EXAM = re.compile(r"CQ500-?CT-?(\d+)", re.IGNORECASE)
BHX_CODES = {"epidural": 1, "intraparenchymal": 2, "intraventricular": 3, "subarachnoid": 4, "subdural": 5,
             "chronic": 5}
CTICH_SUBTYPE_COLUMNS = {s: s.capitalize() for s in SUBTYPES}  # epidural -> "Epidural"
CTICH_COLUMNS = ("PatientNumber", "SliceNumber", *CTICH_SUBTYPE_COLUMNS.values(), "No_Hemorrhage")
MAX_LISTED_DROPS = 500
# When a process pool pays off (starting one takes ~50 ms): the header scan of fewer files, or the
# decoding of fewer compressed / resized slices, runs in this process. Uncompressed slices that need no
# resize are never sent to workers: shipping their pixels back costs more than reading them here.
PARALLEL_MIN_FILES = 500        # header scan; also slices that need a resize (~1 ms each)
PARALLEL_MIN_COMPRESSED = 100   # compressed slices (JPEG lossless / 2000: 3-30 ms each)


# --------------------------------------------------------------------------- report

class ImportReport:
    """Collects what an import did; ``as_dict()`` is stored in dataset.json."""

    def __init__(self, source: str, src: Path, *, size: int, workers: int, on_error: str):
        self.source, self.src = source, Path(src)
        self.info: dict = {"source": source, "size": size, "workers": workers, "on_error": on_error}
        self.drops: list[dict] = []
        self.drop_counts: Counter = Counter()
        self.transfer_syntaxes: Counter = Counter()
        self.decoders: Counter = Counter()
        self.twelve_bit_fixes = 0
        self.slices = 0
        self.exams = 0
        self.t0 = time.perf_counter()

    def rel(self, path: str | os.PathLike | None) -> str:
        if path is None:
            return ""
        try:
            return str(Path(path).relative_to(self.src))
        except ValueError:
            return self.scrub(path) if Path(path).is_relative_to(self.src.resolve()) else Path(path).name

    def scrub(self, text: str) -> str:
        """``text`` with the source folder's path removed, so reports name files relative to it (no absolute
        source paths reach dataset.json)."""
        text = str(text)
        for root in sorted({str(self.src), str(self.src.absolute()), str(self.src.resolve())}, key=len, reverse=True):
            text = text.replace(root + os.sep, "").replace(root, ".")
        return text

    def drop(self, item: str, kind: str, reason: str) -> None:
        """Record one dropped file, series or exam (kind: corrupt, not_ct, selection_rule, ...)."""
        item, reason = self.scrub(item), self.scrub(reason)
        self.drop_counts[kind] += 1
        if len(self.drops) < MAX_LISTED_DROPS:
            self.drops.append({"item": item, "kind": kind, "reason": reason})
        log.info("dropped %s (%s): %s", item, kind, reason)

    def drop_error(self, err: DicomError | ValueError, item: str | None = None) -> None:
        kind = getattr(err, "kind", "invalid")
        self.drop(item or self.rel(getattr(err, "path", None)), kind, str(err))

    def as_dict(self) -> dict:
        seconds = time.perf_counter() - self.t0
        return {
            **self.info,
            "exams": self.exams, "slices": self.slices,
            "dropped": dict(self.drop_counts), "drops": self.drops,
            "drops_listed": len(self.drops), "drops_total": int(sum(self.drop_counts.values())),
            "transfer_syntaxes": {f"{ts} ({dicom.syntax_name(ts)})": n for ts, n in self.transfer_syntaxes.items()},
            "decoders": dict(self.decoders), "twelve_bit_fixes": self.twelve_bit_fixes,
            "seconds": round(seconds, 3), "slices_per_second": round(self.slices / seconds, 1) if seconds else None,
        }


def check_source(source: str, src: str | os.PathLike) -> Path:
    """The folder an import reads, refused early (before any job is queued) when it is missing or a file."""
    src = Path(src)
    what = "the folder that holds the DICOM series" if source == "folder" else f"the {source} dataset folder"
    if not str(src).strip():
        raise ValueError(f"no source folder given; give {what}")
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist on this machine; give {what}")
    if not src.is_dir():
        raise NotADirectoryError(f"{src} is not a folder; give {what}")
    return src


def check_new_dataset(out: str | os.PathLike) -> Path:
    """A dataset folder an import or phantom may create: refused early when something is already there."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"a dataset named {out.name!r} already exists ({out}); choose another name")
    return out


def _begin(source: str, src, out, *, size: int, workers: int, on_error: str, overwrite: bool,
           split_seed: int) -> tuple[Path, DatasetWriter, ImportReport]:
    """Validate the common arguments; create the writer first so a bad --out fails before any work."""
    dicom.check_on_error(on_error)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    src = check_source(source, src)
    writer = DatasetWriter(out, source=source, size=size, overwrite=overwrite, split_seed=split_seed)
    return src, writer, ImportReport(source, src, size=size, workers=workers, on_error=on_error)


def _finish(writer: DatasetWriter, report: ImportReport, what: str) -> dict:
    if not writer.records:
        reasons = ", ".join(f"{k}: {n}" for k, n in report.drop_counts.most_common()) or "none"
        first = f" First: {report.drops[0]['reason']}" if report.drops else ""
        raise ValueError(f"{report.src}: no {what} could be imported (dropped by kind: {reasons}).{first}")
    report.exams = len(writer.records)
    if report.drop_counts:
        log.warning("%s: dropped %s (reasons in the import report, dataset.json)", report.src,
                    ", ".join(f"{n} {k}" for k, n in report.drop_counts.most_common()))
    writer.report = report.as_dict()
    return writer.report


def _progress(on_progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(stage, done, total)


# --------------------------------------------------------------------------- shared DICOM pipeline

@dataclass
class DicomExam:
    """One series to import, with its labels aligned to ``plan.headers`` (sorted order)."""

    exam_id: str
    patient_key: str
    plan: SeriesPlan
    label: float | None = None
    subtypes: dict | None = None
    slice_labels: np.ndarray | None = None      # (S,) 0/1
    slice_subtypes: np.ndarray | None = None    # (S, 5) 0/1
    boxes: list[list[tuple]] | None = None      # per slice: [(code, x0, y0, x1, y1), ...] in pixels
    mask_path: Path | None = None               # NIfTI mask (W, H, S), codes 0..5


def _scan(paths, report: ImportReport, *, pool: dicom.WorkerPool, on_error: str,
          on_progress: ProgressFn | None) -> list[SliceHeader]:
    if len(paths) < PARALLEL_MIN_FILES:
        pool = dicom.WorkerPool(1)
    report.info["scan_workers"] = pool.workers
    scan = dicom.scan_headers(paths, pool=pool, on_error=on_error, on_progress=on_progress)
    for err in scan.problems:
        report.drop_error(err)
    report.info["files"] = {"dicom": scan.n_files, "images": len(scan.headers), "non_image": len(scan.non_image),
                            "unreadable": len(scan.problems)}
    return scan.headers


def _plan(headers: list[SliceHeader], report: ImportReport, on_error: str, item: str) -> SeriesPlan | None:
    try:
        return dicom.plan_series(headers)
    except DicomError as err:
        if on_error == "raise":
            raise
        report.drop(item, err.kind, str(err))
        return None


def _box_mask(boxes: list[list[tuple]], shape: tuple[int, int, int]) -> np.ndarray:
    """Paint boxes per slice into a (S, H, W) uint8 code mask; larger boxes first so smaller ones win overlaps."""
    mask = np.zeros(shape, dtype=np.uint8)
    for s, slice_boxes in enumerate(boxes):
        for code, x0, y0, x1, y1 in sorted(slice_boxes, key=lambda b: -(b[3] - b[1]) * (b[4] - b[2])):
            mask[s, y0:y1, x0:x1] = code
    return mask


def _write_dicom_exams(writer: DatasetWriter, exams: list[DicomExam], report: ImportReport, *,
                       pool: dicom.WorkerPool, on_error: str, on_progress: ProgressFn | None) -> None:
    """Decode every exam's series (in a process pool) and add it to the writer."""
    all_headers = [h for e in exams for h in e.plan.headers]
    decoders = dicom.choose_decoders(all_headers)  # fails before decoding when a decoder is missing
    report.transfer_syntaxes.update(h.transfer_syntax for h in all_headers)
    tasks = []
    for e in exams:
        series_dec = {ts: decoders[ts] for ts in e.plan.transfer_syntaxes}
        tasks.append((e.plan.headers, series_dec, writer.size, on_error, True))
    total, done = len(all_headers), 0
    compressed = sum(h.pixel_offset is None or h.transfer_syntax not in dicom.NATIVE_FAST for h in all_headers)
    resized = sum((h.rows, h.cols) != (writer.size, writer.size) for h in all_headers)
    heavy = compressed >= PARALLEL_MIN_COMPRESSED or resized >= PARALLEL_MIN_FILES
    mapper = pool if heavy else dicom.WorkerPool(1)
    report.info["decode_workers"] = mapper.workers
    _progress(on_progress, "decode", 0, total)
    for e, dec in zip(exams, mapper.map_ordered(dicom.decode_task, tasks)):
        done += e.plan.n_slices
        for err in dec.problems:
            report.drop_error(err)
        if not dec.kept:
            report.drop(e.exam_id, "no_slices", f"exam {e.exam_id}: none of its {e.plan.n_slices} files could be "
                                                "decoded (see the file drops)")
            continue
        report.decoders.update(dec.decoders)
        report.twelve_bit_fixes += dec.twelve_bit_fixes
        kept = np.asarray(dec.kept)
        try:
            mask = _exam_mask(e, kept, writer.size)
        except ValueError as err:
            if on_error == "raise":
                raise
            report.drop(e.exam_id, "bad_mask", str(err))
            continue
        h0 = e.plan.headers[0]
        writer.add_exam(
            e.exam_id, patient_key=e.patient_key, hu=dec.hu, label=e.label, subtypes=e.subtypes,
            slice_labels=None if e.slice_labels is None else e.slice_labels[kept],
            slice_subtypes=None if e.slice_subtypes is None else e.slice_subtypes[kept], mask=mask,
            slice_thickness_mm=h0.slice_thickness if h0.slice_thickness else _finite(e.plan.spacing_mm[0]),
            pixel_spacing_mm=_finite(e.plan.spacing_mm[1]),
        )
        report.slices += len(kept)
        _progress(on_progress, "decode", done, total)


def _exam_mask(e: DicomExam, kept: np.ndarray, size: int) -> np.ndarray | None:
    rows, cols = e.plan.shape
    if e.boxes is not None:
        full = _box_mask([e.boxes[i] for i in kept], (len(kept), rows, cols))
    elif e.mask_path is not None:
        from ich.nifti import read_nifti_mask

        full = read_nifti_mask(e.mask_path)
        if full.shape != (e.plan.n_slices, rows, cols):
            raise ValueError(f"{e.mask_path}: mask shape (S, H, W) = {full.shape} does not match the series "
                             f"{(e.plan.n_slices, rows, cols)}; write it as np.transpose(mask_SHW, (2, 1, 0))")
        if full.max() > len(SUBTYPES):
            raise ValueError(f"{e.mask_path}: mask codes must be 0..{len(SUBTYPES)}, found {int(full.max())}")
        full = full[kept]
    else:
        return None
    return resize(full, size, nearest=True)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


# --------------------------------------------------------------------------- label files

def read_rsna_labels(csv_path: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """Read an RSNA-layout label CSV (``ID,Label``; ID = ``<image id>_<subtype>``).

    The file is de-duplicated on ``ID`` (first row kept) and pivoted to one row per image.

    Returns:
        (table indexed by image id with Int8 columns ``labels.SUBTYPES + ("any",)``, statistics dict:
        rows, duplicate_rows_dropped, conflicting_duplicates, images, incomplete_images, any_inconsistent).

    Raises:
        FileNotFoundError, ValueError: missing file, wrong columns, unknown subtype, label not 0/1.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} does not exist; expected a label CSV with columns ID,Label")
    df = pd.read_csv(csv_path, dtype={"ID": "string"})
    missing = [c for c in ("ID", "Label") if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; expected columns ID,Label "
                         f"(found {list(df.columns)[:6]})")
    n_rows = len(df)
    label = pd.to_numeric(df["Label"], errors="coerce")
    bad = ~label.isin([0, 1])
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{csv_path}: Label must be 0 or 1; line {i + 2} has {str(df['Label'].iloc[i])!r}")
    df = pd.DataFrame({"ID": df["ID"], "Label": label.astype("int8")})
    dup = df.duplicated("ID", keep=False)
    conflicting = int(df[dup].groupby("ID")["Label"].nunique().gt(1).sum()) if dup.any() else 0
    df = df.drop_duplicates("ID", keep="first")
    parts = df["ID"].str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2:
        parts = pd.DataFrame({0: df["ID"], 1: pd.Series([None] * len(df), index=df.index, dtype="string")})
    df = df.assign(image=parts[0], subtype=parts[1])
    unknown = ~df["subtype"].isin(RSNA_LABELS)
    if unknown.any():
        examples = df.loc[unknown, "ID"].head(3).tolist()
        raise ValueError(f"{csv_path}: IDs must look like <image id>_<subtype> with subtype one of "
                         f"{list(RSNA_LABELS)}; found {int(unknown.sum())} other IDs, e.g. {examples}")
    table = df.pivot(index="image", columns="subtype", values="Label").reindex(columns=list(RSNA_LABELS))
    table = table.astype("Int8")
    incomplete = int(table.isna().any(axis=1).sum())
    sub_any = table[list(SUBTYPES)].max(axis=1)
    any_inconsistent = int(((table["any"] == 0) & (sub_any == 1)).sum())
    stats = {"csv": csv_path.name, "rows": n_rows, "duplicate_rows_dropped": int(n_rows - len(df)),
             "conflicting_duplicates": conflicting, "images": int(len(table)),
             "incomplete_images": incomplete, "any_inconsistent": any_inconsistent}
    if conflicting:
        log.warning("%s: %d IDs appear twice with different labels; the first row was kept", csv_path, conflicting)
    return table, stats


def _slice_labels_from_table(headers: list[SliceHeader], table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """(slice_labels (S,), slice_subtypes (S, 5)) for sorted headers, or None when any slice is unlabelled."""
    keys = [h.sop_uid if h.sop_uid in table.index else Path(h.path).stem for h in headers]
    if not all(k in table.index for k in keys):
        return None
    rows = table.loc[keys]
    if rows.isna().any().any():
        return None
    return rows["any"].to_numpy(dtype=np.int8), rows[list(SUBTYPES)].to_numpy(dtype=np.int8)


# --------------------------------------------------------------------------- folder

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
    src, writer, report = _begin("folder", src, out, size=size, workers=workers, on_error=on_error,
                                 overwrite=overwrite, split_seed=split_seed)
    with writer, dicom.WorkerPool(workers) as pool:
        files = dicom.list_dicom_files(src)
        table = None
        if labels is not None:
            table, stats = read_rsna_labels(labels)
            report.info["labels"] = stats
        headers = _scan(files, report, pool=pool, on_error=on_error, on_progress=on_progress)
        if table is not None:
            known = {h.sop_uid for h in headers} | {p.stem for p in files}
            unknown = [i for i in table.index if i not in known]
            if unknown:
                raise ValueError(f"{labels}: {len(unknown)} of {len(table)} labelled images are not in {src} "
                                 f"(by SOPInstanceUID or file name), e.g. {unknown[:3]}; use the labels CSV that "
                                 "belongs to this folder, or remove those rows")
        groups = dicom.group_series(headers)
        exams, used_ids = [], set()
        for uid, hs in groups.items():
            rel = report.rel(Path(hs[0].path).parent)
            # keyed on the series UID, never on folder or file names (they often name the patient)
            exam_id = _unique(exam_pseudonym(uid), used_ids)
            plan = _plan(hs, report, on_error, f"{rel or '.'} (series {dicom.key_hash(uid)[:8]})")
            if plan is None:
                continue
            e = DicomExam(exam_id, plan.headers[0].patient_key or f"series:{uid}", plan)
            if table is not None:
                found = _slice_labels_from_table(plan.headers, table)
                if found is not None:
                    e.slice_labels, e.slice_subtypes = found
                elif any((h.sop_uid in table.index or Path(h.path).stem in table.index) for h in plan.headers):
                    msg = (f"exam {exam_id}: {labels} labels only some of its {plan.n_slices} slices (all six labels "
                           "are needed for every slice); the exam is imported without labels")
                    if on_error == "raise":
                        raise ValueError(msg + "; complete the CSV or import with on_error='skip'")
                    report.drop(exam_id, "partial_labels", msg)
            exams.append(e)
        _write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        _finish(writer, report, "series")
    return writer.report


def _unique(base: str, used: set[str]) -> str:
    exam_id, k = base, 2
    while exam_id in used:
        exam_id = f"{base}-{k}"
        k += 1
    used.add(check_exam_id(exam_id))
    return exam_id


# --------------------------------------------------------------------------- RSNA 2019

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
    src, writer, report = _begin("rsna", src, out, size=size, workers=workers, on_error=on_error,
                                 overwrite=overwrite, split_seed=split_seed)
    csv = Path(csv) if csv is not None else src / "stage_2_train.csv"
    images = Path(images) if images is not None else src / "stage_2_train"
    for path, what in ((csv, "the label CSV"), (images, "the DICOM folder")):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist ({what}); the RSNA importer expects SRC/stage_2_train.csv and "
                "SRC/stage_2_train/ID_<hex>.dcm as unzipped from Kaggle (or pass csv=/images=)")
    with writer, dicom.WorkerPool(workers) as pool:
        table, stats = read_rsna_labels(csv)
        files = dicom.list_dicom_files(images)
        headers = _scan(files, report, pool=pool, on_error=on_error, on_progress=on_progress)
        labelled, seen = [], set()
        for h in headers:
            key = h.sop_uid if h.sop_uid in table.index else Path(h.path).stem
            if key not in table.index:
                report.drop(report.rel(h.path), "unlabelled", f"{report.rel(h.path)}: image {h.sop_uid} is not in "
                                                              f"{csv.name}; dropped")
                continue
            seen.add(key)
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
            plan = _plan(hs, report, on_error, f"series {exam_id}")
            if plan is None:
                continue
            e = DicomExam(exam_id, plan.headers[0].patient_key or f"series:{uid}", plan)
            e.slice_labels, e.slice_subtypes = _slice_labels_from_table(plan.headers, table) or (None, None)
            if e.slice_labels is None:
                msg = f"series {exam_id}: some slices lack one of the six labels in {csv.name}"
                if on_error == "raise":
                    raise ValueError(msg + "; fix the CSV or import with on_error='skip'")
                report.drop(exam_id, "incomplete_labels", msg + "; imported without labels")
            exams.append(e)
        _write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        _finish(writer, report, "series")
    return writer.report


# --------------------------------------------------------------------------- CQ500 + BHX

def read_cq500_reads(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``reads.csv`` (44 columns) into per-exam majority labels.

    Returns:
        Table indexed by exam number n (``CQ500-CT-<n>``) with Int8 columns ``label`` (R1+R2+R3 ICH >= 2)
        and the five ``labels.SUBTYPES`` (same majority rule on IPH, IVH, SDH, EDH, SAH), plus ``Category``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the CQ500 importer needs reads.csv (from the CQ500 download)")
    df = pd.read_csv(path)
    missing = [c for c in CQ500_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in CQ500_COLUMNS]
    if missing or extra:
        raise ValueError(f"{path}: not the 44-column CQ500 reads.csv: missing columns {missing}"
                         + (f", unexpected columns {extra}" if extra else "")
                         + "; expected name, Category, then R1:/R2:/R3: x 14 findings")
    n = df["name"].astype(str).str.extract(_CQ500_EXAM)[0]
    if n.isna().any():
        bad = df.loc[n.isna(), "name"].head(3).tolist()
        raise ValueError(f"{path}: column name must hold CQ500-CT-<n>, found {bad}")
    reads = df[[c for c in CQ500_COLUMNS[2:]]].apply(pd.to_numeric, errors="coerce")
    if reads.isna().any().any() or not reads.isin([0, 1]).all().all():
        raise ValueError(f"{path}: every reader finding must be 0 or 1")
    out = pd.DataFrame(index=n.astype(int).to_numpy())
    out["Category"] = df["Category"].to_numpy()
    out["label"] = (sum(df[f"R{r}:ICH"] for r in (1, 2, 3)) >= 2).astype("int8").to_numpy()
    for s in SUBTYPES:
        ab = SUBTYPE_ABBREV[s]
        out[s] = (sum(df[f"R{r}:{ab}"] for r in (1, 2, 3)) >= 2).astype("int8").to_numpy()
    if out.index.duplicated().any():
        raise ValueError(f"{path}: exam {out.index[out.index.duplicated()][0]} appears twice")
    return out.astype({c: "Int8" for c in ["label", *SUBTYPES]})


def read_bhx(path: str | os.PathLike) -> tuple[dict[str, list[tuple]], dict]:
    """Read a BHX box CSV into ``{SOPInstanceUID: [(code, x, y, width, height), ...]}`` (floats, pixels).

    ``data`` holds a Python-dict string parsed with ``ast.literal_eval``; ``labelName`` maps to
    mask codes (Chronic -> subdural, as the reference does).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a BHX box CSV "
                                "(e.g. 1_Initial_Manual_Labeling.csv from PhysioNet)")
    df = pd.read_csv(path, dtype=str)
    missing = [c for c in ("SOPInstanceUID", "data", "labelName") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing BHX column(s) {missing}; found {list(df.columns)}")
    boxes: dict[str, list[tuple]] = {}
    names: Counter = Counter()
    for i, (sop, data, name) in enumerate(zip(df["SOPInstanceUID"], df["data"], df["labelName"])):
        line = i + 2
        code = BHX_CODES.get(str(name).strip().lower())
        if code is None:
            raise ValueError(f"{path} line {line}: labelName {name!r} is not one of "
                             f"{sorted(n.capitalize() for n in BHX_CODES)}")
        try:
            d = ast.literal_eval(str(data))
            x, y, w, h = (float(d[k]) for k in ("x", "y", "width", "height"))
        except (ValueError, SyntaxError, KeyError, TypeError) as err:
            raise ValueError(f"{path} line {line}: data must be a dict string like "
                             f"\"{{'x': 10, 'y': 20, 'width': 30, 'height': 40}}\", found {data!r}") from err
        if not all(map(math.isfinite, (x, y, w, h))) or w < 0 or h < 0:
            raise ValueError(f"{path} line {line}: box {data!r} has a negative or non-finite size")
        names[str(name).strip()] += 1
        boxes.setdefault(str(sop), []).append((code, x, y, w, h))
    return boxes, {"file": path.name, "boxes": len(df), "images": len(boxes), "label_names": dict(names)}


def _round_px(v: float) -> int:
    return int(math.floor(v + 0.5))  # round half up, the same for every corner


def _pixel_boxes(raw: list[tuple], rows: int, cols: int) -> list[tuple]:
    """(code, x, y, w, h) floats -> (code, x0, y0, x1, y1) pixel corners clipped to the image; empty boxes dropped."""
    out = []
    for code, x, y, w, h in raw:
        x0, y0 = max(0, _round_px(x)), max(0, _round_px(y))
        x1, y1 = min(cols, _round_px(x + w)), min(rows, _round_px(y + h))
        if x1 > x0 and y1 > y0:
            out.append((code, x0, y0, x1, y1))
    return out


def import_cq500(src, out, *, reads: str | os.PathLike | None = None, bhx: str | os.PathLike | None = None,
                 series: str = "reference", size: int = 256, workers: int = 2, on_progress: ProgressFn | None = None,
                 on_error: str = "skip", overwrite: bool = False, split_seed: int = 0) -> dict:
    """Import CQ500: exam label = majority of three readers; one exam per selected series.

    Layout: ``src/reads.csv`` and ``src/CQ500CT<n> CQ500CT<n>/Unknown Study/<series dir>/*.dcm``
    (folder names contain spaces; any folder whose name contains ``CQ500CT<n>`` or ``CQ500-CT-<n>`` works).

    Args:
        reads: reads.csv (default ``src/reads.csv``).
        bhx: optional BHX box CSV; boxed series get masks and slice labels (see the module docstring).
        series: "reference" keeps series with SliceThickness >= 3 mm, no "contrast" in the folder
            name and 10..70 slices (the reference rule); "all" keeps every CT series.
    """
    if series not in CQ500_SERIES_RULES:
        raise ValueError(f"series must be one of {list(CQ500_SERIES_RULES)}, not {series!r}")
    src, writer, report = _begin("cq500", src, out, size=size, workers=workers, on_error=on_error,
                                 overwrite=overwrite, split_seed=split_seed)
    reads_path = Path(reads) if reads is not None else src / "reads.csv"
    with writer, dicom.WorkerPool(workers) as pool:
        labels = read_cq500_reads(reads_path)
        boxes, bhx_stats = read_bhx(bhx) if bhx is not None else (None, None)
        files = dicom.list_dicom_files(src)
        headers = _scan(files, report, pool=pool, on_error=on_error, on_progress=on_progress)
        groups: dict[tuple[int, str], list[SliceHeader]] = {}
        for h in headers:
            n = _cq500_number(report.rel(h.path))
            if n is None:
                report.drop(report.rel(h.path), "outside_exam",
                            f"{report.rel(h.path)} is not inside a CQ500CT<n> folder; dropped")
                continue
            groups.setdefault((n, h.series_uid), []).append(h)
        found_exams = {n for n, _ in groups}
        stats = {"reads_exams": int(len(labels)), "exam_folders": len(found_exams),
                 "reads_without_folder": int(len(set(labels.index) - found_exams)),
                 "series_found": len(groups), "series_rule": series}
        exams, used, matched_sops = [], set(), set()
        for (n, uid), hs in sorted(groups.items(), key=lambda kv: (kv[0][0], Path(kv[1][0].path).parent.name)):
            series_dir = Path(hs[0].path).parent.name
            item = f"CQ500-CT-{n}/{series_dir}"
            if n not in labels.index:
                report.drop(item, "unlabelled", f"{item}: exam CQ500-CT-{n} is not in {reads_path.name}; dropped")
                continue
            plan = _plan(hs, report, on_error, item)
            if plan is None:
                continue
            if series == "reference":
                reason = _cq500_rule(plan, series_dir)
                if reason:
                    report.drop(item, "selection_rule", f"{item}: {reason}")
                    continue
            exam_id = _unique(safe_exam_id(f"CQ500-CT-{n}_{series_dir}"), used)
            row = labels.loc[n]
            e = DicomExam(exam_id, f"CQ500-CT-{n}", plan, label=float(row["label"]),
                          subtypes={s: float(row[s]) for s in SUBTYPES})
            if boxes is not None:
                per_slice = [boxes.get(h.sop_uid, []) for h in plan.headers]
                if any(per_slice):
                    matched_sops.update(h.sop_uid for h in plan.headers if h.sop_uid in boxes)
                    rows_, cols_ = plan.shape
                    e.boxes = [_pixel_boxes(b, rows_, cols_) for b in per_slice]
                    sub = np.zeros((plan.n_slices, len(SUBTYPES)), dtype=np.int8)
                    for i, b in enumerate(e.boxes):
                        for code, *_ in b:
                            sub[i, code - 1] = 1
                    e.slice_subtypes = sub
                    e.slice_labels = sub.any(axis=1).astype(np.int8)
            exams.append(e)
        if boxes is not None:
            bhx_stats.update({
                "images_matched": len(matched_sops), "images_unmatched": len(boxes) - len(matched_sops),
                "series_with_boxes": sum(e.boxes is not None for e in exams),
                "boxed_series_with_negative_exam_label": sum(e.boxes is not None and e.label == 0 for e in exams)})
            report.info["bhx"] = bhx_stats
        stats["series_selected"] = len(exams)
        report.info["labels"] = stats
        _write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        _finish(writer, report, "series")
    return writer.report


def _cq500_number(rel: str) -> int | None:
    n = None
    for part in Path(rel).parts[:-1]:
        m = _CQ500_EXAM.search(part)
        if m:
            n = int(m.group(1))  # the innermost matching folder wins
    return n


def _cq500_rule(plan: SeriesPlan, series_dir: str) -> str | None:
    """Why the reference rule rejects a series (None = kept): thickness >= 3 mm, no 'contrast', 10..70 slices."""
    thickness = plan.headers[0].slice_thickness or _finite(plan.spacing_mm[0])
    if thickness is None or thickness < 3.0:
        return f"slice thickness {thickness} mm < 3 mm (reference rule)"
    if "contrast" in series_dir.lower():
        return "folder name contains 'contrast' (reference rule)"
    if not 10 <= plan.n_slices <= 70:
        return f"{plan.n_slices} slices, outside 10..70 (reference rule)"
    return None


# --------------------------------------------------------------------------- CT-ICH

def _ctich_codes(sub: np.ndarray, has_mask: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Per-slice mask code from the CSV subtypes (S, 5); returns (codes (S,), n_ambiguous, n_unlabelled)."""
    counts = sub.sum(axis=0)  # slices per subtype in this exam
    fallback = int(np.argmax(counts)) + 1 if counts.any() else SUBTYPES.index("intraparenchymal") + 1
    codes = np.zeros(len(sub), dtype=np.uint8)
    ambiguous = unlabelled = 0
    for i, row in enumerate(sub):
        pos = np.flatnonzero(row)
        if len(pos) == 1:
            codes[i] = pos[0] + 1
        elif len(pos) > 1:
            codes[i] = pos[int(np.argmax(counts[pos]))] + 1  # argmax: first in SUBTYPES order on ties
            ambiguous += bool(has_mask[i])
        else:
            codes[i] = fallback
            unlabelled += bool(has_mask[i])
    return codes, ambiguous, unlabelled


def _ctich_task(vol_path: str, mask_path: str | None, sub: np.ndarray, size: int) -> dict:
    """Worker: read one CT-ICH volume (+ mask), code and resize; returns a dict (errors as values)."""
    from ich.nifti import read_nifti, read_nifti_mask
    from ich.preprocess import to_int16_hu

    try:
        hu, spacing = read_nifti(vol_path)  # (S, H, W)
        if len(sub) != hu.shape[0]:
            raise ValueError(f"{vol_path}: the volume has {hu.shape[0]} slices but hemorrhage_diagnosis_raw_ct.csv "
                             f"lists {len(sub)} for this patient; the files do not belong together")
        out = {"hu": to_int16_hu(resize(hu, size)), "spacing": spacing, "mask": None, "ambiguous": 0,
               "unlabelled": 0}
        if mask_path is not None:
            m = read_nifti_mask(mask_path)
            if m.shape != hu.shape:
                raise ValueError(f"{mask_path}: mask shape {m.shape} differs from the volume's {hu.shape}")
            values = np.unique(m)
            if len(values) > 2 or (len(values) == 2 and values[0] != 0):
                raise ValueError(f"{mask_path}: CT-ICH masks must be binary, found values {values[:6].tolist()}")
            binary = m > 0
            codes, out["ambiguous"], out["unlabelled"] = _ctich_codes(sub, binary.any(axis=(1, 2)))
            out["mask"] = resize((binary * codes[:, None, None]).astype(np.uint8), size, nearest=True)
        return out
    except ValueError as err:
        return {"error": str(err)}


def _ctich_root(src: Path) -> Path:
    if (src / "Patients_CT").is_dir() or ((src / "hemorrhage_diagnosis.csv").is_file()
                                          and not (src / "ct_scans").is_dir()):
        raise ValueError(
            f"{src} is the CT-ICH v1.0 layout (Patients_CT/<id>/brain/*.jpg, hemorrhage_diagnosis.csv), which ich "
            "does not read; download v1.3.1 (ct_scans/*.nii, masks/*.nii, hemorrhage_diagnosis_raw_ct.csv) from "
            "https://physionet.org/content/ct-ich/1.3.1/")
    if (src / "ct_scans").is_dir():
        return src
    subs = [d for d in src.iterdir() if d.is_dir() and (d / "ct_scans").is_dir()]
    if len(subs) == 1:
        return _ctich_root(subs[0])
    raise FileNotFoundError(f"{src} has no ct_scans/ folder; the CT-ICH importer expects PhysioNet v1.3.x: "
                            "ct_scans/NNN.nii, masks/NNN.nii, hemorrhage_diagnosis_raw_ct.csv")


def read_ctich_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``hemorrhage_diagnosis_raw_ct.csv`` (checked columns; SliceNumber is 1-based)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; CT-ICH v1.3.x ships hemorrhage_diagnosis_raw_ct.csv")
    df = pd.read_csv(path)
    missing = [c for c in CTICH_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(CTICH_COLUMNS)}")
    vals = df[list(CTICH_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    if vals.isna().any().any():
        raise ValueError(f"{path}: non-numeric values in {list(CTICH_COLUMNS)}")
    if not vals[list(CTICH_COLUMNS[2:])].isin([0, 1]).all().all():
        raise ValueError(f"{path}: subtype and No_Hemorrhage columns must be 0 or 1")
    return vals.astype("int64")


def import_ctich(src, out, *, size: int = 256, workers: int = 2, on_progress: ProgressFn | None = None,
                 on_error: str = "skip", overwrite: bool = False, split_seed: int = 0) -> dict:
    """Import PhysioNet CT-ICH v1.3.x: NIfTI volumes (HU) + binary masks + per-slice CSV labels.

    Volumes are transposed (2, 1, 0) to (S, H, W) and keep the file's slice order (as the
    reference); slice label = not No_Hemorrhage (``SliceNumber`` is 1-based); mask codes as in
    the module docstring. Exam id ``ctich-NNN``, patient = the subject number.
    """
    src, writer, report = _begin("ctich", src, out, size=size, workers=workers, on_error=on_error,
                                 overwrite=overwrite, split_seed=split_seed)
    with writer, dicom.WorkerPool(workers) as pool:
        root = _ctich_root(src)
        table = read_ctich_csv(root / "hemorrhage_diagnosis_raw_ct.csv")
        vols = sorted(p for p in (root / "ct_scans").iterdir() if p.name.endswith((".nii", ".nii.gz")))
        if not vols:
            raise ValueError(f"{root / 'ct_scans'} holds no .nii volumes; check the download")
        tasks, meta = [], []
        for v in vols:
            stem = v.name.split(".nii")[0]
            if not stem.isdigit():
                report.drop(report.rel(v), "unexpected_file", f"{report.rel(v)}: not named NNN.nii; skipped")
                continue
            pid = int(stem)
            rows = table[table["PatientNumber"] == pid].sort_values("SliceNumber")
            problem = None
            if rows.empty:
                problem = f"{report.rel(v)}: patient {pid} has no rows in hemorrhage_diagnosis_raw_ct.csv"
            elif rows["SliceNumber"].tolist() != list(range(1, len(rows) + 1)):
                problem = (f"{report.rel(v)}: SliceNumber for patient {pid} must run 1..{len(rows)} "
                           "(1-based, no gaps or repeats)")
            if problem:
                if on_error == "raise":
                    raise ValueError(problem)
                report.drop(report.rel(v), "bad_labels", problem)
                continue
            mask = next((p for p in (root / "masks" / f"{stem}.nii", root / "masks" / f"{stem}.nii.gz")
                         if p.is_file()), None)
            sub = rows[[CTICH_SUBTYPE_COLUMNS[s] for s in SUBTYPES]].to_numpy(dtype=np.int8)
            tasks.append((str(v), None if mask is None else str(mask), sub, writer.size))
            meta.append((pid, v, rows, sub))
        with_volume = {m[0] for m in meta}
        stats = {"csv_patients": int(table["PatientNumber"].nunique()), "volumes": len(vols),
                 "csv_patients_without_volume": sorted(int(p) for p in set(table["PatientNumber"]) - with_volume)}
        ambiguous = unlabelled = mismatched = 0
        if len(tasks) < 4:  # a pool is not worth starting for a few volumes
            pool = dicom.WorkerPool(1)
        report.info["decode_workers"] = pool.workers
        _progress(on_progress, "import", 0, len(tasks))
        for k, ((pid, v, rows, sub), res) in enumerate(zip(meta, pool.map_ordered(_ctich_task, tasks))):
            if "error" in res:
                if on_error == "raise":
                    raise ValueError(res["error"])
                report.drop(report.rel(v), "bad_volume", res["error"])
                continue
            labels = (1 - rows["No_Hemorrhage"].to_numpy()).astype(np.int8)
            mismatched += int((labels != sub.any(axis=1)).sum())
            ambiguous += res["ambiguous"]
            unlabelled += res["unlabelled"]
            s, r, c = res["spacing"]
            writer.add_exam(f"ctich-{pid:03d}", patient_key=f"ctich:{pid}", hu=res["hu"], slice_labels=labels,
                            slice_subtypes=sub, mask=res["mask"], slice_thickness_mm=_finite(s),
                            pixel_spacing_mm=_finite(r))
            report.slices += len(labels)
            _progress(on_progress, "import", k + 1, len(tasks))
        stats.update({"mask_slices_multiple_subtypes": ambiguous, "mask_slices_without_subtype": unlabelled,
                      "slices_label_subtype_mismatch": mismatched})
        report.info["labels"] = stats
        _finish(writer, report, "volume")
    return writer.report


# --------------------------------------------------------------------------- phantom

PHANTOM_GENERATOR = "ich.phantom"
PHANTOM_VERSION = 1


def import_phantom(src, out, *, size: int = 256, workers: int = 2, on_progress: ProgressFn | None = None,
                   on_error: str = "skip", overwrite: bool = False, split_seed: int = 0) -> dict:
    """Import a synthetic phantom folder written by ``python -m ich synth``.

    Layout: ``synth.json``, ``labels.csv`` (RSNA layout keyed by SOPInstanceUID),
    ``exams/<exam_id>/*.dcm`` (one CT series per exam), ``masks/<exam_id>.nii.gz`` (codes, axes (W, H, S)).
    Exam id = the folder name under ``exams/``.
    """
    src, writer, report = _begin("phantom", src, out, size=size, workers=workers, on_error=on_error,
                                 overwrite=overwrite, split_seed=split_seed)
    with writer, dicom.WorkerPool(workers) as pool:
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
        report.info["labels"] = stats
        exams_dir = src / "exams"
        if not exams_dir.is_dir():
            raise FileNotFoundError(f"{exams_dir} does not exist; a phantom folder holds exams/<exam_id>/*.dcm")
        headers = _scan(dicom.list_dicom_files(exams_dir), report, pool=pool, on_error=on_error,
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
            plan = _plan(hs, report, on_error, exam_id)
            if plan is None:
                continue
            e = DicomExam(exam_id, plan.headers[0].patient_key or exam_id, plan)
            found = _slice_labels_from_table(plan.headers, table)
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
        _write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        _finish(writer, report, "exam")
    return writer.report


IMPORTERS: dict[str, Callable[..., dict]] = {
    "folder": import_folder,
    "rsna": import_rsna,
    "cq500": import_cq500,
    "ctich": import_ctich,
    "phantom": import_phantom,
}
