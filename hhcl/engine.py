"""The training engine: ``Trainer(config, run_dir).fit()`` runs HHCL's epoch loop end to end.

Per epoch (hhcl-reference.md section 1.2, ARCHITECTURE "One epoch"): set the epoch up (features, pseudo
labels, memory: :mod:`hhcl.epoch`), train ``iters`` PK batches with device-side augmentation, update the
memory after each backward, evaluate every ``eval_every`` epochs, step the LR schedule, checkpoint. The run
directory (lock, event log, checkpoint pair) belongs to :mod:`hhcl.run`; every way ``fit`` can end is
recorded there as ``error`` + ``run_end`` (see :mod:`hhcl.ending`). Hooks see the same events.
"""

from __future__ import annotations

import itertools
import os
import shlex
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hhcl import distributed as dist
from hhcl.atomic import atomic_write_text
from hhcl.config import Config, ConfigError, validate
from hhcl.data import ReIDDataset, build_dataset, open_split
from hhcl.data.augment import TrainAugment, scaled_pad
from hhcl.data.sampler import rank_slice
from hhcl.data.store import require_cache_space
from hhcl.ending import Ending, StopSignals, describe_failure
from hhcl.epoch import EpochSetup, EpochState, StageProgress, StopRequested, TrainingError, seed_everything
from hhcl.evaluate import evaluate
from hhcl.faults import fault_point
from hhcl.kernels import check_cpu_bf16
from hhcl.models import Pretrained, build_model, resolve_pretrained
from hhcl.run.checkpoint import Checkpointer, checkpoint_position, recover, resume_epochs_error
from hhcl.run.events import (
    HEARTBEAT_SECONDS,
    Checkpoint,
    EpochStart,
    Error,
    Eval,
    Event,
    EventWriter,
    RunEnd,
    RunStart,
    Step,
    epoch_label,
    iter_label,
)
from hhcl.run.labels import TRAIN_INDEX, save_epoch_labels, save_train_index
from hhcl.run.layout import RunLayout
from hhcl.run.lock import RunLock, this_process
from hhcl.run.state import TrainingState
from hhcl.schedule import lr_schedule

LOG_EVERY = 10  # iterations between "step" events
EVAL_STAGES = {"query": "extract_query", "gallery": "extract_gallery", "metrics": "eval_metrics"}  # progress names

__all__ = ["FitResult", "Hook", "Trainer", "TrainingError"]


@dataclass
class FitResult:
    """What ``fit`` returns: how the run ended, its headline numbers and the process exit code to use."""

    status: str  # "ok" | "interrupted" | "error"
    run_dir: Path
    best_mAP: float
    best_epoch: int
    last_eval: dict[str, Any] | None
    epochs_done: int
    message: str = ""
    exit_code: int = 0
    hint: str = ""
    resume: str | None = None
    where: str = ""
    retry: bool = True  # whether running again (the same command, or --resume) can get past how it ended


class Hook:
    """Observer of a run (fast-reid style): sees every event and every finished step."""

    def on_event(self, event: Event) -> None:  # noqa: B027 - optional override
        pass

    def after_step(self, trainer: Trainer, epoch: int, it: int) -> None:  # noqa: B027 - optional override
        pass


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
        cfg = validate(config)
        # the absolute data root goes into config.toml and every checkpoint: eval and resume from any folder find it
        self.cfg = replace(cfg, data=replace(cfg.data, root=os.path.abspath(os.path.expanduser(cfg.data.root))))
        self.layout = RunLayout(Path(run_dir))
        self.run_dir = self.layout.root
        self.preset = preset
        self.resume = resume
        self.hooks = list(hooks)
        self.device = dist.resolve_device(self.cfg.train.device)
        self.info = dist.init_distributed(self.device)
        self.main = self.info.rank == 0
        if self.cfg.train.tensorboard:  # every rank refuses up front without the package; rank 0 writes
            from hhcl.tensorboard import TensorBoardHook, require_tensorboard

            require_tensorboard()
            if self.main:
                self.hooks.append(TensorBoardHook(self.layout.tensorboard))
        self.stop_requested = False
        self.stage = "starting"
        self.events = EventWriter(None)
        self.best_mAP, self.best_epoch = 0.0, -1
        self.start_epoch, self.start_iter = 0, 0
        self._saved: TrainingState | None = None
        self.checkpoint_at: tuple[int, int] | None = None  # the position of the checkpoint on disk, once known
        self.notes: list[str] = []  # what the run found and did before starting (told in run_start)
        self.epochs_done = 0

    # ------------------------------------------------------------------ events
    def emit(self, event: Event) -> None:
        """Write an event to the log (rank 0) and show it to the hooks."""
        self.events.emit(event)
        if self.main:
            for hook in self.hooks:
                hook.on_event(event)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        """Data, model, optimiser, schedule, DDP wrapper, augmentation, checkpointer; then the resume point."""
        cfg = self.cfg
        self.stage = "setting up"
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        seed_everything(cfg.train.seed)
        if cfg.data.batch_size % self.info.world_size:
            raise ConfigError(
                f"data.batch_size = {cfg.data.batch_size} does not split evenly over {self.info.world_size} processes: "
                "use a multiple of the process count (each rank trains on a contiguous slice of the global batch)."
            )
        self.stage = "opening the dataset"
        self.dataset: ReIDDataset = build_dataset(cfg.data.dataset, cfg.data.root)
        if cfg.data.cache and self.main:  # every split's missing cache against the free space, before a byte of any
            splits = {s: self.dataset.split(s) for s in ("train", "query", "gallery")}
            require_cache_space(self.dataset.root, splits, cfg.data.height, cfg.data.width)
        size = {"height": cfg.data.height, "width": cfg.data.width, "device": self.device, "cache": cfg.data.cache,
                "workers": cfg.data.workers, "after_chunk": self._cache_chunk_done if self.info.world_size == 1 else None}
        self.train_store = open_split(self.dataset, "train", **size)
        self.query_store = open_split(self.dataset, "query", **size) if self.dataset.query else None
        self.gallery_store = open_split(self.dataset, "gallery", **size) if self.dataset.gallery else None
        self._startup_boundary("dataset")
        self.stage = "building the model"
        m = cfg.model
        self.model: nn.Module = build_model(
            m.arch, m.pooling, self.pretrained.weights, num_features=m.num_features, dropout=m.dropout, bn_group=m.bn_group
        ).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(
            self.model.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
        )
        self.scheduler = lr_schedule(self.optimizer, cfg.optim)
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
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)
        if self.amp_dtype is torch.bfloat16 and self.device.type == "cpu":
            check_cpu_bf16("train.amp=bf16")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.checkpointer = Checkpointer(
            self.layout, self.model, self.optimizer, self.scheduler, self.scaler, cfg, enabled=self.main
        )
        keep = self._keep_labels if self.main else None
        self.epochs = EpochSetup(
            cfg, self.model, self.train_store, self.device, self.info, self.emit, keep_labels=keep,
            stop_asked=lambda: self.stop_requested, new_run=self.new_run_command,
        )
        self._startup_boundary("model")
        if self.resume:
            self._load_resume_point()
            self._startup_boundary("checkpoint")
        if self.main and self.resume:  # written once the checkpoint (if any) accepted the config
            atomic_write_text(self.layout.config, self.cfg.to_toml())

    def new_run_command(self, changes: dict[str, Any]) -> str:
        """A ready ``hhcl train`` command for a new run: this run's own config with ``changes``, under a free name
        beside it (for errors a resume would meet again, whose fix changes a key a resume may not change)."""
        parent, base = self.run_dir.parent, self.run_dir.name
        name = next(f"{base}-{i}" for i in itertools.count(2) if not (parent / f"{base}-{i}").exists())
        sets = [a for key, value in changes.items() for a in ("--set", f"{key}={value}")]
        return shlex.join(["hhcl", "train", "--preset", str(self.layout.config), "--runs-dir", str(parent), "--name", name, *sets])

    def _cache_chunk_done(self) -> None:
        """A chunk of a cache being built is on disk: a stop asked so far ends the build here (it resumes later)."""
        fault_point("startup:cache-chunk")
        if self.stop_requested:
            raise StopRequested("building the image cache (it resumes where it stopped)")

    def _startup_boundary(self, name: str) -> None:
        """A boundary between start-up stages: a stop asked so far ends the run here (``startup:<name>`` fault)."""
        fault_point(f"startup:{name}")
        if dist.any_rank(self.stop_requested, self.device):
            raise StopRequested(self.stage)

    def _keep_labels(self, epoch: int, labels: torch.Tensor) -> None:
        """Keep this epoch's pseudo labels in the run directory (and, once, the train images they index)."""
        if not (self.layout.labels / TRAIN_INDEX).is_file():
            root = self.cfg.data.root
            paths = [os.path.relpath(s.path, root) if Path(s.path).is_relative_to(root) else s.path for s in self.dataset.train]
            pids = self.epochs.identities
            save_train_index(self.layout, paths, None if pids is None else pids.tolist(), self.train_store.camids.tolist(),
                             self.dataset.cameras.get("train"))
        save_epoch_labels(self.layout, epoch, labels.cpu().numpy())

    def _load_resume_point(self) -> None:
        self.stage = "reading the checkpoint"
        saved = self.checkpointer.read()
        if saved is None:
            self.notes.append(f"no checkpoint in {self.layout.checkpoints} yet: starting the run from the beginning")
            return
        problem = resume_epochs_error(self.cfg.train.epochs, saved.epoch, saved.iter, self.layout.config)
        if problem:
            raise ConfigError(problem)
        self.checkpointer.restore(saved)
        self.checkpoint_at = (saved.epoch, saved.iter)
        self.best_mAP, self.best_epoch = saved.best_mAP, saved.best_epoch
        self.start_epoch, self.start_iter = saved.epoch, saved.iter
        self.epochs.auto_eps = saved.cluster_eps  # cluster.eps = auto: the run keeps the eps it chose first
        self._saved = saved

    def _autocast(self) -> Any:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, state: EpochState, start_iter: int = 0) -> int:
        """Run iterations ``start_iter..iters-1``; returns the next iteration index (``iters`` when complete)."""
        cfg, world, rank = self.cfg, self.info.world_size, self.info.rank
        self.net.train()
        window = _Window()
        lr = self.optimizer.param_groups[0]["lr"]
        for it in range(start_iter, cfg.train.iters):
            self.stage = f"training ({epoch_label(epoch, cfg.train.epochs)}, {iter_label(it, cfg.train.iters)})"
            t_data = time.perf_counter()
            batch = next(state.sampler)
            local = rank_slice(batch, rank, world)
            images = self.train_store.gather(local.to(self.train_store.device))
            x = self.augment(images.to(self.device, non_blocking=True), state.aug_gen, part=(rank, world))
            if cfg.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = state.labels[local.to(self.device)]
            cams = None if state.camids is None else state.camids[local.to(self.device)]  # camera-aware memory
            window.data_wait += time.perf_counter() - t_data
            with self._autocast():
                feats = self.net(x)
            loss = state.memory(feats.float(), labels, cams)
            if not torch.isfinite(loss.detach()):  # one host sync; the memory update syncs every step anyway
                raise TrainingError(
                    f"{epoch_label(epoch)} {iter_label(it)}: the loss became {loss.item()} (not finite). "
                    f"Try a lower optim.lr ({cfg.optim.lr:g}) or train.amp=off; the last good checkpoint is kept."
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            state.memory.update(feats.detach().float(), labels, cams)
            window.images += len(batch)
            window.iters += 1
            if (it + 1) % LOG_EVERY == 0 or it == cfg.train.iters - 1 or it == start_iter:
                self._emit_step(epoch, it, loss, state, window, lr)
            for hook in self.hooks:
                hook.after_step(self, epoch, it)
            fault_point(f"step:{epoch}:{it}")
            if self._should_stop():
                return it + 1
        return cfg.train.iters

    def _emit_step(self, epoch: int, it: int, loss: torch.Tensor, state: EpochState, window: _Window, lr: float) -> None:
        elapsed = time.perf_counter() - window.t0
        names = list(state.memory.last_parts)
        local = torch.tensor([loss.item(), *state.memory.last_parts.values()], device=self.device)
        values = dist.all_gather_cat(local.view(1, -1)).mean(0).tolist()  # global-batch means
        self.emit(
            Step(
                epoch=epoch,
                iter=it,
                loss=round(values[0], 5),
                parts={k: round(v, 5) for k, v in zip(names, values[1:], strict=True)},
                lr=lr,
                images_per_s=round(window.images / max(elapsed, 1e-9), 1),
                data_wait=round(window.data_wait / max(window.iters, 1), 5),
            )
        )
        window.reset()

    def _should_stop(self) -> bool:
        return dist.any_rank(self.stop_requested, self.device)

    def run_eval(self, epoch: int) -> dict[str, Any] | None:
        """Query/gallery evaluation on rank 0 (others wait); returns the metrics or None without a test set."""
        if self.query_store is None or self.gallery_store is None:
            return None
        self.stage = f"evaluating ({epoch_label(epoch, self.cfg.train.epochs)})"
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
                stages=lambda name, total: self._eval_stage(epoch, name, total),
            )
            mAP = float(metrics["mAP"])
            ranks = metrics["ranks"]
            is_best = mAP > self.best_mAP
            if is_best:
                self.best_mAP, self.best_epoch = mAP, epoch
            result = {"mAP": mAP, "ranks": ranks, "is_best": is_best}
            self.emit(
                Eval(
                    epoch=epoch,
                    mAP=round(mAP, 6),
                    cmc=[round(float(ranks[r]), 6) for r in (1, 5, 10)],
                    best=round(self.best_mAP, 6),
                    is_best=is_best,
                    rerank_mAP=float(metrics["rerank"]["mAP"]) if "rerank" in metrics else None,
                )
            )
        dist.barrier()
        return result

    def _eval_stage(self, epoch: int, name: str, total: int) -> Callable[[int, int], None]:
        """An evaluation stage's progress reporter; in a single process a stop asked during the feature extraction
        ends the evaluation after the current batch (under DDP the other ranks wait for rank 0's evaluation)."""
        report = StageProgress(self.emit, epoch=epoch, stage=EVAL_STAGES[name], total=total, device=self.device)
        if self.info.world_size > 1 or name == "metrics":
            return report

        def progress(done: int, total: int) -> None:
            report(done, total)
            fault_point(f"eval:{epoch}:{name}")
            if self.stop_requested:
                raise StopRequested(f"evaluating {epoch_label(epoch, self.cfg.train.epochs)}")

        return progress

    def save_checkpoint(self, epoch: int, it: int, state: EpochState | None = None, *, is_best: bool = False) -> None:
        """Checkpoint the position (epoch, it) to continue from; ``state`` for a stop in the middle of an epoch."""
        self.stage = f"writing the checkpoint ({epoch_label(min(epoch, self.cfg.train.epochs - 1))})"
        mid = state.checkpoint_fields() if state is not None and it > 0 else None
        written = self.checkpointer.save(
            epoch, it, self.best_mAP, self.best_epoch, is_best=is_best, mid_epoch=mid, cluster_eps=self.epochs.auto_eps
        )
        if self.main:
            self.checkpoint_at = (epoch, it)
        for path in written:
            self.emit(Checkpoint(epoch=epoch, iter=it, path=path, is_best=path.endswith("best.safetensors")))

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> Ending:
        """The epoch loop of ARCHITECTURE.md; returns how it ended (exceptions are handled by ``fit``)."""
        cfg = self.cfg
        self._setup()
        self._emit_run_start()
        last_eval: dict[str, Any] | None = None
        self.epochs_done = self.start_epoch
        fault_point("startup:run-start")
        for epoch in range(self.start_epoch, cfg.train.epochs):
            if epoch == self.start_epoch:
                self.epochs.check_stop("starting")
            self.emit(EpochStart(epoch=epoch, lr=self.optimizer.param_groups[0]["lr"]))
            self.stage = f"setting up {epoch_label(epoch, cfg.train.epochs)} (features, clustering)"
            saved = self._saved if epoch == self.start_epoch else None
            state, start = self.epochs.begin(epoch, saved)
            it = self.train_epoch(epoch, state, start)
            self.epochs.sync_buffers()
            if it < cfg.train.iters:  # stop requested mid-epoch
                self.save_checkpoint(epoch, it, state)
                return self._interrupted(epoch, it, last_eval)
            is_best = False
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                try:
                    last_eval = self.run_eval(epoch)
                except StopRequested:  # the epoch is trained: kept as its last iteration, the evaluation runs on resume
                    self.save_checkpoint(epoch, cfg.train.iters, state)
                    return self._interrupted(epoch, cfg.train.iters, last_eval, "; its evaluation runs on resume")
                is_best = bool(last_eval and last_eval["is_best"])
            self.scheduler.step()
            self.save_checkpoint(epoch + 1, 0, is_best=is_best)
            self.epochs_done = epoch + 1
            if self._should_stop():
                return self._interrupted(epoch + 1, 0, last_eval)
        return Ending("ok", epochs_done=self.epochs_done, last_eval=last_eval, resume=False)

    def _interrupted(self, epoch: int, it: int, last_eval: dict[str, Any] | None, detail: str = "") -> Ending:
        """The ending of a requested stop at position (epoch, it), after the checkpoint was written."""
        epochs, iters = self.cfg.train.epochs, self.cfg.train.iters
        done = f"after {epoch_label(epoch, epochs)} {iter_label(it - 1, iters)}" if it else f"after {epoch_label(epoch - 1, epochs)}"
        return Ending(
            "interrupted",
            message=f"stopped {done} with a checkpoint{detail}; continue with: hhcl train --resume {self.run_dir}",
            epochs_done=epoch,
            last_eval=last_eval,
            exit_code=self.signals.exit_code,
        )

    def _stopped_before_training(self, where: str) -> Ending:
        """The ending of a stop asked before this process trained a step: nothing new to keep, so no checkpoint is
        written; the one on disk (if any) is still the position to continue from."""
        resume = f"hhcl train --resume {self.run_dir}"
        at = self.checkpoint_at or (checkpoint_position(self.layout) if self.main else None)  # before it was read
        if at is None and self.main and self.layout.has_checkpoint():
            kept = "the last checkpoint is kept"
        elif at is None:
            kept = "there is no checkpoint yet, so the run starts from the beginning"
        else:
            epoch, it = at
            cfg = self.cfg.train
            at = f"{epoch_label(epoch, cfg.epochs)} {iter_label(it, cfg.iters)}" if it else (
                f"the start of {epoch_label(epoch, cfg.epochs)}" if epoch < cfg.epochs else "the end of training"
            )
            kept = f"the checkpoint at {at} is kept"
        return Ending(
            "interrupted",
            message=f"stopped while {where}, before training any step: {kept}; continue with: {resume}",
            epochs_done=at[0] if at else 0,
            exit_code=self.signals.exit_code,
        )

    def _emit_run_start(self) -> None:
        self.emit(
            RunStart(
                run=self.run_dir.name,
                preset=self.preset,
                config=self.cfg.to_dict(),
                device=str(self.device),
                world_size=self.info.world_size,
                n_train=len(self.train_store),
                n_query=len(self.query_store) if self.query_store else 0,
                n_gallery=len(self.gallery_store) if self.gallery_store else 0,
                epochs=self.cfg.train.epochs,
                iters=self.cfg.train.iters,
                start_epoch=self.start_epoch,
                start_iter=self.start_iter,
                resumed=self._saved is not None,
                notes=self.notes,
                **this_process(),
            )
        )

    def fit(self) -> FitResult:
        """Train to ``train.epochs`` and return how it ended; whatever stops the run, the log records why.

        Rank 0 holds the run directory's lock for the whole run (a live owner makes this raise
        :class:`hhcl.run.lock.RunLockedError` before anything is written). SIGTERM, SIGHUP and the first Ctrl-C stop
        after the current step with a checkpoint, or during start-up, an epoch's set-up or an evaluation at the
        stage's next boundary (:class:`StopRequested`; set-up has nothing new to keep, so no checkpoint is written,
        while a cut evaluation keeps its trained epoch); a second one stops at once. Errors become an ``error``
        event.
        """
        t0 = time.time()
        with StopSignals(self) as self.signals:  # from the start: a stop at any moment is honoured and recorded
            self.pretrained = self._resolve_pretrained()  # before the run directory exists: a failure leaves none
            lock = RunLock(self.layout.lock)
            if self.main:
                lock.acquire()
                if lock.took_over is not None:
                    self.notes.append(f"took over the lock of {lock.took_over.describe()}: that process is gone")
            try:
                try:
                    self._open_run()
                    self._startup_boundary("open")
                    with self.events.heartbeat(HEARTBEAT_SECONDS):
                        ending = self._loop()
                except StopRequested as stop:
                    ending = self._stopped_before_training(stop.where)
                except KeyboardInterrupt:
                    ending = Ending(
                        "interrupted",
                        message=f"stopped at once while {self.stage}; the last checkpoint is kept; "
                        f"continue with: hhcl train --resume {self.run_dir}",
                        exit_code=self.signals.exit_code,
                        epochs_done=self.epochs_done,
                    )
                except Exception as err:  # noqa: BLE001 - every failure must end the log with error + run_end
                    ending = describe_failure(err, self.run_dir)
                    ending.epochs_done = self.epochs_done
                self.signals.settle()  # the ending is decided: a further Ctrl-C must not cut its record short
                return self._finish(ending, t0)
            finally:
                self.events.close()
                lock.release()

    def _resolve_pretrained(self) -> Pretrained:
        """The weights the model starts from (resuming a checkpoint: none, the checkpoint holds them); raises
        WeightsNotFoundError or CheckpointError naming the file and the fix."""
        m = self.cfg.model
        if self.resume and self.layout.has_checkpoint():
            return Pretrained(m.pretrained, None, "none", "resuming: the weights come from the checkpoint")
        pretrained = resolve_pretrained(m.pretrained, arch=m.arch, pooling=m.pooling, num_features=m.num_features)
        if pretrained.kind in ("backbone", "re-id model"):  # a path: say which file it resolved to
            self.notes.append(pretrained.note)
        return pretrained

    def _open_run(self) -> None:
        """Rank 0: the run directory, its config, its event log; finish or clean up an interrupted write."""
        if not self.main:
            return
        self.stage = "opening the run directory"
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.events = EventWriter(self.layout.events)
        if not self.resume:  # a resume writes its config once the checkpoint accepted it (_setup)
            atomic_write_text(self.layout.config, self.cfg.to_toml())
        self.notes += recover(self.layout)

    def _finish(self, ending: Ending, t0: float) -> FitResult:
        """Record the ending (error + run_end, best effort on a failing disk) and build the result."""
        resume = f"hhcl train --resume {self.run_dir}" if ending.resume and ending.status != "ok" else None
        if ending.status == "error" and not self.layout.has_checkpoint():
            resume = None  # nothing to resume: the same --name (or --resume) starts the run again
        events: list[Event] = []
        if ending.status == "error":
            events.append(
                Error(message=ending.message, where=self.stage, hint=ending.hint, kind=ending.kind,
                      traceback=ending.traceback)
            )
        events.append(
            RunEnd(
                status=ending.status,
                best_mAP=round(self.best_mAP, 6) if self.best_epoch >= 0 else None,  # never evaluated: no figure
                best_epoch=self.best_epoch if self.best_epoch >= 0 else None,
                elapsed=round(time.time() - t0, 2),
                message=ending.message,
                resume=resume,
            )
        )
        for event in events:  # best effort: nothing here may hide the ending the exit code reports
            try:
                self.events.emit(event)
            except OSError:  # a full disk may refuse even these lines
                pass
            for hook in self.hooks if self.main else ():
                try:
                    hook.on_event(event)
                except Exception:  # noqa: BLE001 - a hook failing on the ending cannot change it
                    pass
        return FitResult(
            ending.status,
            self.run_dir,
            self.best_mAP,
            self.best_epoch,
            ending.last_eval,
            ending.epochs_done,
            ending.message,
            ending.exit_code,
            ending.hint,
            resume,
            self.stage if ending.status == "error" else "",
            ending.resume,
        )
