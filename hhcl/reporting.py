"""Plain-terminal output of a run, derived from its events: Rich progress on a terminal, log lines otherwise.

Every line also goes to ``<run_dir>/log.txt`` (opened on the first line, so a run refused before it starts
writes nothing). It is a :class:`hhcl.engine.Hook`, so it sees exactly what the event log records. Epochs and
iterations are shown 1-based, as everywhere users read them. A long stage (``progress`` events: extraction,
clustering, memory init, evaluation) gets a line at most every STAGE_LINE_EVERY seconds plus one at its end,
and on a terminal a bar of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hhcl.engine import Hook, Trainer
from hhcl.run.events import (
    PROGRESS_STAGES,
    Cluster,
    EpochStart,
    Error,
    Eval,
    Event,
    RunEnd,
    RunStart,
    Step,
    epoch_label,
    iter_label,
    progress_text,
)
from hhcl.run.events import Progress as ProgressEvent
from hhcl.run.layout import RunLayout
from hhcl.words import plural

STAGE_LINE_EVERY = 10.0  # seconds between two lines about one running stage (its end is always told)


def _fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "?"


def _took(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


class ConsoleReporter(Hook):
    """Prints a run's progress; owns ``log.txt``. Errors go to the log only: the CLI prints them to stderr."""

    def __init__(self, run_dir: str | Path, console: Console | None = None) -> None:
        self.console: Console | None = console or Console(soft_wrap=True)
        self.live = self.console.is_terminal
        self.layout = RunLayout(Path(run_dir))
        self._log: IO[str] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._stage_task: TaskID | None = None
        self._stage_told: dict[tuple[int | None, str | None], float] = {}  # (epoch, stage) -> t of its last line
        self._epochs: int | None = None
        self._evaluable = True  # whether the run has a query/gallery set to evaluate on (from run_start)
        self._iters: int | None = None

    # -- output
    def _write_log(self, text: str) -> None:
        if self._log is None:
            self._log = open(self.layout.log, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        stamp = time.strftime("%H:%M:%S")
        self._log.write("".join(f"{stamp} {line}\n" for line in text.splitlines() or [""]))
        self._log.flush()

    def line(self, text: str, *, console: bool = True) -> None:
        """One line to log.txt and (unless ``console`` is False) to the terminal."""
        self._write_log(text)
        if not console:
            return
        if self._progress is not None:
            progress = self._progress
            self._terminal(lambda: progress.console.print(text, highlight=False, markup=False, soft_wrap=True))
        else:
            shown = text if self.live else f"{time.strftime('%H:%M:%S')} {text}"
            self._terminal(lambda: self.console.print(shown, highlight=False, markup=False, soft_wrap=True))

    def _terminal(self, write: Callable[[], object]) -> None:
        """Terminal output that may fail without failing the run (EIO once the terminal hung up, EPIPE from a
        closed pipe): from then on only ``log.txt`` is written, which has every line anyway."""
        if self.console is None:
            return
        try:
            write()
        except OSError:
            self.console, self.live, self._progress, self._task, self._stage_task = None, False, None, None, None

    def _display(self) -> Progress:
        """The live progress display (training bar and stage bars), started on first use."""
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        return self._progress

    def _start_bar(self, epoch: int) -> None:
        self._stop_bar()
        if not self.live or not self._iters:
            return
        label = epoch_label(epoch, self._epochs)
        self._terminal(lambda: setattr(self, "_task", self._display().add_task(label, total=self._iters, completed=0, info="")))

    def _stop_bar(self) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            self._terminal(progress.stop)
        self._task = self._stage_task = None

    def _on_progress(self, event: ProgressEvent) -> None:
        """A stage's line when due (every STAGE_LINE_EVERY s of event time, and its end); its bar on a terminal."""
        key = (event.epoch, event.stage)
        t = event.t if event.t is not None else time.time()
        end = event.done is not None and event.total is not None and event.done >= event.total
        if event.done == 0:
            self._stage_told[key] = t  # the stage starts: its first line is due STAGE_LINE_EVERY s later
        if end or t - self._stage_told.setdefault(key, t) >= STAGE_LINE_EVERY:
            self._stage_told[key] = t
            text = f"{epoch_label(event.epoch, self._epochs)} {progress_text(event)} ({_took(event.seconds)})"
            self.line(text, console=not self.live)
        if end:
            self._stage_told.pop(key, None)
        if self.live:
            self._terminal(lambda: self._show_stage(event, end))

    def _show_stage(self, event: ProgressEvent, end: bool) -> None:
        """The running stage's bar (below the training bar, if one is shown); removed at the stage's end."""
        if self._stage_task is not None and self._progress is not None and (end or event.done == 0):
            self._progress.remove_task(self._stage_task)
            self._stage_task = None
            if self._task is None:
                self._stop_bar()
        if end:
            return
        label = f"{epoch_label(event.epoch, self._epochs)} {PROGRESS_STAGES.get(event.stage or '', event.stage)}"
        if self._stage_task is None:
            self._stage_task = self._display().add_task(label, total=event.total, completed=event.done or 0, info="")
        else:
            self._display().update(self._stage_task, total=event.total, completed=event.done or 0)

    def close(self) -> None:
        self._stop_bar()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- hook
    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStart):
            self._epochs, self._iters = event.epochs, event.iters
            self._evaluable = bool(event.n_query and event.n_gallery)
            resumed = ""
            if event.resumed and event.epochs is not None and (event.start_epoch or 0) >= event.epochs:
                resumed = (f", resumed after the last of its {plural(event.epochs, 'epoch')}: nothing to train "
                           "(to train longer: --resume RUN --set train.epochs=N)")
            elif event.resumed:
                resumed = f", resumed at {epoch_label(event.start_epoch)} {iter_label(event.start_iter)}"
            self.line(
                f"run {event.run} on {event.device} (world size {event.world_size}, pid {event.pid} on {event.host}): "
                f"{event.n_train} train / {event.n_query} query / {plural(event.n_gallery, 'gallery image')}, "
                f"{plural(event.epochs, 'epoch')} x {plural(event.iters, 'iter')}{resumed}"
            )
            for note in event.notes:
                self.line(f"note: {note}")
        elif isinstance(event, EpochStart):
            self.line(f"{epoch_label(event.epoch, self._epochs)} lr {event.lr:.3g}")
        elif isinstance(event, Cluster):
            self.line(
                f"{epoch_label(event.epoch, self._epochs)}: {plural(event.n_clusters, 'cluster')}, {plural(event.n_outliers, 'outlier')} "
                f"({_pct(event.outlier_ratio)}%) [{_fmt_seconds(event.seconds)}]"
            )
            self._start_bar(event.epoch or 0)
        elif isinstance(event, Step):
            info = f"loss {event.loss:.3f}  {event.images_per_s:.0f} img/s"
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, info=info)
            if not self.live or (event.iter is not None and event.iter + 1 == self._iters):
                self.line(f"{epoch_label(event.epoch, self._epochs)} {iter_label(event.iter, self._iters)}: {info}")
        elif isinstance(event, ProgressEvent):
            self._on_progress(event)
        elif isinstance(event, Eval):
            self._stop_bar()
            r1, r5, r10 = (event.cmc + [None, None, None])[:3]
            best = " (best)" if event.is_best else ""
            self.line(
                f"eval {epoch_label(event.epoch, self._epochs)}: mAP {_pct(event.mAP)}  R1 {_pct(r1)}  R5 {_pct(r5)}  "
                f"R10 {_pct(r10)}{best}; best mAP {_pct(event.best)}"
            )
        elif isinstance(event, Error):
            self._stop_bar()
            self.line(f"error while {event.where}: {event.message}", console=False)
            if event.hint:
                self.line(f"try: {event.hint}", console=False)
            if event.traceback:
                self.line(event.traceback.rstrip(), console=False)
        elif isinstance(event, RunEnd):
            self._stop_bar()
            best = (
                f"best mAP {_pct(event.best_mAP)} ({epoch_label(event.best_epoch)})"
                if event.best_epoch is not None and event.best_epoch >= 0
                else "no evaluation (no labelled query/gallery set)" if not self._evaluable
                else "not evaluated"
            )
            self.line(f"run {event.status}: {best}, {event.elapsed:.0f} s", console=event.status != "error")
            if event.status != "error" and event.message:
                self.line(event.message, console=False)
            if event.resume:
                self.line(f"continue with: {event.resume}", console=False)
            self.close()

    def after_step(self, trainer: Trainer, epoch: int, it: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=it + 1)
