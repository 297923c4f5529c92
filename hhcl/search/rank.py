"""Exact top-K retrieval with faiss (``IndexFlatL2``: squared Euclidean distances, as ``hhcl eval`` ranks)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def top_k(
    query: Tensor, gallery: Tensor, k: int, exclude: Tensor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, indices), each [Q, min(k, G)]: the k nearest gallery rows of every query, nearest first.

    Distances are squared Euclidean (clamped at 0); ties go to the lower gallery index. ``exclude[q]`` is a gallery
    index left out of query q's list (-1: none); a row that runs out of gallery ends with index -1, distance inf.
    """
    import faiss

    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"expected features [Q, D] and [G, D], got {tuple(query.shape)} and {tuple(gallery.shape)}")
    g = np.ascontiguousarray(gallery.detach().float().cpu().numpy())
    q = np.ascontiguousarray(query.detach().float().cpu().numpy())
    index = faiss.IndexFlatL2(g.shape[1])
    index.add(g)
    ex = np.full(len(q), -1, np.int64) if exclude is None else torch.as_tensor(exclude).cpu().numpy().astype(np.int64)
    width = min(k, len(g))
    dist, idx = index.search(q, min(width + int((ex >= 0).any()), len(g)))
    dist = np.maximum(dist, 0)
    drop = idx == ex[:, None]
    order = np.lexsort((idx, dist, drop), axis=1)  # kept before dropped, then by distance, then by index
    dist, idx, drop = (np.take_along_axis(a, order, axis=1)[:, :width] for a in (dist, idx, drop))
    dist[drop], idx[drop] = np.inf, -1
    return dist, idx
