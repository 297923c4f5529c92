"""The learning-rate schedule, stepped once per epoch: HHCL's StepLR, or with ``optim.warmup_epochs > 0`` O2CAP's
``WarmupMultiStepLR`` (its ``train.py``): a linear warm-up from ``warmup_factor`` x lr over the first epochs, times
the same step decay (their milestones 20 and 40 are StepLR's steps of 20 within their 50 epochs)."""

from __future__ import annotations

import torch

from hhcl.config import OptimConfig

__all__ = ["lr_factor", "lr_schedule"]


def lr_factor(epoch: int, optim: OptimConfig) -> float:
    """The multiple of ``optim.lr`` that epoch ``epoch`` (0-based) trains with."""
    warm = 1.0
    if epoch < optim.warmup_epochs:
        alpha = epoch / optim.warmup_epochs
        warm = optim.warmup_factor * (1 - alpha) + alpha
    return warm * optim.gamma ** (epoch // optim.step_size)


def lr_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR without warm-up (the HHCL presets: the reference's scheduler and its checkpoint state), else the
    warm-up schedule as a LambdaLR over :func:`lr_factor`."""
    if optim.warmup_epochs == 0:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_size, gamma=optim.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, optim))
