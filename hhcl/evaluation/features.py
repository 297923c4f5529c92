"""Feature extraction (eval mode, test transform, optional flip averaging) and squared-Euclidean distances."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhcl.data.augment import normalize
from hhcl.kernels import check_cpu_bf16

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a parameterless model."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def extract_features(
    model: nn.Module,
    store: Any,
    *,
    batch_size: int = 256,
    flip: bool = False,
    amp: str = "off",
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """[len(store), D] float32 embeddings on the model's device, in store order (reference 4.1).

    ``store`` gives uint8 [B, 3, H, W] batches via ``store.gather(idx)``; they are normalised with the test
    transform. ``flip`` averages with the horizontally flipped image and re-normalises; ``amp`` is off, bf16
    or fp16 autocast. The model runs in eval mode under inference_mode and gets its previous mode back; the
    result is a normal tensor (not an inference tensor). ``progress(done, total)`` is called after each batch
    (images done so far, len(store)), so a caller can report a long extraction.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n = len(store)
    device = model_device(model)
    dtype = AMP_DTYPES[amp]
    if dtype is torch.bfloat16 and device.type == "cpu":
        check_cpu_bf16("amp bf16")
    was_training = model.training
    model.eval()
    out: Tensor | None = None
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for start in range(0, n, batch_size):
                idx = torch.arange(start, min(start + batch_size, n), device=getattr(store, "device", None))
                x = normalize(store.gather(idx).to(device, non_blocking=True))
                f = model(x).float()
                if flip:
                    f = F.normalize(f + model(x.flip(3)).float(), dim=1)
                if out is None:
                    with torch.inference_mode(False):  # a normal tensor: usable later with autograd
                        out = torch.empty(n, f.shape[1], dtype=torch.float32, device=device)
                out[start : start + len(f)] = f
                if progress is not None:
                    progress(start + len(f), n)
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("cannot extract features from an empty image store (0 images)")
    return out


def pairwise_sq_dist(x: Tensor, y: Tensor) -> Tensor:
    """[M, N] float32 ||x||^2 + ||y||^2 - 2 x.y, as the reference's pairwise_distance (apply per row chunk)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected features [M, D] and [N, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.float(), y.float()
    xx = x.pow(2).sum(1, keepdim=True)
    yy = y.pow(2).sum(1, keepdim=True)
    return torch.addmm(xx + yy.t(), x, y.t(), beta=1, alpha=-2)
