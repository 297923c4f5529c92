"""The run's checkpoint: ``last.safetensors`` (weights) + ``last.state.pt`` (training state) as one unit.

A pair is written in three steps: both files as fsynced temporary files, then a commit record naming them
(written atomically: the commit point), then the two renames and the record's removal. A crash before the
commit point leaves the previous pair and stray temporary files (deleted on the next start); a crash after
it is rolled forward by :meth:`Checkpointer.recover`. The state names its weights file's ``pair`` id, so a
resume verifies the two belong together, and it stores the config it was trained with, so a hand-edited
``config.toml`` is caught. ``best.safetensors`` (weights only) is written before the pair, so the pair's
best-mAP record never points past the best file on disk.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from hhcl.atomic import atomic_write_bytes, atomic_write_text, fsync_dir, remove_stray_tmp, write_tmp
from hhcl.config import RESUMABLE_KEYS, Config, ConfigError, check_key, from_dict, load_config
from hhcl.diskspace import require_free
from hhcl.errors import UsageError
from hhcl.faults import fault_point
from hhcl.run.layout import CHECKPOINTS, LAST_STATE, LAST_WEIGHTS, RunLayout
from hhcl.run.state import StateError, TrainingState, capture_rng, load_state, restore_rng, state_bytes
from hhcl.weight_files import weights_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

class ResumeError(UsageError, RuntimeError):
    """A run cannot be resumed as it is on disk; the message names the files and what to do. A usage error: the
    run directory given holds a damaged or mismatched checkpoint (as :class:`CheckpointError` for a file)."""


def resume_config(run_dir: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run's saved config plus the overrides allowed on resume; an unknown key is refused as a typo (with the
    nearest known key, as on a fresh run), then any key a resume may not change is refused by name."""
    path = RunLayout(Path(run_dir)).config
    if not path.is_file():
        raise ConfigError(f"cannot resume '{run_dir}': {path} is missing (is it a run directory?).")
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        check_key(key)
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--set {item}: '{key}' cannot change on resume (it would change what the run computes); "
                f"allowed on resume: {', '.join(RESUMABLE_KEYS)}. Start a new run to change it."
            )
    return load_config(path, list(overrides))


def resume_epochs_error(epochs: int, epoch: int, it: int, config_path: Path) -> str | None:
    """Why ``train.epochs = epochs`` cannot continue a checkpoint at (``epoch``, ``it``), or None when it can.

    A resume may extend a run or end it earlier, but not below what it has already trained: the config would
    then describe fewer epochs than the weights went through (a mid-epoch checkpoint has started ``epoch + 1``).
    """
    trained = epoch + (1 if it else 0)
    if epochs >= trained:
        return None
    where = f"inside epoch {epoch + 1}" if it else f"after epoch {epoch}"
    return (
        f"train.epochs = {epochs} is fewer than this run has already trained (its checkpoint is {where}): give "
        f"train.epochs >= {trained} (or leave it as {config_path} has it), or start a new run for fewer epochs."
    )


def checkpoint_position(layout: RunLayout) -> tuple[int, int] | None:
    """The (epoch, iter) the last checkpoint continues from, read from its weights file's header alone (cheap,
    for checks before a run starts); None without a checkpoint or for files that do not record it."""
    try:
        with safe_open(str(layout.last_weights), framework="pt") as handle:
            meta = handle.metadata() or {}
        return int(meta["epoch"]), int(meta["iter"])
    except (SafetensorError, OSError, ValueError, KeyError):
        return None


def _flat(cfg: Config) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in cfg.to_dict().items() for k, v in values.items()}


def config_changes(saved: Config, current: Config) -> list[str]:
    """``key: saved -> current`` for every non-resumable key that differs."""
    a, b = _flat(saved), _flat(current)
    return [f"{k}: {a[k]!r} -> {b.get(k)!r}" for k in a if k not in RESUMABLE_KEYS and a[k] != b.get(k)]


def _weights_pair_id(path: Path) -> str | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("pair")
    except (SafetensorError, OSError, ValueError) as err:
        raise ResumeError(f"cannot resume: '{path}' is truncated or corrupt ({err}).") from None


def recover(layout: RunLayout) -> list[str]:
    """Finish a pair whose commit record exists, delete stray temporary files; returns what was done."""
    notes: list[str] = []
    commit = layout.commit
    if commit.is_file():
        try:
            record = json.loads(commit.read_text(encoding="utf-8"))
            renames = dict(record["renames"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ResumeError(f"checkpoint commit record '{commit}' is unreadable ({err}); delete it to keep the previous checkpoint.") from None
        for tmp, final in renames.items():
            if (layout.checkpoints / tmp).is_file():
                os.replace(layout.checkpoints / tmp, layout.checkpoints / final)
        fsync_dir(layout.checkpoints)
        commit.unlink()
        notes.append("completed a checkpoint that was being written when the last process stopped")
    stray = remove_stray_tmp(layout.checkpoints) + remove_stray_tmp(layout.root)
    if stray:
        notes.append(f"removed {len(stray)} unfinished temporary file(s) of an interrupted write")
    return notes


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly: weights, optimizer, schedule, RNG."""

    def __init__(
        self,
        layout: RunLayout,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        config: Config,
        *,
        enabled: bool = True,
    ) -> None:
        self.layout, self.model, self.optimizer = layout, model, optimizer
        self.scheduler, self.scaler, self.config = scheduler, scaler, config
        self.enabled = enabled

    # -- writing -------------------------------------------------------------------------------
    def _weights(self, pair: str, epoch: int, it: int, best_mAP: float) -> bytes:
        meta = {
            "format": "hhcl",
            "config": self.config.to_toml(),
            "epoch": str(epoch),
            "iter": str(it),
            "mAP": f"{best_mAP:.6f}",
            "run": self.layout.root.name,
            "pair": pair,
        }
        return weights_bytes(self.model, meta)

    def save(
        self,
        epoch: int,
        it: int,
        best_mAP: float,
        best_epoch: int,
        *,
        is_best: bool = False,
        mid_epoch: dict[str, Any] | None = None,
        cluster_eps: float | None = None,
    ) -> list[str]:
        """Write ``best.safetensors`` (when ``is_best``) then the last pair; returns the files written (relative).

        All of it is serialised first and checked against the free disk space: a checkpoint that cannot fit is
        refused before a byte is written (a :class:`hhcl.diskspace.DiskSpaceError` naming it), so the previous
        one stays whole."""
        if not self.enabled:
            return []
        written = []
        best = self._weights(uuid.uuid4().hex, epoch, it, best_mAP) if is_best else b""
        pair = uuid.uuid4().hex
        state = TrainingState(
            epoch=epoch,
            iter=it,
            best_mAP=best_mAP,
            best_epoch=best_epoch,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=capture_rng(),
            pair=pair,
            config=self.config.to_toml(),
            cluster_eps=cluster_eps,
            **(mid_epoch or {}),
        )
        weights, state_data = self._weights(pair, epoch, it, best_mAP), state_bytes(state)
        require_free(
            self.layout.last_weights,
            len(best) + len(weights) + len(state_data),  # the new files sit beside the old ones until renamed
            f"the checkpoint ({LAST_WEIGHTS} + {LAST_STATE}{' + best.safetensors' if is_best else ''})",
            "free space on it (the previous checkpoint is kept)",
        )
        if is_best:
            atomic_write_bytes(self.layout.best_weights, best)
            written.append(f"{CHECKPOINTS}/{self.layout.best_weights.name}")
        self._write_pair(weights, state_data, pair, f"{epoch}:{it}")
        written.insert(0, f"{CHECKPOINTS}/{LAST_WEIGHTS}")
        return written

    def _write_pair(self, weights: bytes, state: bytes, pair: str, position: str) -> None:
        layout = self.layout
        fault_point(f"checkpoint:{position}:start")
        tmp_weights = write_tmp(layout.last_weights, weights)
        try:
            fault_point(f"checkpoint:{position}:weights-written")
            tmp_state = write_tmp(layout.last_state, state)
        except BaseException:
            tmp_weights.unlink(missing_ok=True)
            raise
        try:
            record = {"pair": pair, "renames": {tmp_weights.name: LAST_WEIGHTS, tmp_state.name: LAST_STATE}}
            atomic_write_text(layout.commit, json.dumps(record))  # the commit point
        except BaseException:
            tmp_weights.unlink(missing_ok=True)
            tmp_state.unlink(missing_ok=True)
            raise
        fault_point(f"checkpoint:{position}:committed")
        os.replace(tmp_weights, layout.last_weights)
        fault_point(f"checkpoint:{position}:weights-renamed")
        os.replace(tmp_state, layout.last_state)
        fsync_dir(layout.checkpoints)
        layout.commit.unlink()
        fsync_dir(layout.checkpoints)

    # -- reading -------------------------------------------------------------------------------
    def read(self) -> TrainingState | None:
        """The verified training state of the last pair, or None when the run has no checkpoint yet."""
        weights, state_path = self.layout.last_weights, self.layout.last_state
        if not weights.is_file() and not state_path.is_file():
            return None
        if not weights.is_file() or not state_path.is_file():
            have, lack = (weights, state_path) if weights.is_file() else (state_path, weights)
            raise ResumeError(
                f"cannot resume: {have} exists but {lack.name} does not, so the checkpoint is incomplete "
                "(was a file deleted or copied alone?). Restore the missing file, or start a new run."
            )
        try:
            state = load_state(state_path)
        except StateError as err:
            raise ResumeError(f"cannot resume: {err}") from None
        pair = _weights_pair_id(weights)
        if pair != state.pair:
            raise ResumeError(
                f"cannot resume: {weights.name} (pair {pair or 'none'}) and {state_path.name} (pair {state.pair}) in "
                f"{self.layout.checkpoints} were not written together, so the weights and the training state would "
                "not match. Restore the pair from one save, or start a new run."
            )
        try:
            saved = from_dict(tomllib.loads(state.config), source=f"{state_path} (training config)")
        except (tomllib.TOMLDecodeError, ConfigError) as err:
            raise ResumeError(f"cannot resume: the config stored in {state_path} is unreadable ({err}).") from None
        changed = config_changes(saved, self.config)
        if changed:
            raise ResumeError(
                f"cannot resume: {self.layout.config} differs from the config the checkpoint was trained with "
                f"({'; '.join(changed)}). Put the old values back, or start a new run with the new config."
            )
        return state

    def restore(self, state: TrainingState) -> None:
        """Load the last pair's weights, optimizer, scheduler, scaler and RNG into the live objects."""
        try:
            tensors = load_file(str(self.layout.last_weights))
        except (SafetensorError, OSError, ValueError) as err:
            raise ResumeError(f"cannot resume: '{self.layout.last_weights}' is truncated or corrupt ({err}).") from None
        own = self.model.state_dict()
        if tensors.keys() != own.keys() or any(tensors[k].shape != own[k].shape for k in own):
            raise ResumeError(f"cannot resume: '{self.layout.last_weights}' does not fit the model of {self.layout.config}.")
        self.model.load_state_dict(tensors)
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        self.scaler.load_state_dict(state.scaler)
        restore_rng(state.rng)
