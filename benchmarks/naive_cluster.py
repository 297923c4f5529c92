"""Naive, reference-style clustering and re-ranking: dense N x N float32 matrices and Python loops over N.

Written from the definitions in hhcl-reference.md (section 1.2 steps 2-3, quirks #14 and #19) and the classic
re_ranking code of Zhong et al.; this is the baseline the fast hhcl.cluster engine is tested and timed against.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import DBSCAN


def clustered_features(
    n: int, dim: int, *, noise: float = 0.8, size: int = 16, outliers: float = 0.1, dup: float = 0.0, seed: int = 0
) -> torch.Tensor:
    """Unit features in clusters of about `size` around random centres, some pure-noise points, and a
    fraction `dup` of rows replaced by exact copies of other rows (to create distance ties)."""
    g = torch.Generator().manual_seed(seed)
    n_centres = max(1, n // size)
    centres = torch.randn(n_centres, dim, generator=g)
    centres = centres / centres.norm(dim=1, keepdim=True)
    owner = torch.randint(0, n_centres, (n,), generator=g)
    spread = noise * (0.5 + torch.rand(n_centres, generator=g))[owner, None]
    x = centres[owner] + spread * torch.randn(n, dim, generator=g) / dim**0.5
    lone = torch.rand(n, generator=g) < outliers
    x[lone] = torch.randn(int(lone.sum()), dim, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    n_dup = int(dup * n)
    if n_dup:
        dst = torch.randperm(n, generator=g)[:n_dup]
        src = torch.randint(0, n, (n_dup,), generator=g)
        x[dst] = x[src]
    return x.contiguous()


def exact_rank(features: torch.Tensor, k: int) -> np.ndarray:
    """kNN lists by exact squared Euclidean distance (float64 differences), ties by index: [N, min(k, N)]."""
    x = features.double().numpy()
    n = len(x)
    rank = np.empty((n, min(k, n)), dtype=np.int64)
    for i in range(n):
        d = ((x - x[i]) ** 2).sum(axis=1)
        rank[i] = np.lexsort((np.arange(n), d))[: rank.shape[1]]
    return rank


def faiss_rank(features: torch.Tensor, k: int) -> np.ndarray:
    """kNN lists as the reference gets them: faiss brute-force L2 (here on the CPU), k columns."""
    import faiss

    _, idx = faiss.knn(features.numpy(), features.numpy(), min(k, len(features)), metric=faiss.METRIC_L2)
    return idx


def _reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): the j in initial_rank[i, :k+1] with i in initial_rank[j, :k+1], in rank order."""
    forward = initial_rank[i, : k + 1]
    backward = initial_rank[forward, : k + 1]
    return forward[np.where(backward == i)[0]]


def _expanded(half: list[np.ndarray], full: np.ndarray) -> np.ndarray:
    """E(i): R(i) plus every R_half(c), c in R(i), sharing more than 2/3 of itself with R(i); unique."""
    expansion = full
    for candidate in full:
        cand = half[candidate]
        if len(np.intersect1d(cand, full)) > 2 / 3 * len(cand):
            expansion = np.append(expansion, cand)
    return np.unique(expansion)


def jaccard_reference(features: torch.Tensor, initial_rank: np.ndarray, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense float32 k-reciprocal Jaccard distance of the reference (faiss_rerank.compute_jaccard_distance)."""
    n = len(features)
    half_k = int(np.around(k1 / 2))
    nn_full = [_reciprocal(initial_rank, i, k1) for i in range(n)]
    nn_half = [_reciprocal(initial_rank, i, half_k) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        e = _expanded(nn_half, nn_full[i])
        dist = 2 - 2 * torch.mm(features[i].unsqueeze(0).contiguous(), features[e].t())
        v[i, e] = torch.softmax(-dist, dim=1).view(-1).numpy()
    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
    return _jaccard_rows(v, n, n)


def _jaccard_rows(v: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    inv_index = [np.where(v[:, c] != 0)[0] for c in range(n_cols)]
    jaccard = np.zeros((n_rows, n_cols), dtype=np.float32)
    for i in range(n_rows):
        temp_min = np.zeros((1, n_cols), dtype=np.float32)
        nz = np.where(v[i, :] != 0)[0]
        for c in nz:
            rows = inv_index[c]
            temp_min[0, rows] = temp_min[0, rows] + np.minimum(v[i, c], v[rows, c])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    return jaccard


def cluster_reference(dist: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    """sklearn DBSCAN on the dense precomputed matrix (negatives clamped to 0 first, as the reference)."""
    dist = np.maximum(dist, 0)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(dist)


def rerank_reference(
    q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20, k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Classic k-reciprocal re-ranking (Zhong et al. 2017, the widely copied re_ranking), dense."""
    original = np.concatenate(
        [np.concatenate([q_q_dist, q_g_dist], axis=1), np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0
    )
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(1.0 * original / np.max(original, axis=0))
    v = np.zeros_like(original).astype(np.float32)
    initial_rank = np.argsort(original).astype(np.int32)
    query_num = q_g_dist.shape[0]
    all_num = original.shape[0]
    half_k = int(np.around(k1 / 2.0))
    nn_half = [_reciprocal(initial_rank, i, half_k) for i in range(all_num)]
    for i in range(all_num):
        e = _expanded(nn_half, _reciprocal(initial_rank, i, k1))
        weight = np.exp(-original[i, e])
        v[i, e] = 1.0 * weight / np.sum(weight)
    original = original[:query_num,]
    if k2 != 1:
        v_qe = np.zeros_like(v, dtype=np.float32)
        for i in range(all_num):
            v_qe[i, :] = np.mean(v[initial_rank[i, :k2], :], axis=0)
        v = v_qe
    jaccard = _jaccard_rows(v, query_num, all_num)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:query_num, query_num:]


def pairwise_sq(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The reference's evaluation distance: ||x||^2 + ||y||^2 - 2 x.y, float32 on the CPU."""
    m, n = x.shape[0], y.shape[0]
    d = x.pow(2).sum(1, keepdim=True).expand(m, n) + y.pow(2).sum(1, keepdim=True).expand(n, m).t()
    return d.addmm(x, y.t(), beta=1, alpha=-2).numpy()
