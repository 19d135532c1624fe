"""The dataset store: one folder per dataset, with exam and slice tables and cached volumes.

This is the only module that knows the store's file names. Layout of a dataset folder::

    dataset.json            format tag, name, source, cached size, import report, split seed
    exams.parquet           one row per exam (see EXAM_COLUMNS)
    slices.parquet          one row per slice, in sorted (anatomical) order (see SLICE_COLUMNS)
    volumes/<exam_id>.npy   int16 HU, shape (S, size, size), memory-mapped on load
    masks/<exam_id>.npy     uint8 subtype codes (0 = none, 1..5 = labels.SUBTYPES), same shape

Labels a source does not have are missing (pandas ``<NA>``), never 0: CQ500 has exam labels
but no slice labels; folder imports may have no labels at all. Patient keys are stored only
as keyed pseudonyms (HMAC-SHA256 with the installation's secret, ``ich.pseudonyms``), so no
identifying DICOM value reaches the tables and none can be recovered from them without the key.

A ``DatasetWriter`` builds the folder under a temporary name and renames it at the end, so
an interrupted import never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ich.labels import READ_PREFIX, READER_NAME, SPLITS, SUBTYPES, read_columns
from ich.paths import check_out_folder
from ich.preprocess import HU_MAX, HU_MIN, resize, to_int16_hu

FORMAT = "ich-dataset/1"
META_FILE, EXAMS_FILE, SLICES_FILE = "dataset.json", "exams.parquet", "slices.parquet"
VOLUME_DIR, MASK_DIR = "volumes", "masks"
EXAM_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

EXAM_COLUMNS = ["exam_id", "patient_id", "source", "label", *SUBTYPES, "n_slices", "has_mask", "split",
                "slice_thickness_mm", "pixel_spacing_mm"]
SLICE_COLUMNS = ["exam_id", "index", "label", *SUBTYPES, "has_mask", "lesion_pixels"]
DEFAULT_SPLIT = (0.7, 0.15, 0.15)


def hash_key(value: str) -> str:
    """A 12-hex-digit SHA-256 prefix of a non-secret string (shortens over-long exam ids; not for identifiers)."""
    return hashlib.sha256(str(value).encode("utf-8")).hexdigest()[:12]


def patient_pseudonym(patient_key: str) -> str:
    """The stored ``patient_id``: a 16-hex-digit HMAC-SHA256 of the importer's patient key (``ich.pseudonyms``)."""
    from ich.pseudonyms import pseudonym

    return pseudonym(patient_key, kind="patient", length=16)


def check_exam_id(exam_id: str) -> str:
    """Exam ids become file names: letters, digits, '.', '_' and '-' only (at most 128)."""
    if not isinstance(exam_id, str) or not EXAM_ID_PATTERN.match(exam_id):
        raise ValueError(
            f"exam_id must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            f"not {exam_id!r}; sanitise it with ich.store.safe_exam_id()"
        )
    return exam_id


def safe_exam_id(text: str) -> str:
    """Turn any identifier (a series UID, a folder name) into a valid exam id."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._-") or "exam"
    if len(s) > 128:
        s = s[:115] + "_" + hash_key(s)
    return s


def make_splits(exams: pd.DataFrame, fractions: tuple[float, float, float] = DEFAULT_SPLIT,
                seed: int = 0) -> pd.Series:
    """Assign train/val/test to exams, grouped by patient and stratified by exam label.

    Patients (not exams) are shuffled within each stratum (the patient's max exam label;
    unlabelled patients form their own stratum) and dealt to the splits so each split gets
    its fraction of the stratum's exams. No patient appears in two splits.

    Args:
        exams: table with ``exam_id``, ``patient_id`` and ``label`` (nullable) columns.
        fractions: (train, val, test), non-negative, summing to 1.
        seed: the split seed; the same seed gives the same split.

    Returns:
        A Series of split names indexed like ``exams``.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, not {fractions}")
    rng = np.random.default_rng(seed)
    label = exams["label"].astype("Float64").fillna(-1.0)
    per_patient = pd.DataFrame({"patient_id": exams["patient_id"], "label": label, "n": 1})
    patients = per_patient.groupby("patient_id", sort=True).agg(label=("label", "max"), n=("n", "sum"))
    assignment: dict[str, str] = {}
    for _, group in patients.groupby("label", sort=True):
        ids = group.index.to_numpy()
        ids = ids[rng.permutation(len(ids))]
        counts = group.loc[ids, "n"].to_numpy()
        targets = np.cumsum(fr) * counts.sum()
        done = 0
        for pid, n in zip(ids, counts):
            # deal each patient to the first split whose cumulative quota is not yet met
            k = int(np.searchsorted(targets, done + n / 2.0, side="left"))
            assignment[pid] = SPLITS[min(k, 2)]
            done += n
    return exams["patient_id"].map(assignment).rename("split")


@dataclass
class ExamRecord:
    """What an importer hands the writer for one exam (pixels are written immediately)."""

    exam_id: str
    patient_key: str                  # any patient identifier; only its keyed pseudonym is stored
    source: str
    n_slices: int
    label: float | None               # exam label 0/1, None when unknown
    subtypes: dict[str, float | None]
    slice_labels: np.ndarray | None   # (S,) 0/1 or None
    slice_subtypes: np.ndarray | None # (S, 5) 0/1 or None
    has_mask: bool
    lesion_pixels: np.ndarray | None  # (S,) mask pixel counts at cache size, or None
    slice_thickness_mm: float | None
    pixel_spacing_mm: float | None
    reads: dict[str, float | None] | None = None   # each recorded reader's exam read, {"R1": 0/1/None, ...}


def recorded_readers(path: str | os.PathLike) -> list[str]:
    """The recorded readers of a dataset folder, from its exams table's column names only (no rows read)."""
    import pyarrow.parquet as pq

    p = Path(path) / EXAMS_FILE
    return read_columns(pq.read_schema(p).names) if p.is_file() else []


def _check_reads(exam_id: str, reads) -> dict[str, float | None] | None:
    """Recorded readers' exam reads, checked: names R1, R2, ...; values 0, 1 or None (not read)."""
    if reads is None:
        return None
    out = {}
    for name, v in dict(reads).items():
        if not READER_NAME.match(str(name)):
            raise ValueError(f"exam {exam_id}: reader names must read R1, R2, ... (as CQ500's reads.csv), not {name!r}")
        if v is not None and v not in (0, 1):
            raise ValueError(f"exam {exam_id}: reader {name}'s exam read must be 0, 1 or None, not {v!r}")
        out[str(name)] = None if v is None else float(v)
    return out


class DatasetWriter:
    """Build a dataset folder atomically.

    Usage::

        with DatasetWriter("data/datasets/phantom", source="phantom", size=256) as w:
            w.add_exam("PH0001", patient_key="P1", hu=hu, slice_labels=lab, mask=mask)
        # the folder appears complete, or not at all

    Args:
        out: the dataset folder to create. It must not exist, unless ``overwrite`` is set and
            it holds an ich dataset (a folder holding anything else is never replaced).
        source: importer name recorded in the tables (phantom, rsna, cq500, ctich, folder).
        size: cached in-plane size in pixels (volumes are resized to size x size).
        split_fractions, split_seed: see ``make_splits``.
    """

    def __init__(self, out: str | os.PathLike, *, source: str, size: int = 256,
                 split_fractions: tuple[float, float, float] = DEFAULT_SPLIT, split_seed: int = 0,
                 overwrite: bool = False, name: str | None = None):
        self.out = check_out_folder(out)
        if not isinstance(size, int) or not 16 <= size <= 1024:
            raise ValueError(f"size must be an integer between 16 and 1024 pixels, not {size!r}")
        if self.out.exists() and not (self.out.is_dir() and not any(self.out.iterdir())):   # an empty folder is new
            if not overwrite:
                what = "an ich dataset" if (self.out / META_FILE).exists() else "other files"
                raise FileExistsError(
                    f"{self.out} already exists and holds {what}; choose a new --out folder"
                    + (", or pass --overwrite to replace it" if what == "an ich dataset" else "")
                )
            if not (self.out / META_FILE).exists() and any(self.out.iterdir()):
                raise FileExistsError(
                    f"{self.out} holds files that are not an ich dataset; refusing to overwrite it. "
                    "Choose an empty or new --out folder"
                )
        self.source, self.size, self.name = source, size, name or self.out.name
        self.split_fractions, self.split_seed = split_fractions, split_seed
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
        self.records: list[ExamRecord] = []
        self.report: dict = {}
        self._ids: set[str] = set()

    def __enter__(self) -> "DatasetWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        (self.tmp / VOLUME_DIR).mkdir(parents=True)
        (self.tmp / MASK_DIR).mkdir()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add_exam(self, exam_id: str, *, patient_key: str, hu: np.ndarray,
                 label: float | None = None, subtypes: dict[str, float | None] | None = None,
                 slice_labels: np.ndarray | None = None, slice_subtypes: np.ndarray | None = None,
                 mask: np.ndarray | None = None, slice_thickness_mm: float | None = None,
                 pixel_spacing_mm: float | None = None, reads: dict[str, float | None] | None = None) -> None:
        """Cache one exam.

        Args:
            exam_id: unique, file-name safe (see ``safe_exam_id``).
            patient_key: raw patient identifier (stored only as ``patient_pseudonym(patient_key)``).
            hu: (S, H, W) HU volume in sorted slice order (any float or int dtype).
            label: exam label; derived from slice labels or the mask when None.
            subtypes: exam-level subtype labels {name: 0/1/None}; derived when None.
            slice_labels: (S,) 0/1; derived from ``slice_subtypes`` or the mask when None.
            slice_subtypes: (S, 5) 0/1 in ``labels.SUBTYPES`` order.
            mask: (S, H, W) subtype codes 0..5, or None.
            pixel_spacing_mm: in-plane spacing of the *original* pixels.
            reads: recorded readers' exam reads, ``{"R1": 0/1/None, ...}`` (CQ500), kept as ``read_R1``, ...
        """
        check_exam_id(exam_id)
        reads = _check_reads(exam_id, reads)
        if exam_id in self._ids:
            raise ValueError(f"exam_id {exam_id!r} was added twice; exam ids must be unique within a dataset")
        hu = np.asarray(hu)
        if hu.ndim != 3 or hu.shape[0] < 1:
            raise ValueError(f"exam {exam_id}: hu must be a (S, H, W) volume, not shape {hu.shape}")
        n = hu.shape[0]
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != hu.shape:
                raise ValueError(f"exam {exam_id}: mask shape {mask.shape} differs from volume shape {hu.shape}")
            if mask.min() < 0 or mask.max() > len(SUBTYPES):
                raise ValueError(f"exam {exam_id}: mask values must be subtype codes 0..{len(SUBTYPES)}, "
                                 f"found {int(mask.min())}..{int(mask.max())}")
        for name, arr, shape in (("slice_labels", slice_labels, (n,)), ("slice_subtypes", slice_subtypes, (n, 5))):
            if arr is not None and np.shape(arr) != shape:
                raise ValueError(f"exam {exam_id}: {name} must have shape {shape}, not {np.shape(arr)}")

        if slice_subtypes is None and mask is not None:
            slice_subtypes = np.stack([(mask == c + 1).any(axis=(1, 2)) for c in range(len(SUBTYPES))], axis=1)
        if slice_subtypes is not None:
            slice_subtypes = np.asarray(slice_subtypes, dtype=np.int8)
        if slice_labels is None and slice_subtypes is not None:
            slice_labels = slice_subtypes.any(axis=1)
        if slice_labels is not None:
            slice_labels = np.asarray(slice_labels).astype(np.int8)
        if label is None and slice_labels is not None:
            label = float(slice_labels.max())
        if subtypes is None:
            subtypes = ({s: float(slice_subtypes[:, i].max()) for i, s in enumerate(SUBTYPES)}
                        if slice_subtypes is not None else {s: None for s in SUBTYPES})

        if hu.dtype == np.int16 and hu.shape[1:] == (self.size, self.size):
            vol = np.clip(hu, HU_MIN, HU_MAX)  # already in the cache format (importers send int16 HU); same result
        else:
            vol = to_int16_hu(resize(np.asarray(hu, dtype=np.float32), self.size))
        _save_npy(self.tmp / VOLUME_DIR / f"{exam_id}.npy", vol)
        lesion_pixels = None
        if mask is not None:
            small = resize(mask.astype(np.uint8), self.size, nearest=True)
            _save_npy(self.tmp / MASK_DIR / f"{exam_id}.npy", small)
            lesion_pixels = (small > 0).sum(axis=(1, 2)).astype(np.int32)
        self._ids.add(exam_id)
        self.records.append(ExamRecord(
            exam_id=exam_id, patient_key=str(patient_key), source=self.source, n_slices=n,
            label=label, subtypes=subtypes, slice_labels=slice_labels, slice_subtypes=slice_subtypes,
            has_mask=mask is not None, lesion_pixels=lesion_pixels,
            slice_thickness_mm=slice_thickness_mm, pixel_spacing_mm=pixel_spacing_mm, reads=reads,
        ))

    def close(self) -> None:
        """Write the tables and metadata, then rename the folder into place."""
        if not self.records:
            raise ValueError(f"no exam was added to {self.out}; nothing to write (is the source folder empty?)")
        exams, slices = self._tables()
        # the split must not depend on the installation's pseudonym key: patients are dealt in the order of
        # an unkeyed digest of their key (used here only, never stored), so a split is reproducible anywhere
        order = pd.DataFrame({"patient_id": [hashlib.sha256(str(r.patient_key).encode("utf-8")).hexdigest()[:12]
                                             for r in self.records], "label": exams["label"]})
        exams["split"] = make_splits(order, self.split_fractions, self.split_seed).to_numpy()
        exams.to_parquet(self.tmp / EXAMS_FILE, index=False)
        slices.to_parquet(self.tmp / SLICES_FILE, index=False)
        meta = {
            "format": FORMAT, "name": self.name, "source": self.source, "size": self.size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "split_fractions": list(self.split_fractions),
            "split_seed": self.split_seed, "report": self.report,
        }
        (self.tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=_json_default))
        if self.out.exists():
            trash = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, trash)
            os.replace(self.tmp, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)

    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        exam_rows, slice_parts = [], []
        for r in self.records:
            exam_rows.append({
                "exam_id": r.exam_id, "patient_id": patient_pseudonym(r.patient_key), "source": r.source,
                "label": r.label, **{s: r.subtypes.get(s) for s in SUBTYPES}, "n_slices": r.n_slices,
                "has_mask": r.has_mask, "slice_thickness_mm": r.slice_thickness_mm,
                "pixel_spacing_mm": r.pixel_spacing_mm,
            })
            n = r.n_slices
            part = {"exam_id": [r.exam_id] * n, "index": np.arange(n, dtype=np.int32),
                    "label": r.slice_labels if r.slice_labels is not None else [None] * n}
            for i, s in enumerate(SUBTYPES):
                part[s] = r.slice_subtypes[:, i] if r.slice_subtypes is not None else [None] * n
            part["has_mask"] = np.full(n, r.has_mask)
            part["lesion_pixels"] = r.lesion_pixels if r.lesion_pixels is not None else [None] * n
            slice_parts.append(pd.DataFrame(part))
        readers = sorted({k for r in self.records for k in (r.reads or {})}, key=lambda k: int(k[1:]))
        for row, r in zip(exam_rows, self.records):
            row.update({READ_PREFIX + k: (r.reads or {}).get(k) for k in readers})
        exams = pd.DataFrame(exam_rows)
        for col in ["label", *SUBTYPES, *(READ_PREFIX + k for k in readers)]:
            exams[col] = exams[col].astype("Int8")
        exams["n_slices"] = exams["n_slices"].astype("int32")
        exams["slice_thickness_mm"] = exams["slice_thickness_mm"].astype("Float32")
        exams["pixel_spacing_mm"] = exams["pixel_spacing_mm"].astype("Float32")
        exams["split"] = ""
        slices = pd.concat(slice_parts, ignore_index=True)
        for col in ["label", *SUBTYPES]:
            slices[col] = slices[col].astype("Int8")
        slices["lesion_pixels"] = slices["lesion_pixels"].astype("Int32")
        return exams[EXAM_COLUMNS + [READ_PREFIX + k for k in readers]], slices[SLICE_COLUMNS]


class Dataset:
    """An opened dataset folder: ``.exams``, ``.slices``, ``.meta`` and ``.load(exam_id)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.path} is not an ich dataset (no {META_FILE}); create one with "
                "`python -m ich synth` + `python -m ich import ...`"
            )
        self.meta: dict = json.loads(meta_path.read_text())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{self.path}: dataset format {self.meta.get('format')!r} is not {FORMAT!r}; "
                             "re-import it with this version of ich")
        self.exams: pd.DataFrame = pd.read_parquet(self.path / EXAMS_FILE)
        self.slices: pd.DataFrame = pd.read_parquet(self.path / SLICES_FILE)
        self._index = {e: i for i, e in enumerate(self.exams["exam_id"])}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.path.name))

    @property
    def size(self) -> int:
        """Cached in-plane size in pixels."""
        return int(self.meta["size"])

    def __len__(self) -> int:
        return len(self.exams)

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, exams={len(self.exams)}, slices={len(self.slices)})"

    def _check(self, exam_id: str) -> None:
        if exam_id not in self._index:
            some = ", ".join(list(self._index)[:3])
            raise KeyError(f"exam {exam_id!r} is not in dataset {self.name} (exam ids look like: {some})")

    def load_raw(self, exam_id: str) -> np.ndarray:
        """The cached int16 HU volume (S, H, W), memory-mapped read-only (no copy)."""
        self._check(exam_id)
        return np.load(self.path / VOLUME_DIR / f"{exam_id}.npy", mmap_mode="r")

    def load_mask(self, exam_id: str) -> np.ndarray | None:
        """The (S, H, W) uint8 subtype-code mask, memory-mapped, or None when the exam has none."""
        self._check(exam_id)
        p = self.path / MASK_DIR / f"{exam_id}.npy"
        return np.load(p, mmap_mode="r") if p.exists() else None

    def load(self, exam_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (hu, mask): float32 HU (S, H, W) in sorted slice order, and the mask or None."""
        hu = np.asarray(self.load_raw(exam_id), dtype=np.float32)
        mask = self.load_mask(exam_id)
        return hu, (np.asarray(mask) if mask is not None else None)

    def exam_slices(self, exam_id: str) -> pd.DataFrame:
        """The slice rows of one exam, in sorted order."""
        self._check(exam_id)
        return self.slices[self.slices["exam_id"] == exam_id].sort_values("index")

    def summary(self) -> dict:
        """Counts: exams, slices, positives at both levels, exams with masks, per split."""
        ex, sl = self.exams, self.slices
        out = {
            "name": self.name, "source": self.meta.get("source"), "size": self.size,
            "exams": int(len(ex)), "slices": int(len(sl)),
            "positive_exams": int((ex["label"] == 1).sum()),
            "positive_slices": int((sl["label"] == 1).sum()),
            "exams_with_exam_labels": int(ex["label"].notna().sum()),
            "exams_with_slice_labels": int(sl.groupby("exam_id")["label"].apply(lambda s: s.notna().all()).sum()),
            "exams_with_masks": int(ex["has_mask"].sum()),
            "subtype_exams": {s: int((ex[s] == 1).sum()) for s in SUBTYPES},
            "splits": {},
        }
        n_slices = sl.groupby("exam_id").size()
        pos_slices = sl[sl["label"] == 1].groupby("exam_id").size()
        for split in SPLITS:
            e = ex[ex["split"] == split]
            out["splits"][split] = {
                "exams": int(len(e)), "positive_exams": int((e["label"] == 1).sum()),
                "slices": int(n_slices.reindex(e["exam_id"]).fillna(0).sum()),
                "positive_slices": int(pos_slices.reindex(e["exam_id"]).fillna(0).sum()),
            }
        return out


def open_dataset(path: str | os.PathLike) -> Dataset:
    """Open a dataset folder written by ``DatasetWriter`` (any importer)."""
    return Dataset(path)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def list_datasets(root: str | os.PathLike) -> pd.DataFrame:
    """Every dataset folder directly under ``root``: name, path, source, size, exams, slices, created."""
    rows = []
    root = Path(root)
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        meta_path = p / META_FILE
        if p.name.startswith(".") or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
            n_exams = len(pd.read_parquet(p / EXAMS_FILE, columns=["exam_id"]))
        except (OSError, ValueError):
            continue
        rows.append({"name": p.name, "path": str(p), "source": meta.get("source"), "size": meta.get("size"),
                     "exams": n_exams, "created": meta.get("created")})
    return pd.DataFrame(rows, columns=["name", "path", "source", "size", "exams", "created"])
