"""Label-budget studies: a grid of training runs (supervision x budget x seed) in one resumable, spec-locked folder.

Modules: ``spec`` (what to run), ``folder`` (where it is written, and the locks), ``run`` (running it),
``summary`` (its tables).

A study is a frozen ``StudyConfig``; ``plan_cells`` expands it into cells, each an ordinary
run folder (``ich.runs``) trained by ``train.fit`` and evaluated by ``evaluate.evaluate_run``.
Layout of a study folder::

    study.json       the resolved spec (dataset, grid, run preset, overrides, encoder file and
                     checksum): the lock; a rerun with another spec is refused
    progress.json    {"state", "done", "total", "failed", "running", "elapsed_s", "updated",
                      "cells_from" (epoch s the cells began), "cells_done_before" (done before this start)}
    cells.jsonl      one line per cell event (start, done, failed), appended
    summary.csv      one row per cell, then one per (arm, budget) with the mean and 95% CI over seeds;
                     ``validation`` (paid | none | free), ``train_labels``, ``val_labels`` and
                     ``labels_counted`` (= train + validation labels: what the planner prices),
                     ``label_noise`` (the arm's noise model, ``ich.noise``; empty = clean labels),
                     ``acquisition`` (how the arm bought its labels, ``ich.acquire``)
    runs/<cell>/     the run folders, named ``<arm>-m<budget>-s<seed>`` (arm: weak, strong, mixed-f0.25, weak-exam-sens90-spec97)

Cells are ordered seed-major: every budget of every arm gets seed 0 before any gets seed 1,
so the first points of every curve arrive first and a half-finished study already spans all
budgets. Rerunning ``run_study`` on the folder skips finished cells, resumes interrupted ones
from their checkpoint (or restarts them when they had none) and reruns failed ones.

Every cell of a study starts from the same encoder (``StudyConfig.init``), so the arms
compete on equal footing. ``init="auto"`` reuses ``<encoders>/<dataset name>-compact.pt`` next
to the dataset folder (``default_encoder_path``) or, when it is missing, pretrains one without
labels (``AUTO_PRETRAIN``: 2-5 CPU-minutes for the default phantom; `make run` does it up front) and keeps it
for the next study. With an encoder file and ``finetune="none"`` (the default for files) each
cell trains only the pooling and head on cached slice embeddings, computed once before the
cells start.
"""

from __future__ import annotations

from ich.study.folder import (EVENTS_FILE, FORMAT, LOCK_FILE, PROGRESS_FILE, RUNS_DIR, SPEC_FILE, SUMMARY_FILE,
                              StudyLock, all_runs, cell_dir, cell_state, is_study, mark_cancelled, read_events,
                              read_progress, read_study, write_progress)
from ich.study.run import prepare_embeddings, run_cell, run_study
from ich.study.spec import (AUTO_PRETRAIN, EXECUTORS, REPEATS, STUDY_PRESETS, Cell, StudyConfig, cell_config,
                            check_budgets, default_encoder_path, make_study, plan_cells, reference_repeats,
                            resolve_study)
from ich.study.summary import CELL_COLUMNS, STAT_COLUMNS, cell_row, summarise_study, write_summary

__all__ = ["AUTO_PRETRAIN", "CELL_COLUMNS", "Cell", "EVENTS_FILE", "EXECUTORS", "FORMAT", "LOCK_FILE",
           "PROGRESS_FILE", "REPEATS", "RUNS_DIR", "SPEC_FILE", "STAT_COLUMNS", "STUDY_PRESETS", "SUMMARY_FILE",
           "StudyConfig", "StudyLock", "all_runs", "cell_config", "cell_dir", "cell_row", "cell_state",
           "check_budgets", "default_encoder_path", "is_study", "make_study", "mark_cancelled", "plan_cells",
           "prepare_embeddings", "read_events", "read_progress", "read_study", "reference_repeats", "resolve_study",
           "run_cell", "run_study", "summarise_study", "write_progress", "write_summary"]
