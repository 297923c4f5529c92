"""Evaluation: features (extract_features, pairwise_sq_dist), metrics (rank_metrics), query_gallery (evaluate,
re-ranking), run (evaluate_checkpoint: what ``hhcl eval`` calls).

The public names are gathered in :mod:`hhcl.evaluate`; this package imports nothing, so importing one of its
modules does not pull in the others.
"""
