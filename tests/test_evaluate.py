"""Evaluation metrics and features against independent expectations: scikit-learn's AP per query (the
reference's mean_ap), a stable-argsort CMC loop (the reference's cmc), hand-computed cases, torch.cdist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers.stores import TinyStore
from sklearn.metrics import average_precision_score
from torch import nn

from hhcl.cluster import rerank_distance
from hhcl.evaluate import evaluate, evaluate_features, extract_features, pairwise_sq_dist, rank_metrics


def naive_metrics(distmat, q_pids, g_pids, q_cams, g_cams, topk=100):
    """The reference's loops: sklearn AP over valid items, first valid match in stable sorted order."""
    distmat = np.asarray(distmat)
    order = np.argsort(distmat, axis=1, kind="stable")
    aps, hist = [], np.zeros(topk)
    for i in range(len(q_pids)):
        valid = (g_pids != q_pids[i]) | (g_cams != q_cams[i])
        y_true = (g_pids == q_pids[i])[valid]
        if not y_true.any():
            continue
        aps.append(average_precision_score(y_true, -distmat[i][valid]))
        o = order[i]
        ranked = (g_pids[o] == q_pids[i])[(g_pids[o] != q_pids[i]) | (g_cams[o] != q_cams[i])]
        first = int(np.nonzero(ranked)[0][0])
        if first < topk:
            hist[first] += 1
    return float(np.mean(aps)), np.cumsum(hist) / len(aps), len(aps)


def random_case(rng, q, g, kind):
    ids, cams = int(rng.integers(1, 10)), int(rng.integers(1, 4))
    q_pids, g_pids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    q_cams, g_cams = rng.integers(0, cams, q), rng.integers(0, cams, g)
    if kind == "continuous":
        d = rng.random((q, g), dtype=np.float32)
    elif kind == "ties":  # few distinct values: large tie groups across positives and negatives
        d = rng.integers(0, 4, (q, g)).astype(np.float32)
    else:  # duplicates of a handful of distances, plus exact copies of positives' distances
        d = np.round(rng.random((q, g)), 2).astype(np.float32)
        d[:, ::3] = d[:, :1]
    return d, q_pids, g_pids, q_cams, g_cams


def has_positive(q_pids, g_pids, q_cams, g_cams):
    return bool(((q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] != g_cams[None, :])).any())


@pytest.mark.parametrize("kind", ["continuous", "ties", "duplicates"])
def test_rank_metrics_matches_sklearn_per_query(kind):
    rng = np.random.default_rng({"continuous": 0, "ties": 1, "duplicates": 2}[kind])
    checked, tries = 0, 0
    while checked < 16 and tries < 200:
        tries += 1
        q, g = int(rng.integers(1, 25)), int(rng.integers(1, 150))
        case = random_case(rng, q, g, kind)
        if not has_positive(*case[1:]):
            continue
        m_ref, cmc_ref, n_ref = naive_metrics(*case)
        for chunk in (None, 3):
            got = rank_metrics(*case, chunk=chunk)
            assert got["mAP"] == pytest.approx(m_ref, abs=1e-9)
            np.testing.assert_array_equal(got["cmc"], cmc_ref)
            assert got["num_valid_queries"] == n_ref
            assert got["ranks"] == {1: cmc_ref[0], 5: cmc_ref[4], 10: cmc_ref[9]}
        checked += 1
    assert checked == 16


def test_market_like_layout_with_distractors_and_junk():
    """Every query has pid != 0; pid-0 distractors are negatives; same-camera copies are excluded."""
    rng = np.random.default_rng(3)
    g_pids = np.concatenate([np.zeros(60, np.int64), rng.integers(1, 30, 400)])
    g_cams, q_pids, q_cams = rng.integers(0, 6, 460), rng.integers(1, 30, 90), rng.integers(0, 6, 90)
    d = rng.random((90, 460), dtype=np.float32)
    d[q_pids[:, None] == g_pids[None, :]] *= np.float32(0.3)
    m_ref, cmc_ref, n_ref = naive_metrics(d, q_pids, g_pids, q_cams, g_cams)
    got = rank_metrics(torch.from_numpy(d), torch.from_numpy(q_pids), g_pids.tolist(), q_cams, g_cams)
    assert got["mAP"] == pytest.approx(m_ref, abs=1e-9) and got["num_valid_queries"] == n_ref
    np.testing.assert_array_equal(got["cmc"], cmc_ref)
    assert len(got["cmc"]) == 100


def test_hand_computed_ap_ties_and_junk():
    # gallery: a junk copy (same pid, same camera) at 0.0, then pos 0.1, neg 0.2, pos 0.2 (tie), neg 0.4
    d = np.array([[0.0, 0.1, 0.2, 0.2, 0.4]], np.float32)
    g_pids, g_cams = np.array([7, 7, 3, 7, 3]), np.array([0, 1, 1, 2, 1])
    got = rank_metrics(d, np.array([7]), g_pids, np.array([0]), g_cams)
    # sklearn: thresholds 0.1 (1 tp / 1 item) and the 0.2 block (2 tp / 3 items): AP = 1/2 + 1/2 * 2/3
    assert got["mAP"] == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    assert got["cmc"][0] == 1.0  # the junk copy at 0.0 does not count
    # a tie between the first positive and a negative: the stable order puts the lower gallery index first
    d2 = np.array([[0.3, 0.3, 0.9]], np.float32)
    got = rank_metrics(d2, [1], [2, 1, 1], [0], [1, 1, 1])
    assert got["cmc"][0] == 0.0 and got["cmc"][1] == 1.0
    assert got["mAP"] == pytest.approx(average_precision_score([0, 1, 1], [-0.3, -0.3, -0.9]), abs=1e-12)


def test_single_query_and_queries_without_positives_are_skipped():
    d = np.array([[0.5, 0.1, 0.2], [0.2, 0.3, 0.1]], np.float32)
    # query 0 (pid 1, cam 0): only gallery item 0 has pid 1 but on cam 0 -> no valid positive -> skipped
    got = rank_metrics(d, [1, 2], [1, 2, 3], [0, 0], [0, 1, 1])
    assert got["num_valid_queries"] == 1
    assert got["mAP"] == pytest.approx(average_precision_score([0, 1, 0], [-0.2, -0.3, -0.1]))
    assert got["cmc"][1] == 0.0 and got["cmc"][2] == 1.0  # after pid 3 (0.1) and pid 1 (0.2)
    single = rank_metrics(d[1:], [2], [1, 2, 3], [0], [0, 1, 1])
    assert single["mAP"] == got["mAP"]


def test_no_valid_query_and_bad_input_are_errors():
    d = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="no query has a valid positive"):
        rank_metrics(d, [1, 2], [1, 2, 3], [0, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="NaN or -inf"):
        rank_metrics(np.array([[np.nan, 0.1]], np.float32), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="q_pids has 1 entries"):
        rank_metrics(d, [1], [1, 2, 3], [0, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="2-D"):
        rank_metrics(np.zeros(3), [1], [1, 2, 3], [0], [0, 0, 1])
    with pytest.raises(ValueError, match="integer"):
        rank_metrics(d, [1.5, 2.0], [1, 2, 3], [0, 0], [0, 0, 1])


def test_dtypes_and_ranks_option():
    rng = np.random.default_rng(4)
    d, *labels = random_case(rng, 12, 80, "duplicates")
    while not has_positive(*labels):
        d, *labels = random_case(rng, 12, 80, "duplicates")
    m_ref, cmc_ref, _ = naive_metrics(d, *labels)
    for mat in (d.astype(np.float64), torch.from_numpy(d).half().float(), (d * 100).astype(np.int64)):
        got = rank_metrics(mat, *labels, ranks=(1, 3, 120))
        assert got["mAP"] == pytest.approx(m_ref, abs=1e-9)
        assert len(got["cmc"]) == 120 and set(got["ranks"]) == {1, 3, 120}
        np.testing.assert_array_equal(got["cmc"][:100], cmc_ref)


def test_pairwise_sq_dist_matches_cdist():
    x, y = F.normalize(torch.randn(7, 16), dim=1), F.normalize(torch.randn(11, 16), dim=1)
    torch.testing.assert_close(pairwise_sq_dist(x, y), torch.cdist(x.double(), y.double()).pow(2).float(),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="features"):
        pairwise_sq_dist(x, torch.randn(3, 8))


class TinyNet(nn.Module):
    """Conv + BN + pool + linear, L2-normalised (like the real model's eval output); BN makes modes differ."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8 * 4 * 2, 12)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), (4, 2)).flatten(1)
        return F.normalize(self.fc(h), dim=1)


def manual_features(model, images):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((images.float() / 255 - mean) / std)


def test_extract_features_order_flip_mode_and_amp():
    torch.manual_seed(0)
    model, images = TinyNet(), torch.randint(0, 256, (10, 3, 16, 8), dtype=torch.uint8)
    model.train()
    store = TinyStore(images, range(10), [0] * 10)
    feats = extract_features(model, store, batch_size=3)
    assert model.training, "the model's mode is restored"
    model.eval()
    expected = manual_features(model, images)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    assert feats.dtype == torch.float32 and not feats.is_inference()
    flipped = extract_features(model, store, batch_size=4, flip=True)
    torch.testing.assert_close(flipped, F.normalize(expected + manual_features(model, images.flip(3)), dim=1),
                               atol=1e-5, rtol=1e-5)
    bf16 = extract_features(model, store, batch_size=16, amp="bf16")
    assert bf16.dtype == torch.float32 and (bf16 * expected).sum(1).min() > 0.95
    with pytest.raises(ValueError, match="amp"):
        extract_features(model, store, amp="fp8")


def test_evaluate_end_to_end_matches_naive():
    torch.manual_seed(1)
    model = TinyNet().eval()
    qi, gi = torch.randint(0, 256, (6, 3, 16, 8), dtype=torch.uint8), torch.randint(0, 256, (20, 3, 16, 8), dtype=torch.uint8)
    q_pids, g_pids = np.array([0, 1, 2, 3, 4, 5]), np.arange(20) % 6
    q_cams, g_cams = np.zeros(6, np.int64), np.arange(20) % 2
    result = evaluate(model, TinyStore(qi, q_pids, q_cams), TinyStore(gi, g_pids, g_cams), batch_size=5)
    d = torch.cdist(manual_features(model, qi).double(), manual_features(model, gi).double()).pow(2).numpy()
    m_ref, cmc_ref, n_ref = naive_metrics(d, q_pids, g_pids, q_cams, g_cams)
    assert result["mAP"] == pytest.approx(m_ref, abs=1e-6) and result["num_valid_queries"] == n_ref
    np.testing.assert_array_equal(result["cmc"], cmc_ref)


def test_evaluate_features_rerank_adds_second_result():
    torch.manual_seed(2)
    qf, gf = F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(30, 16), dim=1)
    q_pids, g_pids = torch.arange(8) % 4, torch.arange(30) % 4
    q_cams, g_cams = torch.zeros(8, dtype=torch.long), torch.ones(30, dtype=torch.long)
    out = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, rerank=True)
    ref = rank_metrics(rerank_distance(qf, gf, k1=20, k2=6, lambda_value=0.3), q_pids, g_pids, q_cams, g_cams)
    assert out["rerank"]["mAP"] == ref["mAP"]
    plain = rank_metrics(pairwise_sq_dist(qf, gf), q_pids, g_pids, q_cams, g_cams)
    assert out["mAP"] == plain["mAP"]
