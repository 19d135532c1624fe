"""The second pass: decoding the pixels of a planned series to HU (fast raw reads, gdcm for compressed syntaxes)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset as DicomDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ich.dicom.common import (DECODER_PREFERENCE, DecoderMissingError, DicomError, INSTALL_HINT, NATIVE_FAST,
                              check_on_error, corrupt_error, decode_limits, lenient_reading)
from ich.dicom.scan import SliceHeader, first_value
from ich.preprocess import HU_MAX, HU_MIN, fix_12bit, needs_12bit_fix, resize, to_hu, to_int16_hu

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


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
            raise corrupt_error(h.path, "no pixel data where the header ends")
        length = int.from_bytes(head[8:12] if explicit else head[4:8], "little")
        if length == 0xFFFFFFFF or length < need:
            raise corrupt_error(h.path, f"pixel data truncated: the PixelData element holds {length} bytes, a "
                                   f"{h.rows}x{h.cols} {h.bits_allocated}-bit image needs {need}")
        data = f.read(need)
    if len(data) < need:
        raise corrupt_error(h.path, f"pixel data truncated: {len(data)} of {need} bytes present")
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
    with lenient_reading():
        return _decode_file(path, decoder)


def _decode_file(path, decoder):
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:
        raise corrupt_error(path, f"{type(err).__name__}: {err}") from err
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data (the file is truncated, or it is not an image); "
                         "remove it from the input", kind="no_pixels", path=path)
    try:
        claims = {"rows": int(ds.Rows), "cols": int(ds.Columns),
                  "n_frames": int(first_value(ds.get("NumberOfFrames")) or 1),
                  "bits_allocated": int(ds.get("BitsAllocated", 16) or 16),
                  "samples": int(ds.get("SamplesPerPixel", 1) or 1)}
    except (AttributeError, TypeError, ValueError) as err:
        raise corrupt_error(path, f"unreadable image size tags: {type(err).__name__}: {err}") from err
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
            raise corrupt_error(path, f"pixel data could not be decoded with {decoder}: {type(err).__name__}: {err}") \
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
    with lenient_reading():  # header values read below are validated lazily
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


