"""The training engine: ``Trainer(config, run_dir).fit()`` runs HHCL's epoch loop end to end.

Per epoch (hhcl-reference.md section 1.2): extract train features in eval mode, cluster them into pseudo
labels (or take ground truth when ``train.supervised``), build the hybrid memory from the centroids, train
``iters`` PK batches with device-side augmentation, update the memory after each backward, step the LR
schedule after the epoch's evaluation. Everything it reports goes through the event log; hooks see the same
events, which is how the plain-terminal reporter and tests observe a run.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hhcl import distributed as dist
from hhcl.checkpoint import load_weights, save_weights
from hhcl.cluster import pseudo_labels
from hhcl.config import Config, ConfigError, load_config, validate
from hhcl.data import ReIDDataset, build_dataset, open_split
from hhcl.data.augment import TrainAugment, scaled_pad
from hhcl.data.sampler import PKSampler, rank_slice
from hhcl.evaluate import evaluate, extract_features
from hhcl.events import EventWriter
from hhcl.memory import HybridMemory
from hhcl.models import build_model
from hhcl.rundir import CHECKPOINTS, CONFIG_FILE
from hhcl.training_state import TrainingState, load_state, save_state

LOG_EVERY = 10  # iterations between "step" events
#: keys that may change when a run is resumed; anything else would change what the run computes
RESUMABLE_KEYS = ("train.epochs", "train.eval_every", "train.device", "data.root", "data.workers")


class TrainingError(RuntimeError):
    """A run cannot go on (no clusters, non-finite loss); the message says what happened and what to try."""


@dataclass
class FitResult:
    """What ``fit`` returns: how the run ended and its headline numbers."""

    status: str  # "ok" | "interrupted" | "error"
    run_dir: Path
    best_mAP: float
    best_epoch: int
    last_eval: dict[str, Any] | None
    epochs_done: int
    message: str = ""


class Hook:
    """Observer of a run (fast-reid style): sees every event and every finished step."""

    def on_event(self, event: dict[str, Any]) -> None:  # noqa: B027 - optional override
        pass

    def after_step(self, trainer: Trainer, epoch: int, it: int) -> None:  # noqa: B027 - optional override
        pass


def resolve_device(spec: str) -> torch.device:
    """The device ``train.device`` names (``auto``: the local rank's GPU when there is one, else the CPU)."""
    try:
        return dist.init_distributed(spec).device
    except ValueError as err:
        raise ConfigError(f"train.device = {spec!r}: {err}") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator derived from (seed, epoch, stream), so any epoch can be replayed exactly on resume."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + epoch * 101 + stream)
    return gen


def resume_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The run's saved config plus the overrides allowed on resume; any other override is refused by name."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"cannot resume '{run_dir}': {path} is missing (is it a run directory?).")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--set {item}: '{key}' cannot change on resume (it would change what the run computes); "
                f"allowed on resume: {', '.join(RESUMABLE_KEYS)}. Start a new run to change it."
            )
    return load_config(path, list(overrides))


class _Shard:
    """A contiguous slice of an image store (for sharded feature extraction under DDP)."""

    def __init__(self, store: Any, start: int, stop: int) -> None:
        self.store, self.start, self.stop = store, start, stop
        self.device = store.device

    def __len__(self) -> int:
        return self.stop - self.start

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return self.store.gather(idx + self.start)


@dataclass
class _EpochState:
    labels: torch.Tensor
    memory: HybridMemory
    sampler: PKSampler
    aug_gen: torch.Generator


@dataclass
class _Window:
    """Accumulates per-iteration numbers between two "step" events."""

    t0: float = field(default_factory=time.perf_counter)
    images: int = 0
    data_wait: float = 0.0
    iters: int = 0

    def reset(self) -> None:
        self.t0, self.images, self.data_wait, self.iters = time.perf_counter(), 0, 0.0, 0


class Trainer:
    """HHCL training on one device or under torchrun (DDP, contiguous rank slices, reference 5.3)."""

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        *,
        preset: str | None = None,
        resume: bool = False,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.cfg = validate(config)
        self.run_dir = Path(run_dir)
        self.preset = preset
        self.resume = resume
        self.hooks = list(hooks)
        self.device = resolve_device(self.cfg.train.device)
        self.info = dist.init_distributed(self.device)
        self.main = self.info.rank == 0
        self.stop_requested = False
        self.events = EventWriter(self.run_dir / "events.jsonl", enabled=self.main)

    # ------------------------------------------------------------------ events
    def emit(self, type: str, **fields: Any) -> None:
        event = self.events.emit(type, **fields)
        if self.main:
            for hook in self.hooks:
                hook.on_event(event)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        cfg = self.cfg
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        seed_everything(cfg.train.seed)
        if cfg.data.batch_size % self.info.world_size:
            raise ConfigError(
                f"data.batch_size = {cfg.data.batch_size} does not split evenly over {self.info.world_size} processes: "
                "use a multiple of the process count (each rank trains on a contiguous slice of the global batch)."
            )
        self.dataset: ReIDDataset = build_dataset(cfg.data.dataset, cfg.data.root)
        size = {"height": cfg.data.height, "width": cfg.data.width, "device": self.device, "cache": cfg.data.cache}
        self.train_store = open_split(self.dataset, "train", **size)
        self.query_store = open_split(self.dataset, "query", **size) if self.dataset.query else None
        self.gallery_store = open_split(self.dataset, "gallery", **size) if self.dataset.gallery else None
        m = cfg.model
        self.model: nn.Module = build_model(
            m.arch, m.pooling, m.pretrained, num_features=m.num_features, dropout=m.dropout, bn_group=m.bn_group
        ).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            self.model.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=cfg.optim.step_size, gamma=cfg.optim.gamma
        )
        self.net: nn.Module = self.model
        if self.info.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # rank 0's BN buffers are copied to every rank before each forward: running statistics come from
            # the first 1/world of the global batch, like DataParallel's replica 0 (reference 5.2-5.3)
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, forward_sync_buffers=True)
        if cfg.train.compile:
            self.net = torch.compile(self.net)
        # pad 10 at the reference's 256x128; scaled at other sizes, where a 10-pixel shift would be far larger
        self.augment = TrainAugment(cfg.data.height, cfg.data.width, pad=scaled_pad(cfg.data.height))
        amp = cfg.train.amp
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")
        self.start_epoch, self.start_iter = 0, 0
        self.best_mAP, self.best_epoch = 0.0, -1
        self._resume_state: TrainingState | None = None
        if self.resume:
            self._load_resume_state()

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ checkpoints
    def _ckpt(self, name: str) -> Path:
        return self.run_dir / CHECKPOINTS / name

    def _metadata(self, epoch: int) -> dict[str, str]:
        return {
            "format": "hhcl",
            "config": self.cfg.to_toml(),
            "epoch": str(epoch),
            "mAP": f"{self.best_mAP:.6f}",
            "run": self.run_dir.name,
        }

    def save_checkpoint(self, epoch: int, it: int, epoch_state: _EpochState | None, *, is_best: bool) -> None:
        """Write last.safetensors + last.state.pt (and best.safetensors); rank 0 only, atomic."""
        if not self.main:
            return
        save_weights(self.model, self._ckpt("last.safetensors"), self._metadata(epoch))
        state = TrainingState(
            epoch=epoch,
            iter=it,
            best_mAP=self.best_mAP,
            best_epoch=self.best_epoch,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=_rng_state(),
            memory=epoch_state.memory.state_dict() if epoch_state is not None and it > 0 else None,
            labels=epoch_state.labels.cpu() if epoch_state is not None and it > 0 else None,
            aug_gen=epoch_state.aug_gen.get_state() if epoch_state is not None and it > 0 else None,
        )
        save_state(state, self._ckpt("last.state.pt"))
        self.emit("checkpoint", epoch=epoch, iter=it, path=f"{CHECKPOINTS}/last.safetensors", is_best=False)
        if is_best:
            save_weights(self.model, self._ckpt("best.safetensors"), self._metadata(epoch))
            self.emit("checkpoint", epoch=epoch, iter=it, path=f"{CHECKPOINTS}/best.safetensors", is_best=True)

    def _load_resume_state(self) -> None:
        weights = self._ckpt("last.safetensors")
        state_path = self._ckpt("last.state.pt")
        if not weights.is_file() or not state_path.is_file():
            raise FileNotFoundError(
                f"cannot resume '{self.run_dir}': {weights.name} / {state_path.name} not found in {weights.parent}"
            )
        load_weights(self.model, weights, strict=True)
        state = load_state(state_path)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        _set_rng_state(state.rng)
        self.best_mAP, self.best_epoch = state.best_mAP, state.best_epoch
        self.start_epoch, self.start_iter = state.epoch, state.iter
        self._resume_state = state

    # ------------------------------------------------------------------ stages
    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BN running statistics (DDP only refreshes them at the next forward)."""
        if self.info.world_size > 1:
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)

    def extract_train_features(self) -> torch.Tensor:
        """Eval-mode, test-transform features of the whole train set in store order (sharded under DDP)."""
        self._sync_buffers()
        n, world, rank = len(self.train_store), self.info.world_size, self.info.rank
        per = math.ceil(n / world)
        shard = _Shard(self.train_store, min(rank * per, n), min((rank + 1) * per, n))
        feats = extract_features(self.model, shard, batch_size=self.cfg.data.batch_size, amp=self.cfg.train.amp)
        if world > 1:
            padded = feats.new_zeros(per, feats.shape[1])
            padded[: len(feats)] = feats
            feats = dist.all_gather_cat(padded)[:n]
        return feats

    def cluster(self, epoch: int, features: torch.Tensor, extract_seconds: float) -> torch.Tensor:
        """Pseudo labels for this epoch (rank 0 clusters, the labels are broadcast)."""
        cfg = self.cfg
        n = len(features)
        if cfg.train.supervised:
            labels = self.train_store.pids.to(self.device)
            seconds: dict[str, float] = {"extract": extract_seconds}
        else:
            labels = torch.empty(n, dtype=torch.long, device=self.device)
            seconds = {"extract": extract_seconds}
            if self.main:
                result = pseudo_labels(
                    features,
                    k1=cfg.cluster.k1,
                    k2=cfg.cluster.k2,
                    eps=cfg.cluster.eps,
                    min_samples=cfg.cluster.min_samples,
                    knn_backend=cfg.cluster.knn_backend,
                )
                labels = result.labels.to(self.device)
                seconds.update(result.seconds)
            labels = dist.broadcast(labels, src=0)
        n_clusters = int(labels.max().item()) + 1 if (labels >= 0).any() else 0
        n_outliers = int((labels < 0).sum().item())
        self.emit(
            "cluster",
            epoch=epoch,
            n_samples=n,
            n_clusters=n_clusters,
            n_outliers=n_outliers,
            outlier_ratio=round(n_outliers / max(n, 1), 6),
            seconds={k: round(v, 4) for k, v in seconds.items()},
            eps=cfg.cluster.eps,
        )
        if n_clusters == 0:
            raise TrainingError(
                f"epoch {epoch}: clustering with cluster.eps={cfg.cluster.eps:g} found no clusters "
                f"(all {n} images are outliers). Try a larger eps (e.g. --set cluster.eps={min(0.95, cfg.cluster.eps + 0.1):g}), "
                f"a smaller cluster.min_samples ({cfg.cluster.min_samples}), or pretrained weights (model.pretrained=imagenet)."
            )
        return labels

    def _epoch_state(self, epoch: int, labels: torch.Tensor, features: torch.Tensor | None) -> _EpochState:
        cfg = self.cfg
        mem_kw = {
            "mode": cfg.memory.mode,
            "temp": cfg.memory.temp,
            "momentum": cfg.memory.momentum,
            "hard_weight": cfg.memory.hard_weight,
            "smooth": cfg.memory.smooth,
            "num_instances": cfg.data.num_instances,
            "loss_form": cfg.memory.loss_form,
        }
        if features is not None:
            memory = HybridMemory.from_features(
                features, labels, generator=epoch_generator(cfg.train.seed, epoch, 3, features.device), **mem_kw
            )
        else:  # resumed mid-epoch: the memory as it was saved
            assert self._resume_state is not None and self._resume_state.memory is not None
            saved = self._resume_state.memory["features"]
            n_clusters = int(labels.max().item()) + 1
            memory = HybridMemory(torch.zeros(n_clusters, saved.shape[1]), **mem_kw)
            memory.load_state_dict(self._resume_state.memory)
        memory = memory.to(self.device)
        try:
            sampler = PKSampler(
                labels.cpu(),
                self.train_store.camids.cpu(),
                num_instances=cfg.data.num_instances,
                batch_size=cfg.data.batch_size,
                generator=epoch_generator(cfg.train.seed, epoch, 1),
            )
        except ValueError as err:  # too few clusters for one batch
            raise TrainingError(f"epoch {epoch}: {err} (clustered with cluster.eps={cfg.cluster.eps:g})") from None
        aug_gen = epoch_generator(cfg.train.seed, epoch, 2, self.device)
        return _EpochState(labels, memory, iter(sampler), aug_gen)

    def train_epoch(self, epoch: int, state: _EpochState, start_iter: int = 0) -> int:
        """Run iterations ``start_iter..iters-1``; returns the next iteration index (``iters`` when complete)."""
        cfg, world, rank = self.cfg, self.info.world_size, self.info.rank
        self.net.train()
        window = _Window()
        lr = self.optimizer.param_groups[0]["lr"]
        for it in range(start_iter, cfg.train.iters):
            t_data = time.perf_counter()
            batch = next(state.sampler)
            local = rank_slice(batch, rank, world)
            images = self.train_store.gather(local.to(self.train_store.device))
            x = self.augment(images.to(self.device, non_blocking=True), state.aug_gen, part=(rank, world))
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = state.labels[local.to(self.device)]
            window.data_wait += time.perf_counter() - t_data
            with self._autocast():
                feats = self.net(x)
            loss = state.memory(feats.float(), labels)
            if not torch.isfinite(loss.detach()):  # one host sync; the memory update syncs every step anyway
                raise TrainingError(
                    f"epoch {epoch} iter {it}: the loss became {loss.item()} (not finite). "
                    f"Try a lower optim.lr ({cfg.optim.lr:g}) or train.amp=off; the last good checkpoint is kept."
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            state.memory.update(feats.detach().float(), labels)
            window.images += len(batch)
            window.iters += 1
            last = it == cfg.train.iters - 1
            if (it + 1) % LOG_EVERY == 0 or last or it == start_iter:
                elapsed = time.perf_counter() - window.t0
                names = list(state.memory.last_parts)
                local = torch.tensor([loss.item(), *state.memory.last_parts.values()], device=self.device)
                values = dist.all_gather_cat(local.view(1, -1)).mean(0).tolist()  # global-batch means
                self.emit(
                    "step",
                    epoch=epoch,
                    iter=it,
                    loss=round(values[0], 5),
                    **{k: round(v, 5) for k, v in zip(names, values[1:], strict=True)},
                    lr=lr,
                    images_per_s=round(window.images / max(elapsed, 1e-9), 1),
                    data_wait=round(window.data_wait / max(window.iters, 1), 5),
                )
                window.reset()
            for hook in self.hooks:
                hook.after_step(self, epoch, it)
            if self._should_stop():
                return it + 1
        return cfg.train.iters

    def _should_stop(self) -> bool:
        if self.info.world_size == 1:
            return self.stop_requested
        flag = torch.tensor([float(self.stop_requested)], device=self.device)
        return bool(dist.all_gather_cat(flag).max().item() > 0)

    def run_eval(self, epoch: int) -> dict[str, Any] | None:
        """Query/gallery evaluation on rank 0 (others wait); returns the metrics or None without a test set."""
        if self.query_store is None or self.gallery_store is None:
            return None
        result = None
        if self.main:
            metrics = evaluate(
                self.model,
                self.query_store,
                self.gallery_store,
                batch_size=self.cfg.data.batch_size,
                flip=self.cfg.eval.flip,
                rerank=self.cfg.eval.rerank,
                amp=self.cfg.train.amp,
            )
            mAP = float(metrics["mAP"])
            ranks = metrics["ranks"]
            is_best = mAP > self.best_mAP
            if is_best:
                self.best_mAP, self.best_epoch = mAP, epoch
            result = {"mAP": mAP, "ranks": ranks, "is_best": is_best}
            self.emit(
                "eval",
                epoch=epoch,
                mAP=round(mAP, 6),
                cmc=[round(float(ranks[r]), 6) for r in (1, 5, 10)],
                best=round(self.best_mAP, 6),
                is_best=is_best,
                **({"rerank": {"mAP": float(metrics["rerank"]["mAP"])}} if "rerank" in metrics else {}),
            )
        dist.barrier()
        return result

    # ------------------------------------------------------------------ the loop
    def fit(self) -> FitResult:
        """Train to ``train.epochs``; returns how it ended. Ctrl-C stops after the current step with a checkpoint."""
        t0 = time.time()
        self._setup()
        cfg = self.cfg
        self.emit(
            "run_start",
            run=self.run_dir.name,
            preset=self.preset,
            config=cfg.to_dict(),
            device=str(self.device),
            world_size=self.info.world_size,
            n_train=len(self.train_store),
            n_query=len(self.query_store) if self.query_store else 0,
            n_gallery=len(self.gallery_store) if self.gallery_store else 0,
            epochs=cfg.train.epochs,
            iters=cfg.train.iters,
            start_epoch=self.start_epoch,
            start_iter=self.start_iter,
            resumed=self.resume,
        )
        previous = _install_sigint(self)
        last_eval: dict[str, Any] | None = None
        epoch, it = self.start_epoch, self.start_iter
        status, message = "ok", ""
        try:
            for epoch in range(self.start_epoch, cfg.train.epochs):
                resuming_mid_epoch = epoch == self.start_epoch and self.start_iter > 0
                self.emit("epoch_start", epoch=epoch, lr=self.optimizer.param_groups[0]["lr"])
                if resuming_mid_epoch:
                    assert self._resume_state is not None and self._resume_state.labels is not None
                    labels = self._resume_state.labels.to(self.device)
                    state = self._epoch_state(epoch, labels, None)
                    for _ in range(self.start_iter):  # replay the sampler stream to where it stopped
                        next(state.sampler)
                    assert self._resume_state.aug_gen is not None
                    state.aug_gen.set_state(self._resume_state.aug_gen)
                    start = self.start_iter
                else:
                    t_ext = time.perf_counter()
                    features = self.extract_train_features()
                    labels = self.cluster(epoch, features, time.perf_counter() - t_ext)
                    state = self._epoch_state(epoch, labels, features)
                    del features
                    start = 0
                it = self.train_epoch(epoch, state, start)
                self._sync_buffers()
                if it < cfg.train.iters:  # stop requested mid-epoch
                    self.save_checkpoint(epoch, it, state, is_best=False)
                    status = "interrupted"
                    message = f"stopped at epoch {epoch} iteration {it}; continue with: hhcl train --resume {self.run_dir}"
                    break
                is_best = False
                if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                    last_eval = self.run_eval(epoch)
                    is_best = bool(last_eval and last_eval["is_best"])
                self.scheduler.step()
                self.save_checkpoint(epoch + 1, 0, None, is_best=is_best)
                if self._should_stop():
                    status = "interrupted"
                    message = f"stopped after epoch {epoch}; continue with: hhcl train --resume {self.run_dir}"
                    break
        except TrainingError as err:
            status, message = "error", str(err)
            self.emit("error", message=message, epoch=epoch)
        finally:
            _restore_sigint(previous)
        epochs_done = epoch + 1 if status == "ok" else epoch
        self.emit(
            "run_end",
            status=status,
            best_mAP=round(self.best_mAP, 6),
            best_epoch=self.best_epoch,
            elapsed=round(time.time() - t0, 2),
            message=message,
        )
        self.events.close()
        return FitResult(status, self.run_dir, self.best_mAP, self.best_epoch, last_eval, epochs_done, message)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _install_sigint(trainer: Trainer) -> Any:
    """First Ctrl-C asks the loop to stop after the current step; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True

    return signal.signal(signal.SIGINT, handler)


def _restore_sigint(previous: Any) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
