"""Pseudo-label quality against sklearn's ARI / NMI and a naive all-pairs count, outliers as singletons."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from hhcl.cluster.quality import label_quality


def _singletons(pseudo: np.ndarray) -> np.ndarray:
    out = pseudo.copy()
    out[out < 0] = pseudo.max() + 1 + np.arange((pseudo < 0).sum())
    return out


def _naive_pairs(pseudo: np.ndarray, ids: np.ndarray) -> tuple[float | None, float | None]:
    clustered = same_id = both = 0
    for i, j in itertools.combinations(range(len(ids)), 2):
        c = pseudo[i] >= 0 and pseudo[i] == pseudo[j]
        s = ids[i] == ids[j]
        clustered += c
        same_id += s
        both += c and s
    return (both / clustered if clustered else None), (both / same_id if same_id else None)


@pytest.mark.parametrize("seed", range(6))
def test_matches_sklearn_and_naive_pair_counts(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    ids = rng.integers(0, int(rng.integers(2, 15)), n)
    pseudo = np.where(rng.random(n) < 0.7, ids + 100 * (rng.random(n) < 0.2), rng.integers(0, 8, n))
    pseudo[rng.random(n) < 0.15] = -1
    q = label_quality(torch.from_numpy(pseudo), torch.from_numpy(ids))
    assert q.ari == pytest.approx(adjusted_rand_score(ids, _singletons(pseudo)), abs=1e-12)
    assert q.nmi == pytest.approx(normalized_mutual_info_score(ids, _singletons(pseudo)), abs=1e-12)
    precision, recall = _naive_pairs(pseudo, ids)
    assert q.precision == pytest.approx(precision, abs=1e-12)
    assert q.recall == pytest.approx(recall, abs=1e-12)


def test_hand_computed_case():
    # ids: A A A B B; clusters {0,1}, {2,3}, outlier 4 -> pairs clustered: (0,1) right, (2,3) wrong
    q = label_quality(torch.tensor([0, 0, 1, 1, -1]), torch.tensor([0, 0, 0, 1, 1]))
    assert q.precision == pytest.approx(1 / 2)
    assert q.recall == pytest.approx(1 / 4)  # same-id pairs: (0,1) (0,2) (1,2) (3,4); only (0,1) together


def test_perfect_labels_and_undefined_pairs():
    ids = torch.tensor([3, 3, 7, 7, 9])
    q = label_quality(torch.tensor([1, 1, 0, 0, -1]), ids)
    assert (q.ari, q.nmi, q.precision, q.recall) == (pytest.approx(1.0), pytest.approx(1.0), 1.0, 1.0)
    all_outliers = label_quality(torch.full((5,), -1), ids)
    assert all_outliers.precision is None and all_outliers.recall == 0.0


def test_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="3 pseudo labels for 4 identities"):
        label_quality(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
