"""Pseudo labels for one epoch: exact kNN -> k-reciprocal Jaccard eps-graph -> DBSCAN, timed per stage."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hhcl.cluster.dbscan import dbscan_graph
from hhcl.cluster.jaccard import check_params, jaccard_pairs, order_cuts
from hhcl.cluster.knn import check_features, neighbours, resolve_backend, sparse_threads, timed


@dataclass
class PseudoLabels:
    """Cluster ids per sample (-1 = outlier) and the numbers the 'cluster' event reports."""

    labels: Tensor  # [N] int64, on the features' device
    n_clusters: int
    n_outliers: int
    outlier_ratio: float
    sizes: Tensor  # [n_clusters] int64
    seconds: dict[str, float] = field(default_factory=dict)  # {"knn", "jaccard", "dbscan"}
    eps: float = 0.0


def pseudo_labels(
    features: Tensor,
    *,
    k1: int = 30,
    k2: int = 6,
    eps: float,
    min_samples: int = 4,
    knn_backend: str = "auto",
    after_step: Callable[[str], None] | None = None,
) -> PseudoLabels:
    """Cluster L2-normalised features [N, D] as the reference does (Jaccard k1/k2, DBSCAN eps/min_samples).

    Labels equal sklearn DBSCAN(eps, min_samples, metric='precomputed') on the dense reference Jaccard matrix,
    but only pairs with distance <= eps are ever formed. No clusters at all is a valid result (n_clusters 0).
    ``after_step(name)`` is called after the kNN and the Jaccard sub-stages (names from CLUSTER_STEPS); it may
    raise to abandon the clustering there (a stop asked during a long clustering).
    """
    done = after_step or (lambda name: None)
    check_params(k1, k2)
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(f"cluster.eps must be in (0, 1) (Jaccard distances lie in [0, 1]), got {eps!r}")
    if not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"cluster.min_samples must be a positive integer, got {min_samples!r}")
    device = features.device if isinstance(features, Tensor) else torch.device("cpu")
    resolve_backend(knn_backend, device)
    # one CPU thread per op throughout (hundreds of short ops), blocks on worker threads; only a torch kNN matmul
    # takes the threads back, and faiss runs its own (no switch: under load one costs ~10 ms)
    with sparse_threads(device):
        x = check_features(features)
        n, dev = x.shape[0], x.device
        cuts = order_cuts(k1, k2, n)  # the encoding reads only these sets of the lists: no other tie needs float64
        nb, t_knn = timed(lambda: neighbours(x, k1, backend=knn_backend, cuts=cuts), dev)
        done("kNN")
        (i, j, _), t_jac = timed(lambda: jaccard_pairs(x, nb, k1=k1, k2=k2, eps=float(eps)), dev)
        done("Jaccard")
        labels, t_db = timed(lambda: dbscan_graph(n, i, j, min_samples=min_samples), dev)
        sizes = torch.bincount(labels[labels >= 0], minlength=0)
        n_out = int((labels < 0).sum())
    return PseudoLabels(
        labels=labels.to(features.device),
        n_clusters=int(sizes.numel()),
        n_outliers=n_out,
        outlier_ratio=n_out / n,
        sizes=sizes,
        seconds={"knn": t_knn, "jaccard": t_jac, "dbscan": t_db},
        eps=float(eps),
    )
