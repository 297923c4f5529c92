"""Setting up one epoch of HHCL (reference 1.2): train features -> pseudo labels -> memory, sampler, generators.

A fresh epoch extracts features in eval mode, clusters them (rank 0; labels broadcast) and builds the hybrid
memory from the centroids. A resumed epoch takes the labels, memory and generator states the checkpoint saved
and replays the sampler to where it stopped. Both paths live in :meth:`EpochSetup.begin`, so they cannot drift.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hhcl import distributed as dist
from hhcl.cluster.clusterer import Clusterer, ClusterResult, step_key
from hhcl.cluster.methods import CLUSTERERS
from hhcl.cluster.quality import label_quality
from hhcl.config import Config, ConfigError
from hhcl.data.sampler import BatchUnfillableError, batch_that_fits
from hhcl.errors import FailureError
from hhcl.evaluate import extract_features
from hhcl.faults import fault_point
from hhcl.memories import MEMORIES, MemoryInputs, build_memory, needs_camids
from hhcl.memory import Memory
from hhcl.run.events import Cluster, Event, Progress
from hhcl.run.state import TrainingState

#: a stage's ``progress`` events come at most this often (its start and its end aside), in seconds
PROGRESS_EVERY = 2.0


class StageProgress:
    """Reports one long stage as ``progress`` events: its start (done 0) now, then through the ``(done, total)``
    callback at most one event per ``every`` seconds, and always its end (done == total).

    The device is synchronised before each event, so ``done`` and ``seconds`` count finished work, not queued
    kernels (once per event: a few per minute at most).
    """

    def __init__(
        self,
        emit: Callable[[Event], None],
        *,
        epoch: int,
        stage: str,
        total: int,
        device: torch.device,
        every: float = PROGRESS_EVERY,
        clock: Callable[[], float] = time.perf_counter,
        steps: tuple[str, ...] | None = None,
    ) -> None:
        self.emit, self.epoch, self.stage, self.device = emit, epoch, stage, device
        self.every, self.clock = every, clock
        self.steps = list(steps) if steps else None  # a stage of named sub-steps: every event names them
        self.t0 = self.last = clock()
        start = Progress(epoch=epoch, stage=stage, done=0, total=total, seconds=0.0, steps=self.steps)
        self.wall0 = start.t if start.t is not None else time.time()  # sub-stage times are dated from this
        self.emit(start)

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done < total and now - self.last < self.every:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            now = self.clock()
        self.last = now
        self.emit(Progress(epoch=self.epoch, stage=self.stage, done=done, total=total, seconds=round(now - self.t0, 3),
                           steps=self.steps))

    def finished_at(self, done: int, total: int, seconds: float) -> None:
        """The stage reached ``done`` ``seconds`` after its start, as timed by the stage itself (the event's ``t``
        is that moment); for a stage that reports its sub-stage times only when it returns."""
        self.emit(
            Progress(t=round(self.wall0 + seconds, 3), epoch=self.epoch, stage=self.stage, done=done, total=total,
                     seconds=round(seconds, 3), steps=self.steps)
        )


class TrainingError(FailureError, RuntimeError):
    """A run cannot go on (no clusters, clusters that cannot fill a batch, non-finite loss); the message says what
    happened and what to try. Resuming would meet it again (the run is deterministic from its checkpoint), so the
    fix is a new run, never ``--resume``. A failure."""


class StopRequested(Exception):  # noqa: N818 - a request, not an error
    """A stop (SIGINT, SIGTERM, SIGHUP) was asked during a long set-up stage; raised at the stage's next boundary
    (a batch of extraction, a clustering sub-stage), so the run ends within one such unit, not after a step.

    ``where`` says what was being done. Nothing was trained since the checkpoint on disk, so none is written.
    """

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


#: the labels rank 0 broadcasts instead of pseudo labels when it was stopped while clustering (under DDP)
_STOPPED = -2


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the model's initialisation depends on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator derived from (seed, epoch, stream), so any epoch can be replayed exactly on resume."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + epoch * 101 + stream)
    return gen


@dataclass
class EpochState:
    """What one epoch trains with: pseudo labels, the memory bank, the batch stream, the augmentation RNG, and the
    train images' camera ids when the memory is camera-aware (it then takes them beside the labels)."""

    labels: torch.Tensor
    memory: Memory
    sampler: Iterator[torch.Tensor]
    aug_gen: torch.Generator
    camids: torch.Tensor | None = None

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a mid-epoch checkpoint must keep to continue this epoch exactly."""
        return {"memory": self.memory.state_dict(), "labels": self.labels.cpu(), "aug_gen": self.aug_gen.get_state()}


class _Shard:
    """A contiguous slice of an image store (for sharded feature extraction under DDP)."""

    def __init__(self, store: Any, start: int, stop: int) -> None:
        self.store, self.start, self.stop = store, start, stop
        self.device = store.device

    def __len__(self) -> int:
        return self.stop - self.start

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return self.store.gather(idx + self.start)


def train_identities(pids: torch.Tensor) -> torch.Tensor | None:
    """The train set's identities, or None when it has none: an unlabelled train set (your own crops) gives each
    image its own id, so ids are known only when some repeat. Used for pseudo-label quality, never for training."""
    pids = pids.detach().cpu()
    return pids if pids.numel() > 1 and torch.unique(pids).numel() < pids.numel() else None


class EpochSetup:
    """Builds each epoch's :class:`EpochState`, fresh or from a checkpoint."""

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        train_store: Any,
        device: torch.device,
        info: dist.DistInfo,
        emit: Callable[[Event], None],
        keep_labels: Callable[[int, torch.Tensor], None] | None = None,
        stop_asked: Callable[[], bool] = lambda: False,
        new_run: Callable[[dict[str, Any]], str] = lambda changes: "",
    ) -> None:
        self.cfg, self.model, self.train_store = cfg, model, train_store
        self.device, self.info, self.emit = device, info, emit
        self.stop_asked = stop_asked  # this process was asked to stop (a signal): honoured at stage boundaries
        self.new_run = new_run  # a ready `hhcl train` command for a new run with some keys changed (errors' fixes)
        self.keep_labels = keep_labels  # rank 0: writes each epoch's pseudo labels into the run directory
        self.clusterer: Clusterer = CLUSTERERS[cfg.cluster.method]
        if not cfg.train.supervised:
            self.clusterer.require()  # a missing optional package is told now, not after the first extraction
        # what the clusterer chose from the data at the run's first clustering and reuses (DBSCAN's eps = auto);
        # the checkpoint keeps it (under this name, the engine's)
        self.auto_eps: float | None = None
        self.identities = train_identities(train_store.pids)
        self.camids = camera_ids(cfg, train_store.camids, device)

    def begin(self, epoch: int, saved: TrainingState | None = None) -> tuple[EpochState, int]:
        """The epoch's state and the iteration to start from (``saved``: a mid-epoch checkpoint of this epoch)."""
        if saved is not None and saved.iter > 0:
            assert saved.labels is not None and saved.memory is not None and saved.aug_gen is not None
            labels = saved.labels.to(self.device)
            memory = self._memory(labels, None, epoch)
            memory.load_state_dict(saved.memory)
            state = EpochState(labels, memory, self._sampler(labels, epoch), self._aug_gen(epoch), self.camids)
            fault_point(f"setup:{epoch}:replay")
            for _ in range(saved.iter):  # replay the batch stream to where it stopped
                next(state.sampler)
            state.aug_gen.set_state(saved.aug_gen)
            self.check_stop("restoring the epoch's labels and memory")
            return state, saved.iter
        t0 = time.perf_counter()
        features = self.extract_train_features(epoch)
        self.check_stop("extracting train features")
        labels = self.cluster(epoch, features, time.perf_counter() - t0)
        fault_point(f"setup:{epoch}:{self.clusterer.steps[-1]}")
        self.check_stop("clustering")
        progress = self._progress(epoch, "memory", 1)
        memory = self._memory(labels, features, epoch)
        if progress is not None:
            progress(1, 1)
        fault_point(f"setup:{epoch}:memory")
        self.check_stop("building the memory")
        return EpochState(labels, memory, self._sampler(labels, epoch), self._aug_gen(epoch), self.camids), 0

    def check_stop(self, where: str) -> None:
        """Raise :class:`StopRequested` if any rank was asked to stop (a collective: every rank calls it here)."""
        if dist.any_rank(self.stop_asked(), self.device):
            raise StopRequested(where)

    def _progress(
        self, epoch: int, stage: str, total: int, steps: tuple[str, ...] | None = None
    ) -> StageProgress | None:
        """A started stage's reporter on rank 0 (the only rank that writes events), None elsewhere."""
        if self.info.rank != 0:
            return None
        return StageProgress(self.emit, epoch=epoch, stage=stage, total=total, device=self.device, steps=steps)

    def sync_buffers(self) -> None:
        """Give every rank rank 0's BN running statistics (DDP only refreshes them at the next forward)."""
        if self.info.world_size > 1:
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)

    def extract_train_features(self, epoch: int) -> torch.Tensor:
        """Eval-mode, test-transform features of the whole train set in store order (sharded under DDP; the
        ``progress`` events count rank 0's shard, which every rank's equals to within one image)."""
        self.sync_buffers()
        n, world, rank = len(self.train_store), self.info.world_size, self.info.rank
        per = math.ceil(n / world)
        shard = _Shard(self.train_store, min(rank * per, n), min((rank + 1) * per, n))
        progress = self._progress(epoch, "extract_train", len(shard))
        batch = self.cfg.data.batch_size
        common = math.ceil(max(n - (world - 1) * per, 0) / batch)  # batches every rank runs (the last shard is shortest)
        batches = iter(range(1, common + 1))

        def after_batch(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)
            b = next(batches, None)
            if b is not None:  # a stop is honoured after any batch all ranks reach
                if b == 1:
                    fault_point(f"setup:{epoch}:extract")
                self.check_stop("extracting train features")

        feats = extract_features(self.model, shard, batch_size=batch, amp=self.cfg.train.amp, progress=after_batch)
        if world > 1:
            padded = feats.new_zeros(per, feats.shape[1])
            padded[: len(feats)] = feats
            feats = dist.all_gather_cat(padded)[:n]
        return feats

    def cluster(self, epoch: int, features: torch.Tensor, extract_seconds: float) -> torch.Tensor:
        """Pseudo labels for this epoch (rank 0 clusters, the labels are broadcast); emits ``cluster``."""
        cfg = self.cfg
        n = len(features)
        seconds: dict[str, float] = {"extract": extract_seconds}
        result: ClusterResult | None = None  # rank 0's
        if cfg.train.supervised:
            labels = self.train_store.pids.to(self.device)
        else:
            labels = torch.empty(n, dtype=torch.long, device=self.device)
            steps = self.clusterer.steps
            progress = self._progress(epoch, "cluster", len(steps), steps)
            if progress is not None:  # rank 0
                try:
                    result = self._pseudo_labels(epoch, features)
                except StopRequested:
                    if self.info.world_size == 1:
                        raise
                    labels.fill_(_STOPPED)  # the other ranks wait in the broadcast: tell them
                else:
                    labels = result.labels.to(self.device)
                    self.auto_eps = result.carry
                    seconds.update(result.seconds)
                    self._report_cluster_steps(progress, steps, result.seconds)
            labels = dist.broadcast(labels, src=0)
            if self.info.world_size > 1 and n and int(labels[0].item()) == _STOPPED:
                raise StopRequested("clustering")
        n_clusters = int(labels.max().item()) + 1 if (labels >= 0).any() else 0
        n_outliers = int((labels < 0).sum().item())
        quality = None
        if self.info.rank == 0:
            if self.keep_labels is not None:
                self.keep_labels(epoch, labels)
            if self.identities is not None and not cfg.train.supervised:
                quality = {k: (None if v is None else round(v, 6)) for k, v in label_quality(labels, self.identities).to_dict().items()}
        self.emit(
            Cluster(
                epoch=epoch,
                n_samples=n,
                n_clusters=n_clusters,
                n_outliers=n_outliers,
                outlier_ratio=round(n_outliers / max(n, 1), 6),
                seconds={k: round(v, 4) for k, v in seconds.items()},
                method=None if cfg.train.supervised else self.clusterer.name,
                params=None if result is None else result.params,
                auto=None if result is None else list(result.auto),
                quality=quality,
            )
        )
        if n_clusters == 0:
            looser = self.clusterer.loosen(cfg.cluster, self.auto_eps)
            raise TrainingError(
                f"epoch {epoch + 1}: clustering with {self.setting} found no clusters "
                f"(all {n} images are outliers). Try {self.clusterer.advice(cfg.cluster)}, or pretrained weights "
                f"(model.pretrained=imagenet or a re-ID model); a new run with {looser.words}: "
                f"{self.new_run(looser.changes)}"
            )
        return labels

    def _pseudo_labels(self, epoch: int, features: torch.Tensor) -> ClusterResult:
        """Rank 0's clustering; a stop asked of this process is honoured before it and after each sub-stage."""

        def after_step(name: str) -> None:
            fault_point(f"setup:{epoch}:{name}")
            if self.stop_asked():  # rank 0 alone clusters: a local check (cluster() tells the other ranks)
                raise StopRequested(f"clustering ({name} done)")

        return self.clusterer.cluster(features, self.cfg.cluster, after_step=after_step, carry=self.auto_eps)

    @property
    def setting(self) -> str:
        """The clusterer's deciding setting as messages name it, e.g. ``cluster.eps=0.6`` (off rank 0, which does
        not cluster, without what it chose from the data)."""
        return self.clusterer.setting(self.cfg.cluster, self.auto_eps)

    @staticmethod
    def _report_cluster_steps(progress: StageProgress, steps: tuple[str, ...], seconds: dict[str, float]) -> None:
        """One event per finished sub-step; the last one is the stage's end, now.

        A clusterer times its sub-steps but reports them only when it returns, so these events are written together
        then; all but the last carry the ``t`` and ``seconds`` of their sub-step's end as it measured them.
        """
        total, spent = len(steps), 0.0
        for done, step in enumerate(steps[:-1], start=1):
            spent += seconds[step_key(step)]
            progress.finished_at(done, total, spent)
        progress(total, total)

    def _memory(self, labels: torch.Tensor, features: torch.Tensor | None, epoch: int) -> Memory:
        """The epoch's memory from the memory table: from the train features, or (``features`` None: resumed
        mid-epoch) shaped only, filled from the checkpoint by the caller."""
        cfg = self.cfg
        gen = None if features is None else epoch_generator(cfg.train.seed, epoch, 3, features.device)
        inputs = MemoryInputs(
            labels, features, self.model.feature_dim, self.camids, cfg.memory, cfg.data.num_instances, gen
        )
        return build_memory(inputs).to(self.device)

    def _sampler(self, labels: torch.Tensor, epoch: int) -> Iterator[torch.Tensor]:
        cfg = self.cfg
        kind = MEMORIES[cfg.memory.mode].sampler  # e.g. O2CAP: its proxy-uniform sampler
        try:
            sampler = kind(
                labels.cpu(),
                self.train_store.camids.cpu(),
                num_instances=cfg.data.num_instances,
                batch_size=cfg.data.batch_size,
                generator=epoch_generator(cfg.train.seed, epoch, 1),
            )
        except BatchUnfillableError as err:  # too few clusters for one batch
            raise TrainingError(self._unfillable(epoch, err, labels)) from None
        return iter(sampler)

    def _unfillable(self, epoch: int, err: BatchUnfillableError, labels: torch.Tensor) -> str:
        """What to do when the clusters cannot fill a batch: a new run with a batch they fill, or else with the
        clusterer's looser setting (resuming would cluster the same features the same way)."""
        cfg = self.cfg
        outliers = float((labels < 0).float().mean()) if len(labels) else 0.0
        found = f"epoch {epoch + 1}: clustering with {self.setting} left {100 * outliers:.1f} % outliers: {err}"
        smaller = batch_that_fits(err.per_pass, cfg.data.num_instances, cfg.model.bn_group)
        if smaller is not None and smaller["data.batch_size"] % self.info.world_size == 0:
            return f"{found}. A new run with a batch these clusters fill: {self.new_run(smaller)}"
        looser = self.clusterer.loosen(cfg.cluster, self.auto_eps)
        return (
            f"{found}. Too few clusters for any batch: a new run with {looser.words}, {self.new_run(looser.changes)}; or "
            "start from a model that already knows people (model.pretrained = a re-ID model: README, Your own crops)"
        )

    def _aug_gen(self, epoch: int) -> torch.Generator:
        return epoch_generator(self.cfg.train.seed, epoch, 2, self.device)


def camera_ids(cfg: Config, camids: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The train images' camera ids on ``device`` when the memory is camera-aware (else None); a train set with one
    camera (e.g. a folder dataset without camera sub-folders) cannot split clusters by camera: a ConfigError."""
    if not needs_camids(cfg.memory):
        return None
    if camids.numel() == 0 or torch.unique(camids).numel() < 2:
        key = f"memory.mode = {cfg.memory.mode}" if MEMORIES[cfg.memory.mode].needs_camids else "memory.camera_aware = true"
        raise ConfigError(
            f"{key} needs camera ids, but the train images of data.dataset = {cfg.data.dataset!r} all come from one "
            "camera: prepare a folder dataset with one sub-folder per camera or --cam-pattern (hhcl prepare folder), "
            "or use an HHCL mode without camera terms (memory.mode = CMhybrid, memory.camera_aware = false)."
        )
    return camids.to(device).long()
