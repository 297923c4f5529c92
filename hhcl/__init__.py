"""hhcl: Hard-sample Guided Hybrid Contrast Learning for unsupervised person re-ID (the engine library)."""

from __future__ import annotations

from typing import Any

__all__ = ["load_embedder"]


def __getattr__(name: str) -> Any:
    """Lazy re-exports, so ``import hhcl.config`` does not import torch."""
    if name == "load_embedder":
        from hhcl.export import load_embedder

        return load_embedder
    raise AttributeError(f"module 'hhcl' has no attribute {name!r}")
