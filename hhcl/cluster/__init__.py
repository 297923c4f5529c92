"""Clustering engine: exact kNN, sparse k-reciprocal Jaccard, DBSCAN on the eps-graph, test-time re-ranking; the
clusterer table (``cluster.method``: DBSCAN, InfoMap) is ``hhcl.cluster.methods``."""

from __future__ import annotations

from hhcl.cluster.jaccard import jaccard_distance
from hhcl.cluster.knn import knn
from hhcl.cluster.pseudo import PseudoLabels, pseudo_labels
from hhcl.cluster.rerank import rerank_distance

__all__ = ["PseudoLabels", "jaccard_distance", "knn", "pseudo_labels", "rerank_distance"]
