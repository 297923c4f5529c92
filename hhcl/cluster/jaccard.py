"""The reference's k-reciprocal Jaccard distance (k1 columns incl. self, softmax weights, query expansion)."""

from __future__ import annotations

import torch
from torch import Tensor

from hhcl.cluster.encoding import Csr, encode, half_size, pair_lookup
from hhcl.cluster.knn import Neighbours, check_features, neighbours, sparse_threads
from hhcl.cluster.overlap import overlap_dense, overlap_pairs

_PAIRS = 1024  # explicit inner products computed at once


def check_params(k1: int, k2: int) -> None:
    """k1 and k2 must be positive integers (cluster.k1 / cluster.k2)."""
    for name, value in (("cluster.k1", k1), ("cluster.k2", k2)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def inner_products(x: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """fp32 inner products <x_r, x_c> for explicit pairs, in slices through reused buffers (memory-bound)."""
    out = torch.empty(len(r), device=x.device)
    size = min(_PAIRS, len(r))
    a, b = x.new_empty(size, x.shape[1]), x.new_empty(size, x.shape[1])
    r, c = r.to(torch.int32), c.to(torch.int32)
    for s in range(0, len(r), _PAIRS):
        k = min(_PAIRS, len(r) - s)
        torch.index_select(x, 0, r[s : s + k], out=a[:k])
        torch.index_select(x, 0, c[s : s + k], out=b[:k])
        out[s : s + k] = torch.linalg.vecdot(a[:k], b[:k])
    return out


def reciprocal_encoding(x: Tensor, nb: Neighbours, k1: int, k2: int) -> Csr:
    """V_qe of the reference: weights softmax(-(2 - 2<f_i, f_j>)) over E(i), mean over the top-k2 rows."""
    c = nb.index.shape[1]  # min(k1, N) columns, self included: the reference's "k1 + 1" slice is these
    dist = pair_lookup(nb.index, 2.0 - 2.0 * nb.dot, lambda r, col: 2.0 - 2.0 * inner_products(x, r, col))
    return encode(nb.index, dist, l_full=min(k1 + 1, c), l_half=min(half_size(k1) + 1, c), k2=k2, softmax=True)


def to_distance(m: Tensor) -> Tensor:
    """Jaccard distance from the min-overlap of two rows that each sum to 1, clamped at 0 (fp32)."""
    return (1.0 - m / (2.0 - m)).clamp_min(0.0)


def jaccard_distance(features: Tensor, *, k1: int = 30, k2: int = 6) -> Tensor:
    """Dense [N, N] k-reciprocal Jaccard distance as the reference computes it (small N: tests, parity)."""
    check_params(k1, k2)
    x = check_features(features)
    nb = neighbours(x, k1)
    with sparse_threads(x.device):
        return to_distance(overlap_dense(reciprocal_encoding(x, nb, k1, k2), 0, x.shape[0]))


def jaccard_pairs(x: Tensor, nb: Neighbours, *, k1: int, k2: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs i < j with Jaccard distance <= eps, as (i, j, d), with no dense matrix (the DBSCAN eps-graph)."""
    v = reciprocal_encoding(x, nb, k1, k2)
    t = 2.0 * (1.0 - eps) / (2.0 - eps)  # d <= eps  <=>  m >= t
    i, j, m = overlap_pairs(v, max(t - 1e-5, 1e-9))
    d = to_distance(m)
    keep = d <= torch.tensor(eps, dtype=torch.float32)
    return i[keep], j[keep], d[keep]
