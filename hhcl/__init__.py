"""hhcl: Hard-sample Guided Hybrid Contrast Learning for unsupervised person re-ID (the engine library)."""

from __future__ import annotations

import os
from typing import Any

# torch 2.14's oneDNN computes wrong bfloat16 convolutions on CPUs with AMX tiles (see hhcl.kernels); below
# AMX the float32 kernels are bit for bit the same. Read once when oneDNN starts, so set before any torch work;
# a value set by the user wins, and hhcl.kernels.check_cpu_bf16 refuses bf16 whenever the kernels are wrong.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

__all__ = ["load_embedder"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so ``import hhcl.config`` does not import torch."""
    if name == "load_embedder":
        from hhcl.export import load_embedder

        return load_embedder
    raise AttributeError(f"module 'hhcl' has no attribute {name!r}")
