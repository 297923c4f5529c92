"""Query/gallery evaluation as the reference (section 4): features -> squared-Euclidean distances -> mAP/CMC,
optionally with k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) as a second result.

The metrics are computed in query chunks straight from the features, so the Q x G matrix is never whole
(except for re-ranking, whose output is Q x G). The engine's per-epoch evaluation and ``hhcl eval`` both
come through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from hhcl.cluster import rerank_distance
from hhcl.evaluation.features import extract_features, model_device, pairwise_sq_dist
from hhcl.evaluation.metrics import CHUNK_ELEMS, RankAccumulator, rank_metrics

RERANK = {"k1": 20, "k2": 6, "lambda_value": 0.3}  # the reference's test-time re-ranking (examples/test.py)

#: ``stages(name, total)`` is called as a stage ("query", "gallery": images; "metrics": 1) starts and returns
#: the ``(done, total)`` callback of that stage (called per batch, and with done == total at its end)
StageCallbacks = Callable[[str, int], Callable[[int, int], None]]


@dataclass(frozen=True)
class SplitFeatures:
    """Query and gallery embeddings and their labels, all on the model's device."""

    query: Tensor
    gallery: Tensor
    labels: tuple[Tensor, Tensor, Tensor, Tensor]  # q_pids, g_pids, q_camids, g_camids: rank_metrics' order


def split_features(
    model: nn.Module,
    query_store: Any,
    gallery_store: Any,
    *,
    batch_size: int = 256,
    flip: bool = False,
    amp: str = "off",
    stages: StageCallbacks | None = None,
) -> SplitFeatures:
    """Embeddings of both stores (see :func:`extract_features`) with their pids and camera ids; ``stages`` hears
    of the "query" and "gallery" extractions."""
    feats = []
    for name, store in (("query", query_store), ("gallery", gallery_store)):
        progress = stages(name, len(store)) if stages is not None else None  # the stage starts here
        feats.append(extract_features(model, store, batch_size=batch_size, flip=flip, amp=amp, progress=progress))
    qf, gf = feats
    dev = model_device(model)
    q_pids, g_pids, q_cams, g_cams = (
        t.to(dev) for t in (query_store.pids, gallery_store.pids, query_store.camids, gallery_store.camids)
    )
    return SplitFeatures(qf, gf, (q_pids, g_pids, q_cams, g_cams))


def rerank_distances(query_feats: Tensor, gallery_feats: Tensor) -> Tensor:
    """[Q, G] k-reciprocal re-ranked distances with the reference's test-time settings (quirk 19: on d^4)."""
    return rerank_distance(query_feats, gallery_feats, **RERANK)


def reranked_metrics(
    query_feats: Tensor,
    gallery_feats: Tensor,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ranks: Sequence[int] = (1, 5, 10),
) -> tuple[dict[str, Any], Tensor]:
    """rank_metrics of the re-ranked distances, and those [Q, G] distances (rank lists draw from them)."""
    dist = rerank_distances(query_feats, gallery_feats.to(query_feats.device))
    return rank_metrics(dist, q_pids, g_pids, q_camids, g_camids, ranks=ranks), dist


def evaluate_features(
    query_feats: Tensor,
    gallery_feats: Tensor,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    rerank: bool = False,
    ranks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """rank_metrics of the squared-Euclidean distances of two feature sets, computed a query chunk at a time.

    With ``rerank`` the re-ranked result is added under "rerank".
    """
    if query_feats.shape[1:] != gallery_feats.shape[1:]:
        raise ValueError(f"query features {tuple(query_feats.shape)} and gallery {tuple(gallery_feats.shape)} differ")
    acc = RankAccumulator(g_pids, g_camids, device=query_feats.device)
    step = max(1, CHUNK_ELEMS // max(len(gallery_feats), 1))
    gf = gallery_feats.to(query_feats.device)
    for s in range(0, len(query_feats), step):
        acc.add(pairwise_sq_dist(query_feats[s : s + step], gf), q_pids[s : s + step], q_camids[s : s + step])
    result = acc.result(ranks)
    if rerank:
        result["rerank"], _ = reranked_metrics(query_feats, gf, q_pids, g_pids, q_camids, g_camids, ranks=ranks)
    return result


def evaluate(
    model: nn.Module,
    query_store: Any,
    gallery_store: Any,
    *,
    batch_size: int = 256,
    flip: bool = False,
    rerank: bool = False,
    amp: str = "off",
    stages: StageCallbacks | None = None,
) -> dict[str, Any]:
    """Features of both stores -> distances -> rank_metrics (and with ``rerank`` a second result under "rerank");
    ``stages`` hears of the "query", "gallery" and "metrics" stages (see :data:`StageCallbacks`)."""
    f = split_features(model, query_store, gallery_store, batch_size=batch_size, flip=flip, amp=amp, stages=stages)
    done = stages("metrics", 1) if stages is not None else None
    result = evaluate_features(f.query, f.gallery, *f.labels, rerank=rerank)
    if done is not None:
        done(1, 1)
    return result
