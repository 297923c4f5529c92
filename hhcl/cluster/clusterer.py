"""The clusterer protocol and what a clustering returns (the table of clusterers: ``hhcl.cluster.methods``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from hhcl.config import ClusterConfig

#: called with a sub-step's name when it is done (all but the last); it may raise to abandon the clustering there
AfterStep = Callable[[str], None]


def step_key(step: str) -> str:
    """The key of a sub-step in ``ClusterResult.seconds`` and in the ``cluster`` event's ``seconds`` (``kNN`` ->
    ``knn``)."""
    return step.lower()


@dataclass
class ClusterResult:
    """One clustering: labels per sample (-1 = outlier), the counts the ``cluster`` event reports, the seconds of
    each sub-step (keyed by :func:`step_key`, in step order) and the parameters it used, by short name."""

    labels: Tensor  # [N] int64, on the features' device
    seconds: dict[str, float]
    params: dict[str, float | int]
    auto: tuple[str, ...] = ()  # the params chosen from the data (DBSCAN's eps with cluster.eps = auto)
    carry: float | None = None  # a value chosen at the run's first clustering that later ones reuse (checkpointed)
    sizes: Tensor = field(init=False)  # [n_clusters] int64

    def __post_init__(self) -> None:
        self.sizes = torch.bincount(self.labels[self.labels >= 0], minlength=0)

    @property
    def n_clusters(self) -> int:
        return int(self.sizes.numel())

    @property
    def n_outliers(self) -> int:
        return int(self.labels.numel() - self.sizes.sum())

    @property
    def outlier_ratio(self) -> float:
        return self.n_outliers / max(self.labels.numel(), 1)


class Loosening(NamedTuple):
    """A change of a method's settings that finds more (or larger) clusters: in words, and as config changes."""

    words: str  # e.g. "a larger eps"
    changes: dict[str, Any]  # e.g. {"cluster.eps": 0.7}


class Clusterer(Protocol):
    """What the epoch set-up uses of a clustering method (every entry of ``CLUSTERERS``).

    ``carry`` is a value the method chose from the data at the run's first clustering and wants back at the later
    ones (``ClusterResult.carry``; the run keeps it in its checkpoint), None before that and off rank 0.
    """

    name: str  # its cluster.method value
    title: str  # as people write it, e.g. "DBSCAN"
    steps: tuple[str, ...]  # its sub-steps, in order, as progress names them

    def require(self) -> None:
        """Raise a ConfigError naming what to install when the method cannot run here (an optional package)."""

    def cluster(
        self, features: Tensor, config: ClusterConfig, *, after_step: AfterStep, carry: float | None
    ) -> ClusterResult:
        """Cluster L2-normalised features [N, D]; ``after_step(name)`` after each sub-step but the last."""

    def setting(self, config: ClusterConfig, carry: float | None) -> str:
        """The setting that decides how much it clusters, for messages, e.g. ``cluster.eps=0.6``."""

    def advice(self, config: ClusterConfig) -> str:
        """The settings to try when it finds no clusters, e.g. ``a larger eps, a smaller cluster.min_samples (4)``."""

    def loosen(self, config: ClusterConfig, carry: float | None) -> Loosening:
        """The change a new run can make to find more clusters."""
