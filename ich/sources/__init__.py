"""Importers: turn a public dataset (or any DICOM tree) into an ich dataset folder.

One module per source (``folder``, ``rsna``, ``cq500``, ``ctich``, ``phantom``) on what they
share (``common``); one function per source, all with the same core signature and all registered in
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

from collections.abc import Callable

from ich.sources.common import ImportReport, check_new_dataset, check_source, read_rsna_labels
from ich.sources.cq500 import BHX_CODES, CQ500_COLUMNS, CQ500_SERIES_RULES, import_cq500, read_bhx, read_cq500_reads
from ich.sources.ctich import import_ctich, read_ctich_csv
from ich.sources.folder import import_folder
from ich.sources.phantom import import_phantom
from ich.sources.rsna import import_rsna

IMPORTERS: dict[str, Callable[..., dict]] = {
    "folder": import_folder,
    "rsna": import_rsna,
    "cq500": import_cq500,
    "ctich": import_ctich,
    "phantom": import_phantom,
}

__all__ = ["BHX_CODES", "CQ500_COLUMNS", "CQ500_SERIES_RULES", "IMPORTERS", "ImportReport", "check_new_dataset",
           "check_source", "import_cq500", "import_ctich", "import_folder", "import_phantom", "import_rsna", "read_bhx",
           "read_cq500_reads", "read_ctich_csv", "read_rsna_labels"]
