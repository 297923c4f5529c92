"""Plain-terminal output of a run, derived from its events: Rich progress on a terminal, log lines otherwise.

Every line also goes to ``<run_dir>/log.txt`` (opened on the first line, so a run refused before it starts
writes nothing). It is a :class:`hhcl.engine.Hook`, so it sees exactly what the event log records. Epochs and
iterations are shown 1-based, as everywhere users read them.
"""

from __future__ import annotations

import time
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
)
from hhcl.run.layout import RunLayout


def _fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f}" if value is not None else "?"


class ConsoleReporter(Hook):
    """Prints a run's progress; owns ``log.txt``. Errors go to the log only: the CLI prints them to stderr."""

    def __init__(self, run_dir: str | Path, console: Console | None = None) -> None:
        self.console = console or Console(soft_wrap=True)
        self.live = self.console.is_terminal
        self.layout = RunLayout(Path(run_dir))
        self._log: IO[str] | None = None
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._epochs: int | None = None
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
            self._progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        else:
            stamp = time.strftime("%H:%M:%S")
            self.console.print(text if self.live else f"{stamp} {text}", highlight=False, markup=False, soft_wrap=True)

    def _start_bar(self, epoch: int) -> None:
        self._stop_bar()
        if not self.live or not self._iters:
            return
        self._progress = Progress(
            TextColumn(epoch_label(epoch, self._epochs)),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=self._iters, completed=0, info="")

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self._stop_bar()
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- hook
    def on_event(self, event: Event) -> None:
        if isinstance(event, RunStart):
            self._epochs, self._iters = event.epochs, event.iters
            resumed = f", resumed at {epoch_label(event.start_epoch)} {iter_label(event.start_iter)}" if event.resumed else ""
            self.line(
                f"run {event.run} on {event.device} (world size {event.world_size}, pid {event.pid} on {event.host}): "
                f"{event.n_train} train / {event.n_query} query / {event.n_gallery} gallery images, "
                f"{event.epochs} epochs x {event.iters} iters{resumed}"
            )
            for note in event.notes:
                self.line(f"note: {note}")
        elif isinstance(event, EpochStart):
            self.line(f"{epoch_label(event.epoch, self._epochs)} lr {event.lr:.3g}")
        elif isinstance(event, Cluster):
            self.line(
                f"{epoch_label(event.epoch, self._epochs)}: {event.n_clusters} clusters, {event.n_outliers} outliers "
                f"({_pct(event.outlier_ratio)}%) [{_fmt_seconds(event.seconds)}]"
            )
            self._start_bar(event.epoch or 0)
        elif isinstance(event, Step):
            info = f"loss {event.loss:.3f}  {event.images_per_s:.0f} img/s"
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, info=info)
            if not self.live or (event.iter is not None and event.iter + 1 == self._iters):
                self.line(f"{epoch_label(event.epoch, self._epochs)} {iter_label(event.iter, self._iters)}: {info}")
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
                else "no evaluation yet"
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
