"""Slice-embedding cache: a frozen encoder's (N_slices, D) embeddings of a dataset, computed once.

The fast path (``--finetune none``) trains only the MIL head or the slice head on these
vectors, so a study cell costs seconds. An entry is keyed by the encoder's weights
(``models.state_checksum``), the preprocessing (windows, input size), the numeric precision
and the dataset's identity (its ``dataset.json`` and slice table), so any change gives a new
key and a fresh computation; entries of the same dataset and preprocessing made by other
weights are deleted when a new one is written (the encoder file was replaced). Layout::

    <cache_dir>/<dataset name>-<key>/embeddings.npy   float32 (N_slices, D), rows = dataset.slices order
    <cache_dir>/<dataset name>-<key>/info.json        the key's parts, shape, exam row ranges

An entry is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ich.data import window_slices
from ich.models import state_checksum
from ich.preprocess import resize

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

FORMAT = "ich-embeddings/1"


def default_cache_dir(encoder_path: str | os.PathLike) -> Path:
    """Where embeddings of an encoder file live: next to it, ``<file>.embeddings/``."""
    return Path(str(encoder_path) + ".embeddings")


def dataset_fingerprint(dataset) -> str:
    """A short hash of a dataset's identity: its metadata and its slice table (exam ids, order)."""
    h = hashlib.sha256(json.dumps(dataset.meta, sort_keys=True, default=str).encode())
    h.update(str(len(dataset.slices)).encode())
    h.update("\0".join(dataset.slices["exam_id"].astype(str)).encode())
    h.update(dataset.slices["index"].to_numpy().astype(np.int64).tobytes())
    return h.hexdigest()[:16]


def exam_rows(dataset) -> dict[str, tuple[int, int]]:
    """exam_id -> (start, stop) rows of the slices table; every exam's slices must be contiguous and in order."""
    ids = dataset.slices["exam_id"].astype(str).to_numpy()
    idx = dataset.slices["index"].to_numpy()
    out: dict[str, tuple[int, int]] = {}
    if len(ids) == 0:
        return out
    bounds = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    for s, e in zip(np.r_[0, bounds], np.r_[bounds, len(ids)]):
        exam_id = ids[s]
        if exam_id in out or not np.array_equal(idx[s:e], np.arange(e - s)):
            raise ValueError(f"dataset {dataset.name}: the slices of exam {exam_id} are not stored contiguously "
                             "in slice order; re-import the dataset")
        out[exam_id] = (int(s), int(e))
    return out


def embedding_key(dataset, checksum: str, windows, input_size: int, precision: str) -> dict:
    """The parts that identify a cache entry (all must match for a hit)."""
    return {"format": FORMAT, "dataset": dataset_fingerprint(dataset), "checksum": checksum,
            "windows": list(windows), "input_size": int(input_size), "precision": precision}


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def embed_dataset(dataset, encoder: nn.Module, meta: dict, cache_dir: str | os.PathLike, *,
                  device: str | torch.device = "cpu", precision: str = "fp32", batch_size: int = 64,
                  on_progress: Callable[[dict], None] | None = None) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Embed every slice of a dataset with a frozen encoder, or read the cached result.

    Args:
        dataset: an ``ich.store.Dataset``.
        encoder: (N, C, H, W) -> (N, D); used in eval mode without gradients.
        meta: the encoder's preprocessing: ``windows`` (names) and ``input_size`` (px, or None for
            the dataset's cached size).
        cache_dir: folder of cache entries (``default_cache_dir(encoder_file)`` next to the file).
        device, precision: where and how to compute (``fp32`` or ``bf16``); precision is part of the key.
        batch_size: slices per forward pass.
        on_progress: called with ``{"phase": "embed", "done": n, "total": N}``.

    Returns:
        (embeddings, index): a read-only float32 memmap (N_slices, D) whose rows follow
        ``dataset.slices``, and exam_id -> (start, stop) rows.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', not {precision!r}")
    for k in ("windows", "input_size"):
        if k not in meta:
            raise ValueError(f"embed_dataset: meta must include {k!r} (the encoder's preprocessing)")
    windows = tuple(meta["windows"])
    size = int(meta["input_size"] or dataset.size)
    key = embedding_key(dataset, state_checksum(encoder), windows, size, precision)
    cache_dir = Path(cache_dir)
    entry = cache_dir / f"{dataset.name}-{_key_hash(key)}"
    index = exam_rows(dataset)
    hit = _read_entry(entry, key)
    if hit is not None:
        log.info("embeddings of %s read from %s", dataset.name, entry)
        return hit, index

    n_total = len(dataset.slices)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{entry.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    tmp.mkdir()
    try:
        was_training = encoder.training
        encoder.eval()
        device = torch.device(device)
        out = None
        done = 0
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            for exam_id, (start, stop) in index.items():
                vol = torch.from_numpy(resize(np.array(dataset.load_raw(exam_id)), size))  # (S, h, w) int16
                for a in range(0, stop - start, batch_size):
                    x = window_slices(vol[a:a + batch_size], windows).to(device)          # (n, C, h, w)
                    if device.type == "cpu" and precision == "bf16":
                        x = x.contiguous(memory_format=torch.channels_last)
                    e = encoder(x).float().cpu().numpy()                                   # (n, D)
                    if out is None:
                        out = np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=np.float32,
                                                        shape=(n_total, e.shape[1]))
                    out[start + a:start + a + len(e)] = e
                done += stop - start
                if on_progress is not None:
                    on_progress({"phase": "embed", "done": done, "total": n_total})
        encoder.train(was_training)
        if out is None:
            raise ValueError(f"dataset {dataset.name} has no slices to embed")
        out.flush()
        del out
        seconds = time.perf_counter() - t0
        info = dict(key, n_slices=n_total, dataset_name=dataset.name, seconds=round(seconds, 3),
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        (tmp / "info.json").write_text(json.dumps(info, indent=2))
        _prune_stale(cache_dir, key)
        if entry.exists() and _read_entry(entry, key) is None:   # an incomplete or corrupt leftover
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("embedded %d slices of %s in %.1f s -> %s", n_total, dataset.name, seconds, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    hit = _read_entry(entry, key)
    if hit is None:
        raise RuntimeError(f"embedding cache entry {entry} could not be read back after writing it")
    return hit, index


def _read_entry(entry: Path, key: dict) -> np.ndarray | None:
    info_path = entry / "info.json"
    if not info_path.is_file():
        return None
    try:
        info = json.loads(info_path.read_text())
        if any(info.get(k) != v for k, v in key.items()):
            return None
        emb = np.load(entry / "embeddings.npy", mmap_mode="r")
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable embedding cache entry %s (%s)", entry, err)
        return None
    if emb.ndim != 2 or emb.shape[0] != info.get("n_slices"):
        return None
    return emb


def _prune_stale(cache_dir: Path, key: dict) -> None:
    """Delete entries of the same dataset and preprocessing made with other encoder weights."""
    same = ("format", "dataset", "windows", "input_size", "precision")
    for info_path in cache_dir.glob("*/info.json"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if all(info.get(k) == key[k] for k in same) and info.get("checksum") != key["checksum"]:
            log.info("removing stale embeddings %s (encoder weights changed)", info_path.parent)
            shutil.rmtree(info_path.parent, ignore_errors=True)


def clear_cache(cache_dir: str | os.PathLike) -> int:
    """Delete every embedding entry under ``cache_dir``; returns how many were removed."""
    n = 0
    for info_path in Path(cache_dir).glob("*/info.json"):
        shutil.rmtree(info_path.parent, ignore_errors=True)
        n += 1
    return n
