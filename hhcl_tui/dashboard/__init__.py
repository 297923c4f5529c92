"""Textual dashboard over a run's event log (``hhcl monitor``, ``hhcl train --tui``)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from rich.text import Text

from hhcl.run.events import RunEnd, RunStart, parse_lines
from hhcl.run.layout import RunLayout
from hhcl_tui.common import console
from hhcl_tui.dashboard.app import LEAVE, STOP, DashboardApp
from hhcl_tui.dashboard.state import RunState, apply_event, reduce_events

__all__ = [
    "DashboardApp", "RunState", "apply_event", "log_size", "reduce_events", "run_dashboard", "stop_process",
    "stopped_message",
]


def stop_process(process: subprocess.Popen, timeout: float | None = None) -> int:
    """Send SIGINT to the training process's group (or to the process alone when it shares ours) and wait.

    The engine treats SIGINT as "checkpoint and stop", so waiting lets it finish that cleanly.
    """
    if process.poll() is None:
        try:
            group = os.getpgid(process.pid)
            if group != os.getpgrp():
                os.killpg(group, signal.SIGINT)
            else:
                process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    return process.wait(timeout=timeout)


def log_size(run_dir: Path) -> int:
    """Bytes in the run's event log now (0 before it exists): where the next process's events will start."""
    try:
        return RunLayout.of(run_dir).events.stat().st_size
    except OSError:
        return 0


def stopped_message(run_dir: Path, since: int = 0) -> str:
    """What a stopped run says about itself: the message of a ``run_end`` written after byte ``since`` of its
    log (the text Ctrl-C prints, with the resume command), else whether there is a checkpoint to resume."""
    layout = RunLayout.of(run_dir)
    ending: RunEnd | None = None
    try:
        data = layout.events.read_bytes()
    except OSError:  # no log (stopped before it was opened): the checkpoint files say the rest
        data = b""
    for event in parse_lines(data[since:] if len(data) >= since else data):
        if isinstance(event, RunStart):
            ending = None  # an ending belongs to the latest start
        elif isinstance(event, RunEnd):
            ending = event
    if ending is not None and ending.message:
        resume = f"; continue with: {ending.resume}" if ending.resume and ending.resume not in ending.message else ""
        return ending.message + resume
    if layout.has_checkpoint():
        return f"training stopped; continue with: hhcl train --resume {layout.root}"
    return (f"training stopped before its first checkpoint: nothing to resume yet; run the same command again "
            f"(the run directory {layout.root} is reused)")


def run_dashboard(
    run_dir: Path, process: subprocess.Popen | None = None, log_start: int | None = None, wait_note: str | None = None
) -> int:
    """Show the dashboard for ``run_dir`` until the user quits; returns the exit code for the CLI.

    With ``process`` (the training started by ``hhcl train --tui``, ideally with ``start_new_session=True``)
    quitting asks whether to leave it running (the default: 0), stop it (SIGINT to its group, wait for its
    checkpoint, print how to resume: 130), or cancel. If training already ended, the code is 0 for success
    and 1 for a failure. ``log_start``: the log's size before ``process`` started (default: its size now), so
    that an earlier attempt's ending is not taken for this one's. ``wait_note``: ``run_dir`` is still to be
    created (by a `hhcl train` started elsewhere); the dashboard says so until it is, then shows it.
    """
    since = log_size(run_dir) if log_start is None else log_start
    choice = DashboardApp(run_dir, process=process, wait_note=wait_note).run()
    if process is None:
        return 0
    if choice == STOP:
        console.print("stopping training: it finishes the current step and writes a checkpoint…", style="dim",
                      highlight=False, markup=False)
        code = stop_process(process)
        console.print(Text(stopped_message(run_dir, since), style="yellow"))
        return _exit_code(code)
    if choice == LEAVE:
        print(f"training continues in the background (pid {process.pid}); watch it with: hhcl monitor {run_dir}")
        return 0
    code = process.poll()
    if code is None:  # the app ended some other way (e.g. a crash in the UI): leave training alone
        return 0
    return _exit_code(code)


def _exit_code(code: int) -> int:
    """The CLI's code for the training process's: 0 ok, 130 interrupted (SIGINT), else 1."""
    return 0 if code == 0 else (130 if code in (130, -signal.SIGINT) else 1)
