"""The reference's k-reciprocal Jaccard distance (k1 columns incl. self, softmax weights, query expansion)."""

from __future__ import annotations

import torch
from torch import Tensor

from hhcl.cluster.encoding import Csr, encode, half_size, pair_keys
from hhcl.cluster.knn import Neighbours, check_features, neighbours, sparse_threads
from hhcl.cluster.overlap import overlap_dense, overlap_pairs
from hhcl.cluster.parallel import map_blocks

_PAIRS = 256  # explicit inner products computed at once on the CPU (two [_PAIRS, D] buffers: 4 MB at D = 2048)
_PAIRS_CUDA = 1024


def check_params(k1: int, k2: int) -> None:
    """k1 and k2 must be positive integers (cluster.k1 / cluster.k2)."""
    for name, value in (("cluster.k1", k1), ("cluster.k2", k2)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def inner_products(x: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """fp32 inner products <x_r, x_c> for explicit pairs, as torch.linalg.vecdot (x_r * x_c summed per row), in
    slices through reused buffers small enough to stay in cache (memory-bound)."""
    out = torch.empty(len(r), device=x.device)
    r, c = r.to(torch.int32), c.to(torch.int32)
    pairs = _PAIRS if x.device.type == "cpu" else _PAIRS_CUDA  # CUDA: the slices (so the sums) it always had
    size = pairs * x.shape[1] * x.element_size()

    def chunk(bufs: list[Tensor], s: int) -> None:
        k = min(pairs, len(r) - s)
        a, b = (t[: k * x.shape[1]].view(k, x.shape[1]) for t in bufs)
        torch.index_select(x, 0, r[s : s + k], out=a)
        torch.index_select(x, 0, c[s : s + k], out=b)
        torch.sum(torch.mul(a, b, out=a), dim=1, out=out[s : s + k])

    map_blocks(range(0, len(r), pairs), chunk, x.device, [(x.dtype, False)] * 2, size)
    return out


def _slices(k1: int, k2: int, c: int) -> tuple[int, int, int]:
    """(l_full, l_half, k2) on lists of c = min(k1, N) columns, self included: the reference's "k1 + 1" slice is
    all of them."""
    return min(k1 + 1, c), min(half_size(k1) + 1, c), min(k2, c)


def order_cuts(k1: int, k2: int, n: int) -> list[int]:
    """The list lengths whose neighbour sets the encoding reads (`neighbours(cuts=...)`): both slices, and every
    length up to k2, whose rows are averaged in rank order."""
    l_full, l_half, top = _slices(k1, k2, min(k1, n))
    return sorted({l_full, l_half, *range(1, top + 1)})


def reciprocal_encoding(x: Tensor, nb: Neighbours, k1: int, k2: int) -> Csr:
    """V_qe of the reference: weights softmax(-(2 - 2<f_i, f_j>)) over E(i), mean over the top-k2 rows."""
    l_full, l_half, top = _slices(k1, k2, nb.index.shape[1])
    # every weight from one fp32 routine, never from the kNN search's own arithmetic (faiss's sgemm, torch's addmm):
    # the labels then do not depend on the kNN backend, the faiss version or its BLAS (issue 16: the demo drifted)
    dist = lambda r, col, kpos: 2.0 - 2.0 * pair_inner_products(x, r, col)  # noqa: E731
    return encode(nb.index, dist, l_full=l_full, l_half=l_half, k2=top, softmax=True)


def pair_inner_products(x: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """inner_products(x, r, c), each unordered pair computed once: <x_i, x_j> and <x_j, x_i> are the same products
    summed the same way, so the same bits (the expanded sets hold most pairs both ways round)."""
    n = x.shape[0]
    key, slot = torch.unique(pair_keys(torch.minimum(r, c), torch.maximum(r, c), n), return_inverse=True)
    key = key.long()
    i = torch.div(key, n, rounding_mode="floor")
    return inner_products(x, i, key - i * n)[slot]


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
