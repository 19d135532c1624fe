"""Data-parallel training of one run across processes (``torchrun``): process group, DDP wrapper, data shards.

``torchrun --nproc_per_node N -m ich train ...`` starts N copies of the train command with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; ``train.fit`` calls the hooks here, which do nothing
in a single process:

- ``setup``: join the process group (NCCL on CUDA, gloo on CPU), pin ``cuda:LOCAL_RANK``;
  rank 0 writes the run folder, other ranks write a private temporary copy (removed at exit),
  so the run folder has one writer and a resumed run starts every rank from rank 0's checkpoint.
- ``wrap``: route the model's calls (``forward``, ``forward_embeddings``, ``slice_logits``,
  ``score_embeddings``) through one ``DistributedDataParallel`` module, so gradients are
  averaged whichever call a loss uses. ``find_unused_parameters=True`` because the strong
  learner never touches the attention branch (paper-protocol.md §11); frozen encoders have no
  gradients and are ignored.
- ``shard``: each rank takes every N-th item of the epoch's order (padded by wrapping, so all
  ranks take the same number of steps). The effective batch is N x the configured one.
- ``check_in_sync``: compare the ranks' weight checksums after training (they must agree).

Every rank validates on the whole validation split (identical weights give identical scores),
so early stopping needs no communication.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) in a single process."""
    def env(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise ValueError(f"environment variable {name} must be an integer, not {os.environ[name]!r}") from None
    return env("RANK", 0), env("WORLD_SIZE", 1), env("LOCAL_RANK", 0)


def is_distributed() -> bool:
    return world()[1] > 1


def setup(run_dir: str | os.PathLike, on_progress: Callable | None, resume: bool) -> tuple[Path, Callable | None]:
    """Join the process group when launched by torchrun; returns (the folder this rank writes, its callback).

    Rank 0 keeps ``run_dir`` and ``on_progress``; other ranks get a private temporary folder (holding a
    copy of rank 0's run when resuming) and no callback.
    """
    run_dir = Path(run_dir)
    rank, size, local = world()
    if size <= 1:
        return run_dir, on_progress
    import torch.distributed as dist

    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and os.environ.get("ICH_DDP_BACKEND", "") != "gloo"
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(_destroy)
    log.info("distributed training: rank %d of %d (local rank %d, backend %s)", rank, size, local,
             dist.get_backend())
    if rank == 0:
        return run_dir, on_progress
    private = Path(tempfile.mkdtemp(prefix=f"ich-rank{rank}-")) / run_dir.name
    atexit.register(shutil.rmtree, private.parent, True)
    if resume and run_dir.is_dir():
        shutil.copytree(run_dir, private, ignore=shutil.ignore_patterns(".*"))
    return private, None


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class Forward(nn.Module):
    """One ``forward`` for every model call, so a DDP wrapper sees them all: ``fwd("slice_logits", x)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, method: str, *args):
        return getattr(self.model, method)(*args)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``Forward(model)``, inside ``DistributedDataParallel`` when running under torchrun."""
    fwd = Forward(model)
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return fwd
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(fwd, device_ids=ids, find_unused_parameters=True)


def shard(order: np.ndarray) -> np.ndarray:
    """This rank's share of an epoch's item order: every ``world``-th item, padded so all shares are equal."""
    rank, size, _ = world()
    if size <= 1 or len(order) == 0:
        return order
    per = math.ceil(len(order) / size)
    padded = np.resize(np.asarray(order), per * size)        # wraps around to pad
    return padded[rank::size]


def check_in_sync(model: nn.Module) -> None:
    """Raise ``RuntimeError`` when the ranks' trainable weights differ (gradients were not averaged)."""
    if not is_distributed():
        return
    import torch.distributed as dist

    with torch.no_grad():
        params = [p.detach().float().reshape(-1).cpu() for p in model.parameters() if p.requires_grad]
        local = torch.stack([torch.cat(params).double().sum(), torch.cat(params).double().abs().sum()]) \
            if params else torch.zeros(2, dtype=torch.float64)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    if dist.get_backend() == "nccl":
        local_dev = local.cuda()
        gathered_dev = [g.cuda() for g in gathered]
        dist.all_gather(gathered_dev, local_dev)
        gathered = [g.cpu() for g in gathered_dev]
    else:
        dist.all_gather(gathered, local)
    ref = gathered[0]
    if any(not torch.allclose(g, ref, rtol=1e-6, atol=1e-8) for g in gathered[1:]):
        raise RuntimeError(f"distributed ranks ended with different weights ({[g.tolist() for g in gathered]}); "
                           "gradients were not averaged")
