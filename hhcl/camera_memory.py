"""Camera-aware proxy memory: O2CAP (Wang et al., IEEE TIP 2022; code github:Terminator8758/O2CAP), and its terms
added to HHCL's hybrid memory (``memory.camera_aware``).

Each cluster is split into proxies, one per (cluster, camera) pair, numbered by cluster then camera as the authors'
``train.py`` numbers them; the memory holds one L2-normalised row per proxy, initialised from the proxy's mean
train feature. ``loss = memory(f, y, cams)`` reproduces ``CameraAwareMemory.forward`` (``reid/models/o2cap.py``):
per camera present in the batch, the mean over its samples of

- intra (``intra_weight``): cross-entropy over the proxies of the sample's own camera, target its own proxy;
- offline (``offline_weight``): all proxies of the sample's cluster as positives (uniform target) against its
  ``bg_knn`` most similar other proxies;
- online (``online_weight``): similarity ``balance_w * <f, proxy> + (1 - balance_w) * <own proxy, proxy>``; each
  camera's most similar proxy, the ``pos_k`` best of those as positives against the ``bg_knn`` most similar others;

summed over the cameras (so each camera weighs the same whatever its share of the batch), logits ``<f, proxy> /
temp``. ``update(f, y, cams)`` is ``ExemplarMemory``'s backward: per sample in batch order, ``row = normalise(m *
row + (1 - m) * f)``. Vectorised: masked log-sum-exps, top-k and segment max over cameras, the memory update in
rounds (``hhcl.memory``); no loop over samples or cameras. Under DDP the per-camera counts come from the global
batch (one all-gather of the camera ids), each rank's loss is scaled so DDP's gradient average equals the
single-process gradient, and ``update`` applies the all-gathered batch, as ``HybridMemory`` does.

Named differences from the authors' code (everything else is theirs):

1. Intra loss: their ``get_intra_loss_all_cams`` indexes the camera scalar it is given (``cams[i]`` of a 0-d
   tensor), which raises, so their ``train.py`` runs with it off; here it uses the sample's camera, its evident
   intent. The presets keep it off (``intra_weight = 0``), as theirs.
2. Online loss with fewer than ``bg_knn + pos_k`` proxies: their soft target keeps ``bg_knn + pos_k`` entries and
   fails to broadcast; here every proxy is selected and the ``min(pos_k, P)`` best are the positives.
3. A camera of the train set without any clustered image: their per-camera ``argmax`` of an empty set raises;
   here such a camera is skipped.
4. Ties (equal similarities) are broken by the lowest proxy index; their ``sort``/``argsort`` order is unspecified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hhcl import distributed
from hhcl.config import check_camera_memory, check_memory
from hhcl.memory import Memory, _segments, cluster_centroids, momentum_blend

__all__ = ["CameraAwareHybrid", "CameraMemory", "Proxies", "camera_proxies"]


@dataclass(frozen=True)
class Proxies:
    """The epoch's camera-aware proxies: per-image proxy id (-1 = outlier), each proxy's cluster and camera."""

    of_image: Tensor  # [N]
    cluster: Tensor  # [P]
    camera: Tensor  # [P]
    num_cameras: int


def camera_proxies(labels: Tensor, camids: Tensor) -> Proxies:
    """The (cluster, camera) pairs of the pseudo labels, numbered by cluster then camera (the authors' order)."""
    if labels.dim() != 1 or labels.shape != camids.shape:
        raise ValueError(
            f"camera_proxies: labels {tuple(labels.shape)} and camids {tuple(camids.shape)} must be equal 1-d shapes"
        )
    labels, camids = labels.long(), camids.to(labels.device).long()
    lo, hi = (int(v) for v in torch.stack([camids.min(), camids.max()]).tolist())
    if lo < 0:
        raise ValueError(f"camera_proxies: camera ids must be >= 0, got {lo}")
    num_cameras = hi + 1
    keep = labels >= 0
    uniq, inverse = torch.unique(labels[keep] * num_cameras + camids[keep], return_inverse=True)
    of_image = torch.full_like(labels, -1)
    of_image[keep] = inverse
    return Proxies(of_image, uniq // num_cameras, uniq % num_cameras, num_cameras)


def _masked_logsumexp(x: Tensor, keep: Tensor) -> Tensor:
    """Row-wise log-sum-exp of ``x`` over the entries where ``keep`` is True."""
    return torch.logsumexp(x.masked_fill(~keep, float("-inf")), dim=1)


class CameraMemory(nn.Module):
    """O2CAP's proxy memory and losses (see module doc); ``loss = memory(f, y, cams)``, then ``update(f, y, cams)``.

    Buffers: ``features`` [P, D] proxy rows, ``proxy_cluster`` / ``proxy_camera`` [P], ``table`` [C, K] proxy of
    each (cluster, camera), -1 where that camera saw none of the cluster.
    """

    def __init__(
        self,
        centroids: Tensor,
        proxy_cluster: Tensor,
        proxy_camera: Tensor,
        *,
        num_cameras: int,
        temp: float = 0.07,
        momentum: float = 0.2,
        intra_weight: float = 0.0,
        offline_weight: float = 1.0,
        online_weight: float = 1.0,
        bg_knn: int = 50,
        pos_k: int = 3,
        balance_w: float = 0.15,
    ) -> None:
        super().__init__()
        check_camera_memory(
            intra_weight=intra_weight,
            offline_weight=offline_weight,
            online_weight=online_weight,
            bg_knn=bg_knn,
            pos_k=pos_k,
            balance_w=balance_w,
        )
        check_memory(mode="O2CAP", temp=temp, momentum=momentum, hard_weight=0.5, smooth=0.0, loss_form="reference")
        n = centroids.shape[0]
        if centroids.dim() != 2 or proxy_cluster.shape != (n,) or proxy_camera.shape != (n,):
            raise ValueError(
                f"centroids [P, D] {tuple(centroids.shape)}, proxy_cluster {tuple(proxy_cluster.shape)} and "
                f"proxy_camera {tuple(proxy_camera.shape)} must agree on P"
            )
        num_clusters = int(proxy_cluster.max().item()) + 1
        table = torch.full((num_clusters, num_cameras), -1, dtype=torch.long, device=centroids.device)
        table[proxy_cluster.long(), proxy_camera.long()] = torch.arange(n, device=centroids.device)
        if int((table >= 0).sum().item()) != n:
            raise ValueError("proxy_cluster/proxy_camera repeat a (cluster, camera) pair: build them with camera_proxies")
        self.temp, self.momentum = float(temp), float(momentum)
        self.intra_weight, self.offline_weight = float(intra_weight), float(offline_weight)
        self.online_weight, self.bg_knn, self.pos_k = float(online_weight), int(bg_knn), int(pos_k)
        self.balance_w, self.num_cameras = float(balance_w), int(num_cameras)
        self.num_proxies, self.num_features = centroids.shape
        self.register_buffer("features", F.normalize(centroids.float(), dim=1))
        self.register_buffer("proxy_cluster", proxy_cluster.long().clone())
        self.register_buffer("proxy_camera", proxy_camera.long().clone())
        self.register_buffer("table", table)
        self.cameras_with_proxies = int(torch.unique(proxy_camera).numel())  # per-camera positives: at most this
        self._parts: dict[str, Tensor] = {}

    @classmethod
    def from_features(cls, features: Tensor, labels: Tensor, camids: Tensor, **kw) -> CameraMemory:
        """Memory from the proxies' mean features (labels -1 excluded); broadcast from rank 0 under DDP."""
        proxies = camera_proxies(labels.to(features.device), camids.to(features.device))
        centroids = cluster_centroids(features, proxies.of_image)
        memory = cls(centroids, proxies.cluster, proxies.camera, num_cameras=proxies.num_cameras, **kw)
        distributed.broadcast(memory.features, src=0)
        return memory

    @classmethod
    def shaped(cls, labels: Tensor, camids: Tensor, num_features: int, **kw) -> CameraMemory:
        """An all-zero memory of the right shape (a resumed epoch; filled by ``load_state_dict``)."""
        proxies = camera_proxies(labels, camids)
        zeros = torch.zeros(proxies.cluster.numel(), num_features, device=labels.device)
        return cls(zeros, proxies.cluster, proxies.camera, num_cameras=proxies.num_cameras, **kw)

    @property
    def last_parts(self) -> dict[str, float]:
        """The unweighted loss terms of the last forward (read lazily, so no sync unless logged)."""
        return {k: float(v) for k, v in self._parts.items()}

    def extra_repr(self) -> str:
        return (
            f"proxies={self.num_proxies}, cameras={self.num_cameras}, dim={self.num_features}, temp={self.temp}, "
            f"momentum={self.momentum}, weights(intra, offline, online)=({self.intra_weight}, "
            f"{self.offline_weight}, {self.online_weight}), bg_knn={self.bg_knn}, pos_k={self.pos_k}, "
            f"balance_w={self.balance_w}"
        )

    def _batch(
        self, features: Tensor, labels: Tensor, camids: Tensor | None, where: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Features, cameras and each sample's proxy; no camera ids, or a (cluster, camera) without proxy: an error."""
        if camids is None:
            raise ValueError(f"memory.{where}: the camera-aware proxy memory needs the batch's camera ids")
        b = features.shape[0]
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"memory.{where}: features must be [B, {self.num_features}], got shape {tuple(features.shape)}"
            )
        if labels.shape != (b,) or camids.shape != (b,):
            raise ValueError(
                f"memory.{where}: labels {tuple(labels.shape)} and camids {tuple(camids.shape)} must both be [{b}]"
            )
        dev = self.features.device
        y, cams = labels.to(dev).long(), camids.to(dev).long()
        yc = y.clamp(0, self.table.shape[0] - 1)
        cc = cams.clamp(0, self.num_cameras - 1)
        proxy = self.table[yc, cc]
        if bool(((y != yc) | (cams != cc) | (proxy < 0)).any()):
            raise ValueError(
                f"memory.{where}: a (cluster, camera) pair of the batch has no proxy; the labels and camera ids must "
                f"be the ones the memory was built from ({self.table.shape[0]} clusters, {self.num_cameras} cameras)"
            )
        return features.to(dev, torch.float32), cams, proxy

    def _camera_weights(self, cams: Tensor) -> Tensor:
        """[B] world_size / (global batch count of the sample's camera): the authors' sum of per-camera means."""
        counts = torch.bincount(distributed.all_gather_cat(cams), minlength=self.num_cameras)
        return distributed.get_world_size() / counts[cams].to(torch.float32)

    def _offline(self, logits: Tensor, y: Tensor) -> Tensor:
        """[B] offline association: the cluster's proxies (uniform) vs its ``bg_knn`` most similar other proxies."""
        pos = self.proxy_cluster[None, :] == y[:, None]
        neg = logits.detach().masked_fill(pos, float("-inf"))
        top = torch.topk(neg, min(self.bg_knn, self.num_proxies), dim=1).indices
        chosen = torch.zeros_like(pos).scatter_(1, top, True)
        keep = pos | (chosen & ~pos)
        return _masked_logsumexp(logits, keep) - (logits * pos).sum(1) / pos.sum(1)

    def _online(self, logits: Tensor, score: Tensor, proxy: Tensor) -> Tensor:
        """[B] online association: top ``pos_k`` per-camera nearest proxies vs the ``bg_knn`` nearest others."""
        b, p, k = score.shape[0], self.num_proxies, self.num_cameras
        w, bank = self.balance_w, self.features
        sims = w * score.detach() + (1 - w) * (bank.index_select(0, proxy) @ bank.t())
        cam = self.proxy_camera.expand(b, p)
        cam_max = sims.new_full((b, k), float("-inf")).scatter_reduce_(1, cam, sims, reduce="amax")
        ar = torch.arange(p, device=sims.device).expand(b, p)
        cand = torch.where(sims == cam_max.gather(1, cam), ar, p)
        first = torch.full((b, k), p, dtype=torch.long, device=sims.device).scatter_reduce_(1, cam, cand, "amin")
        top_cams = torch.topk(cam_max, min(self.pos_k, self.cameras_with_proxies), dim=1).indices  # -inf: no proxy
        marked = sims.scatter(1, first.gather(1, top_cams), float("inf"))
        picked = torch.topk(marked, min(self.bg_knn + self.pos_k, p), dim=1).indices  # positives first
        chosen = logits.gather(1, picked)
        return torch.logsumexp(chosen, dim=1) - chosen[:, : min(self.pos_k, p)].mean(1)

    def forward(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> Tensor:
        """Scalar loss of ``features`` [B, D] with cluster ``labels`` and ``camids`` [B] (gradient to features)."""
        f, cams, proxy = self._batch(features, labels, camids, "forward")
        y = self.proxy_cluster[proxy]
        with torch.autocast(device_type=f.device.type, enabled=False):
            score = f @ self.features.t()
            logits = score / self.temp
            weight = self._camera_weights(cams)
            terms: dict[str, tuple[float, Tensor]] = {}
            if self.intra_weight > 0:
                same = self.proxy_camera[None, :] == cams[:, None]
                own = logits.gather(1, proxy[:, None])[:, 0]
                terms["loss_intra"] = (self.intra_weight, _masked_logsumexp(logits, same) - own)
            if self.offline_weight > 0:
                terms["loss_offline"] = (self.offline_weight, self._offline(logits, y))
            if self.online_weight > 0:
                terms["loss_online"] = (self.online_weight, self._online(logits, score, proxy))
            parts = {name: (weight * per_sample).sum() for name, (_, per_sample) in terms.items()}
            loss = sum(terms[name][0] * value for name, value in parts.items())
        self._parts = {k: v.detach() for k, v in parts.items()}
        return loss

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> None:
        """The authors' momentum update, per sample in (all-gathered, rank-ordered) batch order; after backward."""
        f, _, proxy = self._batch(features.detach(), labels, camids, "update")
        f, proxy = distributed.all_gather_cat(f), distributed.all_gather_cat(proxy)
        if proxy.numel() == 0:
            return
        for idx in _segments(proxy, self.num_proxies).rounds:
            momentum_blend(self.features, proxy[idx], f.index_select(0, idx), self.momentum)


class CameraAwareHybrid(nn.Module):
    """HHCL's hybrid memory plus O2CAP's camera-aware proxy terms (``memory.camera_aware = true``).

    The loss is the HHCL mode's loss plus the proxy memory's weighted intra/offline/online terms on the same batch;
    both memories update from it. The hybrid memory and its loss are unchanged, so with every camera term weight 0
    this is the plain HHCL mode. Nobody has published this combination; it is off in every paper preset.
    ``hybrid`` may be any :class:`~hhcl.memory.Memory` without camera terms of its own (``hhcl.memories`` wraps
    every such table entry when ``memory.camera_aware`` is on).
    """

    def __init__(self, hybrid: Memory, proxies: CameraMemory) -> None:
        super().__init__()
        self.hybrid, self.proxies = hybrid, proxies

    @property
    def last_parts(self) -> dict[str, float]:
        """The hybrid memory's loss terms, then the proxy memory's."""
        return {**self.hybrid.last_parts, **self.proxies.last_parts}

    def forward(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> Tensor:
        """HHCL loss + camera-aware proxy terms."""
        return self.hybrid(features, labels) + self.proxies(features, labels, camids)

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, camids: Tensor | None = None) -> None:
        """Update both memories from the (all-gathered) batch."""
        self.hybrid.update(features, labels)
        self.proxies.update(features, labels, camids)
