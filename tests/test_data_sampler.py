"""PKSampler against a straightforward re-implementation of the reference sampler's rules."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest
import torch

from hhcl.data import PKSampler, rank_slice


def reference_pass(labels: list[int], cams: list[int], k: int, rnd: random.Random) -> list[int]:
    """The reference RandomMultipleGallerySampler.__iter__, written out plainly with Python's random."""
    pid_index, pid_cam = defaultdict(list), defaultdict(list)
    for i, (pid, cam) in enumerate(zip(labels, cams, strict=True)):
        if pid >= 0:
            pid_index[pid].append(i)
            pid_cam[pid].append(cam)
    pids = list(pid_index)
    ret = []
    for kid in rnd.sample(range(len(pids)), len(pids)):
        index, cams_of = pid_index[pids[kid]], pid_cam[pids[kid]]
        a = rnd.randrange(len(index))
        ret.append(index[a])
        pool = [j for j in range(len(index)) if cams_of[j] != cams_of[a]]
        if not pool:
            pool = [j for j in range(len(index)) if j != a]
            if not pool:
                continue
        picks = rnd.sample(pool, k - 1) if len(pool) >= k else [rnd.choice(pool) for _ in range(k - 1)]
        ret += [index[j] for j in picks]
    return ret


def toy() -> tuple[torch.Tensor, torch.Tensor]:
    """Clusters covering every rule: many other-cam members (>= k), few (< k), one camera only, a singleton."""
    spec = [  # (label, cameras of its members)
        (3, [0] * 4 + [1] * 6 + [2] * 5),  # pool >= 4 others-cam: without replacement
        (0, [0, 0, 1]),  # anchor cam 0: pool {cam 1} (1 member, replacement); anchor cam 1: pool of 2
        (5, [2, 2, 2]),  # single camera: fallback to the other members (2 < 4: replacement)
        (1, [4]),  # singleton: anchor only
        (-1, [0, 1, 2]),  # outliers: never sampled
        (2, [1] * 6),  # single camera with >= 4 others: fallback without replacement
    ]
    labels, cams = [], []
    for label, cs in spec:
        labels += [label] * len(cs)
        cams += cs
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(labels), generator=g)  # interleave the clusters in store order
    return torch.tensor(labels)[perm], torch.tensor(cams)[perm]


def blocks_of(stream: list[int], labels: list[int]) -> list[list[int]]:
    """Split a pass into runs of equal label (consecutive blocks never share a cluster)."""
    out: list[list[int]] = []
    for i in stream:
        if out and labels[out[-1][0]] == labels[i]:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def check_block(block: list[int], labels: list[int], cams: list[int], k: int) -> None:
    members = [i for i, lab in enumerate(labels) if lab == labels[block[0]]]
    anchor, picks = block[0], block[1:]
    other_cam = [i for i in members if cams[i] != cams[anchor]]
    pool = other_cam or [i for i in members if i != anchor]
    if not pool:
        assert picks == []
        return
    assert len(picks) == k - 1 and set(picks) <= set(pool)
    if len(pool) >= k:
        assert len(set(picks)) == k - 1  # without replacement


def test_every_block_follows_the_rules() -> None:
    labels, cams = toy()
    k = 4
    sampler = PKSampler(
        labels, cams, num_instances=k, batch_size=4, generator=torch.Generator().manual_seed(1)
    )
    lab, cam = labels.tolist(), cams.tolist()
    for _ in range(50):
        stream = sampler.sample_pass().tolist()
        blocks = blocks_of(stream, lab)
        assert sorted(lab[b[0]] for b in blocks) == [0, 1, 2, 3, 5]  # each cluster once, no outliers
        assert len(stream) == 4 * k + 1  # the singleton contributes one image
        for block in blocks:
            check_block(block, lab, cam, k)


def test_distribution_matches_the_reference() -> None:
    """Frequencies of (anchor, picked member) pairs match the plain re-implementation."""
    labels, cams = toy()
    lab, cam, k, passes = labels.tolist(), cams.tolist(), 4, 3000
    ours, ref = Counter(), Counter()
    sampler = PKSampler(
        labels, cams, num_instances=k, batch_size=4, generator=torch.Generator().manual_seed(2)
    )
    rnd = random.Random(2)
    for _ in range(passes):
        for counter, stream in (
            (ours, sampler.sample_pass().tolist()),
            (ref, reference_pass(lab, cam, k, rnd)),
        ):
            for block in blocks_of(stream, lab):
                counter.update((block[0], j) for j in block[1:])
                counter[("anchor", block[0])] += 1
    keys = set(ours) | set(ref)
    assert set(ours) == set(ref)
    for key in keys:  # each count ~ Binomial; allow 5 standard deviations
        expected = ref[key]
        assert abs(ours[key] - expected) <= 5 * (expected**0.5) + 5, (key, ours[key], expected)


def test_cluster_order_is_a_uniform_permutation() -> None:
    labels, cams = toy()
    sampler = PKSampler(
        labels, cams, num_instances=4, batch_size=4, generator=torch.Generator().manual_seed(3)
    )
    lab = labels.tolist()
    firsts = Counter(lab[sampler.sample_pass()[0].item()] for _ in range(2500))
    assert set(firsts) == {0, 1, 2, 3, 5} and all(400 <= c <= 600 for c in firsts.values())


def test_stream_drops_each_pass_tail_and_is_deterministic() -> None:
    labels, cams = toy()
    make = lambda seed: PKSampler(  # noqa: E731
        labels, cams, num_instances=4, batch_size=6, generator=torch.Generator().manual_seed(seed)
    )
    a, b, c = make(7), make(7), make(8)
    passes = [b.sample_pass() for _ in range(4)]  # 17 images each: 2 batches of 6, tail of 5 dropped
    expected = torch.cat([p[:12] for p in passes]).view(-1, 6)
    got = torch.stack([next(a) for _ in range(8)])
    assert torch.equal(got, expected)
    assert not torch.equal(torch.stack([next(c) for _ in range(8)]), got)


def test_num_instances_16_batch_of_16_clusters() -> None:
    """The paper setting: every batch is 16 contiguous blocks of 16 from 16 different clusters."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 40, (2000,), generator=g)
    labels[torch.rand(2000, generator=g) < 0.1] = -1
    cams = torch.randint(0, 6, (2000,), generator=g)
    sampler = PKSampler(
        labels, cams, num_instances=16, batch_size=256, generator=torch.Generator().manual_seed(0)
    )
    for _ in range(5):
        batch = next(sampler)
        assert batch.shape == (256,) and (labels[batch] >= 0).all()
        blocks = labels[batch].view(16, 16)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == 16
        anchors_cam = cams[batch].view(16, 16)[:, :1]
        assert (cams[batch].view(16, 16)[:, 1:] != anchors_cam).all()  # plenty of other-camera members


def test_too_few_clusters_is_a_clear_error() -> None:
    labels = torch.tensor([0, 0, 1, 1, -1])
    with pytest.raises(
        ValueError, match=r"yields 8 images \(2 clusters\) but a batch needs 16: lower data.batch_size"
    ):
        PKSampler(
            labels,
            torch.zeros(5, dtype=torch.long),
            num_instances=4,
            batch_size=16,
            generator=torch.Generator(),
        )


def test_rank_slice_is_contiguous() -> None:
    batch = torch.arange(256)
    parts = [rank_slice(batch, r, 4) for r in range(4)]
    assert all(torch.equal(p, torch.arange(64 * r, 64 * r + 64)) for r, p in enumerate(parts))
    assert torch.equal(rank_slice(batch, 0, 1), batch)
