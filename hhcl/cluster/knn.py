"""Exact k-nearest neighbours by squared Euclidean distance: chunked fp32 matmul + top-k (torch) or faiss.

Order is canonical: near-ties (within float noise) are re-ranked by the float64 distance of the differences
and then by index, so duplicates sort by index and the lists do not depend on the backend or chunking.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
BACKENDS = ("auto", "torch", "faiss")
_CHUNK_BYTES = 96 * 2**20  # one [rows, N] float32 block of the distance matrix
_PAD = 8  # extra columns fetched so ties at the k-th position can be seen
_SPARSE_THREADS = 1
_TOL = 2e-5  # relative gap under which two fp32 distances are treated as a possible tie


@dataclass(frozen=True)
class Neighbours:
    """k nearest neighbours of every row of F among the rows of F (itself included), ascending."""

    dist: Tensor  # [N, k] float32 squared Euclidean distance
    index: Tensor  # [N, k] int64
    dot: Tensor  # [N, k] float32 inner product <f_i, f_j> from the fp32 matmul


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """Run fp32 CUDA matmuls without TF32 (the reference ran on pre-Ampere GPUs, so in plain fp32)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = old


@contextlib.contextmanager
def sparse_threads(device: torch.device) -> Iterator[None]:
    """Run the sparse stages on one CPU thread: they are hundreds of short memory-bound ops, and on a shared
    2-core machine OpenMP barriers made them 5-15x slower with 2 threads (see benchmarks/RESULTS.md)."""
    if device.type != "cpu" or torch.get_num_threads() <= _SPARSE_THREADS:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(_SPARSE_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_features(features: Tensor, name: str = "features") -> Tensor:
    """Validate an [N, D] float feature matrix (finite, N >= 1) and return it as contiguous float32."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a 2-D [N, D] tensor, got {shape}")
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)}): nothing to cluster")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {features.dtype}")
    bad = ~torch.isfinite(features).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(
            f"{name} contain NaN or Inf in {int(bad.sum())} row(s) (first: {rows}); "
            "the model produced non-finite embeddings, check the checkpoint / learning rate"
        )
    return features.detach().to(torch.float32).contiguous()


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> torch on CUDA; on the CPU faiss when importable (4.8 s vs 5.9 s for torch at N=12,936 on two
    idle cores, benchmarks/RESULTS.md), else torch."""
    if backend not in BACKENDS:
        raise ValueError(f"cluster.knn_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as exc:
            raise ValueError(
                "cluster.knn_backend = 'faiss' but faiss is not importable; install faiss-cpu / faiss-gpu "
                "or set cluster.knn_backend = 'torch'"
            ) from exc
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    return "faiss"


def knn(features: Tensor, k: int, *, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Exact kNN of the rows among themselves: (squared distances, indices), each [N, min(k, N)]."""
    nb = neighbours(check_features(features), k, backend=backend)
    return nb.dist, nb.index


def neighbours(x: Tensor, k: int, *, backend: str = "auto") -> Neighbours:
    """Exact kNN of checked float32 rows x, with the fp32 inner products kept for the Jaccard weights."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = x.shape[0]
    k = min(k, n)
    kf = min(n, k + _PAD)
    if resolve_backend(backend, x.device) == "faiss":
        key, idx = _faiss_candidates(x, kf)
    else:
        key, idx = _torch_candidates(x, kf, torch.arange(n, device=x.device))
    return _canonical(x, key, idx, k)


def _norms(x: Tensor) -> Tensor:
    return (x * x).sum(dim=1)


def _torch_candidates(x: Tensor, kf: int, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Top-kf of ||y||^2 - 2<x, y> (the row-constant ||x||^2 does not change the order) for the given rows."""
    n = x.shape[0]
    yy = _norms(x)
    step = max(1, min(len(rows), _CHUNK_BYTES // (4 * n)))
    keys, idxs = [], []
    with ieee_fp32(x.device):
        for r in range(0, len(rows), step):
            block = torch.addmm(yy, x[rows[r : r + step]], x.T, beta=1.0, alpha=-2.0)
            v, i = block.topk(kf, dim=1, largest=False, sorted=True)
            keys.append(v)
            idxs.append(i)
    return torch.cat(keys), torch.cat(idxs)


def _faiss_candidates(x: Tensor, kf: int) -> tuple[Tensor, Tensor]:
    """faiss exact L2 search (GPU when the features are on CUDA and faiss-gpu is present), as ||y||^2 - 2<x,y>."""
    import faiss

    xn = x.cpu().numpy()
    if x.device.type == "cuda" and hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        d, i = faiss.knn_gpu(res, xn, xn, kf, metric=faiss.METRIC_L2)
    else:
        d, i = faiss.knn(xn, xn, kf, metric=faiss.METRIC_L2)
    key = torch.from_numpy(d).to(x.device) - _norms(x)[:, None]
    return key, torch.from_numpy(i).to(x.device)


def _canonical(x: Tensor, key: Tensor, idx: Tensor, k: int) -> Neighbours:
    """First k columns in exact order: rows with a near-tie among the first k+1 are re-sorted in float64."""
    n = x.shape[0]
    yy = _norms(x)
    tol = _TOL * float(yy.max().clamp_min(1.0))
    while True:
        lim = min(k + 1, key.shape[1])
        near = ((key[:, 1:lim] - key[:, : lim - 1]) <= tol).any(dim=1)
        more = near & (key[:, -1] - key[:, k - 1] <= tol) if key.shape[1] < n else near & False
        if not bool(more.any()):  # a tie group may run past the fetched columns: fetch more for those rows
            break
        kf = min(n, 2 * key.shape[1])
        sub = more.nonzero().flatten()
        k2, i2 = _torch_candidates(x, kf, sub)
        key = torch.cat([key, key.new_full((n, kf - key.shape[1]), float("inf"))], dim=1)
        idx = torch.cat([idx, idx.new_zeros((n, kf - idx.shape[1]))], dim=1)
        key[sub], idx[sub] = k2, i2
    perm = torch.arange(k, device=x.device).expand(n, k).clone()
    dist = key[:, :k] + yy[:, None]
    sub = near.nonzero().flatten()
    if len(sub):
        cand, valid = idx[sub], torch.isfinite(key[sub])
        exact = _exact_sq_dist(x, sub, cand).masked_fill(~valid, float("inf"))
        order = torch.sort(cand.masked_fill(~valid, n), dim=1, stable=True).indices  # index order first
        order = order.gather(1, torch.sort(exact.gather(1, order), dim=1, stable=True).indices)[:, :k]
        perm[sub] = order
        dist[sub] = exact.gather(1, order).to(torch.float32)
    index = idx.gather(1, perm)
    dot = (yy[index] - key.gather(1, perm)) * 0.5
    return Neighbours(dist=dist.clamp_min(0.0), index=index, dot=dot)


def _exact_sq_dist(x: Tensor, rows: Tensor, cand: Tensor) -> Tensor:
    """float64 sum of squared differences ||x_i - x_j||^2 for each row i and its candidates j."""
    out = torch.empty(cand.shape, dtype=torch.float64, device=x.device)
    step = max(1, (32 * 2**20) // (8 * x.shape[1] * cand.shape[1]))
    for r in range(0, len(rows), step):
        a = x[rows[r : r + step]].double()[:, None, :]
        b = x[cand[r : r + step]].double()
        out[r : r + step] = (a - b).pow(2).sum(dim=-1)
    return out


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Call fn() and return (result, seconds), synchronising CUDA so the time is the device's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t
