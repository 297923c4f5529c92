"""The pseudo labels do not depend on the kNN backend: faiss (any version, any BLAS) and torch give the same
neighbour lists, and the Jaccard weights never take the search's own floating-point arithmetic.

Before this held, the demo's labels changed with `cluster.knn_backend = auto` switching to faiss on the CPU, and
with the faiss a fresh install resolved (its sgemm's last bits fed the weights): 44.2 -> 39.9 -> 28.9 mAP.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import naive_cluster as naive  # noqa: E402

from hhcl.cluster import pseudo_labels  # noqa: E402
from hhcl.cluster.jaccard import reciprocal_encoding  # noqa: E402
from hhcl.cluster.knn import neighbours  # noqa: E402

pytest.importorskip("faiss")


@pytest.mark.parametrize(("n", "dim", "noise"), [(300, 64, 0.8), (500, 128, 1.2)])
def test_jaccard_weights_are_bitwise_the_same_for_both_backends(n, dim, noise):
    x = naive.clustered_features(n, dim, noise=noise, seed=n)
    nb_t, nb_f = neighbours(x, 20, backend="torch"), neighbours(x, 20, backend="faiss")
    assert torch.equal(nb_t.index, nb_f.index)
    v_t, v_f = reciprocal_encoding(x, nb_t, 20, 6), reciprocal_encoding(x, nb_f, 20, 6)
    assert torch.equal(v_t.rowptr, v_f.rowptr) and torch.equal(v_t.col, v_f.col)
    assert torch.equal(v_t.val, v_f.val), "the weights took the kNN backend's arithmetic"


def test_labels_are_the_same_for_both_backends_at_many_eps():
    x = naive.clustered_features(600, 96, noise=1.0, seed=7)
    for eps in (0.35, 0.45, 0.5, 0.55, 0.6, 0.7):
        a = pseudo_labels(x, k1=20, k2=6, eps=eps, knn_backend="torch")
        b = pseudo_labels(x, k1=20, k2=6, eps=eps, knn_backend="faiss")
        assert torch.equal(a.labels, b.labels), eps
