"""Data-parallel training: shards, the DDP call router, the weight-sync check, and torchrun with gloo on CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ich import distributed

REPO = Path(__file__).resolve().parents[1]


def _env(monkeypatch, rank, size):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(size))
    monkeypatch.setenv("LOCAL_RANK", str(rank))


def test_shards_are_equal_and_cover_the_epoch(monkeypatch):
    order = np.arange(7)
    shards = []
    for rank in range(3):
        _env(monkeypatch, rank, 3)
        shards.append(distributed.shard(order))
    assert [len(s) for s in shards] == [3, 3, 3]                  # padded: every rank takes 3 steps' worth
    assert set(np.concatenate(shards)) == set(range(7))


def test_single_process_is_untouched(monkeypatch, tmp_path):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    order = np.arange(5)
    assert distributed.shard(order) is order
    cb = object()
    assert distributed.setup(tmp_path / "r", cb, False) == (tmp_path / "r", cb)
    model = torch.nn.Linear(2, 1)
    assert isinstance(distributed.wrap(model, torch.device("cpu")), distributed.Forward)


def test_bad_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        distributed.world()


def test_forward_routes_named_calls():
    class M(torch.nn.Module):
        def slice_logits(self, x):
            return x + 1

        def forward(self, x):
            return x * 2

    fwd = distributed.Forward(M())
    assert fwd("slice_logits", torch.ones(1)).item() == 2 and fwd("forward", torch.ones(1)).item() == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for case, seed in (("same", 0), ("different", rank)):
            torch.manual_seed(seed)
            try:
                distributed.check_in_sync(torch.nn.Linear(4, 2))
                Path(out, f"{case}-{rank}").write_text("ok")
            except RuntimeError as err:
                Path(out, f"{case}-{rank}").write_text(str(err))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_weight_check_catches_unsynced_ranks(tmp_path):
    torch.multiprocessing.spawn(_sync_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"same-{r}").read_text() for r in range(2)] == ["ok", "ok"]
    assert all("different weights" in (tmp_path / f"different-{r}").read_text() for r in range(2))


@pytest.mark.slow
def test_torchrun_two_cpu_processes_strong_learner(tiny_dataset, tmp_path):
    """torchrun + gloo, 2 processes, the slice-supervised learner (its attention branch is unused)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "ich", "train", "--dataset", str(tiny_dataset), "--preset", "tiny",
           "--supervision", "strong", "--budget", "16", "--epochs", "2", "--out", str(out), "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr and "backend gloo" in proc.stderr
    from ich import runs

    status = runs.read_status(out)
    assert status["state"] == "done" and status["summary"]["n_labels"] == 16
    assert runs.read_metrics(out)["epoch"].tolist() == [1, 2]     # one writer: no duplicated epochs
    exams, _ = runs.read_predictions(out)
    assert len(exams) > 0
