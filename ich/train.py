"""Training: ``fit(cfg, run_dir)`` trains a weak, strong or mixed learner on its label budget and records the run.

The loop (nanoGPT-sized on purpose): buy the labels (``data.select_labels``), set the validation
labels apart, build the model (``models.build_model``), then for every learning rate of the grid
(``train.lr_factors`` x ``train.lr``) and every epoch: train, validate, append metrics, save a
resumable checkpoint and report progress. At the end the best model scores the test split into
``predictions.parquet``. The test split is never read before that.

Model selection is paid for (``train.validation``):

- ``"paid"`` (default): a stratified ``val_fraction`` of the bought labels, of the run's own kind
  (exam labels for weak and mixed, slice labels for strong), is held out of training
  (``data.hold_out_validation``) and selects the epoch and the learning rate: validation exam
  AUC (weak, mixed) or slice AUC (strong). The held-out labels count in the budget.
- When the held-out part would have fewer than ``val_min_per_class`` labels of a class, the run
  uses the **label-free schedule**: every bought label trains, the learning rate is ``train.lr``,
  every epoch runs and the last one is kept. No label outside the budget is read.
- ``"free"`` (the reference): the dataset's fully labelled validation split selects (its exam
  AUC, or its loss when it has one class); those labels are recorded as ``val_labels`` and are
  not part of the budget (the planner adds them to the cost).

Each learning rate starts from the same initial weights and sees the same data order; the
kept model is the best (learning rate, epoch) by the validation score, ties broken by the lower
validation loss (an AUC on a few held-out labels takes few values), then by the earlier one;
``patience`` (None by default) can stop a learning rate early.

Label noise (``train.label_noise``, ``ich.noise``): the bought labels, training and paid validation
alike, are read as a fallible reader gave them (exact counts flipped, seeded); the test split and
a free validation split keep the clean truth. labels.parquet records both.

Supervision: ``weak`` = focal loss on the exam logit (attention MIL; exam labels only);
``strong`` = focal loss on slice logits of single slices (exam score = max slice
probability); ``mixed`` = exam loss on every bought exam + ``slice_loss_weight`` x slice loss
on the slices of exams whose slice labels were bought.

Fast path (``finetune="none"``): the frozen encoder embeds every slice once
(``embed.embed_dataset``, cached next to the encoder file) and only the pooling + head train
on (S, D) bags, standardised with the mean and std of every training-split slice embedding
(``models.Standardize``; pixels only, so no label outside the budget is used). Same run-folder
contract; the checkpoint stores the head (with those statistics) and a reference to the encoder file.

Determinism: the initial weights come from torch's global RNG seeded with the run's seed, under
``models.INIT_LOCK`` (so runs training side by side in threads of one process,
``executors.ThreadExecutor``, never interleave there; no data loader draws from that RNG: each has
its own generator); dropout masks come from the run's own generator, seeded at every epoch from
(seed, epoch); data order and bags come from ``(seed, epoch, item)``. The image path's torchio augmentation draws from the global RNG, also
seeded at every epoch, so image-path runs must each have a process of their own (the executors
arrange it). A run resumed from its checkpoint therefore ends exactly like an uninterrupted one on
CPU, and a cell gives the same numbers in a thread, a worker process or inline.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ich import acquire, distributed, noise, runs
from ich.config import RunConfig
from ich.data import (BagDataset, EmbeddingBagDataset, EmbeddingSliceDataset, HeldOut, LabelSubset, SliceDataset,
                      VolumeCache, collate_bags, collate_slices, epoch_order, exam_slice_labels, hold_out_validation,
                      make_augment, select_labels)
from ich.device import autocast, resolve_device, resolve_precision
from ich.embed import default_cache_dir, embed_dataset
from ich.models import MILModel, build_model, check_encoder_matches, read_encoder_meta, state_checksum
from ich.objective import make_loss, make_optimizer, make_scheduler
from ich.predict import score_bags, summarize
from ich.store import open_dataset

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())

STATUS_EVERY_S = 2.0


def _better(score: list[float], best: list[float]) -> bool:
    """Lexicographic comparison of ``[criterion, tie-break]`` scores; NaN parts never win."""
    for a, b in zip(score, best):
        if math.isnan(a):
            return False
        if math.isnan(b) or a > b + 1e-9:
            return True
        if a < b - 1e-9:
            return False
    return False


class Cancelled(Exception):
    """Raised inside ``fit`` when a cancel was requested (handled: the run is marked cancelled)."""


# ------------------------------------------------------------------------------ fit
def fit(cfg: RunConfig | None, run_dir: str | os.PathLike, on_progress: Callable[[dict], None] | None = None,
        resume: bool = False, *, bought: LabelSubset | None = None, score_exams: list[str] | None = None) -> dict:
    """Train one run into ``run_dir`` and return its summary.

    Args:
        cfg: the run config (None with ``resume=True`` reads it from the run folder).
        run_dir: the run folder; it must be new or empty unless ``resume``.
        on_progress: called with dicts ``{"phase": "embed" | "train" | "val" | "done", "epoch",
            "epochs", "progress" (0-1), ...}``; an exception it raises stops the run (marked failed).
        resume: continue a killed/failed/cancelled run from its checkpoint (same final result as an
            uninterrupted run); a finished run returns its summary.
        bought: train on these labels instead of buying ``train.budget`` (an acquisition round, ``ich.acquire``).
        score_exams: also score these exams (labels hidden) into ``predictions-pool.parquet`` (the pool an
            acquisition strategy chooses from).

    Returns:
        {"state", "best_epoch", "epochs_run", "val_exam_auc", "val_slice_auc", "test_exam_auc",
         "test_slice_auc", "n_labels", "seconds", ...}

    Raises:
        ValueError / FileNotFoundError / FileExistsError: bad config, dataset or folder.
    """
    run_dir, on_progress = distributed.setup(run_dir, on_progress, resume)  # torchrun: rank 0 writes run_dir
    if resume:
        if not runs.is_run(run_dir):
            raise FileNotFoundError(f"cannot resume {run_dir}: it is not a run folder (no config); drop --resume "
                                    "to start a new run there")
    elif cfg is None:
        raise ValueError("fit needs a RunConfig (or resume=True for an existing run)")
    else:
        runs.check_new_run(run_dir)
    with runs.writer_lock(run_dir):          # one writer per run: a second trainer is refused with our pid
        return _fit_locked(cfg, run_dir, on_progress, resume, bought, score_exams)


def _fit_locked(cfg: RunConfig | None, run_dir: Path, on_progress, resume: bool, bought=None,
                score_exams=None) -> dict:
    """``fit`` once this process holds the run's writer lock."""
    if resume:
        saved = runs.read_config(run_dir)
        if cfg is not None and cfg != saved:
            raise ValueError(f"cannot resume {run_dir} with a different config; resume it with its own "
                             "config.json (omit the training options) or start a new run")
        cfg = saved
        status = runs.read_status(run_dir)
        if status.get("state") == "done" and status.get("summary"):
            return status["summary"]
        if runs.failed_at_setup(run_dir):
            raise ValueError(f"cannot resume {run_dir.name}: it failed before its first epoch ({status.get('error')}); "
                             "resuming would replay the same options. Fix them and start the run again without "
                             "--resume (the same --out folder may be reused)")
    else:
        runs.create_run(run_dir, cfg)
    runs.clear_cancel(run_dir)
    trainer = _Trainer(cfg, run_dir, on_progress, bought=bought, score_exams=score_exams)
    try:
        return trainer.run(resume=resume and runs.has_checkpoint(run_dir))
    except Cancelled:
        runs.write_status(run_dir, "cancelled", finished=runs.now(), error="cancelled by the user")
        return {"state": "cancelled", "epochs_run": trainer.epoch}
    except BaseException as err:
        state = "cancelled" if isinstance(err, KeyboardInterrupt) else "failed"
        full = runs.disk_full_message(err, run_dir) if isinstance(err, OSError) else None
        runs.write_status(run_dir, state, finished=runs.now(), error=full or f"{type(err).__name__}: {err}")
        if full:
            raise RuntimeError(full) from err
        raise


class _Trainer:
    """State of one fit (kept out of ``fit`` so the loop reads top to bottom)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, on_progress, bought: LabelSubset | None = None,
                 score_exams: list[str] | None = None):
        self.cfg, self.run_dir, self.on_progress = cfg, run_dir, on_progress
        self.given, self.score_exams = bought, score_exams
        self.epoch = 0
        self.guide_exams = 0          # exam labels bought for an attention guide (train.acquisition=attention)
        self._last_status = 0.0

    # -------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self.precision = resolve_precision(t.precision, self.device)
        self.dataset = ds = open_dataset(cfg.data.dataset)
        self.input_size = int(cfg.data.input_size or ds.size)
        self.model: MILModel = build_model(cfg, seed=cfg.seed).to(self.device)
        self.generator = torch.Generator(self.device)     # this run's dropout masks (seeded every epoch)
        self.model.use_generator(self.generator)
        self.fast = cfg.model.finetune == "none"
        self.encoder_ref = None
        if self.fast:
            self._setup_embeddings()
        self.bought = self._buy(ds)
        # the labels as bought (train.label_noise); training and paid validation read these, the test split
        # and a free validation split read the dataset's clean labels
        self.seen_exams, self.seen_slices = noise.apply(
            ds.exams, ds.slices, exam_ids=self.bought.exam_ids, slice_rows=self.bought.slices,
            noise=noise.parse(t.label_noise), seed=cfg.seed, slice_exam_ids=self.bought.slice_exam_ids,
            batches=self.bought.batches)
        self.subset, self.held = self._set_validation_apart(ds)
        labels = self._labels_frame()
        self.wrong_labels = int((labels["label"] != labels["clean_label"]).sum())   # flipped by label noise
        runs.write_labels(self.run_dir, labels)
        self.forward = distributed.wrap(self.model, self.device)   # DDP under torchrun; model calls by name
        self.channels_last = self.device.type == "cpu" and self.precision == "bf16" and not self.fast
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
            self.model.channels_last = True
        self._setup_data()
        # every learning rate of the grid starts from these weights (the label-free schedule tries only lr)
        self.factors = t.lr_factors if self.held.mode != "none" else (1.0,)
        self.init_state = self._trainable_state()
        self.opt = make_optimizer(cfg, self.model.parameters())
        self.sched = make_scheduler(cfg, self.opt)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.exam_loss, self.slice_loss = make_loss(cfg, "exam"), make_loss(cfg, "slice")

    def _buy(self, ds) -> LabelSubset:
        """The labels this run buys: given (an acquisition round), one stratified draw (``random``), or bought in
        rounds chosen by the strategy from the labels bought so far (``ich.acquire``)."""
        t = self.cfg.train
        if self.given is not None:
            return self.given
        if t.acquisition == "random":
            return select_labels(ds.exams, ds.slices, supervision=t.supervision, budget=t.budget, seed=self.cfg.seed,
                                 sampling=t.sampling, slice_fraction=t.slice_fraction)
        if t.acquisition == "attention":
            self._report({"phase": "acquire", "round": 0, "progress": 0.0}, force=True)
            subset, self.guide_exams = acquire.buy_guided(self.cfg, self.run_dir, ds, fit=fit)
            return subset
        return acquire.buy_in_rounds(self.cfg, self.run_dir, ds, self.embeddings, self.rows, fit=fit,
                                     on_round=lambda k: self._report({"phase": "acquire", "round": k, "progress": 0.0},
                                                                     force=True))

    def _set_validation_apart(self, ds):
        """(training labels, validation labels) per ``train.validation`` (see the module docstring)."""
        t = self.cfg.train
        if t.validation == "paid":
            return hold_out_validation(self.bought, self.seen_exams, self.seen_slices, fraction=t.val_fraction,
                                       min_per_class=t.val_min_per_class, seed=self.cfg.seed)
        val = ds.exams[(ds.exams["split"] == "val") & ds.exams["label"].notna()]
        return self.bought, HeldOut("free", "exam", exam_ids=val["exam_id"].tolist(), n_labels=len(val),
                                    reason=f"the dataset's fully labelled validation split ({len(val)} exam labels, "
                                           "not part of the budget)")

    def _labels_frame(self) -> pd.DataFrame:
        """labels.parquet: every label the run used, with ``use`` = train | val (paid validation), ``label``
        (as bought, after ``train.label_noise``) and ``clean_label`` (the truth) side by side."""
        frame = self.subset.to_frame().assign(use="train")
        h = self.held
        if h.mode == "paid":
            if h.kind == "slice":
                val = pd.DataFrame({"kind": "slice", "exam_id": h.slices["exam_id"].to_numpy(),
                                    "index": pd.array(h.slices["index"].to_numpy(), dtype="Int32")})
            else:
                val = pd.DataFrame({"kind": "exam", "exam_id": h.exam_ids,
                                    "index": pd.array([None] * len(h.exam_ids), dtype="Int32")})
            frame = pd.concat([frame, val.assign(use="val")], ignore_index=True)
        ds, is_exam = self.dataset, (frame["kind"] == "exam").to_numpy()
        keys = pd.MultiIndex.from_arrays([frame["exam_id"].to_numpy(), frame["index"].fillna(-1).astype(int).to_numpy()])
        for col, (exams, slices) in (("label", (self.seen_exams, self.seen_slices)),
                                     ("clean_label", (ds.exams, ds.slices))):
            by_exam = exams.set_index("exam_id")["label"].reindex(frame["exam_id"]).to_numpy(float)
            by_slice = (slices.set_index(["exam_id", slices["index"].astype(int)])["label"]
                        .reindex(keys).to_numpy(float))
            frame[col] = pd.array(np.where(is_exam, by_exam, by_slice), dtype="Float64").astype("Int8")
        return frame

    def _validation_exams(self, ds) -> tuple[pd.DataFrame | None, dict]:
        """The exams scored for model selection and the labels they carry (nan = not used).

        Returns:
            (exams with ``exam_id, label`` or None under the label-free schedule, exam_id -> (S,) slice labels).
        """
        h = self.held
        if h.mode == "none":
            return None, {}
        if h.mode == "free":
            e = ds.exams[ds.exams["split"] == "val"][["exam_id", "label"]].reset_index(drop=True)
            return (e if len(e) else None), exam_slice_labels(ds.slices, e["exam_id"])
        if h.kind == "exam":      # held-out exam labels only (as bought): no slice label is read
            e = self.seen_exams.set_index("exam_id").loc[h.exam_ids, ["label"]].reset_index()
            return e, {}
        ids = list(dict.fromkeys(h.slices["exam_id"]))        # held-out slice labels only: no exam label
        e = pd.DataFrame({"exam_id": ids, "label": np.nan})
        sl = self.seen_slices[self.seen_slices["exam_id"].isin(set(ids))].sort_values(["exam_id", "index"])
        wanted = set(zip(h.slices["exam_id"], h.slices["index"].astype(int)))
        keep = np.array([(x, int(i)) in wanted for x, i in zip(sl["exam_id"], sl["index"])], dtype=bool)
        labels = np.where(keep, sl["label"].astype("Float64").to_numpy(float, na_value=np.nan), np.nan)
        out = {}
        for exam_id, grp in pd.Series(labels.astype(np.float32)).groupby(sl["exam_id"].to_numpy(), sort=False):
            out[exam_id] = grp.to_numpy(np.float32)
        return e, out

    def _setup_embeddings(self) -> None:
        cfg = self.cfg
        meta = {"windows": list(cfg.data.windows), "input_size": self.input_size}
        if cfg.model.init_kind == "encoder":
            fmeta = read_encoder_meta(cfg.model.init_path)
            check_encoder_matches(fmeta, cfg.model, cfg.in_channels, cfg.data.windows, self.input_size)
        cache_dir = default_cache_dir(cfg.model.init_path)
        precision = "bf16" if self.precision == "bf16" else "fp32"
        self.embeddings, self.rows = embed_dataset(
            self.dataset, self.model.encoder, meta, cache_dir, device=self.device, precision=precision,
            on_progress=lambda e: self._report({**e, "progress": 0.0}))
        self.encoder_ref = {"path": str(Path(cfg.model.init_path).resolve()),
                            "checksum": state_checksum(self.model.encoder)}
        # standardise the head's inputs with statistics of every training-split slice (no label is read)
        train_ids = self.dataset.exams.loc[self.dataset.exams["split"] == "train", "exam_id"]
        spans = [np.arange(*self.rows[e]) for e in train_ids if e in self.rows]
        if not spans:
            raise ValueError(f"dataset {self.dataset.name} has no training-split exam; a run needs some to train on "
                             "(re-import it with a split, see `python -m ich import --help`)")
        rows = np.sort(np.concatenate(spans))
        self.model.norm.fit_stats(torch.from_numpy(np.asarray(self.embeddings[rows], dtype=np.float32)))

    def _setup_data(self) -> None:
        cfg, t, ds, sub = self.cfg, self.cfg.train, self.dataset, self.subset
        exams = self.seen_exams.set_index("exam_id", drop=False)          # training labels as bought
        self.augment = make_augment() if t.augment and not self.fast else None
        volumes = None if self.fast else VolumeCache(ds, self.input_size)
        if t.supervision == "strong":
            labels = (self.seen_slices.set_index(["exam_id", "index"])["label"]
                      .loc[list(zip(sub.slices["exam_id"], sub.slices["index"]))].astype(float).to_numpy())
            if self.fast:
                row_ids = np.array([self.rows[e][0] + int(i) for e, i in zip(sub.slices["exam_id"], sub.slices["index"])],
                                   dtype=np.int64)
                self.train_set = EmbeddingSliceDataset(self.embeddings, row_ids, labels)
            else:
                self.train_set = SliceDataset(ds, sub.slices, labels, input_size=self.input_size,
                                              windows=cfg.data.windows, augment=self.augment)
            self.collate, self.batch_size = collate_slices, t.slices_per_step
        else:
            ids = sub.slice_exam_ids + sub.exam_ids
            train_exams = exams.loc[ids, ["exam_id", "label"]].reset_index(drop=True)
            visible = exam_slice_labels(self.seen_slices, sub.slice_exam_ids)   # weak: none; mixed: slice-part exams
            if self.fast:
                self.train_set = EmbeddingBagDataset(self.embeddings, self.rows, train_exams, slice_labels=visible,
                                                     bag_min_slices=t.bag_min_slices, seed=cfg.seed,
                                                     keep_epoch_items=True)
            else:
                self.train_set = BagDataset(volumes, train_exams, windows=cfg.data.windows, slice_labels=visible,
                                            bag_min_slices=t.bag_min_slices, augment=self.augment, seed=cfg.seed)
            self.collate, self.batch_size = collate_bags, t.exams_per_step
        self.eval_sets = {}
        for split in ("val", "test"):
            if split == "val":
                e, truth = self._validation_exams(ds)
            else:
                e = ds.exams[(ds.exams["split"] == split)][["exam_id", "label"]].reset_index(drop=True)
                truth = exam_slice_labels(ds.slices, e["exam_id"])
            if e is None or e.empty:
                self.eval_sets[split] = None
                continue
            if self.fast:
                eval_ds = EmbeddingBagDataset(self.embeddings, self.rows, e, slice_labels=truth)
                bs = 64
            else:
                eval_ds = BagDataset(volumes, e, windows=cfg.data.windows, slice_labels=truth)
                bs = 1
            loader = torch.utils.data.DataLoader(eval_ds, batch_size=bs, shuffle=False, collate_fn=collate_bags,
                                                 generator=torch.Generator())   # not the global RNG
            # the fast path's validation bags are small and scored every epoch: collated once
            self.eval_sets[split] = list(loader) if self.fast and split == "val" else loader
        if self.held.mode == "none":
            self.criterion = "last_epoch"
        elif self.held.mode == "paid":
            self.criterion = "val_slice_auc" if self.held.kind == "slice" else "val_exam_auc"
        else:
            if self.eval_sets["val"] is None:
                raise ValueError(f"dataset {ds.name} has no validation exams, which train.validation='free' "
                                 "needs; use train.validation=paid (validation labels from the budget)")
            val_labels = ds.exams.loc[ds.exams["split"] == "val", "label"].dropna()
            self.criterion = "val_exam_auc" if val_labels.nunique() == 2 else "val_loss"

    # -------------------------------------------------------------- loop
    def run(self, resume: bool) -> dict:
        t0 = time.perf_counter()
        cfg, t = self.cfg, self.cfg.train
        runs.write_status(self.run_dir, "running", started=runs.now(), pid=os.getpid(), error=None,
                          epochs=t.epochs, message="preparing data", phase="setup")
        self.setup()
        runs.write_status(self.run_dir, phase="train")
        E = t.epochs
        total = E * len(self.factors)          # global epochs: learning rate k runs k*E+1 .. (k+1)*E
        best = {"epoch": 0, "score": [-math.inf, -math.inf], "state": None, "val_exam_auc": float("nan"),
                "val_slice_auc": float("nan"), "lr_factor": None}
        cand, bad, start, elapsed = -1, 0, 1, 0.0
        if resume:
            ckpt = runs.load_checkpoint(self.run_dir)
            last = ckpt.get("last")
            if last is None:
                raise ValueError(f"run {self.run_dir.name} has a final checkpoint without resume state; it is "
                                 "finished already")
            cand = (ckpt["epoch"] - 1) // E
            self._start_candidate(cand)
            self.model.load_state_dict(last["model"], strict=not self.fast)
            self.opt.load_state_dict(last["optimizer"])
            self.sched.load_state_dict(last["scheduler"])
            best = dict(ckpt["best"], state=ckpt["model"])
            if not isinstance(best.get("score"), (list, tuple)):      # checkpoints written before the tie-break
                best["score"] = [float(best.get("score", -math.inf)), -math.inf]
            best.setdefault("lr_factor", 1.0)
            bad, start, elapsed = last["bad"], ckpt["epoch"] + 1, last.get("seconds", 0.0)
            runs.truncate_metrics(self.run_dir, ckpt["epoch"])
            log.info("resuming %s after epoch %d", self.run_dir.name, ckpt["epoch"])
        for g in range(start, total + 1):
            k, epoch = (g - 1) // E, (g - 1) % E + 1          # learning rate k, its epoch 1..E
            if k != cand:
                cand, bad = k, 0
                self._start_candidate(k)
            elif t.patience is not None and bad >= t.patience:
                continue                                      # this learning rate stopped early
            self.epoch = g
            e0 = time.perf_counter()
            self.generator.manual_seed(cfg.seed * 1_000_003 + epoch)   # same draws for every learning rate
            if not self.fast:
                torch.manual_seed(cfg.seed * 1_000_003 + epoch)   # torchio's augmentation (own process)
            train_loss = self.train_epoch(epoch)
            self.sched.step()
            row = {"epoch": g, "lr_factor": self.factors[k], "lr_epoch": epoch, "train_loss": train_loss,
                   "lr": self.opt.param_groups[0]["lr"]}
            if self.criterion == "last_epoch":               # label-free schedule: the last epoch is kept
                best = {"epoch": g, "score": [float(g), 0.0], "val_exam_auc": float("nan"),
                        "val_slice_auc": float("nan"), "lr_factor": self.factors[k], "state": self._trainable_state()}
            elif epoch % t.val_every == 0 or epoch == E:
                pred = score_bags(self.model, self.eval_sets["val"], supervision=t.supervision, device=self.device,
                                  precision=self.precision, split="val")
                s = summarize(pred)
                row.update(val_exam_auc=s["exam_auc"], val_slice_auc=s["slice_auc"], val_loss=self._val_loss(pred))
                score = self._score(row)
                if best["state"] is None or _better(score, best["score"]):
                    best = {"epoch": g, "score": score, "val_exam_auc": s["exam_auc"],
                            "val_slice_auc": s["slice_auc"], "lr_factor": self.factors[k],
                            "state": self._trainable_state()}
                    bad = 0
                else:
                    bad += 1
            row["seconds"] = round(time.perf_counter() - e0, 3)
            elapsed += row["seconds"]
            runs.append_metrics(self.run_dir, row)
            stopped = t.patience is not None and bad >= t.patience
            self._save(g, best, bad, elapsed, final=False)
            progress = ((k + 1) * E if stopped else g) / total
            runs.write_status(self.run_dir, "running", epoch=g, progress=round(progress, 4),
                              message=self._epoch_message(k, epoch),
                              best={"epoch": best["epoch"], "val_exam_auc": best["val_exam_auc"],
                                    "lr_factor": best["lr_factor"]})
            self._report({"phase": "val", "epoch": g, "epochs": total, "progress": progress,
                          "metrics": row, "best_epoch": best["epoch"]}, force=True)
            if runs.cancel_requested(self.run_dir):
                raise Cancelled()
        distributed.check_in_sync(self.model)
        return self.finish(best, elapsed, t0)

    def _score(self, row: dict) -> list[float]:
        """[criterion, -validation loss]: higher is better; the loss breaks ties of the AUC, which takes few
        distinct values on a small validation set (ties would otherwise keep the earliest epoch)."""
        loss = row.get("val_loss", float("nan"))
        main = -loss if self.criterion == "val_loss" else row[self.criterion]
        return [float(main), -float(loss)]

    def _start_candidate(self, k: int) -> None:
        """Learning rate k of the grid: the initial weights, a fresh optimiser and schedule at ``lr * factor``."""
        lr = self.cfg.train.lr * self.factors[k]
        self.model.load_state_dict(self.init_state, strict=not self.fast)
        self.opt = make_optimizer(self.cfg, self.model.parameters(), lr=lr)
        self.sched = make_scheduler(self.cfg, self.opt, lr=lr)

    def _epoch_message(self, k: int, epoch: int) -> str:
        E = self.cfg.train.epochs
        if len(self.factors) == 1:
            return f"epoch {epoch}/{E}"
        return f"learning rate {k + 1}/{len(self.factors)} (x{self.factors[k]:g}), epoch {epoch}/{E}"

    def selection(self, best: dict) -> str:
        """How the kept model was chosen, in words (recorded in the run's summary)."""
        t, h = self.cfg.train, self.held
        if self.criterion == "last_epoch":
            return (f"label-free schedule: too few labels to hold any out ({h.reason}); all {self.subset.n_labels} "
                    f"bought labels trained at lr {t.lr:g} for {t.epochs} epochs and the last epoch was kept")
        what = {"val_exam_auc": "validation exam AUC", "val_slice_auc": "validation slice AUC",
                "val_loss": "validation loss"}[self.criterion]
        lrs = ", ".join(f"{t.lr * f:g}" for f in self.factors)
        return (f"best {what} over learning rates [{lrs}] and epochs, on {h.reason}: "
                f"lr {t.lr * (best['lr_factor'] or 1.0):g}, epoch {(best['epoch'] - 1) % t.epochs + 1}")

    def finish(self, best: dict, elapsed: float, t0: float) -> dict:
        cfg, t = self.cfg, self.cfg.train
        self._report({"phase": "predict", "epoch": self.epoch, "epochs": t.epochs, "progress": 1.0}, force=True)
        self.model.load_state_dict(best["state"], strict=not self.fast)
        factor = best.get("lr_factor") or 1.0
        summary = {"state": "done", "best_epoch": best["epoch"], "epochs_run": self.epoch or best["epoch"],
                   "criterion": self.criterion, "val_exam_auc": best["val_exam_auc"],
                   "val_slice_auc": best["val_slice_auc"], "n_labels": self.bought.n_labels,
                   "train_labels": self.subset.n_labels, "validation": self.held.mode,
                   "val_labels": self.held.n_labels, "val_label_kind": self.held.kind,
                   "lr": t.lr * factor, "lr_factor": factor, "selection": self.selection(best),
                   "label_noise": t.label_noise, "wrong_labels": self.wrong_labels, "acquisition": t.acquisition,
                   "guide_exams": self.guide_exams, "supervision": t.supervision, "budget": t.budget, "seed": cfg.seed,
                   "device": str(self.device), "precision": self.precision}
        if self.eval_sets["val"] is not None:    # kept so cutoffs are fixed on validation, never on test
            pred = score_bags(self.model, self.eval_sets["val"], supervision=t.supervision, device=self.device,
                              precision=self.precision, split="val")
            runs.write_predictions(self.run_dir, pred, name=runs.SELECTION_PREDICTIONS)
        if self.score_exams is not None:          # an acquisition round: the pool, scored with its labels hidden
            pool = pd.DataFrame({"exam_id": list(self.score_exams), "label": np.nan})
            loader = torch.utils.data.DataLoader(EmbeddingBagDataset(self.embeddings, self.rows, pool), batch_size=64,
                                                 shuffle=False, collate_fn=collate_bags, generator=torch.Generator())
            pred = score_bags(self.model, loader, supervision=t.supervision, device=self.device,
                              precision=self.precision, split="train")
            runs.write_predictions(self.run_dir, pred, name="pool")
        if self.eval_sets["test"] is not None:
            pred = score_bags(self.model, self.eval_sets["test"], supervision=t.supervision, device=self.device,
                              precision=self.precision, split="test")
            runs.write_predictions(self.run_dir, pred)
            s = summarize(pred)
            summary.update(test_exam_auc=s["exam_auc"], test_slice_auc=s["slice_auc"], test_exams=s["n_exams"])
        else:
            summary.update(test_exam_auc=float("nan"), test_slice_auc=float("nan"), test_exams=0)
        summary["train_seconds"] = round(elapsed, 3)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        self._save(self.epoch or best["epoch"], best, 0, elapsed, final=True)
        status = runs.write_status(self.run_dir, "done", progress=1.0, finished=runs.now(), summary=summary,
                                   message="done")
        self._report({"phase": "done", "epoch": self.epoch, "epochs": t.epochs, "progress": 1.0, "summary": summary},
                     force=True)
        return status["summary"]

    # -------------------------------------------------------------- one epoch
    def train_epoch(self, epoch: int) -> float:
        t = self.cfg.train
        self.model.train()
        if self.fast:
            self.model.encoder.eval()   # frozen and unused; keeps BN statistics fixed
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        size = None if t.steps_per_epoch is None else t.steps_per_epoch * self.batch_size
        order = distributed.shard(epoch_order(len(self.train_set), seed=self.cfg.seed, epoch=epoch, epoch_size=size))
        steps = max(1, math.ceil(len(order) / self.batch_size))
        total, count = 0.0, 0
        for step in range(steps):
            items = [self.train_set[int(i)] for i in order[step * self.batch_size:(step + 1) * self.batch_size]]
            if not items:
                break
            batch = self.collate(items)
            loss = self.loss(batch)
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
            total += float(loss.detach()) * len(items)
            count += len(items)
            self._report({"phase": "train", "epoch": epoch, "epochs": t.epochs, "step": step + 1, "steps": steps,
                          "loss": total / count, "progress": (epoch - 1 + (step + 1) / steps) / t.epochs})
        return total / max(count, 1)

    def loss(self, batch: dict) -> torch.Tensor:
        sup, dev = self.cfg.train.supervision, self.device
        y = batch["label"].to(dev)
        with autocast(dev, self.precision):
            if sup == "strong":
                logits = (self.forward("score_embeddings", batch["h"].to(dev)) if self.fast
                          else self.forward("slice_logits", batch["x"].to(dev)))        # (N,)
                return self.slice_loss(logits, y)
            mask = batch["mask"].to(dev)
            out = (self.forward("forward_embeddings", batch["h"].to(dev), mask) if self.fast
                   else self.forward("forward", batch["x"].to(dev), mask))
            loss = self.exam_loss(out.logit, y)
            if sup == "mixed":
                sl = batch["slice_labels"].to(dev)                                      # (B, S), nan = not bought
                known = mask & ~torch.isnan(sl)
                if known.any():
                    loss = loss + self.cfg.train.slice_loss_weight * self.slice_loss(out.slice_logits[known],
                                                                                      sl[known])
            return loss

    def _val_loss(self, pred: pd.DataFrame) -> float:
        """Validation loss of the supervised term (exam BCE for exam learners, slice BCE for strong)."""
        if self.cfg.train.supervision == "strong":
            y, p = pred["slice_label"], pred["slice_score"]
        else:
            ex = pred.drop_duplicates("exam_id")              # exam score and label repeat on its slice rows
            y, p = ex["exam_label"], ex["exam_score"]
        keep = y.notna().to_numpy()
        if not keep.any():
            return float("nan")
        yy = y.to_numpy(float, na_value=np.nan)[keep]
        pp = np.clip(p.to_numpy(float)[keep], 1e-7, 1 - 1e-7)
        return float(-np.mean(yy * np.log(pp) + (1 - yy) * np.log(1 - pp)))

    # -------------------------------------------------------------- checkpoints, progress
    def _trainable_state(self) -> dict:
        """Weights to keep: everything, or (fast path) all but the frozen encoder."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()
                if not (self.fast and k.startswith("encoder."))}

    def _save(self, epoch: int, best: dict, bad: int, elapsed: float, final: bool) -> None:
        payload = {"config": self.cfg.to_dict(), "epoch": epoch, "model": best["state"],
                   "best": {k: v for k, v in best.items() if k != "state"}, "encoder_ref": self.encoder_ref,
                   "encoder_config": dict(self.model.encoder.config),
                   "criterion": self.criterion}
        if not final:
            payload["last"] = {"model": self._trainable_state(), "optimizer": self.opt.state_dict(),
                               "scheduler": self.sched.state_dict(), "bad": bad, "seconds": elapsed}
        runs.save_checkpoint(self.run_dir, payload)

    def _report(self, event: dict, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_status >= STATUS_EVERY_S and "progress" in event:
            self._last_status = now
            runs.write_status(self.run_dir, epoch=event.get("epoch", self.epoch),
                              progress=round(float(event["progress"]), 4),
                              message=f"{event['phase']} {event.get('step', event.get('done', ''))}"
                                      f"/{event.get('steps', event.get('total', ''))}")
        if self.on_progress is not None:
            self.on_progress(event)
