"""cluster.eps = auto: the MMT rule computed on the sparse graph equals the rule on the dense reference Jaccard
matrix (code as MMT writes it), and the labels are DBSCAN's with the eps it picked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import naive_cluster as naive  # noqa: E402

from hhcl.cluster import pseudo_labels  # noqa: E402
from hhcl.cluster.auto_eps import AutoEpsError, auto_eps, eps_from_distances  # noqa: E402
from hhcl.config import ConfigError, load_config  # noqa: E402


def mmt_eps(rerank_dist: np.ndarray, rho: float = 1.6e-3) -> float:
    """The MMT / UDA strong-baseline code's rule, verbatim but for one line: a duplicate pair's distance, 0 up to
    float rounding (1e-7 in one float32 order, 0 in another), counts as the zero it is."""
    rerank_dist = np.where(rerank_dist < 1e-6, 0, rerank_dist)
    tri_mat = np.triu(rerank_dist, 1)
    tri_mat = tri_mat[np.nonzero(tri_mat)]
    tri_mat = np.sort(tri_mat, axis=None)
    top_num = np.round(rho * tri_mat.size).astype(int)
    return float(tri_mat[:top_num].mean())


@pytest.mark.parametrize(("n", "noise", "k1", "k2", "dup"), [(400, 0.8, 30, 6, 0.0), (300, 1.2, 20, 6, 0.1), (500, 0.5, 30, 6, 0.0)])
def test_auto_eps_equals_the_dense_rule_and_labels_equal_dbscan(n, noise, k1, k2, dup):
    x = naive.clustered_features(n, 32, noise=noise, dup=dup, seed=n)
    ref = np.maximum(naive.jaccard_reference(x, naive.exact_rank(x, k1), k1, k2), 0).astype(np.float32)
    eps = auto_eps(x, k1=k1, k2=k2)
    assert eps == pytest.approx(mmt_eps(ref), abs=2e-6)
    assert 0.0 < eps < 1.0
    got = pseudo_labels(x, k1=k1, k2=k2, eps=eps, min_samples=4)
    assert got.n_clusters > 3  # the rule finds the planted clusters, not one blob
    assert np.array_equal(got.labels.numpy(), naive.cluster_reference(ref, eps, 4))


def test_pairs_missing_from_the_graph_count_as_distance_one():
    # 100 images: 4950 pairs, rho * 4950 = 7.92 -> the 8 smallest; only 3 pairs below 1, one exact zero dropped
    d = torch.tensor([0.0, 0.2, 0.4, 0.6])
    assert eps_from_distances(d, 100) == pytest.approx((0.2 + 0.4 + 0.6 + 5 * 1.0) / 8)


def test_too_few_images_is_refused_with_the_fix():
    with pytest.raises(AutoEpsError, match="Set cluster.eps to a number"):
        eps_from_distances(torch.tensor([0.1]), 10)


def test_config_accepts_auto_and_refuses_other_words():
    assert load_config("demo", ["cluster.eps=auto"]).cluster.eps == "auto"
    assert load_config("demo", ["cluster.eps=0.4"]).cluster.eps == 0.4
    with pytest.raises(ConfigError, match="cluster.eps"):
        load_config("demo", ["cluster.eps=automatic"])
    with pytest.raises(ConfigError, match="cluster.eps"):
        load_config("demo", ["cluster.eps=1.5"])


def test_a_run_keeps_the_eps_it_chose_first_across_epochs_and_a_resume(synth_root, tmp_path):
    from helpers.tiny_run import TINY

    from hhcl.engine import Trainer
    from hhcl.run.checkpoint import resume_config
    from hhcl.run.events import read_raw_events

    def clusters(run):
        return [e for e in read_raw_events(run / "events.jsonl") if e["type"] == "cluster"]

    cfg = load_config("demo", [f"data.root={synth_root}", *TINY, "model.bn_group=8", "cluster.eps=auto", "train.epochs=1"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml())
    assert Trainer(cfg, run, preset="demo").fit().status == "ok"
    chosen = clusters(run)[0]["eps"]
    assert 0 < chosen < 1 and clusters(run)[0]["eps_auto"] is True
    # a resume that chose again would take another eps: the model has trained since the first clustering
    assert Trainer(resume_config(run, ["train.epochs=3"]), run, resume=True).fit().status == "ok"
    assert [e["eps"] for e in clusters(run)] == [chosen] * 3
