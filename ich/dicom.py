"""DICOM reading and writing: CT series <-> HU volumes (the only module that imports pydicom).

Volumes are float32 HU arrays shaped (S, H, W), slices sorted along the slice normal;
spacing is (slice, row, column) in millimetres.

Reading goes in two passes, as pydicom recommends: a header scan without pixels
(``scan_headers``, parallel) indexes the files, ``group_series`` / ``plan_series`` group
them by SeriesInstanceUID, sort the slices by their position projected on the slice
normal (InstanceNumber only breaks ties) and check the series; then ``decode_series``
reads the pixels of the chosen series only and converts them to HU (slope/intercept,
the RSNA 12-bit fix where it applies). ``read_series`` does all of it for one series.
Uncompressed little-endian pixels are read straight from the offset the header scan
recorded (no second parse; tested equal to pydicom's array); a ``WorkerPool`` runs both
passes in processes that return compact int16 arrays.

Compressed transfer syntaxes are decoded by python-gdcm (pylibjpeg and the others
pydicom knows are used when gdcm is missing); when no decoder is installed the error
names the file, the syntax and the package to install.

Decode bombs are refused from the header alone: before any decoder runs, every file's
Rows x Columns, NumberOfFrames and decoded bytes are checked against ``DecodeLimits``
(``ICH_MAX_PIXELS``, ``ICH_MAX_FRAMES``, ``ICH_MAX_SLICE_BYTES`` raise them), so a tiny
RLE file whose header claims 60000 x 60000 pixels costs a clear refusal, not gigabytes.

No patient-identifying value leaves this module: PatientID becomes a keyed pseudonym
(``ich.pseudonyms``), names and dates are never read into the returned objects.
"""

from __future__ import annotations

import logging
import os
import signal
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from ich import atomic
from ich.preprocess import HU_MAX, HU_MIN, fix_12bit, needs_12bit_fix, resize, to_hu, to_int16_hu

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

ON_ERROR = ("raise", "skip")
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
# decoders in order of preference; python-gdcm is the project's default (data-formats.md §6)
DECODER_PREFERENCE = ("gdcm", "pylibjpeg", "pyjpegls", "pillow", "pydicom")
INSTALL_HINT = "pip install python-gdcm"
NATIVE_FAST = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # syntaxes whose pixels are read raw from the offset
_POSITION_TOL_MM = 1e-3


class DicomError(ValueError):
    """A DICOM input problem: a bad file or a series ich cannot read.

    ``kind`` names the problem for import reports (``corrupt``, ``too_large``, ``not_ct``, ``mixed_series``,
    ``missing_position``, ``duplicate_position``, ``inconsistent_size``, ``mixed_orientation``,
    ``multi_frame``, ``no_pixels``); ``path`` is the file concerned (or None).
    """

    def __init__(self, message: str, *, kind: str = "invalid", path: str | os.PathLike | None = None):
        super().__init__(message)
        self.kind = kind
        self.path = None if path is None else str(path)


class DecoderMissingError(RuntimeError):
    """No installed package can decode a compressed transfer syntax (an environment problem)."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one image file may claim in its header before ich refuses to decode it (decode-bomb guard).

    A head CT slice is 512 x 512 (some 1024 x 1024) pixels of 16 bits, one frame per file, so the
    defaults leave a wide margin while keeping one decoded slice under 64 MiB.
    Each limit can be raised with an environment variable (read by ``from_env``).
    """

    max_pixels: int = 4096 * 4096          # Rows x Columns of one frame; env ICH_MAX_PIXELS
    max_frames: int = 1024                 # NumberOfFrames of one file; env ICH_MAX_FRAMES
    max_slice_bytes: int = 64 * 2**20      # decoded bytes of one file (all frames); env ICH_MAX_SLICE_BYTES

    ENV = {"max_pixels": "ICH_MAX_PIXELS", "max_frames": "ICH_MAX_FRAMES", "max_slice_bytes": "ICH_MAX_SLICE_BYTES"}

    def __post_init__(self):
        for name in self.ENV:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, not {value!r}")

    @classmethod
    def from_env(cls) -> "DecodeLimits":
        """The defaults, with any ``ICH_MAX_PIXELS`` / ``ICH_MAX_FRAMES`` / ``ICH_MAX_SLICE_BYTES`` applied."""
        values = {}
        for name, env in cls.ENV.items():
            raw = os.environ.get(env, "").strip()
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{env} must be a positive integer, not {raw!r}; unset it to use the "
                                     f"default {getattr(cls, name)}") from None
        return cls(**values)

    def check(self, path, *, rows: int, cols: int, n_frames: int, bits_allocated: int, samples: int) -> None:
        """Raise ``DicomError(kind="too_large")`` when a header claims more than the limits allow.

        Only header values are used (no pixel is read or decoded).
        """
        pixels = rows * cols
        n_bytes = pixels * max(1, samples) * max(1, n_frames) * max(1, -(-bits_allocated // 8))
        found = None
        if pixels > self.max_pixels:
            found = (f"{rows} x {cols} = {pixels:,} pixels per frame, the limit is {self.max_pixels:,}",
                     "ICH_MAX_PIXELS")
        elif n_frames > self.max_frames:
            found = f"{n_frames:,} frames, the limit is {self.max_frames:,}", "ICH_MAX_FRAMES"
        elif n_bytes > self.max_slice_bytes:
            found = (f"{n_bytes / 2**20:,.0f} MiB of decoded pixels, the limit is "
                     f"{self.max_slice_bytes / 2**20:,.0f} MiB", "ICH_MAX_SLICE_BYTES")
        if found:
            what, env = found
            raise DicomError(
                f"{path}: refused before decoding: the header claims {what} (a head CT slice is about 512 x 512). "
                f"The file is damaged or hostile; remove it, or if the image really is that large, raise the "
                f"limit with the environment variable {env}", kind="too_large", path=path)


def decode_limits() -> DecodeLimits:
    """The limits in force (defaults plus environment overrides), read at each call."""
    return DecodeLimits.from_env()


def check_on_error(on_error: str) -> str:
    """Validate a strictness mode: ``"raise"`` stops at the first bad input, ``"skip"`` drops and reports it."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, not {on_error!r}")
    return on_error


def key_hash(value: object) -> str:
    """A 16-hex-digit keyed pseudonym (HMAC-SHA256, ``ich.pseudonyms``) for an identifying value
    (PatientID, UIDs): stable on this installation, not reversible without its key."""
    from ich.pseudonyms import pseudonym

    return pseudonym(value, kind="dicom", length=16)


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


@contextmanager
def _lenient_reading():
    """Read without value validation: RSNA's UIDs (``ID_<hex>``) are not valid DICOM UIDs by design, and
    pydicom would warn (and log) once per file; skipping the validation is also faster."""
    settings = pydicom.config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = old


def _corrupt(path, what: str) -> DicomError:
    return DicomError(
        f"{path}: corrupt or truncated DICOM file ({what}); replace the file with a good copy or delete it, "
        "or import with on_error='skip' (--on-error skip) to drop it and count it in the report",
        kind="corrupt", path=path,
    )


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
    with _lenient_reading():
        try:
            with open(path, "rb") as f:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                offset = f.tell()  # pydicom stops just before the (7FE0,xxxx) pixel element
        except Exception as err:  # pydicom raises many types on damaged files
            raise _corrupt(path, f"{type(err).__name__}: {err}") from err
        return _header_from_dataset(path, ds, offset)


def _header_from_dataset(path: str | os.PathLike, ds: DicomDataset, offset: int | None) -> SliceHeader | None:
    meta = getattr(ds, "file_meta", None) or DicomDataset()
    v = {name: _raw_values(ds, name) for name in _TAGS}
    sop_class = UID(str((meta.get("MediaStorageSOPClassUID") or "") or _one(v["SOPClassUID"], str) or ""))
    is_image_class = "Image" in (sop_class.name if sop_class else "")
    if not (v["SOPInstanceUID"] and v["SeriesInstanceUID"] and v["Rows"] and v["Columns"]):
        if is_image_class or len(ds) == 0:
            raise _corrupt(path, "the header ends before SOPInstanceUID, SeriesInstanceUID, Rows or Columns")
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
            raise _corrupt(path, f"pixel data truncated: the file has {size} bytes, a {rows}x{cols} "
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
    with _maybe_pool(pool, workers) as wp:
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
    if n > 1 and (steps < _POSITION_TOL_MM).any():
        i = int(np.argmax(steps < _POSITION_TOL_MM))
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


# --------------------------------------------------------------------------- decoders

def _available_decoders(ts: str) -> tuple[str, ...]:
    """Names of the installed pydicom decoding plugins for a compressed syntax (monkeypatched in tests)."""
    from pydicom.pixels import get_decoder

    return tuple(get_decoder(UID(ts)).available_plugins)


def _install_hint(ts: str) -> str:
    uid = UID(ts)
    hint = INSTALL_HINT
    if "JPEG 2000" in uid.name:
        hint += " (or: pip install pylibjpeg pylibjpeg-openjpeg)"
    elif "RLE" in uid.name:
        hint += " (or: pip install pylibjpeg pylibjpeg-rle)"
    elif "JPEG-LS" in uid.name:
        hint += " (or: pip install pyjpegls)"
    elif "JPEG" in uid.name:
        hint += " (or the GPL-licensed: pip install pylibjpeg pylibjpeg-libjpeg)"
    return hint


def choose_decoder(ts: str, path: str | os.PathLike | None = None) -> str:
    """The decoder to use for a transfer syntax: ``"native"`` when uncompressed, else a pydicom plugin name.

    Raises:
        DecoderMissingError: the syntax is compressed and no installed package decodes it;
            the message names the file, the syntax, its UID, the decoders tried and the fix.
    """
    from pydicom.pixels import get_decoder

    uid = UID(ts)
    if not uid.is_compressed:
        return "native"
    where = f"{path} uses" if path else "The data use"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as err:
        raise DecoderMissingError(
            f"{where} {uid.name} ({uid}), which no pydicom decoder supports; convert the files to an "
            "uncompressed or lossless syntax first (e.g. gdcmconv --raw)") from err
    available = _available_decoders(ts)
    if not available:
        tried = "; ".join(decoder.missing_dependencies) or "none known"
        raise DecoderMissingError(
            f"{where} {uid.name} ({uid}) and no decoder for it is installed (tried: {tried}). "
            f"Install one: {_install_hint(ts)}")
    for name in DECODER_PREFERENCE:
        if name in available:
            return name
    return available[0]


def choose_decoders(headers: Iterable[SliceHeader]) -> dict[str, str]:
    """Map each transfer syntax seen in ``headers`` to its decoder (fails early, before any pixel is read)."""
    out: dict[str, str] = {}
    for h in headers:
        if h.transfer_syntax not in out:
            out[h.transfer_syntax] = choose_decoder(h.transfer_syntax, h.path)
    return out


# --------------------------------------------------------------------------- pixel decoding

def _native_array(ds: DicomDataset) -> np.ndarray | None:
    """Fast path for an uncompressed little-endian single-frame greyscale dataset (equals pydicom's array)."""
    bits = int(ds.get("BitsAllocated", 0) or 0)
    stored = int(ds.get("BitsStored", bits) or bits)
    if (bits not in (8, 16) or stored > bits or int(ds.get("SamplesPerPixel", 1)) != 1
            or int(first_value(ds.get("NumberOfFrames")) or 1) != 1 or "PixelData" not in ds):
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    data = ds.PixelData
    need = rows * cols * bits // 8
    if len(data) < need or len(data) > need + 1:  # one pad byte allowed
        return None  # let pydicom produce its error message
    return _unpack(data, rows, cols, bits, stored, int(ds.get("PixelRepresentation", 0) or 0))


def _unpack(data: bytes, rows: int, cols: int, bits: int, stored: int, signed: int) -> np.ndarray:
    """Little-endian pixel bytes -> (rows, cols) array, with pydicom 3's handling of unused high bits
    (masked when unsigned, sign-extended when signed)."""
    dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
    arr = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    if stored < bits:
        if signed:
            shift = bits - stored
            arr = (arr << shift) >> shift
        else:
            arr = arr & dtype.type((1 << stored) - 1)
    return arr


def _read_fast(h: SliceHeader) -> np.ndarray:
    """Read the pixels of an uncompressed little-endian file straight from ``h.pixel_offset`` (no parsing)."""
    need = h.rows * h.cols * h.bits_allocated // 8
    explicit = h.transfer_syntax == ExplicitVRLittleEndian
    with open(h.path, "rb") as f:
        f.seek(h.pixel_offset)
        head = f.read(12 if explicit else 8)
        if len(head) < (12 if explicit else 8) or head[:4] != b"\xe0\x7f\x10\x00":
            raise _corrupt(h.path, "no pixel data where the header ends")
        length = int.from_bytes(head[8:12] if explicit else head[4:8], "little")
        if length == 0xFFFFFFFF or length < need:
            raise _corrupt(h.path, f"pixel data truncated: the PixelData element holds {length} bytes, a "
                                   f"{h.rows}x{h.cols} {h.bits_allocated}-bit image needs {need}")
        data = f.read(need)
    if len(data) < need:
        raise _corrupt(h.path, f"pixel data truncated: {len(data)} of {need} bytes present")
    return _unpack(data, h.rows, h.cols, h.bits_allocated, h.bits_stored, h.pixel_representation)


def _read_encapsulated(h: SliceHeader, decoder: str) -> np.ndarray | None:
    """Decode one encapsulated greyscale frame from ``h.pixel_offset`` without parsing the header again.

    The header scan already holds every pixel descriptor, so only the (7FE0,0010) fragments are read
    and handed to pydicom's decoder (half the time of a second full ``dcmread`` for RLE). Returns None
    when anything is unusual; the caller then reads the file fully, which gives pydicom's own errors.
    """
    from pydicom.pixels import get_decoder

    try:
        with open(h.path, "rb") as f:
            f.seek(h.pixel_offset)
            head = f.read(12)                     # tag, VR "OB", 2 reserved bytes, length (explicit VR LE)
            if head[:4] != b"\xe0\x7f\x10\x00" or int.from_bytes(head[8:12], "little") != 0xFFFFFFFF:
                return None
            data = f.read()
        arr, _ = get_decoder(UID(h.transfer_syntax)).as_array(
            data, rows=h.rows, columns=h.cols, samples_per_pixel=1, bits_allocated=h.bits_allocated,
            bits_stored=h.bits_stored, pixel_representation=h.pixel_representation,
            photometric_interpretation="MONOCHROME2", number_of_frames=1, decoding_plugin=decoder)
    except Exception:  # noqa: BLE001 - any surprise falls back to the full read and its message
        return None
    return arr if arr.shape == (h.rows, h.cols) else None


def decode_file(path: str | os.PathLike, decoder: str | None = None) -> tuple[np.ndarray, DicomDataset, str]:
    """Read one file with pydicom and decode its stored pixel values (no rescale).

    Args:
        path: a single-frame DICOM file.
        decoder: "native", a pydicom plugin name, or None to choose (see ``choose_decoder``).

    Returns:
        (pixels (H, W) in the stored integer dtype, the dataset, the decoder used).

    Raises:
        DicomError(kind="corrupt"): the file or its pixel data is damaged.
        DecoderMissingError: compressed and no decoder is installed.
    """
    with _lenient_reading():
        return _decode_file(path, decoder)


def _decode_file(path, decoder):
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise _corrupt(path, f"{type(err).__name__}: {err}") from err
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data (the file is truncated, or it is not an image); "
                         "remove it from the input", kind="no_pixels", path=path)
    try:
        claims = {"rows": int(ds.Rows), "cols": int(ds.Columns),
                  "n_frames": int(first_value(ds.get("NumberOfFrames")) or 1),
                  "bits_allocated": int(ds.get("BitsAllocated", 16) or 16),
                  "samples": int(ds.get("SamplesPerPixel", 1) or 1)}
    except (AttributeError, TypeError, ValueError) as err:
        raise _corrupt(path, f"unreadable image size tags: {type(err).__name__}: {err}") from err
    decode_limits().check(path, **claims)  # the header's claims, before any decoder is called
    meta = getattr(ds, "file_meta", None) or DicomDataset()
    ts = str(meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian)
    if decoder is None:
        decoder = choose_decoder(ts, path)
    arr = _native_array(ds) if (decoder == "native" and UID(ts) in NATIVE_FAST) else None
    if arr is None:
        from pydicom.pixels import get_decoder

        try:
            arr, _ = get_decoder(UID(ts)).as_array(ds, decoding_plugin="" if decoder == "native" else decoder)
        except Exception as err:
            raise _corrupt(path, f"pixel data could not be decoded with {decoder}: {type(err).__name__}: {err}") \
                from err
    if arr.ndim != 2:
        raise DicomError(f"{path}: pixel array has shape {arr.shape}, expected one greyscale (rows, cols) image",
                         kind="multi_frame", path=path)
    return arr, ds, decoder


def hu_from_pixels(pixels: np.ndarray, slope: float, intercept: float, bits_stored: int, pixel_representation: int,
                   *, fix12: bool = True) -> tuple[np.ndarray, bool]:
    """Stored pixels -> float32 HU (``pixels * slope + intercept``), with the RSNA 12-bit fix where it applies.

    Returns:
        (hu (H, W) float32, whether the 12-bit fix was applied).
    """
    fixed = False
    if fix12 and needs_12bit_fix(bits_stored, pixel_representation, intercept):
        pixels, intercept = fix_12bit(pixels)
        fixed = True
    return to_hu(pixels, slope, intercept), fixed


@dataclass
class DecodedSeries:
    """Pixels of (part of) a series, as returned by ``decode_series`` (compact for inter-process transfer)."""

    hu: np.ndarray                 # (K, H, W) int16 HU (resized when ``size`` was given) or float32 HU
    kept: list[int]                # indices into the input headers of the K decoded slices
    problems: list[DicomError]     # files dropped under on_error="skip"
    twelve_bit_fixes: int
    decoders: dict[str, int]       # decoder name -> files ("native" also covers the direct byte read)


def decode_series(headers: Sequence[SliceHeader], *, decoders: dict[str, str] | None = None,
                  size: int | None = None, on_error: str = "raise", fix12: bool = True) -> DecodedSeries:
    """Decode the files of one sorted series to HU (runs inside import workers).

    Uncompressed little-endian files are read straight from the pixel offset found by the
    header scan, single-frame compressed ones have their fragments decoded from there by the
    chosen decoder; anything else (or anything unusual) goes through a full pydicom read.

    Args:
        headers: the slices, in order (from ``plan_series``).
        decoders: transfer syntax UID -> decoder (from ``choose_decoders``); chosen per file when None.
        size: resize each slice to (size, size) and return int16 HU clipped to [-1024, 3071]
            (the cache format); None keeps the original size (int16 when the rescale is integral,
            else float32).
        on_error: "raise" on the first damaged file, "skip" to drop it and record the problem.
        fix12: apply the RSNA 12-bit fix where its condition holds.
    """
    check_on_error(on_error)
    decoders = decoders or {}
    limits = decode_limits()
    slices, kept, problems, used = [], [], [], Counter()
    fixes = 0
    integral = True
    with _lenient_reading():  # header values read below are validated lazily
        for i, h in enumerate(headers):
            try:
                limits.check(h.path, rows=h.rows, cols=h.cols, n_frames=h.n_frames,
                             bits_allocated=h.bits_allocated, samples=h.samples_per_pixel)
                arr = None
                if h.pixel_offset is not None and h.transfer_syntax in NATIVE_FAST:
                    arr, dec = _read_fast(h), "native"
                elif h.pixel_offset is not None:
                    dec = decoders.get(h.transfer_syntax) or choose_decoder(h.transfer_syntax, h.path)
                    arr = _read_encapsulated(h, dec)
                if arr is not None:
                    slope, intercept = h.slope, h.intercept
                    bits_stored, rep = h.bits_stored, h.pixel_representation
                else:
                    arr, ds, dec = decode_file(h.path, decoders.get(h.transfer_syntax))
                    slope = first_value(ds.get("RescaleSlope"))
                    intercept = first_value(ds.get("RescaleIntercept"))
                    slope, intercept = (1.0 if slope is None else slope), (0.0 if intercept is None else intercept)
                    bits_stored = int(ds.get("BitsStored", 16) or 16)
                    rep = int(ds.get("PixelRepresentation", 0) or 0)
                if arr.shape != (h.rows, h.cols):
                    raise DicomError(f"{h.path}: image is {arr.shape[0]}x{arr.shape[1]} pixels, but its header "
                                     f"says {h.rows}x{h.cols}; remove the file", kind="inconsistent_size",
                                     path=h.path)
                if size is not None and arr.shape == (size, size) and slope == 1 and float(intercept).is_integer():
                    # integer path, identical to to_int16_hu(to_hu(...)) when no resize is needed
                    fixed = fix12 and needs_12bit_fix(bits_stored, rep, intercept)
                    raw = fix_12bit(arr) if fixed else (arr.astype(np.int32), intercept)
                    hu = np.clip(raw[0] + int(raw[1]), HU_MIN, HU_MAX).astype(np.int16)
                else:
                    hu, fixed = hu_from_pixels(arr, slope, intercept, bits_stored, rep, fix12=fix12)
            except DicomError as err:
                if on_error == "raise":
                    raise
                problems.append(err)
                continue
            fixes += fixed
            used[dec] += 1
            integral &= float(slope).is_integer() and float(intercept).is_integer()
            slices.append(hu)
            kept.append(i)
    if slices and size is not None and all(x.dtype == np.int16 for x in slices):
        vol = np.stack(slices)  # (K, size, size) int16 HU, already in the cache format
    elif slices:
        vol = np.stack([x.astype(np.float32, copy=False) for x in slices])  # (K, H, W) float32 HU
        if size is not None:
            vol = to_int16_hu(resize(vol, size))
        elif integral and vol.min() >= -32768 and vol.max() <= 32767:
            vol = vol.astype(np.int16)
    else:
        shape = (size, size) if size is not None else ((headers[0].rows, headers[0].cols) if headers else (0, 0))
        vol = np.zeros((0, *shape), dtype=np.int16)
    return DecodedSeries(hu=vol, kept=kept, problems=problems, twelve_bit_fixes=fixes, decoders=dict(used))


def decode_task(headers, decoders, size, on_error, fix12) -> DecodedSeries:
    """Positional form of ``decode_series`` for ``WorkerPool.map_ordered`` (picklable, top level)."""
    return decode_series(headers, decoders=decoders, size=size, on_error=on_error, fix12=fix12)


# --------------------------------------------------------------------------- process pool

def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the CLI's handler inherited by fork: a worker just ends
    import torch

    torch.set_num_threads(1)


class WorkerPool:
    """A process pool for the import stages (header scan, decoding); ``workers=1`` runs inline.

    Use as a context manager; one pool serves every stage of an import, so processes start
    once. Workers return compact int16 arrays (a pool returning float32 was 2x slower than
    serial, testing-notes.md).
    """

    def __init__(self, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map_ordered(self, fn: Callable, tasks: Sequence[tuple], *, in_flight: int | None = None) -> Iterator:
        """Yield ``fn(*task)`` for each task, in order.

        At most ``in_flight`` (default 2 x workers) results are pending at once, so memory stays
        bounded whatever the number of tasks. A worker's exception is raised here.
        """
        if self.workers == 1 or len(tasks) <= 1:
            for t in tasks:
                yield fn(*t)
            return
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.workers, initializer=_init_worker)
        limit = in_flight or 2 * self.workers
        pending = []
        it = iter(tasks)
        try:
            for t in it:
                pending.append(self._executor.submit(fn, *t))
                if len(pending) >= limit:
                    break
            while pending:
                result = pending.pop(0).result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(self._executor.submit(fn, *nxt))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


@contextmanager
def _maybe_pool(pool: WorkerPool | None, workers: int):
    if pool is not None:
        yield pool
    else:
        with WorkerPool(workers) as wp:
            yield wp


def map_ordered(fn: Callable, tasks: Sequence[tuple], *, workers: int = 1) -> Iterator:
    """One-off ``WorkerPool(workers).map_ordered(fn, tasks)`` (the pool closes when the iterator ends)."""
    with WorkerPool(workers) as wp:
        yield from wp.map_ordered(fn, tasks)


# --------------------------------------------------------------------------- one series

@dataclass
class Volume:
    """One CT series as an HU volume.

    Attributes:
        hu: (S, H, W) float32 HU, slice 0 lowest along the slice normal.
        spacing_mm: (slice step along the normal, row spacing, column spacing) in mm.
        sop_uids: SOPInstanceUID of each slice, in slice order (to join labels or boxes).
        meta: non-identifying facts: modality, transfer syntaxes, decoder, window (first values),
            slice positions, gaps, 12-bit fixes, skipped files. No names, IDs, dates.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    sop_uids: list[str]
    meta: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)


def read_series(paths_or_folder: str | os.PathLike | Sequence[str | os.PathLike], *,
                series_uid: str | None = None, on_error: str = "raise", workers: int = 1,
                fix12: bool = True) -> Volume:
    """Read one CT series (a folder, or a list of files) into a ``Volume``.

    Args:
        paths_or_folder: a folder (recursive) or the files of the series.
        series_uid: the SeriesInstanceUID to read when the input holds several series.
        on_error: "raise" (default) stops at the first corrupt file; "skip" drops corrupt files
            and lists them in ``meta["skipped"]`` (the series-level checks always raise).
        workers: processes used for the header scan and the decoding.
        fix12: apply the RSNA 12-bit fix where its condition holds.

    Raises:
        FileNotFoundError / ValueError: missing or empty input.
        DicomError: corrupt file (on_error="raise"), mixed series without ``series_uid``,
            non-CT modality, missing or duplicate positions, inconsistent image sizes.
        DecoderMissingError: compressed pixels and no decoder installed (names the package).
    """
    check_on_error(on_error)
    with WorkerPool(workers) as pool:
        scan = scan_headers(paths_or_folder, on_error=on_error, pool=pool)
        where = paths_or_folder if isinstance(paths_or_folder, (str, os.PathLike)) else "the given files"
        if not scan.headers:
            if scan.problems:
                raise scan.problems[0]
            raise ValueError(f"{where}: no image files found ({len(scan.non_image)} non-image DICOM objects)")
        groups = group_series(scan.headers)
        if series_uid is not None:
            if series_uid not in groups:
                raise ValueError(f"{where}: no series with SeriesInstanceUID {series_uid!r}; found {sorted(groups)}")
            headers = groups[series_uid]
        elif len(groups) > 1:
            desc = "; ".join(f"{uid} ({len(hs)} files, {hs[0].series_description or 'no description'!r})"
                             for uid, hs in groups.items())
            raise DicomError(
                f"{where} mixes {len(groups)} series: {desc}. Pass series_uid=... to read one of them, or import "
                "the folder with `python -m ich import folder`, which makes one exam per series",
                kind="mixed_series", path=scan.headers[0].path)
        else:
            headers = scan.headers
        plan = plan_series(headers)
        decoders = choose_decoders(plan.headers)
        n = plan.n_slices
        heavy = any(h.pixel_offset is None for h in plan.headers)  # plain reads are cheaper than IPC
        n_chunks = min(n, 4 * workers) if workers > 1 and heavy else 1
        bounds = [round(k * n / n_chunks) for k in range(n_chunks + 1)]
        spans = [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        tasks = [(plan.headers[a:b], decoders, None, on_error, fix12) for a, b in spans]
        parts, kept, problems, fixes, used = [], [], list(scan.problems), 0, Counter()
        for (a, _), part in zip(spans, pool.map_ordered(decode_task, tasks)):
            parts.append(part.hu)
            kept.extend(a + k for k in part.kept)
            problems.extend(part.problems)
            fixes += part.twelve_bit_fixes
            used.update(part.decoders)
    if not kept:
        raise problems[0] if problems else ValueError(f"{where}: no slice could be decoded")
    hu = np.concatenate([p.astype(np.float32, copy=False) for p in parts if len(p)])  # (S, H, W) HU
    meta = plan.describe()
    positions = plan.positions_mm[kept]
    if len(kept) != n:  # gaps over the slices actually kept
        steps = np.diff(positions)
        meta["gaps"] = [int(i) for i in np.flatnonzero(steps > 1.5 * np.median(steps))] if len(steps) else []
    meta.update({
        "n_slices": len(kept), "slice_positions_mm": [round(float(p), 4) for p in positions],
        "decoders": dict(used), "twelve_bit_fixes": fixes,
        "skipped": [{"file": e.path, "kind": e.kind, "reason": str(e)} for e in problems],
    })
    return Volume(hu=hu, spacing_mm=plan.spacing_mm, sop_uids=[plan.headers[i].sop_uid for i in kept], meta=meta)


# --------------------------------------------------------------------------- writing

def make_uid(*parts: object) -> str:
    """A deterministic DICOM UID derived from ``parts`` (same parts, same UID)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def write_series(hu: np.ndarray, out_dir: str | os.PathLike, *, patient_id: str, series_key: str,
                 spacing_mm: tuple[float, float, float] = (5.0, 0.5, 0.5), intercept: float = -1024.0,
                 slope: float = 1.0, window: tuple[float, float] = (40.0, 80.0),
                 series_description: str = "HEAD CT", study_key: str | None = None,
                 file_names: list[str] | None = None, sop_uids: list[str] | None = None,
                 study_date: str = "20260101", compression: str = "none") -> list[str]:
    """Write a (S, H, W) HU volume as one CT series, one file per slice.

    Files are valid CT Image Storage objects with unique deterministic UIDs (derived from
    ``series_key``), ImagePositionPatient/ImageOrientationPatient (axial, slice i at
    z = i * spacing), PixelSpacing, SliceThickness, rescale and window tags, and no real
    names. Each file is written to a temporary name and renamed.

    Args:
        hu: (S, H, W) HU volume, slice 0 lowest (inferior).
        out_dir: folder to write into (created).
        patient_id: value of PatientID (use a synthetic key, never a real one).
        series_key: any string that makes the UIDs unique and reproducible.
        spacing_mm: (slice spacing, row spacing, column spacing) in mm.
        intercept, slope: stored pixel = round((hu - intercept) / slope) as uint16.
        file_names: optional file names (default ``<sop uid>.dcm``).
        sop_uids: optional SOPInstanceUIDs (RSNA-style fixtures use ``ID_<hex>``).
        compression: ``"none"`` (Explicit VR Little Endian) or ``"rle"`` (RLE Lossless, about 2x
            smaller for head CT; decoded natively by pydicom).

    Returns:
        The SOPInstanceUIDs, in slice order.
    """
    hu = np.asarray(hu)
    if compression not in ("none", "rle"):
        raise ValueError(f"compression must be 'none' or 'rle', not {compression!r}")
    if hu.ndim != 3:
        raise ValueError(f"write_series expects a (S, H, W) volume, not shape {hu.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, rows, cols = hu.shape
    study_uid = make_uid("study", study_key or series_key)
    series_uid = make_uid("series", series_key)
    frame_uid = make_uid("frame", series_key)
    sops = list(sop_uids) if sop_uids is not None else [make_uid("sop", series_key, i) for i in range(n)]
    names = list(file_names) if file_names is not None else [f"{s}.dcm" for s in sops]
    stored = np.clip(np.rint((hu - intercept) / slope), 0, 65535).astype(np.uint16)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sops[i]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = DicomDataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sops[i]
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.PatientName = "Phantom^Anonymous"
        ds.StudyDate = study_date
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-(cols * spacing_mm[2]) / 2, -(rows * spacing_mm[1]) / 2, i * spacing_mm[0]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = i * spacing_mm[0]
        ds.PixelSpacing = [spacing_mm[1], spacing_mm[2]]
        ds.SliceThickness = spacing_mm[0]
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.WindowCenter = window[0]
        ds.WindowWidth = window[1]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = stored[i].tobytes()
        if compression == "rle":
            ds.compress(RLELossless, generate_instance_uid=False)
        with atomic.writing(out / names[i]) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return sops
