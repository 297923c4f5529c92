"""Global pooling: average, and generalised-mean (GeM) with the reference's learnable exponent p."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneralizedMeanPoolingP(nn.Module):
    """GeM: ``(mean_hw clamp(x, eps)^p)^(1/p)`` with one scalar ``p`` (reference ``pooling.py``, init 3).

    ``p`` is a trainable parameter when ``learnable`` (the reference), else a buffer with the same key
    ``p`` so state dicts match either way. Computed in float32 so fp16/bf16 autocast cannot overflow x^p.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p = {p} is not allowed: use a positive number such as 3")
        init = torch.ones(1) * p
        if learnable:
            self.p = nn.Parameter(init)
        else:
            self.register_buffer("p", init)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        pooled = F.adaptive_avg_pool2d(x.float().clamp(min=self.eps).pow(p), 1)
        return pooled.pow(1.0 / p).to(x.dtype)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4f}, eps={self.eps}"


def build_pooling(
    name: str, *, gem_p: float = 3.0, gem_eps: float = 1e-6, gem_learnable: bool = True
) -> nn.Module:
    """``avg`` -> AdaptiveAvgPool2d(1) (no parameters), ``gem`` -> :class:`GeneralizedMeanPoolingP`."""
    if name == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if name == "gem":
        return GeneralizedMeanPoolingP(gem_p, gem_eps, gem_learnable)
    raise ValueError(f"model.pooling = {name!r} is not allowed: use avg or gem")
