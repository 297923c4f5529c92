"""``cluster.method = infomap``: InfoMap pseudo labels as cluster-contrast-reid computes them.

Their ``examples/cluster_contrast_train_usl_infomap.py`` with ``clustercontrast/utils/infomap_cluster.py``
(alibaba/cluster-contrast-reid @ 57b62e9; ``run_code.sh`` and the README run it with ``--eps 0.5 --k1 15 --k2 4``
on Market-1501, MSMT17, DukeMTMC-reID and VeRi-776), step by step:

1. kNN: ``F.normalize`` the features (on the CPU), faiss ``IndexFlatIP`` (exact inner product = cosine similarity),
   ``k = cluster.infomap_k`` neighbours of every image, itself included (their ``--k1``); distance = 1 - sim in
   float32, compared and turned back into a weight in float64 (their ``np.array`` of the kNN lists).
2. links: i -> j for every neighbour j != i with distance <= 1 - ``cluster.infomap_min_sim`` (their ``--eps``),
   weight 1 - distance; an image with no such neighbour is a singleton.
3. InfoMap: ``Infomap("--two-level --directed")`` over the links (default seed 123, one trial); each image takes its
   top module; each singleton gets a label of its own after the modules'; every label with fewer than
   ``cluster.infomap_min_size`` images (their ``--k2`` + 1: ``len <= cluster_num``) becomes -1; the kept labels are
   numbered in the iteration order of a Python ``set`` of the old ones, as their ``enumerate(set)`` numbers them.

Differences from their code, all of them:

- infomap 2.x (``add_links`` on a NumPy array, ``Result.tree``) instead of the 1.x calls (``addLink`` per link,
  ``iterTree``); the tree has the same shape, so their slicing off of the root and module nodes (``v[2:]`` for
  module 0, ``v[1:]`` for the others) is taking the leaves. ``--silent`` is added (output only). Whether
  InfoMap 2.x's optimiser finds the same modules as 1.8 on every graph is InfoMap's matter, not checked here.
- faiss-cpu searches on the CPU; their script asks for faiss-gpu (``knn_method='faiss-gpu'``), whose GEMM can round
  a similarity differently in its last bit, which moves an image only when it lies on the threshold.
- with no link at all (every image a singleton) InfoMap is not run (infomap 2.x refuses an empty network): every
  image is an outlier, as their post-processing would make it.
- a singleton that is also the target of another image's link (possible only through float rounding at the
  threshold, as i's similarity to j and j's to i are computed in different GEMM rows) stops their run at
  ``assert idx_len == node_count``; here it keeps the labels their code computes before that assertion.
- ``cluster.infomap_min_size`` is at least 1 (their ``--k2`` >= 0) and ``cluster.infomap_min_sim`` in [0, 1).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hhcl.cluster.clusterer import AfterStep, ClusterResult, Loosening, step_key
from hhcl.cluster.knn import check_features, timed
from hhcl.config import ClusterConfig, ConfigError

INSTALL = 'pip install "hhcl[infomap]"'
STEPS = ("kNN", "links", "InfoMap")
#: their Infomap options (``--silent`` added: it changes the output only)
OPTIONS = "--two-level --directed --silent"


class InfomapMissingError(ConfigError):
    """``cluster.method = infomap`` without the ``infomap`` package installed; the message says what to install. A
    usage error."""


def require_infomap() -> ModuleType:
    """The ``infomap`` module, or :class:`InfomapMissingError` naming the install command."""
    try:
        import infomap
    except ImportError as err:
        raise InfomapMissingError(
            f"cluster.method = infomap needs the infomap package, which is not installed ({err}): {INSTALL}, "
            "or cluster with cluster.method = dbscan"
        ) from None
    return infomap


def knn_graph(features: Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours [N, k] int64, distances [N, k] float64) of the exact inner-product kNN of the re-normalised
    features, itself included; distances are 1 - similarity in float32, as theirs (padding: index -1, huge)."""
    import faiss

    x = F.normalize(check_features(features).cpu(), dim=1).numpy()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    sims, nbrs = index.search(x, k)
    return nbrs.astype(np.int64), (1 - sims).astype(np.float64)


def links(nbrs: np.ndarray, dists: np.ndarray, min_sim: float) -> tuple[np.ndarray, np.ndarray]:
    """The InfoMap links as rows (source, target, weight) in their order (by source, then neighbour rank), and the
    singletons: the images with no neighbour but themselves within distance 1 - min_sim, ascending."""
    src = np.broadcast_to(np.arange(len(nbrs))[:, None], nbrs.shape)
    keep = (nbrs != src) & (dists <= 1 - min_sim)
    rows = np.stack([src[keep], nbrs[keep], 1 - dists[keep]], axis=1).astype(np.float64)
    return rows, np.flatnonzero(~keep.any(axis=1))


def top_modules(infomap: ModuleType, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, top module index) of every image InfoMap saw, in its tree's order (their ``iterTree`` leaves)."""
    im = infomap.Infomap(OPTIONS)
    im.add_links(rows)
    leaves = [(node.physicalId, node.moduleIndex()) for node in im.run().tree(states=True) if node.isLeaf()]
    return np.array(leaves, dtype=np.int64).reshape(-1, 2).T


def module_labels(n: int, leaves: np.ndarray, modules: np.ndarray, single: np.ndarray, min_size: int) -> np.ndarray:
    """Their post-processing: labels [n] from the modules and the singletons, small ones -1, the kept ones numbered
    in the order of a Python set of the old labels (their ``enumerate(old_label_container)``)."""
    order, first = np.unique(modules, return_index=True)  # their label2idx: modules as first met, then singletons
    n_modules = len(order)
    labels = np.full(n, -1, dtype=np.int64)
    labels[leaves] = modules
    labels[single] = n_modules + np.arange(len(single))
    sizes = np.concatenate([np.bincount(modules, minlength=n_modules), np.ones(len(single), dtype=np.int64)])
    small = sizes < min_size
    # a label's list holds its module's leaves; a singleton in a small module's list is dropped with it
    dropped = small[labels]
    dropped[leaves] |= small[modules]
    met = np.concatenate([order[np.argsort(first)], n_modules + np.arange(len(single))])
    kept = met[~small[met]]
    renumber = np.full(len(sizes), -1, dtype=np.int64)
    renumber[list(set(kept.tolist()))] = np.arange(len(kept))
    return np.where(dropped, -1, renumber[labels])


def infomap_labels(
    features: Tensor, *, k: int = 15, min_sim: float = 0.5, min_size: int = 5, after_step: AfterStep | None = None
) -> ClusterResult:
    """Cluster L2-normalised features [N, D] as cluster-contrast's InfoMap does (see the module docstring);
    ``after_step(name)`` after the kNN and the links (it may raise to abandon the clustering there)."""
    infomap = require_infomap()
    done = after_step or (lambda name: None)
    device = features.device
    (nbrs, dists), t_knn = timed(lambda: knn_graph(features, k), device)
    done(STEPS[0])
    (rows, single), t_links = timed(lambda: links(nbrs, dists, min_sim), device)
    done(STEPS[1])

    def run() -> np.ndarray:
        none = np.zeros(0, dtype=np.int64)
        leaves, modules = top_modules(infomap, rows) if len(rows) else (none, none)
        return module_labels(len(nbrs), leaves, modules, single, min_size)

    labels, t_infomap = timed(run, device)
    seconds = dict(zip(map(step_key, STEPS), (t_knn, t_links, t_infomap), strict=True))
    return ClusterResult(
        labels=torch.from_numpy(labels).to(device), seconds=seconds,
        params={"min_sim": min_sim, "k": k, "min_size": min_size},
    )


class Infomap:
    """``cluster.method = infomap``: :func:`infomap_labels` with ``cluster.infomap_k``, ``infomap_min_sim`` and
    ``infomap_min_size``."""

    name = "infomap"
    title = "InfoMap"
    steps = STEPS

    def require(self) -> None:
        require_infomap()

    def cluster(
        self, features: Tensor, config: ClusterConfig, *, after_step: AfterStep, carry: float | None
    ) -> ClusterResult:
        return infomap_labels(
            features, k=config.infomap_k, min_sim=config.infomap_min_sim, min_size=config.infomap_min_size,
            after_step=after_step,
        )

    def setting(self, config: ClusterConfig, carry: float | None) -> str:
        return f"cluster.infomap_min_sim={config.infomap_min_sim:g}, cluster.infomap_k={config.infomap_k}"

    def advice(self, config: ClusterConfig) -> str:
        return (
            f"a lower similarity threshold (cluster.infomap_min_sim), more neighbours (cluster.infomap_k, "
            f"{config.infomap_k}), a smaller cluster.infomap_min_size ({config.infomap_min_size})"
        )

    def loosen(self, config: ClusterConfig, carry: float | None) -> Loosening:
        lower = round(max(0.0, config.infomap_min_sim - 0.1), 2)
        return Loosening("a lower similarity threshold", {"cluster.infomap_min_sim": lower})


INFOMAP = Infomap()
