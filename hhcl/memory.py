"""Hybrid cluster memory bank (CM, CMhard, CMhybrid, CMhybrid_v2) and its contrastive losses.

Reproduces the reference ``ClusterMemory`` (reference doc 1.2 steps 5 and 8) exactly, loss coefficients and
update rules included, without its per-sample Python loops: one host sync per update, then segment
reductions over at most (largest cluster count in the batch) rounds. Every reduction is deterministic, so
all DDP ranks that apply the update to the same all-gathered batch hold bit-identical memories.

Each mode is one :class:`_Mode` of ``_MODES`` (its rows, loss and update rule); :class:`Memory` is the protocol
every memory bank follows, and ``hhcl.memories.MEMORIES`` the table the engine builds them from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhcl import distributed
from hhcl.config import check_memory

__all__ = ["MODES", "HybridMemory", "Memory", "cluster_centroids", "momentum_blend", "sample_instances"]

SMOOTH_EPSILON = 0.1  # the reference hard-codes epsilon; memory.smooth > 0 only switches smoothing on


class Memory(Protocol):
    """What the engine and the epoch set-up use of a memory bank (every entry of ``hhcl.memories.MEMORIES``).

    ``loss = memory(f, y, camids)`` (``camids`` None unless the memory takes camera ids), then ``update(f, y,
    camids)`` after backward; ``last_parts`` names the loss terms for the ``step`` event; the state dict is what a
    mid-epoch checkpoint keeps, loaded into a memory built shape-only on resume.
    """

    def __call__(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> Tensor: ...

    def update(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> None: ...

    @property
    def last_parts(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any: ...

    def to(self, device: torch.device | str) -> Memory: ...


def _check_labels(labels: Tensor, n: int, where: str) -> Tensor:
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(
            f"{where}: labels must be a 1-D tensor of {n} cluster ids, got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{where}: labels must be integer cluster ids, got dtype {labels.dtype}")
    return labels.long()


def cluster_centroids(features: Tensor, labels: Tensor, num_clusters: int | None = None) -> Tensor:
    """[C, D] float32 mean feature of each cluster 0..C-1 (label -1 = outlier, excluded), via index_add."""
    if features.dim() != 2:
        raise ValueError(f"cluster_centroids: features must be [N, D], got shape {tuple(features.shape)}")
    if features.shape[0] == 0:
        raise ValueError("cluster_centroids: no features were given (N = 0)")
    labels = _check_labels(labels, features.shape[0], "cluster_centroids").to(features.device)
    keep = labels >= 0
    y, f = labels[keep], features[keep].float()
    if num_clusters is None:
        if y.numel() == 0:
            raise ValueError("cluster_centroids: every label is -1 (outlier), so there are no clusters")
        num_clusters = int(y.max().item()) + 1
    lo, hi = (int(v) for v in torch.stack([labels.min(), labels.max()]).tolist())
    if lo < -1 or hi >= num_clusters:
        raise ValueError(
            f"cluster_centroids: labels must lie in [-1, {num_clusters - 1}] (num_clusters={num_clusters}), "
            f"got values from {lo} to {hi}"
        )
    counts = torch.zeros(num_clusters, dtype=torch.float32, device=f.device).index_add_(
        0, y, torch.ones_like(y, dtype=torch.float32)
    )
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"cluster_centroids: cluster ids {empty[:10]}{'...' if len(empty) > 10 else ''} have no members; "
            "relabel the clusters to 0..C-1 or pass a smaller num_clusters"
        )
    sums = torch.zeros(num_clusters, f.shape[1], dtype=torch.float32, device=f.device).index_add_(0, y, f)
    return sums / counts[:, None]


def sample_instances(
    features: Tensor,
    labels: Tensor,
    num_clusters: int,
    num_instances: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[P, C, D]: slot k of cluster c is a member of c drawn uniformly with replacement (CMhybrid_v2 init)."""
    labels = _check_labels(labels, features.shape[0], "sample_instances").to(features.device)
    members = (labels >= 0).nonzero().flatten()
    order = members[torch.argsort(labels[members], stable=True)]
    counts = torch.zeros(num_clusters, dtype=torch.long, device=features.device).index_add_(
        0, labels[members], torch.ones_like(members)
    )
    starts = counts.cumsum(0) - counts
    rand_device = generator.device if generator is not None else features.device
    u = torch.rand(
        (num_instances, num_clusters), generator=generator, device=rand_device, dtype=torch.float64
    )
    u = u.to(features.device)
    offset = torch.minimum((u * counts).long(), counts - 1)
    picks = order[starts + offset].flatten()
    return features.index_select(0, picks).float().view(num_instances, num_clusters, -1)


def momentum_blend(bank: Tensor, rows: Tensor, samples: Tensor, momentum: float) -> None:
    """bank[rows] = normalise(m * bank[rows] + (1 - m) * samples) in place; rows must be distinct."""
    new = bank.index_select(0, rows) * momentum + (1 - momentum) * samples
    bank.index_copy_(0, rows, new / new.norm(dim=1, keepdim=True))


@dataclass(frozen=True)
class _Segments:
    """The batch grouped by cluster: rounds[r] = batch indices of each cluster's r-th member, batch order."""

    rounds: tuple[Tensor, ...]
    occ: Tensor  # [B] index of each sample among its cluster's members, in batch order
    gid: Tensor  # [B] group of each sample, 0..G-1 in order of first appearance
    uniq: Tensor  # [G] cluster id of each group
    counts: Tensor  # [G] members per group


def _segments(y: Tensor, num_clusters: int) -> _Segments:
    """Group a batch by label with sorts and scatters; the only host sync is reading the round sizes."""
    n = y.numel()
    ar = torch.arange(n, device=y.device)
    yc = y.clamp(0, num_clusters - 1)
    order = torch.argsort(yc, stable=True)
    per_cluster = torch.zeros(num_clusters, dtype=torch.long, device=y.device).scatter_add_(
        0, yc, torch.ones_like(yc)
    )
    starts = per_cluster.cumsum(0) - per_cluster
    occ = torch.empty_like(yc).scatter_(0, order, ar - starts[yc[order]])
    sizes = torch.zeros(n + 2, dtype=torch.long, device=y.device).scatter_add_(0, occ, torch.ones_like(occ))
    sizes[n] = y.min()
    sizes[n + 1] = y.max()
    *sizes_list, lo, hi = sizes.tolist()
    if lo < 0 or hi >= num_clusters:
        raise ValueError(
            f"memory.update: labels must lie in [0, {num_clusters - 1}], got values from {lo} to {hi}"
        )
    sizes_list = [s for s in sizes_list if s > 0]  # non-increasing: round r holds clusters with > r members
    rounds = torch.split(torch.argsort(occ, stable=True), sizes_list)
    uniq = y[rounds[0]]
    group_of = torch.zeros(num_clusters, dtype=torch.long, device=y.device)
    group_of[uniq] = torch.arange(uniq.numel(), device=y.device)
    return _Segments(rounds, occ, group_of[y], uniq, per_cluster[uniq])


def _group_sums(f: Tensor, seg: _Segments) -> Tensor:
    """[G, D] per-cluster sums accumulated in batch order (each round adds to distinct rows: deterministic)."""
    acc = f.new_zeros(seg.uniq.numel(), f.shape[1])
    for idx in seg.rounds:
        acc.index_add_(0, seg.gid[idx], f.index_select(0, idx))
    return acc


def _hardest(f: Tensor, proto: Tensor, seg: _Segments) -> Tensor:
    """[G] batch index of each cluster's member least similar to its prototype row (first on ties)."""
    n = f.shape[0]
    sim = (f * proto.index_select(0, seg.gid)).sum(dim=1)
    smin = torch.full((seg.uniq.numel(),), float("inf"), dtype=sim.dtype, device=f.device)
    smin.scatter_reduce_(0, seg.gid, sim, reduce="amin")
    ar = torch.arange(n, device=f.device)
    cand = torch.where((sim == smin[seg.gid]) | sim.isnan(), ar, n)  # NaN wins, as in np.argmin
    first = torch.full((seg.uniq.numel(),), n, dtype=torch.long, device=f.device)
    return first.scatter_reduce_(0, seg.gid, cand, reduce="amin")


class HybridMemory(nn.Module):
    """Cluster memory with the reference's contrastive losses; ``loss = memory(f, y)``, then ``update(f, y)``.

    Buffer ``features`` (float32) holds the rows: CM/CMhard [C, D]; CMhybrid [2C, D] (hard rows 0..C-1,
    mean rows C..2C-1); CMhybrid_v2 [(P+1)C, D] (centroid rows 0..C-1, instance slot k at rows kC..kC+C-1).
    Each mode's rows, loss and update rule are one :class:`_Mode` of ``_MODES``.
    """

    def __init__(
        self,
        centroids: Tensor,
        *,
        mode: str = "CMhybrid",
        temp: float = 0.05,
        momentum: float = 0.1,
        hard_weight: float = 0.5,
        smooth: float = 0.0,
        num_instances: int = 16,
        instance_features: Tensor | None = None,
        loss_form: str = "reference",
    ) -> None:
        super().__init__()
        check_memory(  # the config's own bounds (a ConfigError, i.e. a ValueError, names the key)
            mode=mode,
            temp=temp,
            momentum=momentum,
            hard_weight=hard_weight,
            smooth=smooth,
            loss_form=loss_form,
        )
        if mode not in _MODES:
            raise ValueError(f"memory.mode = {mode!r} is not an HHCL mode ({', '.join(_MODES)}): build it from hhcl.memories")
        if num_instances < 1:
            raise ValueError(f"num_instances = {num_instances!r} is not allowed: must be at least 1")
        if centroids.dim() != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(
                f"centroids must be a non-empty [C, D] tensor, got shape {tuple(centroids.shape)}"
            )
        self.mode, self.temp, self.momentum = mode, float(temp), float(momentum)
        self.hard_weight, self.smooth, self.loss_form = float(hard_weight), float(smooth), loss_form
        self.num_clusters, self.num_features = centroids.shape
        self.num_instances = int(num_instances)
        self._rule = _MODES[mode]
        if instance_features is not None and not self._rule.instance_slots:
            raise ValueError(f"instance_features is only used by mode CMhybrid_v2, not {mode}")
        rows = [centroids.float(), *self._rule.extra_rows(self, centroids, instance_features)]
        self.register_buffer("features", F.normalize(torch.cat(rows), dim=1))
        self._parts: dict[str, Tensor] = {}

    @classmethod
    def from_features(
        cls, features: Tensor, labels: Tensor, *, generator: torch.Generator | None = None, **kw
    ) -> HybridMemory:
        """Memory from cluster centroids of ``features`` (labels -1 excluded); CMhybrid_v2 samples its slots.

        Under DDP the result is broadcast from rank 0, so every rank starts from the same memory.
        """
        centroids = cluster_centroids(features, labels)
        rule = _MODES.get(kw.get("mode", "CMhybrid"))
        if rule is not None and rule.instance_slots and kw.get("instance_features") is None:
            kw["instance_features"] = sample_instances(
                features, labels, centroids.shape[0], kw.get("num_instances", 16), generator
            )
        memory = cls(centroids, **kw)
        distributed.broadcast(memory.features, src=0)
        return memory

    @property
    def last_parts(self) -> dict[str, float]:
        """The unweighted loss terms of the last forward (read lazily, so no sync unless logged)."""
        return {k: float(v) for k, v in self._parts.items()}

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode}, clusters={self.num_clusters}, dim={self.num_features}, temp={self.temp}, "
            f"momentum={self.momentum}, hard_weight={self.hard_weight}, smooth={self.smooth}, "
            f"loss_form={self.loss_form}"
        )

    def _batch(self, features: Tensor, labels: Tensor, where: str) -> tuple[Tensor, Tensor]:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"memory.{where}: features must be [B, {self.num_features}], got shape {tuple(features.shape)}"
            )
        y = _check_labels(labels, features.shape[0], f"memory.{where}")
        dev = self.features.device
        return features.to(dev, torch.float32), y.to(dev)

    def _cross_entropy(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean CE, or the reference's label smoothing (eps 0.1; top-k with k = C // 50, uniform if k <= 1)."""
        if self.smooth <= 0:
            return F.cross_entropy(logits, y)
        logp = F.log_softmax(logits, dim=1)
        n_cls = logits.shape[1]
        k = n_cls // 50
        onehot = torch.zeros_like(logp).scatter_(1, y[:, None], 1.0)
        if k > 1:
            top = torch.topk(logp.detach(), k, dim=1).indices
            target = (1 - SMOOTH_EPSILON) * onehot + torch.zeros_like(logp).scatter_(
                1, top, SMOOTH_EPSILON / k
            )
        else:
            target = (1 - SMOOTH_EPSILON) * onehot + SMOOTH_EPSILON / n_cls
        return (-target * logp).mean(0).sum()

    def forward(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> Tensor:
        """Scalar loss of ``features`` [B, D] against the memory as it is (gradient to the features only).

        ``camids`` is taken for the :class:`Memory` protocol and not used: these losses have no camera terms.
        """
        f, y = self._batch(features, labels, "forward")
        with torch.autocast(device_type=f.device.type, enabled=False):
            loss, self._parts = self._rule.loss(self, f @ self.features.t(), y)
        return loss

    def _blend(self, rows: Tensor, samples: Tensor) -> None:
        """features[rows] = normalise(m * features[rows] + (1 - m) * samples); rows must be distinct."""
        momentum_blend(self.features, rows, samples, self.momentum)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> None:
        """Apply the reference update for the (all-gathered, rank-ordered) batch; call after backward."""
        f, y = self._batch(features.detach(), labels, "update")
        f, y = distributed.all_gather_cat(f), distributed.all_gather_cat(y)
        if y.numel() == 0:
            return
        self._rule.update(self, f, y, _segments(y, self.num_clusters))


# ---------------------------------------------------------------- the HHCL modes (reference doc 1.2 steps 5, 8)
def _no_rows(memory: HybridMemory, centroids: Tensor, instance_features: Tensor | None) -> list[Tensor]:
    """CM, CMhard: the centroids are the whole memory."""
    return []


def _mean_rows(memory: HybridMemory, centroids: Tensor, instance_features: Tensor | None) -> list[Tensor]:
    """CMhybrid: a second copy of the centroids, the mean half (the first copy is the hard half)."""
    return [centroids.float()]


def _slot_rows(memory: HybridMemory, centroids: Tensor, instance_features: Tensor | None) -> list[Tensor]:
    """CMhybrid_v2: ``num_instances`` slots per cluster; None (a memory about to load a checkpoint): centroids."""
    want = (memory.num_instances, memory.num_clusters, memory.num_features)
    if instance_features is None:
        instance_features = centroids.float().expand(*want)
    if tuple(instance_features.shape) != want:
        raise ValueError(
            f"instance_features must have shape [num_instances, C, D] = {list(want)}, "
            f"got {list(instance_features.shape)}; build it with HybridMemory.from_features"
        )
    return [instance_features.to(centroids.device, torch.float32).reshape(-1, memory.num_features)]


def _single_loss(memory: HybridMemory, logits: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """CM, CMhard: CE over all rows."""
    loss = memory._cross_entropy(logits / memory.temp, y)
    return loss, {"loss_ce": loss.detach()}


def _hybrid_loss(memory: HybridMemory, logits: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """CMhybrid: CE over the hard half and over the mean half, combined as ``memory.loss_form`` says."""
    hw = memory.hard_weight
    hard, mean = (logits / memory.temp).split(memory.num_clusters, dim=1)
    ce_hard, ce_mean = memory._cross_entropy(hard, y), memory._cross_entropy(mean, y)
    # reference: hw * (CE_hard + (1 - hw) * CE_mean), i.e. 0.5 / 0.25 (quirk 12)
    if memory.loss_form == "reference":
        loss = hw * (ce_hard + (1 - hw) * ce_mean)
    else:
        loss = hw * ce_hard + (1 - hw) * ce_mean
    return loss, {"loss_hard": ce_hard.detach(), "loss_mean": ce_mean.detach()}


def _instance_loss(memory: HybridMemory, logits: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """CMhybrid_v2: CE over the centroids, and over the hardest slots (min at the label, max elsewhere)."""
    hw = memory.hard_weight
    out = logits.view(logits.shape[0], memory.num_instances + 1, memory.num_clusters)
    inst = out[:, 1:]
    pos, neg = inst.min(dim=1).values, inst.max(dim=1).values
    is_gt = torch.zeros_like(pos, dtype=torch.bool).scatter_(1, y[:, None], True)
    hard = torch.where(is_gt, pos, neg)
    ce_cent = memory._cross_entropy(out[:, 0] / memory.temp, y)
    ce_hard = memory._cross_entropy(hard / memory.temp, y)
    loss = hw * ce_cent + (1 - hw) * ce_hard  # convex in both loss forms
    return loss, {"loss_centroid": ce_cent.detach(), "loss_hard": ce_hard.detach()}


def _update_each(memory: HybridMemory, f: Tensor, y: Tensor, seg: _Segments) -> None:
    """CM: sequential per sample in batch order (round r = every cluster's r-th member)."""
    for idx in seg.rounds:
        memory._blend(y[idx], f.index_select(0, idx))


def _update_hardest(memory: HybridMemory, f: Tensor, y: Tensor, seg: _Segments) -> None:
    """CMhard (and CMhybrid's hard half): each cluster's row blends its least similar member of the batch."""
    hard = _hardest(f, memory.features.index_select(0, seg.uniq), seg)
    memory._blend(seg.uniq, f.index_select(0, hard))


def _blend_means(memory: HybridMemory, f: Tensor, seg: _Segments, first_row: int) -> None:
    """Rows ``first_row + c`` blend the batch mean of cluster c's members."""
    mean = _group_sums(f, seg) / seg.counts[:, None].to(f.dtype)
    memory._blend(seg.uniq + first_row, mean)


def _update_hybrid(memory: HybridMemory, f: Tensor, y: Tensor, seg: _Segments) -> None:
    """CMhybrid: the hard half as CMhard, then the mean half (rows C..2C-1) from the batch means."""
    _update_hardest(memory, f, y, seg)
    _blend_means(memory, f, seg, memory.num_clusters)


def _update_slots(memory: HybridMemory, f: Tensor, y: Tensor, seg: _Segments) -> None:
    """CMhybrid_v2: slots 1..n_c overwritten in batch order (no momentum), then the centroids from the means."""
    if len(seg.rounds) > memory.num_instances:
        raise ValueError(
            f"memory.update: a cluster has {len(seg.rounds)} images in the batch but CMhybrid_v2 keeps "
            f"only num_instances={memory.num_instances} slots; set num_instances to data.num_instances"
        )
    memory.features.index_copy_(0, y + (seg.occ + 1) * memory.num_clusters, f)
    _blend_means(memory, f, seg, 0)


@dataclass(frozen=True)
class _Mode:
    """One HHCL mode: the rows it keeps after the centroids, its loss over the logits, its update rule."""

    extra_rows: Callable[[HybridMemory, Tensor, Tensor | None], list[Tensor]]
    loss: Callable[[HybridMemory, Tensor, Tensor], tuple[Tensor, dict[str, Tensor]]]
    update: Callable[[HybridMemory, Tensor, Tensor, _Segments], None]
    instance_slots: bool = False  # rows hold member instances: from_features samples them


_MODES: dict[str, _Mode] = {
    "CM": _Mode(_no_rows, _single_loss, _update_each),
    "CMhard": _Mode(_no_rows, _single_loss, _update_hardest),
    "CMhybrid": _Mode(_mean_rows, _hybrid_loss, _update_hybrid),
    "CMhybrid_v2": _Mode(_slot_rows, _instance_loss, _update_slots, instance_slots=True),
}
#: the modes HybridMemory builds (hhcl.memories makes each a table entry)
MODES = tuple(_MODES)
