"""Pseudo-label quality against identities the training never sees: ARI, NMI, pairwise precision and recall.

The diagnostic re-ID researchers compute by hand to see whether clustering improves from epoch to epoch.
Outliers (label -1) count as singleton clusters: they are unclustered samples, so they pair with nobody.
Everything is computed from one sparse contingency table, without any N x N matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LabelQuality:
    """Agreement of pseudo labels with the true identities (each in [0, 1], ARI in [-1, 1])."""

    ari: float
    nmi: float
    precision: float | None  # of the pairs put in one cluster, the share that are one identity (None: no pairs)
    recall: float | None  # of the pairs that are one identity, the share put in one cluster (None: no pairs)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def _pairs(counts: Tensor) -> Tensor:
    counts = counts.to(torch.float64)
    return (counts * (counts - 1) / 2).sum()


def _entropy(counts: Tensor, n: int) -> Tensor:
    p = counts.to(torch.float64) / n
    p = p[p > 0]
    return -(p * p.log()).sum()


def label_quality(pseudo: Tensor, identities: Tensor) -> LabelQuality:
    """ARI, NMI (arithmetic normalisation, as sklearn's default) and pairwise precision/recall of ``pseudo``."""
    pseudo, identities = pseudo.detach().flatten().cpu().long(), identities.detach().flatten().cpu().long()
    if pseudo.numel() != identities.numel():
        raise ValueError(f"{pseudo.numel()} pseudo labels for {identities.numel()} identities")
    n = pseudo.numel()
    if n < 2:
        raise ValueError("label quality needs at least 2 samples")
    # outliers become singletons: ids after the largest cluster id
    a = torch.where(pseudo >= 0, pseudo, pseudo.max().clamp(min=-1) + 1 + torch.arange(n))
    a = torch.unique(a, return_inverse=True)[1]
    b = torch.unique(identities, return_inverse=True)[1]
    cells = torch.unique(a * (int(b.max()) + 1) + b, return_counts=True)[1]  # non-zero contingency cells
    rows, cols = torch.bincount(a), torch.bincount(b)

    together, same_a, same_b = _pairs(cells), _pairs(rows), _pairs(cols)
    total = torch.tensor(n * (n - 1) / 2, dtype=torch.float64)
    expected = same_a * same_b / total
    top = (same_a + same_b) / 2 - expected
    ari = torch.tensor(1.0, dtype=torch.float64) if top == 0 else (together - expected) / top

    mi = -_entropy(cells, n) + _entropy(rows, n) + _entropy(cols, n)
    h = (_entropy(rows, n) + _entropy(cols, n)) / 2
    nmi = torch.tensor(1.0, dtype=torch.float64) if h == 0 else (mi / h).clamp(0.0, 1.0)
    precision = float(together / same_a) if same_a > 0 else None
    recall = float(together / same_b) if same_b > 0 else None
    return LabelQuality(float(ari), float(nmi), precision, recall)
