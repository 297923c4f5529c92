"""The public names of evaluation (reference section 4): features, mAP/CMC, re-ranking, ``hhcl eval``.

The logic lives in :mod:`hhcl.evaluation`; this module only gathers its public names in one place.
"""

from __future__ import annotations

from hhcl.evaluation.features import extract_features, pairwise_sq_dist
from hhcl.evaluation.metrics import rank_metrics
from hhcl.evaluation.query_gallery import RERANK, evaluate, evaluate_features, rerank_distances
from hhcl.evaluation.run import EvalError, EvalReport, evaluate_checkpoint

__all__ = [
    "RERANK",
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
