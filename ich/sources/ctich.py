"""The CT-ICH importer: PhysioNet CT-ICH v1.3.x NIfTI volumes, masks and per-slice CSV."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ich.labels import SUBTYPES
from ich.pool import WorkerPool
from ich.preprocess import resize
from ich.sources.common import ProgressFn, begin_import, finish_import, finite_or_none, report_progress

CTICH_SUBTYPE_COLUMNS = {s: s.capitalize() for s in SUBTYPES}  # epidural -> "Epidural"
CTICH_COLUMNS = ("PatientNumber", "SliceNumber", *CTICH_SUBTYPE_COLUMNS.values(), "No_Hemorrhage")


def mask_codes(sub: np.ndarray, has_mask: np.ndarray) -> tuple[np.ndarray, int, int]:
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
            codes, out["ambiguous"], out["unlabelled"] = mask_codes(sub, binary.any(axis=(1, 2)))
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
    src, writer, report = begin_import("ctich", src, out, size=size, workers=workers, on_error=on_error,
                                             overwrite=overwrite, split_seed=split_seed)
    with writer, WorkerPool(workers) as pool:
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
            pool = WorkerPool(1)
        report.info["decode_workers"] = pool.workers
        report_progress(on_progress, "import", 0, len(tasks))
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
                            slice_subtypes=sub, mask=res["mask"], slice_thickness_mm=finite_or_none(s),
                            pixel_spacing_mm=finite_or_none(r))
            report.slices += len(labels)
            report_progress(on_progress, "import", k + 1, len(tasks))
        stats.update({"mask_slices_multiple_subtypes": ambiguous, "mask_slices_without_subtype": unlabelled,
                      "slices_label_subtype_mismatch": mismatched})
        report.info["labels"] = stats
        finish_import(writer, report, "volume")
    return writer.report
