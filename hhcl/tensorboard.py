"""TensorBoard scalars of a run, from its events: live (a hook, ``train.tensorboard = true``) or after the fact.

One mapping, :func:`event_scalars`, turns an event into scalars; the live :class:`TensorBoardHook` and the
offline :func:`write_tensorboard` (``hhcl tensorboard RUN``, from ``events.jsonl`` alone) both use it, so they
write the same tags, values, steps and wall times (the event's ``t``).

Tags: ``loss/total`` and ``loss/<part>`` (``loss_hard`` -> ``loss/hard``), ``train/lr``, ``train/images_per_s``;
``cluster/clusters``, ``cluster/outliers``, ``cluster/outlier_ratio``, ``cluster/eps`` and, when the train set
has identities, ``cluster/ari``, ``cluster/nmi``, ``cluster/precision``, ``cluster/recall``; ``eval/mAP``,
``eval/rank1``, ``eval/rank5``, ``eval/rank10`` (and ``eval/mAP_rerank``).

Step axis: the 0-based index of the training iteration, ``epoch * iters + iter``. A ``cluster`` event is
plotted at its epoch's first iteration, an ``eval`` at its epoch's last. A run resumed at (epoch E, iter I)
re-does everything from iteration ``E * iters + I`` on, and nothing before it, so that index is where the
scalars of the process that stopped are cut: offline they are dropped, live the writer is opened with
``purge_step`` (TensorBoard's Python reader then hides the earlier process's points from there on; its
default data server drops a tag's later points when an earlier step comes again), so a resumed run shows each
point once.

The ``tensorboard`` package is an extra (``pip install "hhcl[tensorboard]"``); it is imported only here and
only when used, through ``torch.utils.tensorboard``.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hhcl.atomic import fsync_dir, make_tmp_dir, naming
from hhcl.config import ConfigError
from hhcl.run.events import Cluster, Eval, Event, RunEnd, RunStart, Step, read_events
from hhcl.run.layout import CONFIG_FILE, EVENTS_FILE, RunDirError, RunLayout

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

INSTALL = 'pip install "hhcl[tensorboard]"'
#: the ranks of ``eval.cmc``, in order (see :class:`hhcl.run.events.Eval`)
CMC_RANKS = (1, 5, 10)
#: how often the live writer flushes to disk, in seconds
FLUSH_SECONDS = 5
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")

__all__ = [
    "Scalar",
    "TensorBoardExport",
    "TensorBoardHook",
    "TensorBoardMissingError",
    "event_scalars",
    "log_scalars",
    "plan_tensorboard",
    "require_tensorboard",
    "resume_step",
    "run_iters",
    "write_tensorboard",
]


class TensorBoardMissingError(ConfigError):
    """``train.tensorboard = true`` or ``hhcl tensorboard`` without the ``tensorboard`` package installed. A usage
    error: the message says what to install."""


@dataclass(frozen=True)
class Scalar:
    """One TensorBoard point: ``tag`` at global ``step``, written at ``walltime`` (the event's unix time)."""

    tag: str
    value: float
    step: int
    walltime: float | None


@dataclass(frozen=True)
class TensorBoardExport:
    """What :func:`write_tensorboard` wrote: the folder, the number of points and the tags."""

    run_dir: Path
    out: Path
    points: int
    tags: tuple[str, ...]


def require_tensorboard() -> None:
    """Raise :class:`TensorBoardMissingError` naming the install command unless TensorBoard's writer imports."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise TensorBoardMissingError(
            f"TensorBoard logging (train.tensorboard = true, hhcl tensorboard) needs the tensorboard package, "
            f"which is not installed ({err}): {INSTALL}"
        ) from None


def run_iters(start: RunStart) -> int | None:
    """Iterations per epoch of the run a ``run_start`` describes (its ``iters``, else its config's)."""
    if start.iters is not None:
        return start.iters
    train = (start.config or {}).get("train")
    iters = train.get("iters") if isinstance(train, dict) else None
    return iters if isinstance(iters, int) and not isinstance(iters, bool) else None


def resume_step(start: RunStart, iters: int) -> int:
    """The first global step a ``run_start`` (re)does: ``start_epoch * iters + start_iter`` (0 for a new run)."""
    return (start.start_epoch or 0) * iters + (start.start_iter or 0)


def event_scalars(event: Event, iters: int | None) -> list[Scalar]:
    """The scalars one event contributes (none for events without numbers, or before ``iters`` is known)."""
    if iters is None or getattr(event, "epoch", None) is None:
        return []
    values: dict[str, float | None] = {}
    if isinstance(event, Step):
        if event.iter is None:
            return []
        step = event.epoch * iters + event.iter
        values["loss/total"] = event.loss
        for name, value in event.parts.items():
            values[f"loss/{name.removeprefix('loss_')}"] = value
        values["train/lr"] = event.lr
        values["train/images_per_s"] = event.images_per_s
    elif isinstance(event, Cluster):
        step = event.epoch * iters
        values["cluster/clusters"] = event.n_clusters
        values["cluster/outliers"] = event.n_outliers
        values["cluster/outlier_ratio"] = event.outlier_ratio
        values["cluster/eps"] = event.eps
        for name, value in (event.quality or {}).items():
            values[f"cluster/{name}"] = value
    elif isinstance(event, Eval):
        step = (event.epoch + 1) * iters - 1
        values["eval/mAP"] = event.mAP
        for rank, value in zip(CMC_RANKS, event.cmc, strict=False):
            values[f"eval/rank{rank}"] = value
        values["eval/mAP_rerank"] = event.rerank_mAP
    else:
        return []
    return [Scalar(tag, float(value), step, event.t) for tag, value in values.items() if value is not None]


def log_scalars(events: Iterable[Event]) -> list[Scalar]:
    """What a whole event log shows in TensorBoard: each ``run_start`` drops the points at and after the step it
    resumes from (they are done again), as the live writer's ``purge_step`` does; in write order."""
    out: list[Scalar] = []
    iters: int | None = None
    for event in events:
        if isinstance(event, RunStart):
            iters = run_iters(event) or iters
            if iters is not None:
                cut = resume_step(event, iters)
                out = [s for s in out if s.step < cut]
            continue
        out += event_scalars(event, iters)
    return out


def _writer(log_dir: Path, purge_step: int | None) -> SummaryWriter:
    """A SummaryWriter whose event file sorts after every one already in ``log_dir``.

    TensorBoard reads a folder's event files in name order, and a name starts with the creation second: a writer
    opened within the second of an earlier one (a quick resume) waits for the next second, or its points could be
    read first and then hidden by the earlier process's. (At most one second: a file stamped later than that
    comes from another clock, and waiting would not help.)
    """
    from torch.utils.tensorboard import SummaryWriter

    if log_dir.is_dir():
        seconds = [int(m.group(1)) for p in log_dir.iterdir() if (m := _EVENT_FILE.match(p.name))]
        wait = min(max(seconds, default=0) + 1 - time.time(), 1.0)
        if wait > 0:
            time.sleep(wait)
    return SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=FLUSH_SECONDS)


class TensorBoardHook:
    """Live TensorBoard scalars of a training run (rank 0): opened at each ``run_start``, closed at ``run_end``.

    The engine attaches it on rank 0 when ``train.tensorboard`` is on. It has the interface of
    :class:`hhcl.engine.Hook` without importing the engine (which would slow ``hhcl tensorboard`` down). A resumed
    run's writer gets ``purge_step`` = the resume step, so points the stopped process wrote from there on are
    hidden and each step shows once.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        require_tensorboard()
        self.log_dir = Path(log_dir)
        self.iters: int | None = None
        self.writer: SummaryWriter | None = None

    def on_event(self, event: Event) -> None:
        """Write the event's scalars; a ``run_start`` (re)opens the writer, a ``run_end`` closes it."""
        if isinstance(event, RunStart):
            self.close()
            self.iters = run_iters(event) or self.iters
            purge = resume_step(event, self.iters) if self.iters is not None else None
            self.writer = _writer(self.log_dir, purge)
            return
        if isinstance(event, RunEnd):
            self.close()
            return
        if self.writer is None:
            return
        for s in event_scalars(event, self.iters):
            self.writer.add_scalar(s.tag, s.value, s.step, walltime=s.walltime)

    def after_step(self, trainer: Any, epoch: int, it: int) -> None:
        """Nothing per step: the scalars come from the ``step`` events."""

    def close(self) -> None:
        """Flush and close the writer (if open)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _check_run(run_dir: Path) -> RunLayout:
    layout = RunLayout.of(run_dir)
    if not layout.root.is_dir():
        raise RunDirError(f"run directory '{run_dir}' does not exist: give a run directory such as runs/<name>.")
    if not layout.events.is_file():
        what = f"it has a {CONFIG_FILE} but no {EVENTS_FILE}" if layout.is_run() else f"it has no {EVENTS_FILE}"
        raise RunDirError(
            f"'{layout.root}' is not a run directory with an event log ({what}): "
            "give the directory `hhcl train` created (runs/<name>)."
        )
    return layout


def _check_target(out: Path) -> None:
    """``out`` may be replaced: it is absent, or a folder of TensorBoard event files only (what we write)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"'{out}' exists and is a file: give another --out folder.")
    foreign = [p.name for p in out.iterdir() if not _EVENT_FILE.match(p.name)]
    if foreign:
        raise RunDirError(
            f"'{out}' exists and holds more than TensorBoard event files ({', '.join(sorted(foreign)[:3])}): "
            "it is not replaced; give another --out folder."
        )


def plan_tensorboard(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> tuple[RunLayout, Path]:
    """Check that ``run_dir`` has an event log and that ``out`` (default ``<run>/tensorboard``) may be replaced;
    returns the run's layout and the folder. Raises :class:`RunDirError` naming the problem and the fix."""
    layout = _check_run(Path(run_dir))
    target = Path(out) if out is not None else layout.tensorboard
    _check_target(target)
    return layout, target


def write_tensorboard(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> TensorBoardExport:
    """Write a run's TensorBoard scalars from its ``events.jsonl`` alone into ``out`` (default
    ``<run>/tensorboard``), replacing what was there: writing again gives the same folder, never doubled points."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    layout, target = plan_tensorboard(run_dir, out)
    scalars = log_scalars(read_events(layout.events))
    fresh = make_tmp_dir(target)
    try:
        with _quiet_writer_thread():
            writer = SummaryWriter(str(fresh))
            for s in scalars:
                writer.add_scalar(s.tag, s.value, s.step, walltime=s.walltime)
            writer.close()
        _replace_dir(fresh, target)
    except OSError as err:  # a full disk: the writer's thread failed; the previous export is left as it was
        raise naming(err, target) from None
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return TensorBoardExport(layout.root, target, len(scalars), tuple(sorted({s.tag for s in scalars})))


@contextmanager
def _quiet_writer_thread() -> Iterator[None]:
    """TensorBoard writes from a thread of its own and re-raises that thread's failure (a full disk) in the
    caller's ``flush``/``close``; this keeps the thread from also printing it as an unhandled traceback."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, OSError):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _replace_dir(fresh: Path, target: Path) -> None:
    """Put folder ``fresh`` at ``target``: the old folder is renamed aside first (and back on a failure), then
    deleted."""
    old = None
    if target.exists():
        old = make_tmp_dir(target.with_name(f"{target.name}.old"))
        os.replace(target, old)  # onto the empty folder just made
    try:
        os.replace(fresh, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
