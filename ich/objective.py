"""Training's objective: the losses (the reference's adaptive focal loss, BCE), the optimiser and its schedule."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ich.config import REFERENCE_ALPHA, RunConfig


# ------------------------------------------------------------------------------ losses
def focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.6, gamma_low: float = 5.0,
               gamma_high: float = 3.0, threshold: float = 0.2) -> torch.Tensor:
    """The reference's adaptive focal loss, computed from logits (stable for saturated outputs).

    L = mean(-alpha * (1 - p_t)^gamma * log p_t), with gamma = ``gamma_low`` (5) where p_t < ``threshold``
    (0.2) else ``gamma_high`` (3); p_t is the probability given to the true class.

    Args:
        logits: (N,) float.
        targets: (N,) 0/1 float.
    """
    logits, targets = logits.float(), targets.float()
    log_pt = -F.binary_cross_entropy_with_logits(logits, targets, reduction="none")     # (N,)
    one_minus_pt = torch.sigmoid(-(2 * targets - 1) * logits)                            # (N,) = 1 - p_t
    gamma = torch.where(log_pt.detach().exp() < threshold, gamma_low, gamma_high)
    return (-alpha * one_minus_pt.pow(gamma) * log_pt).mean()


def make_loss(cfg: RunConfig, term: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss for the ``exam`` or ``slice`` term: focal (alpha from config or the reference) or BCE."""
    if cfg.train.loss == "bce":
        return lambda z, y: F.binary_cross_entropy_with_logits(z.float(), y.float())
    alpha = cfg.train.focal_alpha if cfg.train.focal_alpha is not None else REFERENCE_ALPHA[term]
    return lambda z, y: focal_loss(z, y, alpha=alpha)


# ------------------------------------------------------------------------------ optimiser
def make_optimizer(cfg: RunConfig, params, lr: float | None = None) -> torch.optim.Optimizer:
    """The configured optimiser over the trainable ``params``, at ``lr`` (default ``cfg.train.lr``)."""
    t = cfg.train
    lr = t.lr if lr is None else lr
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter (is everything frozen?)")
    # foreach: one kernel per operation over all tensors (the default on GPUs only); the same arithmetic as
    # the per-tensor loop, which on the fast path's small heads costs more than the arithmetic itself
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay, foreach=True)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay, foreach=True)


def make_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, lr: float | None = None):
    """The configured schedule over ``cfg.train.epochs`` epochs (cosine ends at 1% of ``lr``)."""
    t = cfg.train
    lr = t.lr if lr is None else lr
    if t.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=t.step_size, gamma=t.step_gamma)
    if t.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs, eta_min=lr * 0.01)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
