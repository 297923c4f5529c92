"""Query/gallery evaluation as the reference (section 4): features -> squared-Euclidean distances -> mAP/CMC,
optionally with k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) as a second result.

The metrics are computed in query chunks straight from the features, so the Q x G matrix is never whole
(except for re-ranking, whose output is Q x G).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from hhcl.evaluation.features import extract_features, model_device, pairwise_sq_dist
from hhcl.evaluation.metrics import _CHUNK_ELEMS, RankAccumulator, rank_metrics
from hhcl.evaluation.run import EvalError, EvalReport, evaluate_checkpoint

__all__ = [
    "EvalError",
    "EvalReport",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_features",
    "extract_features",
    "pairwise_sq_dist",
    "rank_metrics",
    "rerank_distances",
]

RERANK = {"k1": 20, "k2": 6, "lambda_value": 0.3}  # the reference's test-time re-ranking (examples/test.py)


def rerank_distances(query_feats: Tensor, gallery_feats: Tensor) -> Tensor:
    """[Q, G] k-reciprocal re-ranked distances with the reference's test-time settings (quirk 19: on d^4)."""
    from hhcl.cluster import rerank_distance  # the clustering engine's k-reciprocal code

    return rerank_distance(query_feats, gallery_feats, **RERANK)


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
    step = max(1, _CHUNK_ELEMS // max(len(gallery_feats), 1))
    gf = gallery_feats.to(query_feats.device)
    for s in range(0, len(query_feats), step):
        acc.add(pairwise_sq_dist(query_feats[s : s + step], gf), q_pids[s : s + step], q_camids[s : s + step])
    result = acc.result(ranks)
    if rerank:
        result["rerank"] = rank_metrics(rerank_distances(query_feats, gf), q_pids, g_pids, q_camids, g_camids, ranks=ranks)
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
) -> dict[str, Any]:
    """Features of both stores -> distances -> rank_metrics (and with ``rerank`` a second result under "rerank")."""
    qf = extract_features(model, query_store, batch_size=batch_size, flip=flip, amp=amp)
    gf = extract_features(model, gallery_store, batch_size=batch_size, flip=flip, amp=amp)
    dev = model_device(model)
    return evaluate_features(
        qf,
        gf,
        query_store.pids.to(dev),
        gallery_store.pids.to(dev),
        query_store.camids.to(dev),
        gallery_store.camids.to(dev),
        rerank=rerank,
    )
