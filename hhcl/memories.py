"""The memory table: every ``memory.mode``, how to build its memory bank and what it trains with.

``MEMORIES`` maps a mode to a :class:`MemorySpec` (torchreid's model-factory style: a plain dict, no decorator
registry). The epoch set-up calls :func:`build_memory` and reads the entry's sampler; the engine uses only the
:class:`~hhcl.memory.Memory` protocol. ``hhcl.config.MEMORY_MODES`` lists the same keys (the config stays
torch-free; ``tests/test_config_registries.py`` keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from hhcl.camera_memory import CameraAwareHybrid, CameraMemory
from hhcl.config import MemoryConfig
from hhcl.data.sampler import PKSampler, ProxySampler
from hhcl.memory import MODES as HHCL_MODES
from hhcl.memory import HybridMemory, Memory

__all__ = ["MEMORIES", "MemoryInputs", "MemorySpec", "build_memory", "needs_camids"]


@dataclass(frozen=True)
class MemoryInputs:
    """What an epoch's memory is built from. ``features`` None: a resumed epoch, where only the shape matters (the
    checkpoint's state dict fills the memory), so the build must not depend on feature values or randomness."""

    labels: Tensor  # [N] pseudo labels of the train images, -1 = outlier
    features: Tensor | None  # [N, D] their eval-mode features, or None (resume: shape only)
    num_features: int  # D
    camids: Tensor | None  # [N] their camera ids when the memory takes them (hhcl.epoch.camera_ids), else None
    config: MemoryConfig
    num_instances: int  # data.num_instances: images per cluster in a batch
    generator: torch.Generator | None = None  # for a build that samples (CMhybrid_v2's instance slots)


@dataclass(frozen=True)
class MemorySpec:
    """One ``memory.mode``: its builder, whether it takes camera ids itself, and the batch sampler it trains with.

    A memory without camera ids of its own may get O2CAP's proxy terms added (``memory.camera_aware = true``).
    """

    build: Callable[[MemoryInputs], Memory]
    needs_camids: bool = False
    sampler: type[PKSampler] = PKSampler


def _hhcl(mode: str, inputs: MemoryInputs) -> HybridMemory:
    """HHCL's hybrid memory in ``mode``: from the cluster centroids, or all zeros of the right shape (resume)."""
    mem = inputs.config
    kw = {
        "mode": mode,
        "temp": mem.temp,
        "momentum": mem.momentum,
        "hard_weight": mem.hard_weight,
        "smooth": mem.smooth,
        "num_instances": inputs.num_instances,
        "loss_form": mem.loss_form,
    }
    if inputs.features is None:
        n_clusters = int(inputs.labels.max().item()) + 1
        return HybridMemory(torch.zeros(n_clusters, inputs.num_features), **kw)
    return HybridMemory.from_features(inputs.features, inputs.labels, generator=inputs.generator, **kw)


def _o2cap(inputs: MemoryInputs) -> CameraMemory:
    """O2CAP's proxy memory: a row per (cluster, camera) from its mean feature, or all zeros of the right shape."""
    if inputs.camids is None:
        raise ValueError("the camera-aware proxy memory needs the train images' camera ids (MemoryInputs.camids)")
    mem = inputs.config
    kw = {
        "temp": mem.temp,
        "momentum": mem.momentum,
        "intra_weight": mem.intra_weight,
        "offline_weight": mem.offline_weight,
        "online_weight": mem.online_weight,
        "bg_knn": mem.bg_knn,
        "pos_k": mem.pos_k,
        "balance_w": mem.balance_w,
    }
    if inputs.features is None:
        return CameraMemory.shaped(inputs.labels, inputs.camids, inputs.num_features, **kw)
    return CameraMemory.from_features(inputs.features, inputs.labels, inputs.camids, **kw)


MEMORIES: dict[str, MemorySpec] = {
    **{mode: MemorySpec(partial(_hhcl, mode)) for mode in HHCL_MODES},
    "O2CAP": MemorySpec(_o2cap, needs_camids=True, sampler=ProxySampler),
}


def needs_camids(config: MemoryConfig) -> bool:
    """Whether this memory setting trains with the images' camera ids (its mode's own, or ``camera_aware``)."""
    return MEMORIES[config.mode].needs_camids or config.camera_aware


def build_memory(inputs: MemoryInputs) -> Memory:
    """The epoch's memory for ``inputs.config``: its mode's entry, with O2CAP's proxy terms added when
    ``camera_aware`` is on (the proxies are built first, as they always were)."""
    spec = MEMORIES[inputs.config.mode]
    if not inputs.config.camera_aware:
        return spec.build(inputs)
    proxies = _o2cap(inputs)
    return CameraAwareHybrid(spec.build(inputs), proxies)
