"""Test-time k-reciprocal re-ranking (Zhong et al. 2017) as the reference's evaluation applies it.

Over query + gallery: original = (squared Euclidean)^2 when square_input (the reference squares an already
squared distance, quirk #19), each row divided by its column max; k1 + 1 neighbours from the full order,
exp(-original) weights over the expanded sets, k2 query expansion, and (1 - lambda) * Jaccard + lambda *
original for the query x gallery block. Neighbour lists and weight rows are sparse: no (Q + G)^2 matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hhcl.cluster.encoding import PairValue, encode, half_size, pair_lookup
from hhcl.cluster.jaccard import check_params, inner_products
from hhcl.cluster.knn import check_features, ieee_fp32, sparse_threads
from hhcl.cluster.overlap import overlap_dense

_CHUNK_BYTES = 96 * 2**20


def rerank_distance(
    query: Tensor,
    gallery: Tensor,
    *,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    square_input: bool = True,
) -> Tensor:
    """Re-ranked [Q, G] distance for L2-normalised query [Q, D] and gallery [G, D] features."""
    check_params(k1, k2)
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value!r}")
    q = check_features(query, "query features")
    g = check_features(gallery, "gallery features")
    if q.shape[1] != g.shape[1] or q.device != g.device:
        raise ValueError(
            f"query {tuple(q.shape)} on {q.device} and gallery {tuple(g.shape)} on {g.device} "
            "must share the feature dimension and the device"
        )
    x = torch.cat([q, g])
    nq, m = q.shape[0], x.shape[0]
    xx = (x * x).sum(dim=1)
    cols = min(m, max(k1 + 1, k2))
    top_v, top_i = [], []
    colmax = torch.empty(m, device=x.device)
    out = torch.empty(nq, m - nq, device=x.device)
    step = max(1, _CHUNK_BYTES // (4 * m))
    with ieee_fp32(x.device):
        for r in range(0, m, step):
            d = torch.addmm(xx, x[r : r + step], x.T, beta=1.0, alpha=-2.0).add_(xx[r : r + step, None])
            if square_input:
                d.mul_(d)
            colmax[r : r + step] = d.amax(dim=1)  # the matrix is symmetric: row max = column max
            v, i = d.topk(cols, dim=1, largest=False, sorted=True)
            top_v.append(v)
            top_i.append(i)
            if r < nq:
                out[r : min(r + step, nq)] = d[: nq - r, nq:]
    rank = torch.cat(top_i)

    def original(r: Tensor, c: Tensor) -> Tensor:
        d = xx[r] + xx[c] - 2.0 * inner_products(x, r, c)
        return d * d if square_input else d

    lookup = pair_lookup(rank, torch.cat(top_v), original)  # symmetric values; row-normalised below
    with sparse_threads(x.device):
        return _rerank_sparse(rank, lookup, colmax, out, nq, k1=k1, k2=k2, lambda_value=lambda_value)


def _rerank_sparse(
    rank: Tensor, lookup: PairValue, colmax: Tensor, out: Tensor, nq: int, *, k1: int, k2: int, lambda_value: float
) -> Tensor:
    """(1 - lambda) * Jaccard + lambda * original for the query rows; out holds the query x gallery original."""
    m = rank.shape[0]
    v = encode(
        rank,
        lambda r, c, kpos: lookup(r, c, kpos) / colmax[r],
        l_full=min(k1 + 1, m),
        l_half=min(half_size(k1) + 1, m),
        k2=k2,
        softmax=False,
    )
    mq = overlap_dense(v, 0, nq, c0=nq)
    jaccard = 1.0 - mq / (2.0 - mq)
    out.div_(colmax[:nq, None]).mul_(lambda_value)
    return out.add_(jaccard.mul_(1.0 - lambda_value))
