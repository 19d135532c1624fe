"""The CQ500 importer: the three readers' reads (majority vote), the reference series rule, optional BHX boxes."""

from __future__ import annotations

import ast
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ich import dicom
from ich.dicom import SeriesPlan, SliceHeader
from ich.labels import SUBTYPE_ABBREV, SUBTYPES
from ich.pool import WorkerPool
from ich.sources.common import (DicomExam, ProgressFn, begin_import, finish_import, finite_or_none, plan_series,
                                scan_headers, unique_name, write_dicom_exams)
from ich.store import safe_exam_id

CQ500_FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
                  "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift")
CQ500_COLUMNS = ("name", "Category", *(f"R{r}:{f}" for r in (1, 2, 3) for f in CQ500_FINDINGS))
CQ500_SERIES_RULES = ("reference", "all")
READERS = ("R1", "R2", "R3")
_CQ500_EXAM = re.compile(r"CQ500-?CT-?(\d+)", re.IGNORECASE)


BHX_CODES = {"epidural": 1, "intraparenchymal": 2, "intraventricular": 3, "subarachnoid": 4, "subdural": 5,
             "chronic": 5}


def read_cq500_reads(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``reads.csv`` (44 columns) into per-exam majority labels.

    Returns:
        Table indexed by exam number n (``CQ500-CT-<n>``) with Int8 columns ``label`` (R1+R2+R3 ICH >= 2)
        and the five ``labels.SUBTYPES`` (same majority rule on IPH, IVH, SDH, EDH, SAH), plus ``Category`` and
        each reader's ICH read, ``R1``, ``R2``, ``R3`` (kept as ``read_R1..3`` in exams.parquet: a label source of
        its own, ``ich.noise``).
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
    for r in READERS:
        out[r] = df[f"{r}:ICH"].astype("int8").to_numpy()
    for s in SUBTYPES:
        ab = SUBTYPE_ABBREV[s]
        out[s] = (sum(df[f"R{r}:{ab}"] for r in (1, 2, 3)) >= 2).astype("int8").to_numpy()
    if out.index.duplicated().any():
        raise ValueError(f"{path}: exam {out.index[out.index.duplicated()][0]} appears twice")
    return out.astype({c: "Int8" for c in ["label", *SUBTYPES, *READERS]})


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
    src, writer, report = begin_import("cq500", src, out, size=size, workers=workers, on_error=on_error,
                                                   overwrite=overwrite, split_seed=split_seed)
    reads_path = Path(reads) if reads is not None else src / "reads.csv"
    with writer, WorkerPool(workers) as pool:
        labels = read_cq500_reads(reads_path)
        boxes, bhx_stats = read_bhx(bhx) if bhx is not None else (None, None)
        files = dicom.list_dicom_files(src)
        headers = scan_headers(files, report, pool=pool, on_error=on_error, on_progress=on_progress)
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
            plan = plan_series(hs, report, on_error, item)
            if plan is None:
                continue
            if series == "reference":
                reason = _cq500_rule(plan, series_dir)
                if reason:
                    report.drop(item, "selection_rule", f"{item}: {reason}")
                    continue
            exam_id = unique_name(safe_exam_id(f"CQ500-CT-{n}_{series_dir}"), used)
            row = labels.loc[n]
            e = DicomExam(exam_id, f"CQ500-CT-{n}", plan, label=float(row["label"]),
                          subtypes={s: float(row[s]) for s in SUBTYPES}, reads={r: float(row[r]) for r in READERS})
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
        write_dicom_exams(writer, exams, report, pool=pool, on_error=on_error, on_progress=on_progress)
        finish_import(writer, report, "series")
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
    thickness = plan.headers[0].slice_thickness or finite_or_none(plan.spacing_mm[0])
    if thickness is None or thickness < 3.0:
        return f"slice thickness {thickness} mm < 3 mm (reference rule)"
    if "contrast" in series_dir.lower():
        return "folder name contains 'contrast' (reference rule)"
    if not 10 <= plan.n_slices <= 70:
        return f"{plan.n_slices} slices, outside 10..70 (reference rule)"
    return None
