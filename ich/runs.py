"""The run folder, the unit of record: the only module that knows its file names.

Layout of ``<runs root>/<run name>/``::

    config.json          the frozen RunConfig (everything needed to rerun)
    status.json          state (queued | running | done | failed | cancelled), epoch, progress 0-1,
                         timestamps, error message, summary numbers
    metrics.jsonl        one line per epoch (numbered across the learning-rate grid): epoch, lr_factor,
                         lr_epoch, train_loss, val_exam_auc, val_slice_auc, val_loss, lr, seconds
    labels.parquet       the labels the budget bought (kind exam | slice, exam_id, index, use train | val,
                         label as bought (after train.label_noise), clean_label the truth)
    checkpoint.pt        {"kind": "ich-run", "config", "model" (best weights), "epoch", "best",
                          "last": {weights, optimiser, scheduler, ...} while the run can resume,
                          "encoder_ref": frozen-encoder file + checksum on the fast path,
                          "encoder_config": the encoder's architecture options, e.g. its pooling}
    predictions.parquet  test split, one row per slice: exam_id, index, split, exam_score,
                         exam_label, slice_score, attention, slice_label
    predictions-selection.parquet  the same for the labels that chose the model (validation): every
                         cutoff reported for the run is fixed on these, never on the test split
    metrics.json         evaluation of the test split (``ich.evaluate.evaluate_run``); another
                         dataset's predictions and evaluation: predictions-<name>.parquet, metrics-<name>.json
    CANCEL               present when a cancel was requested (checked between epochs)
    writer.lock          held (``fcntl.flock``) by the one process writing the run; holds its pid
    ood.npz              out-of-distribution reference (``ich.ood``): training-slice Gaussian and the
                         threshold fixed on the validation split; written on first use

Every write is atomic (a temporary file, then ``os.replace``; the temporary file is removed when the
write fails, e.g. on a full disk or a signal); metrics lines are appended whole. Checkpoints hold only
tensors and plain data and load with ``torch.load(weights_only=True)``, so a crafted file cannot run
code; an older or foreign checkpoint is refused unless the user trusts it (``trust_checkpoint``).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pickle
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from ich import atomic
from ich.config import RunConfig
from ich.models import build_model, state_checksum

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LABELS_FILE = "labels.parquet"
CHECKPOINT_FILE = "checkpoint.pt"
PREDICTIONS_FILE = "predictions.parquet"
#: Prediction name (predictions-selection.parquet) of the labels a run used for model selection.
SELECTION_PREDICTIONS = "selection"
EVALUATION_FILE = "metrics.json"
CANCEL_FILE = "CANCEL"
LOCK_FILE = "writer.lock"
OOD_FILE = "ood.npz"   # the out-of-distribution reference (ich.ood), fitted on first use
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
PREDICTION_COLUMNS = ["exam_id", "index", "split", "exam_score", "exam_label", "slice_score", "attention",
                      "slice_label"]
CHECKPOINT_KIND = "ich-run"


TRUST_FLAG = "--trust-checkpoint"


class RunLockedError(RuntimeError):
    """Another process is writing this run folder (it holds ``writer.lock``)."""


def disk_full_message(err: OSError, run: str | os.PathLike) -> str | None:
    """A one-line reason for a full disk (None for any other error)."""
    if getattr(err, "errno", None) not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return (f"the disk holding {run} is full (no space left on device while writing "
            f"{Path(getattr(err, 'filename', None) or '?').name}); free some space, then resume the run with --resume")


def now() -> str:
    """The local time as run folders record it: ``2026-12-02T14:33:14``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def run_name(cfg: RunConfig, when: float | None = None) -> str:
    """``<YYYYmmdd-HHMMSS>-<supervision>-m<budget|all>-s<seed>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    budget = "all" if cfg.train.budget is None else str(cfg.train.budget)
    return f"{stamp}-{cfg.train.supervision}-m{budget}-s{cfg.seed}"


def is_run(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _check_run(run: str | os.PathLike) -> Path:
    run = Path(run)
    if not is_run(run):
        raise FileNotFoundError(f"{run} is not a run folder (no {CONFIG_FILE}); start one with `python -m ich train`")
    return run


# ------------------------------------------------------------------------------ config
def failed_at_setup(run: str | os.PathLike) -> bool:
    """True for a run that failed before its first epoch ended (bad options or data): nothing worth keeping."""
    st = read_status(run)
    return is_run(run) and st.get("state") == "failed" and st.get("phase") == "setup" and not has_checkpoint(run)


def check_new_run(run: str | os.PathLike) -> None:
    """Refuse a folder that a new run may not use (it is created, or reused, by ``create_run``).

    A missing or empty folder is fine, and so is a run that failed at setup (its files are replaced).

    Raises:
        FileExistsError: the folder holds a run (use ``--resume`` to continue it) or other files.
    """
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise FileExistsError(f"{run} is a file, not a folder; choose a new --out folder")
    if not run.is_dir() or failed_at_setup(run):
        return
    if any(p.name != LOCK_FILE for p in run.iterdir()):
        what = "a run" if is_run(run) else "other files"
        raise FileExistsError(f"{run} already exists and holds {what}; choose a new --out folder"
                              + (", or pass --resume to continue it" if what == "a run" else ""))


def create_run(run: str | os.PathLike, cfg: RunConfig) -> Path:
    """Create a run folder holding ``config.json`` and a ``queued`` status.

    An empty folder is used as it is; the files of a run that failed at setup are replaced.

    Raises:
        FileExistsError: the folder holds a run or other files (see ``check_new_run``).
    """
    run = Path(run)
    check_new_run(run)
    if failed_at_setup(run):
        for name in (CONFIG_FILE, STATUS_FILE, METRICS_FILE, LABELS_FILE, CANCEL_FILE):
            (run / name).unlink(missing_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(run / CONFIG_FILE, cfg.to_json().encode())
    write_status(run, "queued", created=now(), epoch=0, progress=0.0)
    return run


#: Settings of runs written before ``train.validation`` existed (they validated on the free val split
#: with one learning rate, patience 5 and one pass per epoch); filled in where such a config.json lacks them.
LEGACY_TRAIN = {"validation": "free", "lr_factors": [1.0], "patience": 5, "steps_per_epoch": None}

@contextmanager
def writer_lock(run: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's ``writer.lock`` (an OS lock, released when the process ends, even by kill -9).

    The folder is created if needed. One process at a time may write a run.

    Raises:
        RunLockedError: another process holds the lock; the message names its pid.
    """
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    fd = os.open(run / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            time.sleep(0.2)     # the holder writes its pid just after taking the lock: read it, not the last one's
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(f"run {run.name} is being written by another process (pid {holder}); wait for it "
                                 f"to end, or stop it (cancel its job, or `kill {holder}`), then resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield run
    finally:
        os.close(fd)            # releases the lock; the file stays (removing it would race with a waiting writer)


def read_config(run: str | os.PathLike) -> RunConfig:
    """The run's ``RunConfig`` (config.json); configs older than paid validation keep their old meaning."""
    run = _check_run(run)
    text = (run / CONFIG_FILE).read_text()
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return RunConfig.from_json(text)          # raises the usual clear error
    train = d.get("train") if isinstance(d, dict) else None
    if isinstance(train, dict) and "validation" not in train:
        d["train"] = {**LEGACY_TRAIN, **train}
    return RunConfig.from_dict(d)


# ------------------------------------------------------------------------------ status
def read_status(run: str | os.PathLike) -> dict:
    """The status dict (``{}`` fields missing); ``state`` is always present."""
    p = Path(run) / STATUS_FILE
    if not p.is_file():
        return {"state": "queued"}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {"state": "unknown", "error": f"{p} is not valid JSON"}


def write_status(run: str | os.PathLike, state: str | None = None, **fields) -> dict:
    """Merge ``fields`` (and ``state``) into status.json atomically; returns the new status."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {list(STATES)}, not {state!r}")
    run = Path(run)
    status = read_status(run) if (run / STATUS_FILE).is_file() else {}
    if state is not None:
        status["state"] = state
    status.update(_clean(fields))
    status["updated"] = now()
    data = json.dumps(status, indent=2, default=_json_default).encode()
    try:
        atomic.write_bytes(run / STATUS_FILE, data)
    except OSError as err:
        if disk_full_message(err, run) is None or not (run / STATUS_FILE).is_file():
            raise
        with open(run / STATUS_FILE, "r+b") as f:   # full disk: rewrite in place (its blocks are freed first)
            f.truncate(0)
            f.write(data)
    return status


# ------------------------------------------------------------------------------ metrics
def append_metrics(run: str | os.PathLike, row: dict) -> None:
    """Append one epoch's metrics as a JSON line (NaN written as null)."""
    line = json.dumps({k: _finite_or_none(v) for k, v in row.items()}, default=_json_default) + "\n"
    with open(Path(run) / METRICS_FILE, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file that another process may be appending to ([] when absent);
    a torn (half-written) line is skipped."""
    p = Path(path)
    rows = []
    if p.is_file():
        for line in p.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_metrics(run: str | os.PathLike) -> pd.DataFrame:
    """One row per epoch (empty frame before the first epoch); a torn last line is ignored."""
    return pd.DataFrame(read_jsonl(Path(run) / METRICS_FILE))


def truncate_metrics(run: str | os.PathLike, last_epoch: int) -> None:
    """Keep only epochs <= ``last_epoch`` (used when a run resumes from its checkpoint)."""
    df = read_metrics(run)
    lines = [] if df.empty else [json.dumps({k: _finite_or_none(v) for k, v in r.items() if not _is_na(v)})
                                 for r in df.to_dict("records") if r["epoch"] <= last_epoch]
    atomic.write_bytes(Path(run) / METRICS_FILE, "".join(line + "\n" for line in lines).encode())


# ------------------------------------------------------------------------------ labels bought
def write_labels(run: str | os.PathLike, labels: pd.DataFrame) -> None:
    _write_parquet(Path(run) / LABELS_FILE, labels)


def read_labels(run: str | os.PathLike) -> pd.DataFrame:
    p = _check_run(run) / LABELS_FILE
    if not p.is_file():
        raise FileNotFoundError(f"run {Path(run).name} has no {LABELS_FILE} yet (it has not started training)")
    return pd.read_parquet(p)


# ------------------------------------------------------------------------------ checkpoint
def save_checkpoint(run: str | os.PathLike, payload: dict) -> None:
    """Write checkpoint.pt atomically (``payload`` gets ``kind`` added).

    ``payload`` must hold only tensors and plain data (dict, list, str, int, float, bool, None), so that
    ``load_checkpoint`` can read it without unpickling code.
    """
    buf = io.BytesIO()          # serialised in memory first: torch's file writer turns a full disk into an
    torch.save({"kind": CHECKPOINT_KIND, **payload}, buf)    # unclear RuntimeError, a plain write gives ENOSPC
    atomic.write_bytes(Path(run) / CHECKPOINT_FILE, buf.getbuffer())


def has_checkpoint(run: str | os.PathLike) -> bool:
    return (Path(run) / CHECKPOINT_FILE).is_file()


def load_checkpoint(run: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    run = _check_run(run)
    path = run / CHECKPOINT_FILE
    if not path.is_file():
        state = read_status(run).get("state", "unknown")
        raise FileNotFoundError(f"run {run.name} has no checkpoint yet (state: {state}); wait for its first "
                                "epoch to finish, or choose a finished run")
    ckpt = read_torch_file(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not an ich run checkpoint")
    return ckpt


def read_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """``torch.load(path, weights_only=True)`` with one-line errors: tensors and plain data only, never code.

    Raises:
        ValueError: the file is empty or damaged (cut off by a full disk or a copy), or it holds Python objects
            that a safe load refuses (an older ich version, or a crafted file); the message names the
            ``--trust-checkpoint`` flag for a file the user trusts.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): it was cut off while being written (full disk or killed copy); "
                         "restore it from a copy, or train the run again")
    with open(path, "rb") as f:
        head = f.read(4)
    try:
        with warnings.catch_warnings():      # torch's notes on pickle protocols add nothing to our one line
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if head[:2] == b"PK" or head[:1] == b"\x80":          # a torch zip file, or a plain pickle
            raise ValueError(
                f"{path} holds Python objects that a safe load refuses (it comes from an older ich version, or it "
                f"was crafted: loading it could run code). If you trust where it came from, pass {TRUST_FLAG} "
                "once to re-save it in the safe format") from None
        raise ValueError(f"{path} is not a checkpoint (damaged, or another kind of file: {_first_line(err)}); "
                         "restore it from a copy, or train the run again") from None
    except (EOFError, RuntimeError, MemoryError, OSError, ValueError, KeyError, IndexError, TypeError,
            AttributeError) as err:
        raise ValueError(f"{path} is damaged ({size} bytes; {type(err).__name__}: {_first_line(err)}); restore it "
                         "from a copy, or train the run again") from None


def trust_checkpoint(run: str | os.PathLike) -> bool:
    """Re-save a checkpoint the user trusts (e.g. from an older ich version) in the safe format.

    Only for files whose origin the user vouches for: this one load may run code the file holds.
    Returns True when the file was converted, False when it already loads safely.

    Raises:
        ValueError: it is not an ich run checkpoint, or it holds objects that are not tensors or plain data.
    """
    path = _check_run(run) / CHECKPOINT_FILE
    try:
        read_torch_file(path)
        return False
    except ValueError:
        pass
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure means a damaged file
        raise ValueError(f"{path} is damaged ({type(err).__name__}: {_first_line(err)}); restore it from a copy, "
                         "or train the run again") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not an ich run checkpoint")
    ckpt = _plain(ckpt, path)
    save_checkpoint(path.parent, ckpt)
    read_torch_file(path)            # what was written loads safely
    return True


def _plain(o, path: Path):
    """Tensors and plain data, with numpy scalars made Python numbers; anything else is refused."""
    if isinstance(o, dict):
        return {k: _plain(v, path) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v, path) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if o is None or isinstance(o, (str, int, float, bool, torch.Tensor)):
        return o
    raise ValueError(f"{path} holds a {type(o).__name__}, which is neither a tensor nor plain data; it cannot be "
                     "converted to the safe format")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


def load_model(run: str | os.PathLike, device: str | torch.device = "cpu"):
    """The run's best model (``MILModel``, eval mode) from its checkpoint; the config is ``read_config(run)``.

    Fast-path runs store only the head; their frozen encoder is read from the ``init`` file,
    whose weights must still match the checksum recorded at training time.
    """
    ckpt = load_checkpoint(run)
    cfg = RunConfig.from_dict(ckpt["config"])
    ref = ckpt.get("encoder_ref")
    model = build_model(cfg, load_init=ref is not None, encoder_config=ckpt.get("encoder_config"))
    if ref is not None:
        have = state_checksum(model.encoder)
        if have != ref["checksum"]:
            raise ValueError(f"run {Path(run).name} was trained on frozen encoder {ref['path']} with checksum "
                             f"{ref['checksum']}, but that file now holds weights {have}; restore the original "
                             "encoder file to use this run")
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
        if unexpected or [k for k in missing if not k.startswith("encoder.")]:
            raise ValueError(f"checkpoint of run {Path(run).name} does not fit its config "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    else:
        model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


# ------------------------------------------------------------------------------ predictions
def predictions_path(run: str | os.PathLike, name: str | None = None) -> Path:
    """``predictions.parquet`` (test split of the training dataset) or ``predictions-<name>.parquet``."""
    if name is None:
        return Path(run) / PREDICTIONS_FILE
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise ValueError(f"prediction name must be letters, digits, '.', '_' or '-', not {name!r}")
    return Path(run) / f"predictions-{name}.parquet"


def write_predictions(run: str | os.PathLike, df: pd.DataFrame, name: str | None = None) -> Path:
    """Write one row per slice with ``PREDICTION_COLUMNS`` (atomic)."""
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; expected {PREDICTION_COLUMNS}")
    path = predictions_path(run, name)
    _write_parquet(path, df[PREDICTION_COLUMNS])
    return path


def read_predictions(run: str | os.PathLike, name: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exams, slices): exams has exam_id, split, exam_score, exam_label, n_slices; slices has
    exam_id, index, slice_score, attention, slice_label."""
    path = predictions_path(_check_run(run), name)
    if not path.is_file():
        state = read_status(run).get("state", "unknown")
        raise FileNotFoundError(f"run {Path(run).name} has no {path.name} (state: {state}); predictions are written "
                                "when training ends, or by `python -m ich predict`")
    df = pd.read_parquet(path)
    exams = (df.groupby("exam_id", sort=False)
               .agg(split=("split", "first"), exam_score=("exam_score", "first"),
                    exam_label=("exam_label", "first"), n_slices=("index", "size"))
               .reset_index())
    slices = df[["exam_id", "index", "slice_score", "attention", "slice_label"]].reset_index(drop=True)
    return exams, slices


# ------------------------------------------------------------------------------ evaluation
def evaluation_path(run: str | os.PathLike, name: str | None = None) -> Path:
    """``metrics.json`` (test split of the training dataset) or ``metrics-<name>.json`` (as ``predictions_path``)."""
    p = predictions_path(run, name)
    return p.with_name(EVALUATION_FILE if name is None else f"metrics-{name}.json")


def write_evaluation(run: str | os.PathLike, metrics: dict, name: str | None = None) -> Path:
    """Write an evaluation dict as strict JSON (NaN/inf -> null), atomically."""
    path = evaluation_path(_check_run(run), name)
    atomic.write_bytes(path, json.dumps(_clean(metrics), indent=2, default=_json_default).encode())
    return path


def read_evaluation(run: str | os.PathLike, name: str | None = None) -> dict:
    path = evaluation_path(_check_run(run), name)
    if not path.is_file():
        raise FileNotFoundError(f"run {Path(run).name} has no {path.name}; write it with `python -m ich evaluate "
                                f"{run}`")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------ out-of-distribution reference
def ood_path(run: str | os.PathLike) -> Path:
    """``ood.npz``: the training-slice Gaussian and validation threshold of ``ich.ood``."""
    return Path(run) / OOD_FILE


def write_ood_reference(run: str | os.PathLike, arrays: dict) -> Path:
    """Write the OOD reference arrays (numeric only, no pickles) atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = ood_path(_check_run(run))
    atomic.write_bytes(path, buf.getvalue())
    return path


def read_ood_reference(run: str | os.PathLike) -> dict | None:
    """The saved OOD reference arrays, or None when there is none (or it cannot be read: it is refitted)."""
    path = ood_path(_check_run(run))
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


# ------------------------------------------------------------------------------ cancel, listing
def request_cancel(run: str | os.PathLike) -> None:
    """Ask a running fit to stop after its current epoch (it then marks itself cancelled)."""
    run = _check_run(run)
    atomic.write_bytes(run / CANCEL_FILE, now().encode())


def cancel_requested(run: str | os.PathLike) -> bool:
    return (Path(run) / CANCEL_FILE).exists()


def clear_cancel(run: str | os.PathLike) -> None:
    try:
        (Path(run) / CANCEL_FILE).unlink()
    except FileNotFoundError:
        pass


def list_runs(root: str | os.PathLike) -> pd.DataFrame:
    """One row per run folder under ``root`` (newest first): name, path, state, progress, key config
    fields and summary numbers. An empty frame (with the columns) when there is none."""
    cols = ["run", "path", "state", "epoch", "progress", "supervision", "budget", "seed", "encoder", "pooling",
            "init", "finetune", "preset", "dataset", "best_epoch", "val_exam_auc", "test_exam_auc", "error",
            "created", "updated"]
    rows = []
    root = Path(root)
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if not is_run(p):
            continue
        try:
            cfg = read_config(p)
        except (ValueError, OSError) as err:
            rows.append({"run": p.name, "path": str(p), "state": "unknown", "error": f"bad config: {err}"})
            continue
        st = read_status(p)
        summary = st.get("summary") or {}
        rows.append({
            "run": p.name, "path": str(p), "state": st.get("state"), "epoch": st.get("epoch"),
            "progress": st.get("progress"), "supervision": cfg.train.supervision, "budget": cfg.train.budget,
            "seed": cfg.seed, "encoder": cfg.model.encoder, "pooling": cfg.model.pooling, "init": cfg.model.init,
            "finetune": cfg.model.finetune, "preset": cfg.preset, "dataset": cfg.data.dataset,
            "best_epoch": summary.get("best_epoch"), "val_exam_auc": summary.get("val_exam_auc"),
            "test_exam_auc": summary.get("test_exam_auc"), "error": st.get("error"),
            "created": st.get("created"), "updated": st.get("updated"),
        })
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values("run", ascending=False, ignore_index=True) if len(df) else df


# ------------------------------------------------------------------------------ helpers
def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic.writing(path) as tmp:
        df.to_parquet(tmp, index=False)


def _is_na(v) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _clean(o):
    """Replace NaN/inf by None recursively (strict JSON)."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return _finite_or_none(o)


def _finite_or_none(v):
    if isinstance(v, (float, np.floating)) and not np.isfinite(v):
        return None
    return v


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
