"""Plain-terminal output of a run, derived from its events: Rich progress on a terminal, log lines otherwise.

Every line also goes to ``<run_dir>/log.txt``. It is a :class:`hhcl.engine.Hook`, so it sees exactly what
the event log records and nothing the dashboard could not show.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hhcl.engine import Hook, Trainer


def _fmt_seconds(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())


class ConsoleReporter(Hook):
    """Prints a run's progress; owns ``log.txt``."""

    def __init__(self, run_dir: str | Path, console: Console | None = None) -> None:
        self.console = console or Console()
        self.live = self.console.is_terminal
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = open(self.run_dir / "log.txt", "a", encoding="utf-8")  # noqa: SIM115
        self._progress: Progress | None = None
        self._task: Any = None
        self._iters = 0
        self._last_step: dict[str, Any] = {}

    # -- output
    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self._log.write(f"{stamp} {text}\n")
        self._log.flush()
        if self._progress is not None:
            self._progress.console.print(text, highlight=False, markup=False)
        else:
            self.console.print(f"{stamp} {text}" if not self.live else text, highlight=False, markup=False, soft_wrap=True)

    def _start_bar(self, epoch: int, total: int, done: int) -> None:
        self._stop_bar()
        if not self.live:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done, info="")

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- hook
    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "run_start":
            self._iters = int(event.get("iters", 0))
            resumed = f", resumed at epoch {event['start_epoch']} iter {event['start_iter']}" if event.get("resumed") else ""
            self.line(
                f"run {event['run']} on {event['device']} (world size {event['world_size']}): "
                f"{event['n_train']} train / {event['n_query']} query / {event['n_gallery']} gallery images, "
                f"{event['epochs']} epochs x {event['iters']} iters{resumed}"
            )
        elif kind == "epoch_start":
            self.line(f"epoch {event['epoch']} lr {event['lr']:.3g}")
        elif kind == "cluster":
            self.line(
                f"epoch {event['epoch']}: {event['n_clusters']} clusters, {event['n_outliers']} outliers "
                f"({100 * event['outlier_ratio']:.1f}%) [{_fmt_seconds(event['seconds'])}]"
            )
            self._start_bar(event["epoch"], self._iters, 0)
        elif kind == "step":
            self._last_step = event
            info = f"loss {event['loss']:.3f}  {event['images_per_s']:.0f} img/s"
            if self._progress is not None:
                self._progress.update(self._task, info=info)
            if not self.live or event["iter"] + 1 == self._iters:
                self.line(f"epoch {event['epoch']} iter {event['iter'] + 1}/{self._iters}: {info}")
        elif kind == "eval":
            self._stop_bar()
            r1, r5, r10 = event["cmc"]
            best = " (best)" if event.get("is_best") else ""
            self.line(
                f"eval epoch {event['epoch']}: mAP {100 * event['mAP']:.1f}  R1 {100 * r1:.1f}  R5 {100 * r5:.1f}  "
                f"R10 {100 * r10:.1f}{best}; best mAP {100 * event['best']:.1f}"
            )
        elif kind == "error":
            self._stop_bar()
            self.line(f"error: {event['message']}")
        elif kind == "run_end":
            self._stop_bar()
            best = (
                f"best mAP {100 * event['best_mAP']:.1f} (epoch {event['best_epoch']})"
                if event["best_epoch"] >= 0
                else "no evaluation yet"
            )
            self.line(f"run {event['status']}: {best}, {event['elapsed']:.0f} s")
            self._log.close()

    def after_step(self, trainer: Trainer, epoch: int, it: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=it + 1)
