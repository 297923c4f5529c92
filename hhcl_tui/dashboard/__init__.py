"""Textual dashboard over a run's event log (``hhcl monitor``, ``hhcl train --tui``)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from hhcl_tui.dashboard.app import LEAVE, STOP, DashboardApp
from hhcl_tui.dashboard.state import RunState, apply_event, reduce_events

__all__ = ["DashboardApp", "RunState", "apply_event", "reduce_events", "run_dashboard", "stop_process"]


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


def run_dashboard(run_dir: Path, process: subprocess.Popen | None = None) -> int:
    """Show the dashboard for ``run_dir`` until the user quits; returns the exit code for the CLI.

    With ``process`` (the training started by ``hhcl train --tui``, ideally with ``start_new_session=True``)
    quitting asks whether to stop it (SIGINT to its group, then wait: exit code 130), leave it running
    (0), or cancel. If training already ended, the code is 0 for success and 1 for a failure.
    """
    choice = DashboardApp(run_dir, process=process).run()
    if process is None:
        return 0
    if choice == STOP:
        stop_process(process)
        return 130
    if choice == LEAVE:
        print(f"training continues in the background (pid {process.pid}); watch it with: hhcl monitor {run_dir}")
        return 0
    code = process.poll()
    if code is None:  # the app ended some other way (e.g. a crash in the UI): leave training alone
        return 0
    return 0 if code == 0 else (130 if code in (130, -signal.SIGINT) else 1)
