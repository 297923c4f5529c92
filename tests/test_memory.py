"""HybridMemory vs a per-sample loop written from the reference doc: loss, input gradient, memory after update."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from helpers.memory_loop import LoopMemory

from hhcl.memory import HybridMemory, cluster_centroids, sample_instances

D = 32
ATOL = 2e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on a shared 2-core machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


def _batch(gen: torch.Generator, num_clusters: int, max_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffled batch with repeated labels, single-member clusters and an exact duplicate feature (a tie)."""
    picks = torch.randperm(num_clusters, generator=gen)[:6].tolist()
    counts = [1, 1, 2, 3, max_count, max_count]
    labels = torch.tensor([c for c, n in zip(picks, counts, strict=True) for _ in range(n)])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    feats = _unit(len(labels), D, gen=gen)
    twins = (labels == picks[-1]).nonzero().flatten()
    feats[twins[2]] = feats[twins[0]]  # identical members: equal similarity to the prototype
    return feats, labels


def _pair(mode: str, num_clusters: int, gen: torch.Generator, **kw) -> tuple[HybridMemory, LoopMemory]:
    centroids = torch.randn(num_clusters, D, generator=gen)
    inst = (
        torch.randn(kw.get("num_instances", 16), num_clusters, D, generator=gen)
        if mode == "CMhybrid_v2"
        else None
    )
    mem = HybridMemory(centroids, mode=mode, instance_features=inst, **kw)
    loop = LoopMemory(mem.features, mode=mode, num_clusters=num_clusters, **kw)
    return mem, loop


CASES = [
    ("CM", {}),
    ("CMhard", {}),
    ("CMhybrid", {}),
    ("CMhybrid", {"loss_form": "paper"}),
    ("CMhybrid", {"hard_weight": 0.3, "momentum": 0.4}),
    ("CMhybrid_v2", {"num_instances": 5}),
    ("CMhybrid_v2", {"num_instances": 6, "hard_weight": 0.7}),
]


@pytest.mark.parametrize("num_clusters", [12, 130])  # 130 // 50 = 2: top-k smoothing; 12: uniform fallback
@pytest.mark.parametrize("smooth", [0.0, 0.2])
@pytest.mark.parametrize(("mode", "kw"), CASES)
def test_matches_loop_reference(mode, kw, smooth, num_clusters):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{mode}{smooth}{num_clusters}{kw}".encode()))
    max_count = kw.get("num_instances", 5)
    mem, loop = _pair(mode, num_clusters, gen, smooth=smooth, **kw)
    for _ in range(3):  # several iterations: the memories must stay together
        feats, labels = _batch(gen, num_clusters, max_count)
        f1 = feats.clone().requires_grad_()
        f2 = feats.clone().requires_grad_()
        loss = mem(f1, labels)
        expected = loop.loss(f2, labels)
        loss.backward()
        expected.backward()
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f1.grad, f2.grad, atol=1e-5, rtol=1e-4)
        mem.update(feats, labels)
        loop.update(feats, labels)
        torch.testing.assert_close(mem.features, loop.M, atol=ATOL, rtol=0)


def test_cm_is_sequential_per_sample():
    """Two members of one cluster: the row is blended with the first, renormalised, then with the second."""
    gen = torch.Generator().manual_seed(0)
    cent = _unit(3, D, gen=gen)
    f = _unit(3, D, gen=gen)
    mem = HybridMemory(cent, mode="CM", momentum=0.3)
    mem.update(f, torch.tensor([1, 2, 1]))
    row = F.normalize(0.3 * cent[1] + 0.7 * f[0], dim=0)
    row = F.normalize(0.3 * row + 0.7 * f[2], dim=0)
    torch.testing.assert_close(mem.features[1], row, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        mem.features[2], F.normalize(0.3 * cent[2] + 0.7 * f[1], dim=0), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(mem.features[0], cent[0], atol=1e-7, rtol=0)


@pytest.mark.parametrize("mode", ["CMhard", "CMhybrid"])
def test_hard_update_takes_first_of_tied_least_similar(mode):
    """Members with equal (lowest) similarity to the hard prototype but different vectors: first one wins."""
    e = torch.eye(D)
    cent = torch.stack([e[0], e[5]])
    a = F.normalize(0.2 * e[0] + e[1], dim=0)  # <a, e0> == <b, e0> exactly, a != b
    b = F.normalize(0.2 * e[0] + e[2], dim=0)
    easy = F.normalize(e[0] + 0.1 * e[3], dim=0)
    feats = torch.stack([easy, b, a, e[5]])
    labels = torch.tensor([0, 0, 0, 1])
    mem = HybridMemory(cent, mode=mode, momentum=0.1)
    mem.update(feats, labels)
    torch.testing.assert_close(mem.features[0], F.normalize(0.1 * e[0] + 0.9 * b, dim=0), atol=1e-7, rtol=0)
    if mode == "CMhybrid":
        mean = (easy + b + a) / 3
        torch.testing.assert_close(
            mem.features[2], F.normalize(0.1 * e[0] + 0.9 * mean, dim=0), atol=1e-6, rtol=0
        )
        torch.testing.assert_close(mem.features[3], e[5], atol=1e-7, rtol=0)


def test_cmhybrid_coefficients_and_parts():
    gen = torch.Generator().manual_seed(1)
    cent = torch.randn(7, D, generator=gen)
    feats, labels = _unit(10, D, gen=gen), torch.randint(0, 7, (10,), generator=gen)
    ref = HybridMemory(cent, mode="CMhybrid")
    loss = ref(feats, labels)
    hard, mean = ref.last_parts["loss_hard"], ref.last_parts["loss_mean"]
    assert math.isclose(float(loss), 0.5 * hard + 0.25 * mean, rel_tol=1e-6)  # reference quirk 12
    logits = feats @ F.normalize(cent, dim=1).t() / 0.05
    assert math.isclose(hard, float(F.cross_entropy(logits, labels)), rel_tol=1e-5)
    paper = HybridMemory(cent, mode="CMhybrid", loss_form="paper")
    assert math.isclose(float(paper(feats, labels)), 0.5 * hard + 0.5 * mean, rel_tol=1e-6)


def test_forward_uses_memory_as_is_and_grad_only_to_features():
    gen = torch.Generator().manual_seed(2)
    mem = HybridMemory(torch.randn(5, D, generator=gen), mode="CMhard")
    f = _unit(8, D, gen=gen).requires_grad_()
    labels = torch.randint(0, 5, (8,), generator=gen)
    mem(f, labels).backward()
    assert not mem.features.requires_grad and mem.features.grad is None
    assert f.grad is not None and torch.isfinite(f.grad).all()
    assert list(mem.state_dict()) == ["features"]


def test_low_precision_inputs_are_computed_in_float32():
    gen = torch.Generator().manual_seed(3)
    mem = HybridMemory(torch.randn(6, D, generator=gen), mode="CMhybrid")
    f = _unit(9, D, gen=gen)
    labels = torch.randint(0, 6, (9,), generator=gen)
    expected = mem(f.bfloat16().float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mem(f.bfloat16(), labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    mem.update(f.bfloat16(), labels)
    assert mem.features.dtype == torch.float32


def test_cluster_centroids_match_loop_and_exclude_outliers():
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(40, D, generator=gen)
    labels = torch.randint(-1, 5, (40,), generator=gen)
    labels[:5] = torch.arange(5)
    got = cluster_centroids(feats, labels)
    expected = torch.stack([feats[labels == c].mean(0) for c in range(5)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert cluster_centroids(feats, labels, num_clusters=5).shape == (5, D)


def test_from_features_cmhybrid_duplicates_normalised_centroids():
    gen = torch.Generator().manual_seed(5)
    feats = _unit(30, D, gen=gen)
    labels = torch.arange(30) % 4
    labels[-3:] = -1
    mem = HybridMemory.from_features(feats, labels, mode="CMhybrid")
    cent = F.normalize(torch.stack([feats[labels == c].mean(0) for c in range(4)]), dim=1)
    torch.testing.assert_close(mem.features, torch.cat([cent, cent]), atol=1e-6, rtol=0)


def test_from_features_v2_slots_are_members_drawn_with_the_generator():
    gen = torch.Generator().manual_seed(6)
    feats = _unit(25, D, gen=gen)
    labels = torch.tensor([0] * 10 + [1] * 1 + [2] * 12 + [-1] * 2)
    build = lambda seed: HybridMemory.from_features(  # noqa: E731
        feats, labels, mode="CMhybrid_v2", num_instances=8, generator=torch.Generator().manual_seed(seed)
    )
    mem = build(0)
    assert mem.features.shape == (9 * 3, D)
    torch.testing.assert_close(mem.features, build(0).features, atol=0, rtol=0)
    assert not torch.equal(mem.features, build(1).features)
    slots = mem.features[3:].view(8, 3, D)
    for c in range(3):
        members = feats[labels == c]
        dist = torch.cdist(slots[:, c], members)
        assert (dist.min(dim=1).values < 1e-6).all(), f"cluster {c} slot is not one of its members"
    drawn = sample_instances(feats, labels, 3, 4000, torch.Generator().manual_seed(0))[:, 0]
    hits = torch.cdist(drawn, feats[:10]).argmin(dim=1).bincount(minlength=10).float() / 4000
    assert (hits - 0.1).abs().max() < 0.03  # uniform over the 10 members


def test_bad_inputs_raise_clear_errors():
    cent = torch.randn(4, D)
    with pytest.raises(ValueError, match="memory.mode"):
        HybridMemory(cent, mode="CMfancy")
    with pytest.raises(ValueError, match="memory.loss_form"):
        HybridMemory(cent, loss_form="convex")
    with pytest.raises(ValueError, match="memory.temp"):
        HybridMemory(cent, temp=0)
    with pytest.raises(ValueError, match="instance_features"):
        HybridMemory(cent, mode="CMhybrid_v2", num_instances=3, instance_features=torch.randn(2, 4, D))
    mem = HybridMemory(cent, mode="CMhybrid")
    with pytest.raises(ValueError, match=r"\[B, 32\]"):
        mem(torch.randn(3, 16), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        mem.update(torch.randn(3, D), torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="integer"):
        mem(torch.randn(3, D), torch.zeros(3))
    v2 = HybridMemory(cent, mode="CMhybrid_v2", num_instances=2)
    with pytest.raises(ValueError, match="num_instances=2"):
        v2.update(_unit(3, D, gen=torch.Generator().manual_seed(0)), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="no clusters"):
        cluster_centroids(torch.randn(3, D), torch.full((3,), -1))
    with pytest.raises(ValueError, match="no members"):
        cluster_centroids(torch.randn(3, D), torch.tensor([0, 2, 2]))


def test_v2_without_instance_features_starts_slots_at_centroids():
    """Used before load_state_dict on resume: every slot holds its (normalised) centroid."""
    cent = torch.randn(3, D)
    mem = HybridMemory(cent, mode="CMhybrid_v2", num_instances=2)
    torch.testing.assert_close(mem.features, F.normalize(cent, dim=1).repeat(3, 1))


def test_non_finite_features_do_not_break_the_update():
    """A diverged step (NaN features) must not crash the update: np.argmin picks the first NaN."""
    mem = HybridMemory(torch.randn(3, D), mode="CMhybrid")
    f = torch.randn(4, D)
    f[1] = float("nan")
    mem.update(f, torch.tensor([0, 0, 0, 2]))
    assert mem.features[0].isnan().all() and torch.isfinite(mem.features[[1, 2, 4, 5]]).all()
