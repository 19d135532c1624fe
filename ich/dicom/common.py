"""What the DICOM modules share: the errors, the decode-bomb limits, ``on_error`` and keyed hashes."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


ON_ERROR = ("raise", "skip")
DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".dic", ".ima"})
# decoders in order of preference; python-gdcm is the project's default (data-formats.md §6)
DECODER_PREFERENCE = ("gdcm", "pylibjpeg", "pyjpegls", "pillow", "pydicom")
INSTALL_HINT = "pip install python-gdcm"
NATIVE_FAST = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # syntaxes whose pixels are read raw from the offset
POSITION_TOL_MM = 1e-3


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


@contextmanager
def lenient_reading():
    """Read without value validation: RSNA's UIDs (``ID_<hex>``) are not valid DICOM UIDs by design, and
    pydicom would warn (and log) once per file; skipping the validation is also faster."""
    settings = pydicom.config.settings
    old = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = old


def corrupt_error(path, what: str) -> DicomError:
    return DicomError(
        f"{path}: corrupt or truncated DICOM file ({what}); replace the file with a good copy or delete it, "
        "or import with on_error='skip' (--on-error skip) to drop it and count it in the report",
        kind="corrupt", path=path,
    )
