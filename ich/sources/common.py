"""What every importer shares: the import report, the early checks, the DICOM scan -> plan -> write pipeline.

Also the RSNA-style label table (one row per slice, ``<image>_<subtype>``) that the folder, RSNA and
phantom importers read.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ich import dicom
from ich.dicom import DicomError, SeriesPlan, SliceHeader
from ich.labels import SUBTYPES
from ich.pool import WorkerPool
from ich.preprocess import resize
from ich.store import DatasetWriter, check_exam_id

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

ProgressFn = Callable[[str, int, int], None]
RSNA_LABELS = (*SUBTYPES, "any")
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


def begin_import(source: str, src, out, *, size: int, workers: int, on_error: str, overwrite: bool,
           split_seed: int) -> tuple[Path, DatasetWriter, ImportReport]:
    """Validate the common arguments; create the writer first so a bad --out fails before any work."""
    dicom.check_on_error(on_error)
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, not {workers!r}")
    src = check_source(source, src)
    writer = DatasetWriter(out, source=source, size=size, overwrite=overwrite, split_seed=split_seed)
    return src, writer, ImportReport(source, src, size=size, workers=workers, on_error=on_error)


def finish_import(writer: DatasetWriter, report: ImportReport, what: str) -> dict:
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


def report_progress(on_progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
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
    reads: dict | None = None                   # recorded readers' exam reads {"R1": 0/1, ...} (CQ500)


def scan_headers(paths, report: ImportReport, *, pool: WorkerPool, on_error: str,
          on_progress: ProgressFn | None) -> list[SliceHeader]:
    if len(paths) < PARALLEL_MIN_FILES:
        pool = WorkerPool(1)
    report.info["scan_workers"] = pool.workers
    scan = dicom.scan_headers(paths, pool=pool, on_error=on_error, on_progress=on_progress)
    for err in scan.problems:
        report.drop_error(err)
    report.info["files"] = {"dicom": scan.n_files, "images": len(scan.headers), "non_image": len(scan.non_image),
                            "unreadable": len(scan.problems)}
    return scan.headers


def plan_series(headers: list[SliceHeader], report: ImportReport, on_error: str, item: str) -> SeriesPlan | None:
    try:
        return dicom.plan_series(headers)
    except DicomError as err:
        if on_error == "raise":
            raise
        report.drop(item, err.kind, str(err))
        return None


def box_mask(boxes: list[list[tuple]], shape: tuple[int, int, int]) -> np.ndarray:
    """Paint boxes per slice into a (S, H, W) uint8 code mask; larger boxes first so smaller ones win overlaps."""
    mask = np.zeros(shape, dtype=np.uint8)
    for s, slice_boxes in enumerate(boxes):
        for code, x0, y0, x1, y1 in sorted(slice_boxes, key=lambda b: -(b[3] - b[1]) * (b[4] - b[2])):
            mask[s, y0:y1, x0:x1] = code
    return mask


def write_dicom_exams(writer: DatasetWriter, exams: list[DicomExam], report: ImportReport, *,
                       pool: WorkerPool, on_error: str, on_progress: ProgressFn | None) -> None:
    """Decode every exam's series (in a process pool) and add it to the writer."""
    all_headers = [h for e in exams for h in e.plan.headers]
    decoders = dicom.choose_decoders(all_headers)  # fails before decoding when a decoder is missing
    report.transfer_syntaxes.update(h.transfer_syntax for h in all_headers)
    tasks = []
    for e in exams:
        series_dec = {ts: decoders[ts] for ts in e.plan.transfer_syntaxes}
        tasks.append((e.plan.headers, series_dec, writer.size, on_error, e.boxes, e.mask_path))
    total, done = len(all_headers), 0
    compressed = sum(h.pixel_offset is None or h.transfer_syntax not in dicom.NATIVE_FAST for h in all_headers)
    resized = sum((h.rows, h.cols) != (writer.size, writer.size) for h in all_headers)
    heavy = compressed >= PARALLEL_MIN_COMPRESSED or resized >= PARALLEL_MIN_FILES
    mapper = pool if heavy else WorkerPool(1)
    report.info["decode_workers"] = mapper.workers
    report_progress(on_progress, "decode", 0, total)
    for e, (dec, mask, mask_error) in zip(exams, mapper.map_ordered(decode_exam_task, tasks)):
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
        if mask_error is not None:
            if on_error == "raise":
                raise ValueError(mask_error)
            report.drop(e.exam_id, "bad_mask", mask_error)
            continue
        h0 = e.plan.headers[0]
        writer.add_exam(
            e.exam_id, patient_key=e.patient_key, hu=dec.hu, label=e.label, subtypes=e.subtypes,
            slice_labels=None if e.slice_labels is None else e.slice_labels[kept],
            slice_subtypes=None if e.slice_subtypes is None else e.slice_subtypes[kept], mask=mask,
            slice_thickness_mm=h0.slice_thickness if h0.slice_thickness else finite_or_none(e.plan.spacing_mm[0]),
            pixel_spacing_mm=finite_or_none(e.plan.spacing_mm[1]), reads=e.reads,
        )
        report.slices += len(kept)
        report_progress(on_progress, "decode", done, total)


def decode_exam_task(headers: list[SliceHeader], decoders: dict[str, str], size: int, on_error: str,
                     boxes: list[list[tuple]] | None, mask_path: Path | None
                     ) -> tuple[dicom.DecodedSeries, np.ndarray | None, str | None]:
    """One exam's pixels and mask, decoded in an import worker (the importing process only writes them).

    Returns:
        (the decoded series, its (K, size, size) uint8 code mask for the K kept slices or None,
        why the mask was refused or None).
    """
    dec = dicom.decode_task(headers, decoders, size, on_error, True)
    if not dec.kept:
        return dec, None, None
    try:
        mask = exam_mask(boxes, mask_path, (len(headers), headers[0].rows, headers[0].cols), np.asarray(dec.kept),
                         size)
    except ValueError as err:
        return dec, None, str(err)
    return dec, mask, None


def exam_mask(boxes: list[list[tuple]] | None, mask_path: Path | None, shape: tuple[int, int, int],
              kept: np.ndarray, size: int) -> np.ndarray | None:
    """The (K, size, size) code mask of the ``kept`` slices of a series of ``shape`` (S, H, W), from boxes
    or a NIfTI mask file; None when the exam has neither."""
    n_slices, rows, cols = shape
    if boxes is not None:
        full = box_mask([boxes[i] for i in kept], (len(kept), rows, cols))
    elif mask_path is not None:
        from ich.nifti import read_nifti_mask

        full = read_nifti_mask(mask_path)
        if full.shape != (n_slices, rows, cols):
            raise ValueError(f"{mask_path}: mask shape (S, H, W) = {full.shape} does not match the series "
                             f"{(n_slices, rows, cols)}; write it as np.transpose(mask_SHW, (2, 1, 0))")
        if full.max() > len(SUBTYPES):
            raise ValueError(f"{mask_path}: mask codes must be 0..{len(SUBTYPES)}, found {int(full.max())}")
        full = full[kept]
    else:
        return None
    return resize(full, size, nearest=True)


def finite_or_none(x: float) -> float | None:
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
    image, subtype = [], []          # "<image>_<subtype>" split at the last "_" (4x faster than str.rsplit)
    for text in df["ID"].tolist():
        head, sep, tail = text.rpartition("_") if isinstance(text, str) else ("", "", "")
        image.append(head if sep else text)
        subtype.append(tail if sep else None)
    df = df.assign(image=pd.array(image, dtype="string"), subtype=pd.array(subtype, dtype="string"))
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


@dataclass(frozen=True)
class LabelLookup:
    """A label table from ``read_rsna_labels`` as arrays, so that joining every exam's slices costs a dict
    lookup per slice (a pandas join per exam was 5 ms of the importing process's time, 2026-12-04)."""

    rows: dict[str, int]           # image id -> row of ``values``
    values: np.ndarray             # (N, 6) float32: "any", then ``labels.SUBTYPES``; nan where unknown

    @classmethod
    def of(cls, table: pd.DataFrame) -> "LabelLookup":
        values = table[["any", *SUBTYPES]].to_numpy(dtype=np.float32, na_value=np.nan)
        return cls({str(image): i for i, image in enumerate(table.index)}, values)

    def row_of(self, header: SliceHeader) -> int | None:
        """The row of a slice: looked up by its SOPInstanceUID, else by its file name without the suffix."""
        row = self.rows.get(header.sop_uid) if header.sop_uid else None
        return self.rows.get(Path(header.path).stem) if row is None else row


def slice_labels_from_table(headers: list[SliceHeader], labels: LabelLookup) -> tuple[np.ndarray, np.ndarray] | None:
    """(slice_labels (S,), slice_subtypes (S, 5)) for sorted headers, or None when any slice is unlabelled
    (``LabelLookup.row_of`` finds a slice's row)."""
    rows = [labels.row_of(h) for h in headers]
    if None in rows:
        return None
    values = labels.values[rows]                                                                # (S, 6)
    if np.isnan(values).any():
        return None
    return values[:, 0].astype(np.int8), values[:, 1:].astype(np.int8)


def unique_name(base: str, used: set[str]) -> str:
    exam_id, k = base, 2
    while exam_id in used:
        exam_id = f"{base}-{k}"
        k += 1
    used.add(check_exam_id(exam_id))
    return exam_id
