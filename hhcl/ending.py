"""How a run ends: stop signals (SIGINT, SIGTERM, SIGHUP) and failures turned into a recorded, explained ending.

Every way out of ``Trainer.fit`` becomes an :class:`Ending`: finished, interrupted (first Ctrl-C, SIGTERM or
SIGHUP: after the current step or set-up stage; a second one: at once), or an error with what happened, where,
and what to try. The exit code follows the CLI's contract: 0 ok, 1 failure, 2 usage/config, 130 Ctrl-C,
143 SIGTERM, 129 SIGHUP.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from hhcl.diskspace import is_disk_full
from hhcl.epoch import TrainingError
from hhcl.errors import EXIT_FAILURE, EXIT_USAGE, HhclError

EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_SIGHUP = 0, 130, 143, 129
#: the signals that ask a run to stop, and the exit code each one leaves (the shell's 128 + signal number)
STOP_SIGNALS = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM, signal.SIGHUP: EXIT_SIGHUP}


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
    """SIGINT, SIGTERM and SIGHUP ask ``target`` to stop after the current step; a second signal interrupts at once.

    Installed only in the main thread (signal handlers cannot be set elsewhere); the previous handlers come
    back on exit. ``exit_code`` is 143 once SIGTERM was received, 129 once SIGHUP was (and no SIGTERM), else 130.
    SIGHUP means the terminal is gone: the standard streams that were a terminal are pointed at /dev/null, so
    the run's own output (still in ``log.txt``) cannot fail it on the way to its checkpoint.
    """

    def __init__(self, target: _Stoppable) -> None:
        self.target = target
        self.exit_code = EXIT_SIGINT
        self._settled = False
        self._previous: dict[int, Any] = {}
        self._terminal_fds: list[int] = []

    def settle(self) -> None:
        """From now on signals are noted but interrupt nothing (the run is recording how it ended)."""
        self._settled = True

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:
            self._detach_terminal()
        if self._settled:
            return
        first = not self.target.stop_requested
        if signum != signal.SIGINT and self.exit_code != EXIT_SIGTERM:
            self.exit_code = STOP_SIGNALS[signal.Signals(signum)]
        if not first:
            raise KeyboardInterrupt
        self.target.stop_requested = True

    def _detach_terminal(self) -> None:
        """Point the standard streams that were a terminal at /dev/null (writes to a hung-up one fail with EIO)."""
        if not self._terminal_fds:
            return
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in self._terminal_fds:
                os.dup2(null, fd)
        finally:
            os.close(null)
        self._terminal_fds = []

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._terminal_fds = [fd for fd in (1, 2) if _isatty(fd)]
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def describe_failure(err: BaseException, run_dir: Path) -> Ending:
    """The ending an exception means: a message (what) and a hint; the caller adds where (the stage).

    An :class:`HhclError` brings its message and exit code; what needs the run is added here: a full disk names
    the run directory, out of memory says what to lower, anything else is worded as a bug, and whether
    ``--resume`` is worth suggesting.
    """
    kind = type(err).__name__
    text = str(err) or kind
    if is_disk_full(err):
        return _disk_full(err, text, kind, run_dir)
    if isinstance(err, HhclError):
        return Ending("error", text, "", kind, err.exit_code, resume=_resumable(err))
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


def _resumable(err: HhclError) -> bool:
    """Whether ``hhcl train --resume`` can get past ``err``: not for a usage error (the fix is in the input, which
    a resume keeps) nor a TrainingError (the run is deterministic from its checkpoint: it would meet it again)."""
    return err.exit_code != EXIT_USAGE and not isinstance(err, TrainingError)


def _disk_full(err: OSError, text: str, kind: str, run_dir: Path) -> Ending:
    """A full disk or file size limit: the file, the disk to free (the run's, or the data root's for a cache) and
    the resume that continues."""
    where = f" ({err.filename})" if err.filename else ""
    in_run = err.filename is None or Path(os.path.abspath(err.filename)).is_relative_to(os.path.abspath(run_dir))
    disk = run_dir if in_run else Path(err.filename).parent  # a cache on the data root's disk, say
    kept = "; the previous checkpoint is intact" if in_run else ""
    return Ending(
        "error",
        f"the disk is full or a file size limit was reached{where}: {err.strerror or text}",
        f"free space under {disk} (or raise the limit), then continue with: hhcl train --resume {run_dir}{kept}",
        kind,
        EXIT_FAILURE,
    )
