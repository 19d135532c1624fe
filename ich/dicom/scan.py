"""The first pass over DICOM files: a header index without pixels, grouped by series and sorted along the slice normal."""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset as DicomDataset
from pydicom.uid import UID, ImplicitVRLittleEndian

from ich.dicom.common import (DICOM_SUFFIXES, DicomError, NATIVE_FAST, POSITION_TOL_MM, check_on_error,
                              corrupt_error, decode_limits, key_hash, lenient_reading)
from ich.pool import WorkerPool, maybe_pool

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- header index

@dataclass(frozen=True, slots=True)
class SliceHeader:
    """The header fields ich needs from one image file (no pixels).

    PatientID is only kept as a keyed pseudonym; names, dates and other identifying tags are never read.
    The UIDs stay in memory (grouping, label and box joins); importers write them only where
    the source is anonymised by design (RSNA's ``ID_<hex>`` series ids become exam ids).
    """

    path: str
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_key: str                 # key_hash(PatientID), keyed; "" when the file has no PatientID
    modality: str
    transfer_syntax: str
    rows: int
    cols: int
    n_frames: int
    instance_number: int | None
    position: tuple[float, float, float] | None      # ImagePositionPatient (mm)
    orientation: tuple[float, ...] | None            # ImageOrientationPatient, 6 direction cosines
    pixel_spacing: tuple[float, float] | None        # (row, column) mm
    slice_thickness: float | None
    slope: float
    intercept: float
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    window: tuple[float, float] | None               # first (center, width) of the window tags
    series_description: str
    pixel_offset: int | None = None   # byte offset of the PixelData element when it can be read directly
                                      # (uncompressed little endian, or one encapsulated greyscale frame)


@dataclass
class HeaderScan:
    """Result of ``scan_headers``: image headers, bad files, and files that were not images."""

    headers: list[SliceHeader]
    problems: list[DicomError] = field(default_factory=list)   # unreadable files (on_error="skip")
    non_image: list[str] = field(default_factory=list)          # DICOMDIR, SR, ... (ignored)
    n_files: int = 0


def first_value(value) -> float | None:
    """The first value of a possibly multi-valued numeric tag (``WindowCenter`` = [40, 80] -> 40.0)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _is_dicom_candidate(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:  # .csv, .json, .nii, .png ...: not DICOM
        return False
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def list_dicom_files(root: str | os.PathLike) -> list[Path]:
    """All DICOM files under ``root`` (recursive, sorted): ``*.dcm``-like names, or no suffix and a DICM preamble.

    Hidden files and folders are skipped, and so is anything that is not a regular file (a FIFO, socket
    or device would block or never end when read); those are counted in a log line.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: ``root`` holds no DICOM file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root} does not exist; give the folder that holds the DICOM files")
    if root.is_file():
        return [root]
    out, special = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                continue
            try:
                regular = stat.S_ISREG(os.stat(p).st_mode)  # follows links: a link to a regular file is read
            except OSError:
                regular = False  # a dangling link
            if not regular:
                special += 1
            elif _is_dicom_candidate(p):
                out.append(p)
    if special:
        log.warning("%s: skipped %d entries that are not regular files (FIFOs, sockets, devices, broken links)",
                    root, special)
    if not out:
        raise ValueError(
            f"{root} holds no DICOM files (looked recursively for *.dcm files and files with a DICM preamble); "
            "check the path, and unzip any archives first"
        )
    return out


# The header fields ich reads, with their dictionary VRs (needed for implicit-VR files).
_TAGS = {
    "SOPClassUID": (0x00080016, "UI"), "SOPInstanceUID": (0x00080018, "UI"), "Modality": (0x00080060, "CS"),
    "SeriesDescription": (0x0008103E, "LO"), "PatientID": (0x00100020, "LO"),
    "SliceThickness": (0x00180050, "DS"), "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"), "InstanceNumber": (0x00200013, "IS"),
    "ImagePositionPatient": (0x00200032, "DS"), "ImageOrientationPatient": (0x00200037, "DS"),
    "SamplesPerPixel": (0x00280002, "US"), "NumberOfFrames": (0x00280008, "IS"), "Rows": (0x00280010, "US"),
    "Columns": (0x00280011, "US"), "PixelSpacing": (0x00280030, "DS"), "BitsAllocated": (0x00280100, "US"),
    "BitsStored": (0x00280101, "US"), "PixelRepresentation": (0x00280103, "US"),
    "WindowCenter": (0x00281050, "DS"), "WindowWidth": (0x00281051, "DS"),
    "RescaleIntercept": (0x00281052, "DS"), "RescaleSlope": (0x00281053, "DS"),
}
_TEXT_VRS = frozenset({"UI", "CS", "LO", "SH", "DS", "IS"})


def _raw_values(ds: DicomDataset, name: str) -> list | None:
    """A tag's values without pydicom's per-element conversion (the slow part of a header scan).

    Returns None when absent or empty, else a list of str (text VRs) or int (US). Falls back to
    pydicom's conversion for anything unusual (big endian, unexpected VR, already converted).
    """
    tag, vr = _TAGS[name]
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement) and elem.is_little_endian:
        raw_vr = elem.VR or vr
        value = elem.value
        if value is None or len(value) == 0:
            return None
        if raw_vr == vr == "US" and len(value) % 2 == 0:
            return list(np.frombuffer(value, dtype="<u2").tolist())
        if raw_vr == vr and vr in _TEXT_VRS:
            text = value.decode("latin-1").strip(" \x00")
            return text.split("\\") if text else None
    value = ds[tag].value  # the general path
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [v for v in value] or None
    return [value]


def _one(values: list | None, cast=float):
    if not values:
        return None
    try:
        return cast(values[0]) if cast is not int else int(float(values[0]))
    except (TypeError, ValueError):
        return None


def _many(values: list | None, n: int) -> tuple[float, ...] | None:
    if not values or len(values) != n:
        return None
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def read_slice_header(path: str | os.PathLike) -> SliceHeader | None:
    """Read one file's header (no pixels) into a ``SliceHeader``; None for a non-image object (DICOMDIR, SR).

    Raises:
        DicomError(kind="corrupt"): the file cannot be parsed, or an image's header or pixel data is truncated.
    """
    with lenient_reading():
        try:
            with open(path, "rb") as f:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                offset = f.tell()  # pydicom stops just before the (7FE0,xxxx) pixel element
        except Exception as err:  # pydicom raises many types on damaged files
            raise corrupt_error(path, f"{type(err).__name__}: {err}") from err
        return _header_from_dataset(path, ds, offset)


def _header_from_dataset(path: str | os.PathLike, ds: DicomDataset, offset: int | None) -> SliceHeader | None:
    meta = getattr(ds, "file_meta", None) or DicomDataset()
    v = {name: _raw_values(ds, name) for name in _TAGS}
    sop_class = UID(str((meta.get("MediaStorageSOPClassUID") or "") or _one(v["SOPClassUID"], str) or ""))
    is_image_class = "Image" in (sop_class.name if sop_class else "")
    if not (v["SOPInstanceUID"] and v["SeriesInstanceUID"] and v["Rows"] and v["Columns"]):
        if is_image_class or len(ds) == 0:
            raise corrupt_error(path, "the header ends before SOPInstanceUID, SeriesInstanceUID, Rows or Columns")
        return None  # a non-image object
    ts = str(meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian)
    rows, cols = _one(v["Rows"], int), _one(v["Columns"], int)
    n_frames = _one(v["NumberOfFrames"], int) or 1
    bits_allocated = _one(v["BitsAllocated"], int) or 16
    bits_stored = _one(v["BitsStored"], int) or bits_allocated
    spp = _one(v["SamplesPerPixel"], int) or 1
    decode_limits().check(path, rows=rows, cols=cols, n_frames=n_frames, bits_allocated=bits_allocated,
                          samples=spp)  # before anything sized by the header is allocated or decoded
    native = not UID(ts).is_compressed and ts != "1.2.840.10008.1.2.1.99"  # 99 = deflated
    size = os.path.getsize(path)
    if native and bits_allocated in (8, 16, 32):
        need = rows * cols * spp * n_frames * bits_allocated // 8
        if size < need:
            raise corrupt_error(path, f"pixel data truncated: the file has {size} bytes, a {rows}x{cols} "
                                 f"{bits_allocated}-bit image needs at least {need}")
    direct = spp == 1 and n_frames == 1 and offset is not None and offset < size
    fast = direct and ((ts in NATIVE_FAST and bits_allocated in (8, 16) and bits_stored <= bits_allocated)
                       or (UID(ts).is_compressed and ts != "1.2.840.10008.1.2.1.99"))
    wc, ww = _one(v["WindowCenter"]), _one(v["WindowWidth"])
    pid = _one(v["PatientID"], str) or ""
    slope, intercept = _one(v["RescaleSlope"]), _one(v["RescaleIntercept"])
    return SliceHeader(
        path=str(path), sop_uid=_one(v["SOPInstanceUID"], str), series_uid=_one(v["SeriesInstanceUID"], str),
        study_uid=_one(v["StudyInstanceUID"], str) or "", patient_key=key_hash(pid) if pid else "",
        modality=_one(v["Modality"], str) or "", transfer_syntax=ts, rows=rows, cols=cols, n_frames=n_frames,
        instance_number=_one(v["InstanceNumber"], int),
        position=_many(v["ImagePositionPatient"], 3), orientation=_many(v["ImageOrientationPatient"], 6),
        pixel_spacing=_many(v["PixelSpacing"], 2), slice_thickness=_one(v["SliceThickness"]),
        slope=1.0 if slope is None else slope, intercept=0.0 if intercept is None else intercept,
        bits_allocated=bits_allocated, bits_stored=bits_stored,
        pixel_representation=_one(v["PixelRepresentation"], int) or 0, samples_per_pixel=spp,
        window=(wc, ww) if wc is not None and ww is not None else None,
        series_description="\\".join(v["SeriesDescription"] or []),
        pixel_offset=offset if fast else None,
    )


def _scan_chunk(paths: list[str], on_error: str) -> tuple[list[SliceHeader], list[DicomError], list[str]]:
    headers, problems, non_image = [], [], []
    for p in paths:
        try:
            h = read_slice_header(p)
        except DicomError as err:
            if on_error == "raise":
                raise
            problems.append(err)
            continue
        if h is None:
            non_image.append(p)
        else:
            headers.append(h)
    return headers, problems, non_image


def scan_headers(paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike], *, workers: int = 1,
                 on_error: str = "raise", on_progress: Callable[[str, int, int], None] | None = None,
                 pool: WorkerPool | None = None) -> HeaderScan:
    """Index DICOM files without reading pixels (fast; ``workers`` > 1 uses a process pool).

    Args:
        paths_or_folder: a folder (scanned recursively with ``list_dicom_files``) or a list of files.
        workers: processes to use; 1 reads in this process (ignored when ``pool`` is given).
        on_error: "raise" stops at the first unreadable file; "skip" collects it in ``problems``.
        on_progress: called as ``on_progress("scan", files_done, files_total)``.
        pool: an open ``WorkerPool`` to reuse.

    Returns:
        A ``HeaderScan``; headers keep the input file order.
    """
    check_on_error(on_error)
    if isinstance(paths_or_folder, (str, os.PathLike)):
        paths = [str(p) for p in list_dicom_files(paths_or_folder)]
    else:
        paths = [str(p) for p in paths_or_folder]
    scan = HeaderScan(headers=[], n_files=len(paths))
    with maybe_pool(pool, workers) as wp:
        chunk = max(8, min(256, -(-len(paths) // (4 * wp.workers))))  # >= 4 tasks per worker, <= 256 files each
        tasks = [(paths[i:i + chunk], on_error) for i in range(0, len(paths), chunk)]
        done = 0
        for (part, _), (headers, problems, non_image) in zip(tasks, wp.map_ordered(_scan_chunk, tasks)):
            scan.headers.extend(headers)
            scan.problems.extend(problems)
            scan.non_image.extend(non_image)
            done += len(part)
            if on_progress:
                on_progress("scan", done, len(paths))
    return scan


def group_series(headers: Iterable[SliceHeader]) -> dict[str, list[SliceHeader]]:
    """Group headers by SeriesInstanceUID (insertion order kept)."""
    out: dict[str, list[SliceHeader]] = {}
    for h in headers:
        out.setdefault(h.series_uid, []).append(h)
    return out


# --------------------------------------------------------------------------- series planning

@dataclass
class SeriesPlan:
    """A checked series: headers sorted along the slice normal, ready to decode."""

    series_uid: str
    headers: list[SliceHeader]          # sorted, slice 0 = lowest position along the normal
    positions_mm: np.ndarray            # (S,) position of each slice along the normal
    spacing_mm: tuple[float, float, float]
    normal: tuple[float, float, float]
    transfer_syntaxes: tuple[str, ...]
    gaps: list[int] = field(default_factory=list)   # i: the step from slice i to i+1 is > 1.5x the median
    uneven_spacing: bool = False

    @property
    def n_slices(self) -> int:
        return len(self.headers)

    @property
    def shape(self) -> tuple[int, int]:
        return self.headers[0].rows, self.headers[0].cols

    def describe(self) -> dict:
        """Non-identifying facts about the series for reports and ``Volume.meta``."""
        h0 = self.headers[0]
        return {
            "series_key": key_hash(self.series_uid), "modality": h0.modality, "n_slices": self.n_slices,
            "rows": h0.rows, "cols": h0.cols, "spacing_mm": list(self.spacing_mm),
            "slice_thickness_mm": h0.slice_thickness, "normal": list(self.normal),
            "transfer_syntaxes": {ts: syntax_name(ts) for ts in self.transfer_syntaxes},
            "window": list(h0.window) if h0.window else None, "series_description": h0.series_description,
            "slice_positions_mm": [round(float(p), 4) for p in self.positions_mm],
            "gaps": self.gaps, "uneven_spacing": self.uneven_spacing,
        }


def syntax_name(ts: str) -> str:
    """Human name of a transfer syntax UID (``'Explicit VR Little Endian'``)."""
    return UID(ts).name or ts


def _short(uid: str) -> str:
    return uid if len(uid) <= 24 else "..." + uid[-20:]


def plan_series(headers: Sequence[SliceHeader]) -> SeriesPlan:
    """Check one series and sort its slices along the slice normal.

    The normal is cross(IOP[:3], IOP[3:]) (axial when ImageOrientationPatient is absent);
    the sort key is dot(ImagePositionPatient, normal), then InstanceNumber as a tie-break
    of last resort. Spacing along the normal is the median step; gaps (> 1.5x the median)
    and uneven steps are flagged in the plan and logged, not fatal.

    Raises:
        DicomError: mixed series, non-CT modality, multi-frame files, inconsistent image
            sizes, mixed orientations, missing positions, or duplicate positions.
    """
    if not headers:
        raise ValueError("plan_series needs at least one header")
    series = {h.series_uid for h in headers}
    if len(series) > 1:
        raise DicomError(f"{Path(headers[0].path).parent}: the files belong to {len(series)} series; "
                         "plan one series at a time (see group_series)", kind="mixed_series", path=headers[0].path)
    uid = headers[0].series_uid
    bad = [h for h in headers if h.modality.upper() != "CT"]
    if bad:
        h = bad[0]
        raise DicomError(
            f"{h.path}: modality is {h.modality or 'missing'!r}, not 'CT'; ich reads head CT series only. "
            "Remove non-CT files from the input (the folder importer skips non-CT series and reports them)",
            kind="not_ct", path=h.path)
    multi = [h for h in headers if h.n_frames > 1]
    if multi:
        h = multi[0]
        raise DicomError(
            f"{h.path}: multi-frame image ({h.n_frames} frames in one file); ich reads single-frame CT series "
            "(one file per slice). Export the series as one file per slice (e.g. with gdcmconv or dcmtk)",
            kind="multi_frame", path=h.path)
    sizes = Counter((h.rows, h.cols) for h in headers)
    if len(sizes) > 1:
        (r, c), n = sizes.most_common(1)[0]
        odd = next(h for h in headers if (h.rows, h.cols) != (r, c))
        raise DicomError(
            f"{odd.path}: image is {odd.rows}x{odd.cols} pixels, but {n} other slices of series {_short(uid)} are "
            f"{r}x{c}; one series must have one image size. Remove the odd file, or import with "
            "on_error='skip' to drop the series", kind="inconsistent_size", path=odd.path)
    mono = [h for h in headers if h.samples_per_pixel != 1]
    if mono:
        raise DicomError(f"{mono[0].path}: {mono[0].samples_per_pixel} samples per pixel; a CT slice has 1 "
                         "(greyscale). Remove colour images (screenshots, secondary captures) from the input",
                         kind="not_ct", path=mono[0].path)
    n = len(headers)
    orients = [h.orientation for h in headers if h.orientation is not None]
    iop = np.asarray(orients[0] if orients else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    normal = normal / norm if norm > 0 else np.array([0.0, 0.0, 1.0])
    for h in headers:
        if h.orientation is not None and np.abs(np.asarray(h.orientation) - iop).max() > 1e-3:
            raise DicomError(
                f"{h.path}: ImageOrientationPatient {list(h.orientation)} differs from the rest of series "
                f"{_short(uid)} ({list(iop)}); the series mixes image planes (a scout/localizer?). "
                "Remove the odd file", kind="mixed_orientation", path=h.path)
    if n > 1:
        missing = [h for h in headers if h.position is None]
        if missing:
            raise DicomError(
                f"{missing[0].path}: no ImagePositionPatient (0020,0032); ich needs it to order the {n} slices of "
                f"series {_short(uid)} along the slice normal ({len(missing)} of {n} files lack it). Re-export the "
                "series with its position tags, or remove the file", kind="missing_position", path=missing[0].path)
    pos = np.array([float(np.dot(h.position, normal)) if h.position is not None else 0.0 for h in headers])
    inst = np.array([h.instance_number if h.instance_number is not None else 2**31 for h in headers])
    order = np.lexsort((inst, pos))  # position first, InstanceNumber breaks ties
    sorted_headers = [headers[i] for i in order]
    pos = pos[order]
    steps = np.diff(pos)
    if n > 1 and (steps < POSITION_TOL_MM).any():
        i = int(np.argmax(steps < POSITION_TOL_MM))
        a, b = sorted_headers[i], sorted_headers[i + 1]
        raise DicomError(
            f"{a.path} and {b.path} have the same slice position ({pos[i]:.3f} mm along the slice normal) in "
            f"series {_short(uid)}; the input holds a duplicated slice or two reconstructions sharing one "
            "SeriesInstanceUID. Remove the duplicate file", kind="duplicate_position", path=b.path)
    h0 = sorted_headers[0]
    ps = h0.pixel_spacing or (float("nan"), float("nan"))
    gaps: list[int] = []
    uneven = False
    if n > 1:
        step = float(np.median(steps))
        gaps = [int(i) for i in np.flatnonzero(steps > 1.5 * step)]
        uneven = bool(np.abs(steps - step).max() > 0.1 * step + 0.01)
        if gaps or uneven:
            log.warning("series %s: uneven slice spacing (median %.2f mm, steps %.2f..%.2f mm, %d gaps)",
                        key_hash(uid), step, steps.min(), steps.max(), len(gaps))
    else:
        step = h0.slice_thickness if h0.slice_thickness else float("nan")
    return SeriesPlan(series_uid=uid, headers=sorted_headers, positions_mm=pos,
                      spacing_mm=(float(step), float(ps[0]), float(ps[1])), normal=tuple(float(v) for v in normal),
                      transfer_syntaxes=tuple(sorted({h.transfer_syntax for h in headers})), gaps=gaps,
                      uneven_spacing=uneven)
