"""How a run ends: stop signals (SIGINT, SIGTERM) and failures turned into a recorded, explained ending.

Every way out of ``Trainer.fit`` becomes an :class:`Ending`: finished, interrupted (first Ctrl-C or SIGTERM:
after the current step, with a checkpoint; a second one: at once), or an error with what happened, where, and
what to try. The exit code follows the CLI's contract: 0 ok, 1 failure, 2 usage/config, 130 Ctrl-C, 143 SIGTERM.
"""

from __future__ import annotations

import errno
import signal
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from hhcl.checkpoint import CheckpointError
from hhcl.config import ConfigError
from hhcl.data import CorruptImageError, DatasetFormatError, DatasetNotFoundError
from hhcl.epoch import TrainingError
from hhcl.models import WeightsNotFoundError
from hhcl.run.checkpoint import ResumeError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass
class Ending:
    """How a run ended and what to tell the user."""

    status: str  # ok | interrupted | error
    message: str = ""
    hint: str = ""
    kind: str = ""
    exit_code: int = EXIT_OK
    epochs_done: int = 0
    last_eval: dict[str, Any] | None = None
    resume: bool = True  # whether "hhcl train --resume" is the way on (errors: when a checkpoint exists)
    traceback: str | None = None


class _Stoppable(Protocol):
    stop_requested: bool


class StopSignals:
    """SIGINT and SIGTERM ask ``target`` to stop after the current step; a second signal interrupts at once.

    Installed only in the main thread (signal handlers cannot be set elsewhere); the previous handlers come
    back on exit. ``exit_code`` is 143 once SIGTERM was received, else 130.
    """

    def __init__(self, target: _Stoppable) -> None:
        self.target = target
        self.exit_code = EXIT_SIGINT
        self._settled = False
        self._previous: dict[int, Any] = {}

    def settle(self) -> None:
        """From now on signals are noted but interrupt nothing (the run is recording how it ended)."""
        self._settled = True

    def _handle(self, signum: int, frame: Any) -> None:
        if self._settled:
            return
        first = not self.target.stop_requested
        if signum == signal.SIGTERM:
            self.exit_code = EXIT_SIGTERM
        if not first:
            raise KeyboardInterrupt
        self.target.stop_requested = True

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def describe_failure(err: BaseException, stage: str, run_dir: Path) -> Ending:
    """The ending an exception means: a message (what), the stage (where, added by the caller), a hint."""
    kind = type(err).__name__
    text = str(err) or kind
    usage = (ConfigError, DatasetNotFoundError, DatasetFormatError, WeightsNotFoundError)
    if isinstance(err, TrainingError):
        return Ending("error", text, "", kind, EXIT_FAILURE)
    if isinstance(err, usage) or (isinstance(err, CheckpointError) and stage == "building the model"):
        return Ending("error", text, "", kind, EXIT_USAGE)
    if isinstance(err, ResumeError):  # resuming again would fail the same way: the message says what to do
        return Ending("error", text, "", kind, EXIT_FAILURE, resume=False)
    if isinstance(err, CheckpointError | CorruptImageError):
        return Ending("error", text, "", kind, EXIT_FAILURE)
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        where = f" ({err.filename})" if err.filename else ""
        return Ending(
            "error",
            f"the disk is full or a file size limit was reached{where}: {err.strerror or text}",
            f"free space under {run_dir} (or raise the limit), then continue with: hhcl train --resume {run_dir}; "
            "the previous checkpoint is intact",
            kind,
            EXIT_FAILURE,
        )
    if isinstance(err, torch.OutOfMemoryError):
        return Ending(
            "error",
            f"out of memory: {text.splitlines()[0]}",
            "lower data.batch_size (keep it a multiple of data.num_instances), or use train.amp=bf16",
            kind,
            EXIT_FAILURE,
        )
    if isinstance(err, OSError):
        return Ending("error", f"{kind}: {text}", "check the file and the disk it is on, then resume", kind, EXIT_FAILURE)
    return Ending(
        "error",
        f"{kind}: {text}",
        f"this looks like a bug in hhcl or in a hook; the traceback is in {run_dir / 'log.txt'} and events.jsonl",
        kind,
        EXIT_FAILURE,
        traceback="".join(traceback.format_exception(err)),
    )
