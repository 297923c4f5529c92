"""``hhcl monitor RUN_DIR``: the Textual dashboard over a run's event log (live or finished)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hhcl.run.layout import CONFIG_FILE, EVENTS_FILE, RunLayout
from hhcl_tui.common import fail


def monitor(
    run_dir: Annotated[Path, typer.Argument(help="run directory (runs/<name>) or its events.jsonl")],
) -> None:
    """Watch a run in the terminal: progress, loss, clusters, mAP/R1; tails a live run, replays a finished one."""
    if not run_dir.exists():
        raise fail(f"run directory '{run_dir}' does not exist: give a run directory such as runs/<name> (see `ls runs`).")
    if run_dir.is_dir() and not RunLayout(run_dir).is_run():
        raise fail(
            f"'{run_dir}' is not a run directory: it has no {EVENTS_FILE} or {CONFIG_FILE}. "
            "Give the directory `hhcl train` created (runs/<name>)."
        )
    from hhcl_tui.dashboard import run_dashboard

    raise typer.Exit(run_dashboard(run_dir))
