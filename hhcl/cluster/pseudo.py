"""Pseudo labels for one epoch: exact kNN -> k-reciprocal Jaccard eps-graph -> DBSCAN, timed per stage; and
``DBSCAN``, the ``cluster.method = dbscan`` entry of the clusterer table (HHCL's own clustering)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hhcl.cluster.approx import ApproxParams
from hhcl.cluster.auto_eps import auto_eps
from hhcl.cluster.clusterer import AfterStep, ClusterResult, Loosening
from hhcl.cluster.dbscan import dbscan_graph
from hhcl.cluster.jaccard import check_params, jaccard_pairs, order_cuts
from hhcl.cluster.knn import check_features, neighbours, resolve_backend, sparse_threads, timed
from hhcl.config import ClusterConfig

#: DBSCAN's sub-steps, in order (``after_step`` names; their seconds are keyed knn, jaccard, dbscan)
STEPS = ("kNN", "Jaccard", "DBSCAN")


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
    knn_params: ApproxParams | None = None,
    after_step: Callable[[str], None] | None = None,
) -> PseudoLabels:
    """Cluster L2-normalised features [N, D] as the reference does (Jaccard k1/k2, DBSCAN eps/min_samples).

    Labels equal sklearn DBSCAN(eps, min_samples, metric='precomputed') on the dense reference Jaccard matrix,
    but only pairs with distance <= eps are ever formed. No clusters at all is a valid result (n_clusters 0).
    ``after_step(name)`` is called after the kNN and the Jaccard sub-stages (names from STEPS); it may
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
        nb, t_knn = timed(lambda: neighbours(x, k1, backend=knn_backend, cuts=cuts, approx=knn_params), dev)
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


def approx_params(config: ClusterConfig) -> ApproxParams:
    """The approximate kNN's settings of a config (used only with knn_backend ivf / hnsw, or auto at large N)."""
    return ApproxParams(nlist=config.knn_nlist, nprobe=config.knn_nprobe, ef_search=config.knn_ef_search)


class Dbscan:
    """``cluster.method = dbscan``: :func:`pseudo_labels` with ``cluster.eps`` (or the eps ``auto`` chose at the
    run's first clustering, carried over), ``k1``, ``k2``, ``min_samples`` and ``knn_backend``."""

    name = "dbscan"
    title = "DBSCAN"
    steps = STEPS

    def require(self) -> None:
        """Nothing beyond the base install."""

    def cluster(
        self, features: Tensor, config: ClusterConfig, *, after_step: AfterStep, carry: float | None
    ) -> ClusterResult:
        """The eps (``after_step("eps")`` once it is known), then :func:`pseudo_labels` with it."""
        auto = config.eps == "auto"
        if not auto:
            eps = float(config.eps)
        elif carry is None:
            eps = auto_eps(features, k1=config.k1, k2=config.k2, knn_backend=config.knn_backend,
                           knn_params=approx_params(config))
        else:
            eps = carry
        after_step("eps")
        res = pseudo_labels(
            features, k1=config.k1, k2=config.k2, eps=eps, min_samples=config.min_samples,
            knn_backend=config.knn_backend, knn_params=approx_params(config), after_step=after_step,
        )
        return ClusterResult(
            labels=res.labels, seconds=res.seconds, params={"eps": eps}, auto=("eps",) if auto else (),
            carry=eps if auto else None,
        )

    def setting(self, config: ClusterConfig, carry: float | None) -> str:
        if config.eps == "auto":
            return "cluster.eps=auto" + (f" (chose {carry:.4g})" if carry is not None else "")
        return f"cluster.eps={float(config.eps):g}"

    def advice(self, config: ClusterConfig) -> str:
        return f"a larger eps, a smaller cluster.min_samples ({config.min_samples})"

    def loosen(self, config: ClusterConfig, carry: float | None) -> Loosening:
        eps = carry if config.eps == "auto" else float(config.eps)
        return Loosening("a larger eps", {"cluster.eps": round(min(0.95, (eps or 0.5) + 0.1), 2)})


DBSCAN = Dbscan()
