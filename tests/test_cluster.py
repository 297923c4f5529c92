"""Clustering engine vs the naive reference-style implementation (benchmarks/naive_cluster.py) and sklearn."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import naive_cluster as naive  # noqa: E402

from hhcl.cluster import jaccard_distance, knn, pseudo_labels, rerank_distance  # noqa: E402
from hhcl.cluster.dbscan import dbscan_graph  # noqa: E402

# (n, dim, noise, k1, k2, duplicate fraction): sizes, noise levels, k1/k2 and ties
CASES = [
    (240, 32, 0.8, 30, 6, 0.0),
    (180, 16, 1.4, 20, 4, 0.0),
    (150, 24, 0.5, 30, 6, 0.15),
    (120, 8, 1.0, 10, 1, 0.1),
    (60, 16, 0.8, 7, 3, 0.3),
]


def _safe_eps(dist: np.ndarray, eps: float) -> float:
    """Move eps off any distance within float noise of it, so both sides must agree on every pair."""
    while np.abs(dist - np.float32(eps)).min() < 1e-5:
        eps += 3e-5
    return eps


@pytest.mark.parametrize(("n", "dim", "noise", "k1", "k2", "dup"), CASES)
def test_fast_matches_reference(n: int, dim: int, noise: float, k1: int, k2: int, dup: float) -> None:
    x = naive.clustered_features(n, dim, noise=noise, dup=dup, seed=n + k1)
    rank = naive.exact_rank(x, k1)
    dist, idx = knn(x, k1)
    assert np.array_equal(idx.numpy(), rank)
    exact = ((x[:, None, :].double() - x[idx].double()) ** 2).sum(-1)
    assert torch.allclose(dist.double(), exact, atol=1e-5)

    ref = np.maximum(naive.jaccard_reference(x, rank, k1, k2), 0)
    fast = jaccard_distance(x, k1=k1, k2=k2).numpy()
    assert np.abs(fast - ref).max() <= 1e-6
    for eps in (0.3, 0.45, 0.6, 0.8):
        eps = _safe_eps(ref, eps)
        for min_samples in (2, 4):
            expected = naive.cluster_reference(ref, eps, min_samples)
            got = pseudo_labels(x, k1=k1, k2=k2, eps=eps, min_samples=min_samples)
            assert np.array_equal(got.labels.numpy(), expected), (eps, min_samples)
            assert got.n_clusters == len(set(expected.tolist()) - {-1})
            assert got.n_outliers == int((expected == -1).sum())
            assert got.sizes.tolist() == np.bincount(expected[expected >= 0]).tolist()


def test_faiss_backend_gives_the_same_lists() -> None:
    pytest.importorskip("faiss")
    x = naive.clustered_features(200, 16, dup=0.1, seed=3)
    d_t, i_t = knn(x, 30, backend="torch")
    d_f, i_f = knn(x, 30, backend="faiss")
    assert torch.equal(i_t, i_f)
    assert torch.allclose(d_t, d_f, atol=1e-5)


def test_dbscan_graph_matches_sklearn_on_random_graphs() -> None:
    from sklearn.cluster import DBSCAN

    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = 60
        d = torch.rand(n, n, generator=g)
        d = torch.minimum(d, d.T).fill_diagonal_(0).numpy()
        eps = 0.02 + 0.01 * (trial % 5)
        i, j = np.nonzero(np.triu(d <= eps, 1))
        for ms in (1, 2, 3, 5):
            got = dbscan_graph(n, torch.from_numpy(i), torch.from_numpy(j), min_samples=ms).numpy()
            want = DBSCAN(eps=eps, min_samples=ms, metric="precomputed").fit_predict(d)
            assert np.array_equal(got, want)


def test_degenerate_inputs() -> None:
    tiny = naive.clustered_features(5, 8, seed=1)  # N < k1
    res = pseudo_labels(tiny, k1=30, k2=6, eps=0.6)
    want = naive.cluster_reference(naive.jaccard_reference(tiny, naive.exact_rank(tiny, 30), 30, 6), 0.6)
    assert res.labels.tolist() == want.tolist()
    one = pseudo_labels(tiny[:1], eps=0.5)
    assert one.labels.tolist() == [-1] and one.n_clusters == 0
    spread = torch.nn.functional.normalize(torch.randn(50, 64, generator=torch.Generator().manual_seed(0)), dim=1)
    none = pseudo_labels(spread, eps=0.01)
    assert none.n_clusters == 0 and none.n_outliers == 50 and none.outlier_ratio == 1.0 and none.eps == 0.01
    assert set(none.seconds) == {"knn", "jaccard", "dbscan"}
    same = tiny[:1].repeat(12, 1)  # all ties
    assert pseudo_labels(same, eps=0.5).labels.tolist() == [0] * 12
    bad = tiny.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pseudo_labels(bad, eps=0.5)
    with pytest.raises(ValueError, match="cluster.eps"):
        pseudo_labels(tiny, eps=1.5)
    with pytest.raises(ValueError, match="knn_backend"):
        pseudo_labels(tiny, eps=0.5, knn_backend="annoy")


@pytest.mark.parametrize(("nq", "ng", "k1", "k2", "square"), [(30, 150, 20, 6, True), (12, 40, 20, 6, True),
                                                              (25, 90, 7, 1, True), (20, 80, 20, 6, False)])
def test_rerank_matches_classic(nq: int, ng: int, k1: int, k2: int, square: bool) -> None:
    x = naive.clustered_features(nq + ng, 32, seed=nq)
    q, g = x[:nq], x[nq:]
    qg, qq, gg = naive.pairwise_sq(q, g), naive.pairwise_sq(q, q), naive.pairwise_sq(g, g)
    if not square:  # the textbook use: plain Euclidean in, so the classic code squares back to d^2
        qg, qq, gg = (np.sqrt(np.maximum(a, 0)) for a in (qg, qq, gg))
    want = naive.rerank_reference(qg, qq, gg, k1, k2, 0.3)
    got = rerank_distance(q, g, k1=k1, k2=k2, lambda_value=0.3, square_input=square).numpy()
    assert got.shape == (nq, ng)
    assert np.abs(got - want).max() <= 2e-6
