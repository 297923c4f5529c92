"""Camera-aware PK sampling: the reference's ``RandomMultipleGallerySampler`` (reference 1.2 step 6, quirk #20).

One pass visits the clusters in a random order; each cluster emits one contiguous block: a uniformly drawn
anchor, then ``num_instances - 1`` members drawn from those on *another camera* than the anchor (without
replacement when at least ``num_instances`` exist, else with replacement); when every member shares the
anchor's camera, from the other members under the same rule; a single-member cluster emits only the anchor.
Passes are concatenated into an endless stream of ``batch_size`` batches, each pass's tail dropped (the
reference's DataLoader(drop_last) re-created by IterLoader). Python's/NumPy's uniform choices are replaced by
draws from a torch generator with the same distributions; a pass is vectorised (no loop over samples).
"""

from __future__ import annotations

import math

import torch

from hhcl.errors import FailureError
from hhcl.words import plural


class BatchUnfillableError(FailureError, ValueError):
    """The clusters cannot fill one batch: a pass of the sampler yields ``per_pass`` images, fewer than
    ``batch_size``. ``groups`` counts the clusters (or camera-aware proxies) it drew from. A failure (of that epoch's clustering)."""

    def __init__(
        self, per_pass: int, groups: int, batch_size: int, what: tuple[str, str] = ("cluster", "clusters")
    ) -> None:
        super().__init__(
            f"one sampler pass yields {plural(per_pass, 'image')} ({plural(groups, *what)}) but a batch needs {batch_size}: "
            "lower data.batch_size or get more clusters"
        )
        self.per_pass, self.groups, self.batch_size = per_pass, groups, batch_size


def batch_that_fits(per_pass: int, num_instances: int, bn_group: int) -> dict[str, int] | None:
    """The largest batch one sampler pass of ``per_pass`` images can fill (a multiple of ``num_instances`` with
    at least two clusters in it), with a ghost-BN group that divides it; None when no such batch exists."""
    batch = per_pass - per_pass % num_instances
    if batch < 2 * num_instances:
        return None
    changes = {"data.batch_size": batch}
    if bn_group and batch % bn_group:
        changes["model.bn_group"] = max(g for g in range(1, bn_group + 1) if batch % g == 0)
    return changes


def clusters_needed(batch_size: int, num_instances: int) -> int:
    """How many clusters one batch draws from: each of 2+ images gives ``num_instances`` (a single image gives 1)."""
    return math.ceil(batch_size / num_instances)


def batch_outlook(n_images: int, batch_size: int, num_instances: int) -> tuple[str, str | None]:
    """What a run's batch asks of every clustering of ``n_images`` train images, and why no clustering of them can
    fill it (too few images for that many clusters) with a batch that could be filled, or None when one can."""
    need = clusters_needed(batch_size, num_instances)
    kind = ("cluster", "clusters") if num_instances == 1 else ("cluster of 2+ images", "clusters of 2+ images")
    text = (f"a batch of {batch_size} = {plural(need, 'cluster')} x {plural(num_instances, 'image')}: every clustering "
            f"of the {plural(n_images, 'train image')} must find at least {plural(need, *kind)}")
    most_clusters = n_images // 2 if num_instances > 1 else n_images
    most = most_clusters * num_instances  # images in a pass over the most clusters these images can form
    if most >= batch_size:
        return text, None
    fits = min(most, n_images)  # and no more than the images there are
    return text, (f"{n_images} images form at most {plural(most_clusters, *kind)}: use a smaller batch "
                  f"(--set data.batch_size={max(2, fits - fits % num_instances)}), or more train images")


def _check_inputs(
    labels: torch.Tensor, camids: torch.Tensor, num_instances: int, batch_size: int, generator: torch.Generator
) -> None:
    """The arguments both samplers share: equal 1-d label and camera shapes, positive sizes, one device."""
    if labels.shape != camids.shape or labels.dim() != 1:
        raise ValueError(f"labels {tuple(labels.shape)} and camids {tuple(camids.shape)} must be equal 1-d shapes")
    if num_instances < 1 or batch_size < 1:
        raise ValueError(f"num_instances ({num_instances}) and batch_size ({batch_size}) must be >= 1")
    if not same_device(generator.device, labels.device):
        raise ValueError(f"the generator is on {generator.device} but the labels are on {labels.device}")


class PKSampler:
    """Endless deterministic stream of LongTensor [batch_size] batches of store indices (see module doc)."""

    def __init__(
        self,
        labels: torch.Tensor,
        camids: torch.Tensor,
        *,
        num_instances: int,
        batch_size: int,
        generator: torch.Generator,
    ):
        _check_inputs(labels, camids, num_instances, batch_size, generator)
        self.num_instances, self.batch_size, self.generator = num_instances, batch_size, generator
        self.camids = camids.to(labels.device).long()
        valid = torch.nonzero(labels >= 0).squeeze(1)
        # clusters in first-appearance order of the store (the reference's dict of pids)
        uniq, inverse = torch.unique(labels[valid], return_inverse=True)
        first = torch.full((len(uniq),), len(labels), dtype=torch.long, device=labels.device)
        first.scatter_reduce_(0, inverse, valid, reduce="amin")
        rank = torch.empty_like(first)
        rank[torch.argsort(first)] = torch.arange(len(uniq), device=labels.device)
        cluster = rank[inverse]
        order = torch.argsort(cluster, stable=True)  # members grouped by cluster, store order inside
        self.members = valid[order]
        self.member_cluster = cluster[order]
        self.sizes = torch.bincount(cluster, minlength=len(uniq))
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes
        self.num_clusters = len(uniq)
        per_pass = (
            int(torch.where(self.sizes > 1, num_instances, 1).sum())
            if num_instances > 1
            else self.num_clusters
        )
        if per_pass < batch_size:
            raise BatchUnfillableError(per_pass, self.num_clusters, batch_size)
        self._buffer = torch.empty(0, dtype=torch.long, device=labels.device)

    def sample_pass(self) -> torch.Tensor:
        """One pass of the reference sampler: the concatenated cluster blocks, in a random cluster order."""
        gen, dev, k = self.generator, self.members.device, self.num_instances - 1
        n_clusters = self.num_clusters
        perm = torch.randperm(n_clusters, generator=gen, device=dev)
        anchor_pos = self.offsets + (torch.rand(n_clusters, generator=gen, device=dev) * self.sizes).long()
        anchor_pos = torch.minimum(anchor_pos, self.offsets + self.sizes - 1)
        anchor = self.members[anchor_pos]
        if k == 0:
            return anchor[perm]
        m_cluster = self.member_cluster
        other_cam = self.camids[self.members] != self.camids[anchor][m_cluster]
        n_other_cam = torch.zeros(n_clusters, dtype=torch.long, device=dev).index_add_(
            0, m_cluster, other_cam.long()
        )
        not_anchor = torch.arange(len(self.members), device=dev) != anchor_pos[m_cluster]
        use_cam = n_other_cam > 0
        eligible = torch.where(use_cam[m_cluster], other_cam, not_anchor)
        pool = torch.where(use_cam, n_other_cam, self.sizes - 1)
        # eligible members first (random order) inside each cluster segment
        key = (
            m_cluster.double() * 4
            + (~eligible).double() * 2
            + torch.rand(len(m_cluster), generator=gen, device=dev, dtype=torch.float64)
        )
        shuffled = self.members[torch.argsort(key)]
        replace = pool < self.num_instances
        draw = (
            torch.rand(n_clusters, k, generator=gen, device=dev, dtype=torch.float64) * pool[:, None]
        ).long()
        draw = torch.minimum(draw, (pool[:, None] - 1).clamp_min(0))
        slot = torch.where(replace[:, None], draw, torch.arange(k, device=dev).expand(n_clusters, k))
        picks = shuffled[(self.offsets[:, None] + slot).clamp_max(len(shuffled) - 1)]
        blocks = torch.cat([anchor[:, None], picks], 1)[perm]
        keep = torch.ones_like(blocks, dtype=torch.bool)
        keep[:, 1:] = (pool > 0)[perm][:, None]
        return blocks[keep]

    def __iter__(self) -> PKSampler:
        return self

    def __next__(self) -> torch.Tensor:
        while len(self._buffer) < self.batch_size:
            fresh = self.sample_pass()
            usable = len(fresh) - len(fresh) % self.batch_size
            self._buffer = torch.cat([self._buffer, fresh[:usable]])
        batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
        return batch


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same (``cuda`` and ``cuda:0`` count as equal for the current device)."""
    if a.type != b.type:
        return False
    current = torch.cuda.current_device() if a.type == "cuda" else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of a global batch (DataParallel's chunking, reference 5.3)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    if len(batch) % world_size:
        raise ValueError(f"batch of {len(batch)} does not split evenly over {world_size} ranks")
    per = len(batch) // world_size
    return batch[rank * per : (rank + 1) * per]


class ProxySampler(PKSampler):
    """O2CAP's ``ClassUniformlySampler`` over camera-aware proxies (its ``train.py``: class = proxy label, k =
    ``num_instances``): one pass visits every (cluster, camera) proxy in a random order and emits ``k`` of its
    images, drawn without replacement when it has at least ``k``, else ``k`` from the proxy's list repeated ``k``
    times and shuffled (the authors' ``value * k``). Passes are concatenated and each pass's tail dropped as in
    :class:`PKSampler` (their DataLoader(drop_last) under IterLoader). Python's ``random.shuffle`` is replaced by
    torch-generator draws with the same distribution; a pass is vectorised."""

    def __init__(
        self,
        labels: torch.Tensor,
        camids: torch.Tensor,
        *,
        num_instances: int,
        batch_size: int,
        generator: torch.Generator,
    ):
        _check_inputs(labels, camids, num_instances, batch_size, generator)
        self.num_instances, self.batch_size, self.generator = num_instances, batch_size, generator
        cams = camids.to(labels.device).long()
        valid = torch.nonzero(labels >= 0).squeeze(1)
        _, proxy = torch.unique(labels[valid] * (int(cams.max()) + 1) + cams[valid], return_inverse=True)
        self.num_clusters = int(proxy.max()) + 1 if len(proxy) else 0  # here: proxies
        sizes = torch.bincount(proxy, minlength=self.num_clusters)
        copies = torch.where(sizes >= num_instances, 1, num_instances)[proxy]  # the authors' value * k
        self.candidates = valid.repeat_interleave(copies)
        self.candidate_proxy = proxy.repeat_interleave(copies)
        if self.num_clusters * num_instances < batch_size:
            raise BatchUnfillableError(self.num_clusters * num_instances, self.num_clusters, batch_size,
                                       ("camera-aware proxy", "camera-aware proxies"))
        self._buffer = torch.empty(0, dtype=torch.long, device=labels.device)

    def sample_pass(self) -> torch.Tensor:
        """One pass: the proxies in a random order, ``k`` shuffled candidates of each."""
        gen, dev, k = self.generator, self.candidates.device, self.num_instances
        perm = torch.randperm(self.num_clusters, generator=gen, device=dev)
        slot = torch.empty_like(perm)
        slot[perm] = torch.arange(self.num_clusters, device=dev)
        key = slot[self.candidate_proxy].double() * 2 + torch.rand(
            len(self.candidates), generator=gen, device=dev, dtype=torch.float64
        )
        order = torch.argsort(key)
        counts = torch.bincount(self.candidate_proxy, minlength=self.num_clusters)[perm]
        starts = counts.cumsum(0) - counts
        take = (starts[:, None] + torch.arange(k, device=dev)).flatten()
        return self.candidates[order[take]]
