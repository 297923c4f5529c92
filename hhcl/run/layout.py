"""Run directory layout: ``<runs_dir>/<name>/{config.toml, events.jsonl, log.txt, run.lock, checkpoints/}``
(and ``labels/``, ``tensorboard/``).

Every file name of a run lives here; the rest of hhcl asks :class:`RunLayout` for paths.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from hhcl.errors import UsageError
from hhcl.run.lock import check_free

CONFIG_FILE = "config.toml"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "log.txt"
LOCK_FILE = "run.lock"
CHECKPOINTS = "checkpoints"
LAST_WEIGHTS = "last.safetensors"
LAST_STATE = "last.state.pt"
BEST_WEIGHTS = "best.safetensors"
CHECKPOINT_NAMES = (BEST_WEIGHTS, LAST_WEIGHTS)  # the weight files a run is read from, in order of preference
COMMIT_FILE = "last.commit"  # the checkpoint pair's commit record (exists only while a pair is being renamed)
LABELS = "labels"  # each epoch's pseudo labels (epoch_001.npy, ...) and the train images they index (train.tsv)
TENSORBOARD = "tensorboard"  # TensorBoard scalars of the run (train.tensorboard = true, or `hhcl tensorboard`)


class RunDirError(UsageError, ValueError):
    """A run directory that cannot be used as asked; the message names it and says what to do instead. A usage
    error."""


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory."""

    root: Path

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> RunLayout:
        """The layout of a run directory, or of the run an ``events.jsonl`` path belongs to."""
        path = Path(path)
        return cls(path.parent if path.name == EVENTS_FILE else path)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last_weights(self) -> Path:
        return self.checkpoints / LAST_WEIGHTS

    @property
    def last_state(self) -> Path:
        return self.checkpoints / LAST_STATE

    @property
    def best_weights(self) -> Path:
        return self.checkpoints / BEST_WEIGHTS

    @property
    def commit(self) -> Path:
        return self.checkpoints / COMMIT_FILE

    @property
    def labels(self) -> Path:
        return self.root / LABELS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def epoch_labels(self, epoch: int) -> Path:
        """The pseudo labels of 0-based ``epoch``, named 1-based as users read epochs."""
        return self.labels / f"epoch_{epoch + 1:03d}.npy"

    def has_checkpoint(self) -> bool:
        """Whether a training checkpoint (a pair, or a pair still being committed) is on disk."""
        return self.commit.is_file() or self.last_weights.is_file() or self.last_state.is_file()

    def is_run(self) -> bool:
        """Whether the folder looks like a run directory (it has a config or an event log)."""
        return self.config.is_file() or self.events.is_file()


def default_run_name(dataset: str, arch: str, preset: str | None = None) -> str:
    """``<preset or dataset>-<arch>-<YYYYmmdd-HHMMSS>``: sortable and says what ran."""
    stem = preset if preset and not preset.endswith(".toml") else dataset
    return f"{Path(stem).stem}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_runs_dir(runs_dir: str | os.PathLike[str]) -> Path:
    """``--runs-dir`` must be a folder we can write in (or creatable): else :class:`RunDirError`."""
    runs = Path(runs_dir)
    if runs.exists() and not runs.is_dir():
        raise RunDirError(f"--runs-dir '{runs}' is a file, not a folder: give a folder for run directories.")
    existing = runs
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(
            f"--runs-dir '{runs}' is not writable ('{existing}' does not allow creating files): "
            "give a folder you can write to."
        )
    return runs


def check_run_name(name: str, runs_dir: str | os.PathLike[str]) -> str:
    """``--name`` must be one folder name inside ``--runs-dir``: no path separators, no ``.``/``..``, no control
    characters (they break logs and pasted commands), and short enough for the file system; else RunDirError."""
    problem = None
    if not name.strip():
        problem = "is empty"
    elif "/" in name or (os.altsep and os.altsep in name) or os.sep in name or name in (".", ".."):
        problem = "is a path, not a name: runs are created inside --runs-dir, give --runs-dir for another folder"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "holds a control character (newline, tab, ...)"
    else:
        existing = Path(runs_dir)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            limit = os.pathconf(existing, "PC_NAME_MAX")
        except (OSError, ValueError):
            limit = 255
        if len(name.encode("utf-8", "surrogateescape")) > limit:
            problem = f"is {len(name.encode('utf-8', 'surrogateescape'))} bytes long; this file system allows {limit}"
    if problem:
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise RunDirError(f"--name {shown!r} {problem}: give a plain folder name such as market-try2.")
    return name


def plan_run_dir(runs_dir: str | os.PathLike[str], name: str) -> Path:
    """The directory a new run would use.

    A fresh name, an empty folder, or a run that ended before its first checkpoint (nothing to resume) can be
    (re)started; a run with a checkpoint is refused (continue it with ``--resume``), and so is a folder that is
    not a run directory. A run another live process holds is refused naming its pid and host.
    """
    path = check_runs_dir(runs_dir) / check_run_name(name, runs_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"'{path}' exists and is a file: pick another --name.")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    layout = RunLayout(path)
    check_free(layout.lock)
    if layout.has_checkpoint():
        raise RunDirError(
            f"run directory '{path}' already exists and has a checkpoint: pick another --name, "
            f"or continue it with: hhcl train --resume {path}"
        )
    if not layout.is_run():
        raise RunDirError(f"'{path}' exists and is not a run directory (no {CONFIG_FILE}, no {EVENTS_FILE}): pick another --name.")
    return path


def find_checkpoint(run_or_checkpoint: str | os.PathLike[str]) -> Path:
    """The weight file of a run directory (``checkpoints/best.safetensors``, else ``last``), of its
    checkpoints folder, or the file itself."""
    from hhcl.weight_files import WEIGHT_SUFFIXES, CheckpointError  # torch is imported only when asked

    path = Path(run_or_checkpoint).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            for candidate in (path / CHECKPOINTS / name, path / name):
                if candidate.is_file():
                    return candidate
        raise CheckpointError(
            f"run directory '{path}' has no checkpoint: expected {RunLayout(path).best_weights} "
            f"or {LAST_WEIGHTS} (the run may not have reached its first evaluation yet)"
        )
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist: give a run directory or a checkpoint file")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise CheckpointError(
            f"'{path}' is not a checkpoint: use a run directory, a .safetensors file or an authors' .pth.tar"
        )
    return path
