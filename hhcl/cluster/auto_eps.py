"""``cluster.eps = auto``: DBSCAN's eps from the data, by the rule of the MMT / UDA strong-baseline code.

eps is the mean of the smallest ``rho`` = 1.6e-3 fraction of the pairwise Jaccard distances (the nonzero entries
of the dense matrix's upper triangle), taken at the first clustering and then kept for the whole run. Here the
distances below 1 come from the sparse eps-graph at eps = 1; every pair missing from it is at distance exactly 1,
so the smallest fraction is known without an N x N matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hhcl.cluster.approx import ApproxParams
from hhcl.cluster.jaccard import check_params, jaccard_pairs
from hhcl.cluster.knn import check_features, neighbours, resolve_backend, sparse_threads
from hhcl.errors import UsageError

RHO = 1.6e-3  # MMT (Ge et al., ICLR 2020) and its UDA strong baseline
#: distances below this are a duplicate pair's zero up to float rounding (the reference drops exact zeros; its
#: dense float32 arithmetic and ours round a duplicate's 0 differently, to 0 or to ~1e-7)
ZERO = 1e-6


class AutoEpsError(UsageError, ValueError):
    """The data is too small for the rule (fewer pairs than one in 1/rho); says to set cluster.eps by hand. A usage
    error."""


def eps_from_distances(d: Tensor, n: int, rho: float = RHO) -> float:
    """The rule on the distances ``d`` of the pairs i < j whose Jaccard distance is below 1 (all others are 1)."""
    pairs = n * (n - 1) // 2
    nonzero = pairs - int((d < ZERO).sum())  # the reference drops the zeros (np.nonzero)
    top = round(rho * nonzero)  # np.round: half to even, as Python's round
    if top < 1:
        raise AutoEpsError(
            f"cluster.eps = auto needs at least {round(0.5 / rho) + 1} pairs of images (rho = {rho:g} of them are "
            f"averaged); {n} images give {pairs}. Set cluster.eps to a number in (0, 1), e.g. 0.6."
        )
    below = d[(d >= ZERO) & (d < 1)].to(torch.float64)
    smallest = torch.topk(below, min(top, below.numel()), largest=False).values if below.numel() else below
    ones = top - smallest.numel()  # pairs at distance exactly 1 fill the rest
    return float((smallest.sum() + ones) / top)


def auto_eps(
    features: Tensor, *, k1: int = 30, k2: int = 6, knn_backend: str = "auto", knn_params: ApproxParams | None = None,
    rho: float = RHO,
) -> float:
    """eps for ``features`` [N, D] (L2-normalised) by the MMT rule, with the Jaccard settings the run clusters with."""
    check_params(k1, k2)
    x = check_features(features)
    resolve_backend(knn_backend, x.device)
    nb = neighbours(x, k1, backend=knn_backend, approx=knn_params)
    with sparse_threads(x.device):
        _, _, d = jaccard_pairs(x, nb, k1=k1, k2=k2, eps=1.0)
    return eps_from_distances(d, x.shape[0], rho)
