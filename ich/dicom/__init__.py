"""DICOM reading and writing: CT series <-> HU volumes (the only package that imports pydicom).

Modules by job: ``scan`` (header index, series plan), ``decode`` (pixels to HU), ``series`` (one
series end to end), ``write`` (phantom series), ``common`` (errors, limits).

Volumes are float32 HU arrays shaped (S, H, W), slices sorted along the slice normal;
spacing is (slice, row, column) in millimetres.

Reading goes in two passes, as pydicom recommends: a header scan without pixels
(``scan_headers``, parallel) indexes the files, ``group_series`` / ``plan_series`` group
them by SeriesInstanceUID, sort the slices by their position projected on the slice
normal (InstanceNumber only breaks ties) and check the series; then ``decode_series``
reads the pixels of the chosen series only and converts them to HU (slope/intercept,
the RSNA 12-bit fix where it applies). ``read_series`` does all of it for one series.
Uncompressed little-endian pixels are read straight from the offset the header scan
recorded (no second parse; tested equal to pydicom's array); a ``ich.pool.WorkerPool`` runs both
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

from ich.dicom.common import (DECODER_PREFERENCE, DICOM_SUFFIXES, INSTALL_HINT, NATIVE_FAST, ON_ERROR,
                              check_on_error, decode_limits, DecodeLimits, DecoderMissingError, DicomError, key_hash)
from ich.dicom.decode import (choose_decoder, choose_decoders, decode_file, decode_series, decode_task,
                              DecodedSeries, hu_from_pixels)
from ich.dicom.scan import (first_value, group_series, HeaderScan, list_dicom_files, plan_series, read_slice_header,
                            scan_headers, SeriesPlan, SliceHeader, syntax_name)
from ich.dicom.series import read_series, Volume
from ich.dicom.write import make_uid, write_series

__all__ = ["DECODER_PREFERENCE", "DICOM_SUFFIXES", "DecodeLimits", "DecodedSeries", "DecoderMissingError",
           "DicomError", "HeaderScan", "INSTALL_HINT", "NATIVE_FAST", "ON_ERROR", "SeriesPlan", "SliceHeader",
           "Volume", "check_on_error", "choose_decoder", "choose_decoders", "decode_file", "decode_limits",
           "decode_series", "decode_task", "first_value", "group_series", "hu_from_pixels", "key_hash",
           "list_dicom_files", "make_uid", "plan_series", "read_series", "read_slice_header", "scan_headers",
           "syntax_name", "write_series"]
