"""Evaluation internals: metrics (rank_metrics), features (extract_features, pairwise_sq_dist), run (hhcl eval).

The public names are re-exported by :mod:`hhcl.evaluate`.
"""
