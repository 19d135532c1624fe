"""Write the synthetic head-CT phantom as files: DICOM series, NIfTI masks and an RSNA-style labels CSV.

The tree is read back through the same importer users run on real data (``python -m ich
import phantom``). Layout of an output folder (a contract with the ``phantom`` importer)::

    synth.json                   {"generator": "ich.phantom", "version", "seed", "exams", "size",
                                  "difficulty", "anatomy", "config": {...}}
    labels.csv                   RSNA layout: columns ID,Label; ID = "<SOPInstanceUID>_<subtype>" for
                                 the 5 subtypes and "any", one 6-row block per slice
    exams/<exam_id>/<SOPInstanceUID>.dcm    one CT series per exam, PatientID "PHANTOM-<exam_id>",
                                            slice 0 = lowest z
    masks/<exam_id>.nii.gz       uint8 subtype codes, array axes (W, H, S) = np.transpose(mask, (2, 1, 0))
    params/<exam_id>.json        the PhantomParams (geometric) or AtlasParams (atlas) of that exam

Two anatomies write the same layout: ``geometric`` (``ich.phantom``: ellipses, sulci and ventricles
drawn from formulas) and ``atlas`` (``ich.atlas``: the MNI152 tissue maps of the installed nilearn
package turned into CT, bleeds placed by anatomy). The importer reads both unchanged.

Exams are rendered in parallel (one process per core); exam i is drawn from
``phantom.exam_seed(seed, i)``, so the files are the same whatever the number of workers.
The tree is built under a temporary name next to ``out`` and renamed into place at the end.
With ``resume=True`` that name is ``.<out>.partial`` and each finished exam leaves a record in its
``done/`` folder, so a run that was killed continues where it stopped instead of rendering again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib
import numpy as np

from ich import atlas, atomic
from ich.dicom import write_series
from ich.labels import SUBTYPES
from ich.paths import check_out_folder
from ich.phantom import (PARAMS_VERSION, PhantomConfig, exam_id_for, exam_seed, phantom_config,
                         render_phantom, sample_phantom_params)

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

SYNTH_FILE, LABELS_FILE = "synth.json", "labels.csv"
EXAM_DIR, MASK_DIR, PARAMS_DIR = "exams", "masks", "params"
LABEL_NAMES: tuple[str, ...] = (*SUBTYPES, "any")   # the six RSNA label columns, in RSNA order
ANATOMIES = ("geometric", "atlas")                   # ich.phantom, ich.atlas


def config_key(cfg: PhantomConfig | atlas.AtlasConfig) -> str:
    """A short hash of a config: it enters the DICOM UIDs, so different datasets never share UIDs."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def synth_exam(out: str | os.PathLike, index: int, seed: int, cfg: PhantomConfig | atlas.AtlasConfig,
               compression: str = "rle") -> dict:
    """Render exam ``index`` and write its DICOM series, NIfTI mask and params file under ``out``.

    ``cfg`` picks the anatomy: a ``PhantomConfig`` renders ``ich.phantom``, an ``AtlasConfig`` ``ich.atlas``.

    Returns:
        {"exam_id", "sops": [SOPInstanceUID per slice], "slice_subtypes": (S, 5) uint8,
        "lesions": number of drawn lesions}.
    """
    out = Path(out)
    exam_id = exam_id_for(index)
    if isinstance(cfg, atlas.AtlasConfig):
        params = atlas.sample_atlas_params(exam_seed(seed, index), cfg)
        hu, mask = atlas.render_atlas(params)                             # (S, H, W) float32, uint8
    else:
        params = sample_phantom_params(exam_seed(seed, index), cfg)
        hu, mask = render_phantom(params)                                 # (S, H, W) float32, uint8
    hu = np.clip(np.rint(hu), -1024, 3071)                                # whole HU, as a scanner stores them
    spacing = (params.slice_thickness_mm, params.pixel_spacing_mm, params.pixel_spacing_mm)
    sops = write_series(hu, out / EXAM_DIR / exam_id, patient_id=f"PHANTOM-{exam_id}",
                        series_key=f"ich-phantom/{seed}/{config_key(cfg)}/{exam_id}", spacing_mm=spacing,
                        intercept=-1024.0, slope=1.0, window=(40.0, 80.0), series_description="PHANTOM HEAD CT",
                        compression=compression)
    affine = np.diag([params.pixel_spacing_mm, params.pixel_spacing_mm, params.slice_thickness_mm, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(np.transpose(mask, (2, 1, 0))), affine),  # (W, H, S)
             out / MASK_DIR / f"{exam_id}.nii.gz")
    (out / PARAMS_DIR / f"{exam_id}.json").write_text(params.to_json())
    slice_subtypes = np.stack([(mask == c + 1).any(axis=(1, 2)) for c in range(len(SUBTYPES))], axis=1)
    return {"exam_id": exam_id, "sops": sops, "slice_subtypes": slice_subtypes.astype(np.uint8),
            "lesions": len(params.lesions)}


def _mp_context():
    """fork when it is safe (workers start at once); spawn when CUDA is up or other threads run (a server)."""
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_initialized()
    if "fork" in multiprocessing.get_all_start_methods() and not cuda and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} already exists and is not an empty folder; "
                              "choose a new folder (synth never overwrites files)")


def write_synth_dataset(out: str | os.PathLike, n_exams: int, *, seed: int = 0, size: int | None = None,
                        difficulty: str | PhantomConfig | atlas.AtlasConfig = "default",
                        slices: tuple[int, int] | None = None, anatomy: str = "geometric",
                        workers: int | None = None, on_progress: Callable[[int, int], None] | None = None,
                        compression: str = "rle", resume: bool = False, **overrides) -> dict:
    """Generate ``n_exams`` phantom exams as a DICOM/NIfTI/CSV tree (layout in the module docstring).

    Args:
        out: folder to create; it must not exist, or be empty.
        n_exams: number of exams (ids PH000000, PH000001, ...).
        seed: dataset seed; the same seed and config give the same bytes.
        size: in-plane pixels (field of view 240 mm, so 256 gives 0.94 mm pixels); default: the
            anatomy's config (geometric 256, atlas 512).
        difficulty: a preset (easy, default, hard) of ``phantom.PHANTOM_PRESETS`` or ``atlas.ATLAS_PRESETS``,
            or a ``PhantomConfig`` / ``AtlasConfig`` (which then decides the anatomy).
        slices: (low, high) slices per exam; default is the config's (geometric 24-40; atlas: skull
            base to vertex, about 30).
        anatomy: ``"geometric"`` (``ich.phantom``) or ``"atlas"`` (``ich.atlas``, needs nilearn).
        workers: processes (default: one per CPU core; 1 renders in this process).
        on_progress: called as ``on_progress(done, total)`` after each exam.
        compression: pixel encoding of the DICOM files: ``"rle"`` (RLE Lossless, the default: about
            half the disk of ``"none"``, uncompressed Explicit VR Little Endian).
        resume: build in ``.<out>.partial`` and keep it when interrupted; a later call with the
            same arguments renders only the exams it lacks.
        overrides: other ``PhantomConfig`` fields.

    Returns:
        The summary written to ``synth.json`` plus counts: exams, positive_exams, slices, positive_slices.

    Raises:
        FileExistsError: ``out`` exists and is not empty.
        ValueError: a bad count, seed, size or config field, or a partial folder written with others.
    """
    out = check_out_folder(out)
    if compression not in ("rle", "none"):
        raise ValueError(f"--compression must be 'rle' or 'none', not {compression!r}")
    if isinstance(n_exams, bool) or not isinstance(n_exams, (int, np.integer)) or n_exams < 1:
        raise ValueError(f"--exams must be a positive integer, not {n_exams!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, not {seed!r}")
    if isinstance(difficulty, atlas.AtlasConfig):
        anatomy = "atlas"
    if anatomy not in ANATOMIES:
        raise ValueError(f"--anatomy must be one of {list(ANATOMIES)}, not {anatomy!r}")
    if slices is not None:
        overrides["n_slices"] = tuple(slices)
    if size is not None:
        overrides["size"] = size
    make = atlas.atlas_config if anatomy == "atlas" else phantom_config
    cfg = make(difficulty, **overrides)
    _check_out(out)
    n_exams, seed = int(n_exams), int(seed)
    workers = max(1, min(int(workers or os.cpu_count() or 1), n_exams))

    if anatomy == "atlas":
        atlas.atlas_maps()   # derived once here; forked workers share it
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if resume:
        tmp = out.parent / f".{out.name}.partial"
        results = _resume_partial(tmp, {"exams": n_exams, "seed": seed, "compression": compression, "anatomy": anatomy,
                                        "config": cfg.to_dict()})
    else:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
        results = {}
    todo = [i for i in range(n_exams) if i not in results]

    def finished(i: int, res: dict) -> None:
        results[i] = res
        if resume:
            _write_done(tmp, res)
        if on_progress:
            on_progress(len(results), n_exams)

    try:
        for sub in (EXAM_DIR, MASK_DIR, PARAMS_DIR):
            (tmp / sub).mkdir(parents=True, exist_ok=resume)
        if results and on_progress:
            on_progress(len(results), n_exams)
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                finished(i, synth_exam(tmp, i, seed, cfg, compression))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=_mp_context()) as pool:
                futures = {pool.submit(synth_exam, str(tmp), i, seed, cfg, compression): i for i in todo}
                try:
                    for fut in as_completed(futures):
                        finished(futures[fut], fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        summary = _write_tables(tmp, results, seed=seed, size=cfg.size, cfg=cfg, difficulty=difficulty,
                                anatomy=anatomy)
        shutil.rmtree(tmp / DONE_DIR, ignore_errors=True)
        _check_out(out)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        if not resume:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log.info("wrote %d exams (%d positive), %d slices (%d positive) to %s in %.1f s", summary["exams"],
             summary["positive_exams"], summary["slices"], summary["positive_slices"], out, summary["seconds"])
    return summary


DONE_DIR = "done"   # in a resumable partial folder: one record per finished exam, and the run's arguments


def _resume_partial(tmp: Path, args: dict) -> dict[int, dict]:
    """The finished exams of a partial folder written with the same ``args`` ({} for a new folder)."""
    spec = tmp / DONE_DIR / "args.json"
    if not spec.is_file():
        shutil.rmtree(tmp, ignore_errors=True)      # nothing recorded yet: start clean
        (tmp / DONE_DIR).mkdir(parents=True)
        spec.write_text(json.dumps(args, sort_keys=True))
        return {}
    old = json.loads(spec.read_text())
    if old != json.loads(json.dumps(args, sort_keys=True)):
        diff = sorted(k for k in args if old.get(k) != json.loads(json.dumps(args[k])))
        raise ValueError(f"{tmp} holds a partial synth run with other arguments ({', '.join(diff)} differ); "
                         "rerun with the same arguments to resume it, or delete that folder to start again")
    results = {}
    for rec in (tmp / DONE_DIR).glob("PH*.json"):
        d = json.loads(rec.read_text())
        results[int(d["index"])] = {"exam_id": d["exam_id"], "sops": d["sops"], "lesions": d["lesions"],
                                    "slice_subtypes": np.asarray(d["slice_subtypes"], dtype=np.uint8)}
    if results:
        log.info("resuming synth in %s: %d exams already written", tmp, len(results))
    return results


def _write_done(tmp: Path, res: dict) -> None:
    """Record one finished exam (atomically: a record exists only for an exam whose files are all written)."""
    index = int(res["exam_id"][2:])
    rec = {"index": index, "exam_id": res["exam_id"], "sops": list(res["sops"]), "lesions": int(res["lesions"]),
           "slice_subtypes": np.asarray(res["slice_subtypes"]).tolist()}
    path = tmp / DONE_DIR / f"{res['exam_id']}.json"
    atomic.write_text(path, json.dumps(rec), fsync=False)


def _write_tables(tmp: Path, results: dict[int, dict], *, seed: int, size: int,
                  cfg: PhantomConfig | atlas.AtlasConfig, difficulty, anatomy: str) -> dict:
    """Write labels.csv (exam order, slice order, six rows per slice) and synth.json."""
    n_slices = n_pos_slices = n_pos_exams = 0
    with open(tmp / LABELS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "Label"])
        for i in sorted(results):
            res = results[i]
            sub = res["slice_subtypes"]                              # (S, 5) 0/1
            any_ = sub.max(axis=1)
            for sop, row, a in zip(res["sops"], sub, any_):
                for name, value in zip(LABEL_NAMES, (*row.tolist(), int(a))):
                    writer.writerow([f"{sop}_{name}", int(value)])
            n_slices += len(any_)
            n_pos_slices += int(any_.sum())
            n_pos_exams += int(any_.max())
    meta = {"generator": "ich.phantom", "version": PARAMS_VERSION, "seed": seed, "exams": len(results),
            "size": size, "difficulty": difficulty if isinstance(difficulty, str) else "custom",
            "anatomy": anatomy, "config": cfg.to_dict()}
    (tmp / SYNTH_FILE).write_text(json.dumps(meta, indent=2))
    return {**meta, "positive_exams": n_pos_exams, "slices": n_slices, "positive_slices": n_pos_slices}


def read_synth_meta(path: str | os.PathLike) -> dict:
    """The ``synth.json`` of a synth output folder."""
    p = Path(path) / SYNTH_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{path} is not a synth output folder (no {SYNTH_FILE}); "
                                "create one with `python -m ich synth --out DIR`")
    return json.loads(p.read_text())
