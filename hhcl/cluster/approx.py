"""Approximate kNN candidates for large N: faiss IVF-Flat (CPU or GPU) and HNSW (CPU), as a named option.

``cluster.knn_backend = ivf | hnsw`` replaces only the candidate search of :func:`hhcl.cluster.knn.neighbours`:
each row's ``kf`` nearest *found* columns, as the keys ``||y||^2 - 2<x, y>`` the exact searches return, then the
same canonical tie order, the same Jaccard weights (from one fp32 inner-product routine) and the same DBSCAN. So
the labels differ from exact only where a true neighbour was missed; the agreement (identical kNN lists, label
ARI) is measured in ``benchmarks/bench_scale.py`` and guarded in ``tests/test_knn_approx.py``.

Parameters chosen from N unless set (0 = chosen), each a faiss default or a published rule of thumb:

- IVF: ``nlist = 4 sqrt(N)`` coarse cells (faiss's guideline of 4-16 sqrt(N)), at most N / 39 (faiss wants 39
  training points per centroid); trained on at most 256 points per cell (faiss's own sample cap);
  ``nprobe = max(16, nlist / 32)`` cells searched per query: about 1/32 of an exact search's distances at large N
  (16 of 61 cells on 2,400 clustered 48-d features gave 97.6 % identical lists and label ARI 0.998; 8 gave 90.8 %
  and 0.974: tests/test_knn_approx.py).
- HNSW: 32 links per node, ``efConstruction`` 80, ``efSearch = max(128, 2 kf)``.

Rows whose probed cells hold fewer than ``kf`` points (small N, a far outlier) are searched exactly instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

APPROX_BACKENDS = ("ivf", "hnsw")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
_MIN_POINTS_PER_CELL = 39  # faiss warns below this many training points per centroid
_MAX_POINTS_PER_CELL = 256  # faiss's own cap on the k-means training sample


@dataclass(frozen=True)
class ApproxParams:
    """The approximate search's settings; 0 = chosen from N (:func:`chosen`)."""

    nlist: int = 0
    nprobe: int = 0
    ef_search: int = 0


def chosen(params: ApproxParams, n: int, kf: int) -> ApproxParams:
    """``params`` with every 0 replaced by its rule for ``n`` rows and ``kf`` candidates (module docstring)."""
    nlist = params.nlist or max(1, min(round(4 * math.sqrt(n)), n // _MIN_POINTS_PER_CELL))
    nlist = min(nlist, n)
    nprobe = min(nlist, params.nprobe or max(16, math.ceil(nlist / 32)))
    ef = params.ef_search or max(128, 2 * kf)
    return ApproxParams(nlist=nlist, nprobe=nprobe, ef_search=max(ef, kf))


def _on_gpu(x: Tensor):  # noqa: ANN202 - a faiss module or None
    """faiss with GPU support when x is on CUDA and faiss-gpu sees a GPU, else None."""
    import faiss

    if x.device.type == "cuda" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss
    return None


def ivf_candidates(x: Tensor, kf: int, yy: Tensor, params: ApproxParams, seed: int = 1234) -> tuple[Tensor, Tensor]:
    """Top-kf keys ``||y||^2 - 2<x, y>`` and columns per row from a faiss IVF-Flat index of the rows themselves
    (-1 columns, +inf keys where fewer than kf were found). Trained on an evenly spaced sample (deterministic)."""
    import faiss

    n, d = x.shape
    p = chosen(params, n, kf)
    xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, p.nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    gpu = _on_gpu(x)
    if gpu is not None:
        index = gpu.index_cpu_to_gpu(gpu.StandardGpuResources(), x.device.index or 0, index)
    sample = min(n, p.nlist * _MAX_POINTS_PER_CELL)
    index.train(xn[np.linspace(0, n - 1, sample).astype(np.int64)] if sample < n else xn)
    index.add(xn)
    index.nprobe = p.nprobe
    dist, idx = index.search(xn, kf)
    return _as_keys(dist, idx, yy)


def hnsw_candidates(x: Tensor, kf: int, yy: Tensor, params: ApproxParams) -> tuple[Tensor, Tensor]:
    """Top-kf keys and columns per row from a faiss HNSW-Flat graph of the rows (CPU; -1 / +inf where not found)."""
    import faiss

    n, d = x.shape
    p = chosen(params, n, kf)
    xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_L2)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(xn)
    index.hnsw.efSearch = p.ef_search
    dist, idx = index.search(xn, kf)
    return _as_keys(dist, idx, yy)


def _as_keys(dist: np.ndarray, idx: np.ndarray, yy: Tensor) -> tuple[Tensor, Tensor]:
    """faiss's squared distances as the exact searches' keys (minus the row's own norm), on yy's device."""
    key = torch.from_numpy(dist).to(yy.device) - yy[:, None]
    col = torch.from_numpy(idx).to(yy.device)
    key = key.masked_fill(col < 0, float("inf"))
    return key, col
