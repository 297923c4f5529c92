"""``hhcl tensorboard RUN_DIR...``: TensorBoard scalars of finished or copied runs, from their event logs alone."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from hhcl.errors import EXIT_FAILURE
from hhcl.run.layout import RunDirError
from hhcl.run.lock import RunLockedError, check_free
from hhcl.words import plural
from hhcl_tui.common import console, fail
from hhcl_tui.errors import cli_errors


@cli_errors
def tensorboard(
    runs: Annotated[list[Path], typer.Argument(help="run directories (runs/<name>)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write each run to OUT/<run name> [default: <run>/tensorboard]")] = None,
) -> None:
    """Write the runs' scalars for TensorBoard.

    Loss, lr, clusters, pseudo-label quality and mAP/CMC as TensorBoard scalars (replacing an earlier export),
    then the `tensorboard --logdir` command to view them.
    """
    from hhcl.tensorboard import plan_tensorboard, require_tensorboard, write_tensorboard

    try:
        require_tensorboard()
        plans = [plan_tensorboard(run, None if out is None else out / _run_name(run)) for run in runs]
        targets = [target.resolve() for _, target in plans]
        if len(set(targets)) < len(targets):
            raise RunDirError(f"two runs would write to the same folder ({', '.join(map(str, runs))}): give each once.")
        if out is None:  # the runs' own folders: a live run with train.tensorboard = true writes there itself
            for layout, _ in plans:
                check_free(layout.lock)
    except RunLockedError as err:
        raise fail(f"{err}; to export a snapshot of a live run, give --out DIR.", err.exit_code) from None
    for layout, target in plans:
        try:
            done = write_tensorboard(layout.root, target)
        except OSError as err:  # a full disk or a file size limit: nothing was replaced
            raise fail(
                f"cannot write the TensorBoard scalars of {layout.root} to {err.filename or target} "
                f"({err.strerror or err}): free space there (or give --out DIR on another disk) and run it again; "
                "an earlier export there is left as it was.",
                EXIT_FAILURE,
            ) from None
        console.print(
            f"{layout.root.name}: {plural(done.points, 'point')} of {plural(len(done.tags), 'scalar')} -> {done.out}",
            highlight=False,
            markup=False,
        )
    if out is not None or len(plans) == 1:
        view = f"--logdir {shlex.quote(str(out if out is not None else plans[0][1]))}"
    else:  # each run under its name, wherever the runs are
        view = "--logdir_spec " + shlex.quote(",".join(f"{layout.root.name}:{target}" for layout, target in plans))
    console.print(f"view: tensorboard {view}", highlight=False, markup=False)


def _run_name(run: Path) -> str:
    """A run's name: its folder's (the folder holding it, when given its events.jsonl)."""
    return (run.parent if run.name.endswith(".jsonl") else run).resolve().name
