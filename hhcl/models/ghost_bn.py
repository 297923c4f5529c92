"""Ghost batch norm: BatchNorm whose batch statistics come from groups of ``group`` consecutive samples.

This reproduces the reference's 4-GPU DataParallel run on one device (reference 5.2-5.4): every replica
normalises its own contiguous chunk of 64 samples, and only replica 0's statistics reach the running buffers.
The module swap keeps parameter/buffer names, so state dicts are unchanged.

A batch whose size is not a multiple of ``group`` is split into full groups plus one last, smaller group
(as ``torch.chunk`` would give a last smaller chunk); a batch of at most ``group`` samples is ordinary BN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _GhostMixin:
    """Grouped-statistics forward shared by the 1-d and 2-d variants (train mode only)."""

    group: int

    def _ghost_forward(self, x: torch.Tensor) -> torch.Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        batch = x.shape[0]
        n_full = batch // self.group if self.group > 0 else 0
        if not bn.training or n_full == 0 or (n_full == 1 and batch == self.group):
            return nn.modules.batchnorm._BatchNorm.forward(bn, x)
        head = x if n_full * self.group == batch else x[: n_full * self.group]
        out = self._grouped(head, n_full)
        if head is x:
            return out
        tail = F.batch_norm(x[n_full * self.group :], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        return torch.cat([out, tail], dim=0)

    def _grouped(self, x: torch.Tensor, n_groups: int) -> torch.Tensor:
        """Normalise ``x`` ([G*g, C, ...]) per group with one vectorised pass; update running stats from group 0."""
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        work = x.float() if x.dtype in _LOW_PRECISION else x
        grouped = work.unflatten(0, (n_groups, self.group))  # [G, g, C, *spatial]
        dims = (1, *range(3, grouped.dim()))
        var, mean = torch.var_mean(grouped, dim=dims, correction=0, keepdim=True)  # [G, 1, C, 1..]
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.view(-1, *([1] * (grouped.dim() - 3)))
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias.view(-1, *([1] * (grouped.dim() - 3)))
        out = torch.addcmul(shift, grouped, scale).flatten(0, 1)
        if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
            self._update_running(mean[0].flatten(), var[0].flatten(), grouped[0].numel() // grouped.shape[2])
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running(self, mean0: torch.Tensor, var0: torch.Tensor, count: int) -> None:
        """Exactly BatchNorm's running-statistics update, from group 0's (biased) statistics."""
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        assert (
            bn.num_batches_tracked is not None and bn.running_mean is not None and bn.running_var is not None
        )
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        unbiased = var0 * (count / max(count - 1, 1))
        bn.running_mean.lerp_(mean0.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), factor)


class GhostBatchNorm2d(_GhostMixin, nn.BatchNorm2d):
    """BatchNorm2d with per-group batch statistics in train mode (see module docstring)."""

    group: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return self._ghost_forward(x)


class GhostBatchNorm1d(_GhostMixin, nn.BatchNorm1d):
    """BatchNorm1d with per-group batch statistics in train mode (see module docstring)."""

    group: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return self._ghost_forward(x)


_SWAP = {
    nn.BatchNorm2d: GhostBatchNorm2d,
    nn.BatchNorm1d: GhostBatchNorm1d,
    GhostBatchNorm2d: GhostBatchNorm2d,
    GhostBatchNorm1d: GhostBatchNorm1d,
}


def convert_ghost_bn(model: nn.Module, group: int) -> nn.Module:
    """Make every BatchNorm1d/2d in ``model`` a ghost BN of ``group`` samples, in place (0 = ordinary BN).

    The class is swapped on the existing modules, so parameters, buffers, ``requires_grad`` flags, hooks
    and state-dict keys are all kept. Returns ``model``.
    """
    if group < 0:
        raise ValueError(f"bn_group = {group} is not allowed: use 0 (ordinary BN) or a group size such as 64")
    for module in model.modules():
        ghost = _SWAP.get(type(module))
        if ghost is None:
            continue
        if group == 0:
            module.__class__ = nn.BatchNorm2d if ghost is GhostBatchNorm2d else nn.BatchNorm1d
            module.__dict__.pop("group", None)
        else:
            module.__class__ = ghost
            module.group = group
    return model
