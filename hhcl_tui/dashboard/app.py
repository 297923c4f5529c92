"""The Textual dashboard over one run's ``events.jsonl``: tails it live, or replays a finished run.

The app only reads the event log (through :class:`hhcl.events.EventTail`), folds it into a
:class:`RunState` and redraws; with a training ``process`` attached, quitting asks whether to stop it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Header, Label, ProgressBar, RichLog, Sparkline, Static
from textual_plotext import PlotextPlot

from hhcl.events import EventTail
from hhcl_tui.dashboard import view
from hhcl_tui.dashboard.state import RunState, add_log, downsample, new_log_lines, reduce_events

MAX_PLOT_POINTS = 400

STOP, LEAVE, QUIT = "stop", "leave", "quit"


class QuitScreen(ModalScreen[str | None]):
    """Asks what to do with the training process: stop it, leave it running, or stay."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            yield Label("Training is still running. What now?", id="quit-question")
            with Horizontal(id="quit-buttons"):
                yield Button("Stop training", id="stop", variant="error")
                yield Button("Leave it running", id="leave", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss({"stop": STOP, "leave": LEAVE}.get(event.button.id or ""))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class DashboardApp(App[str]):
    """Live view of a run: progress, loss, clustering, mAP/R1, throughput and the recent log."""

    TITLE = "hhcl monitor"
    CSS_PATH = "dashboard.tcss"
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "reload", "Reload log"),
        Binding("d", "toggle_dark", "Light/dark"),
    ]

    def __init__(
        self,
        run_dir: str | Path,
        *,
        process: subprocess.Popen | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.process = process
        self.poll_interval = poll_interval
        self.state = RunState()
        self._tail = EventTail(self.run_dir)
        self._log_seen = 0
        self._plotted: tuple[int, int, int] | None = None
        self._process_noted = False

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Grid(id="grid"):
            yield Static(id="run", classes="panel")
            with Vertical(id="progress", classes="panel"):
                yield Static(id="epoch-text", classes="line")
                yield ProgressBar(total=1.0, show_eta=False, id="bar")
                yield Static(id="eta-text", classes="line")
                yield Static(id="speed-text", classes="line")
                yield Static(id="checkpoint-text", classes="line")
            yield PlotextPlot(id="loss", classes="panel")
            with Vertical(id="evals", classes="panel"):
                yield Static(id="eval-text", classes="line")
                yield PlotextPlot(id="eval-plot")
            with Vertical(id="clusters", classes="panel"):
                yield Static(id="cluster-text", classes="line")
                with Horizontal(classes="spark-row"):
                    yield Label("clusters", classes="spark-label")
                    yield Sparkline([], id="spark-clusters")
                with Horizontal(classes="spark-row"):
                    yield Label("outlier%", classes="spark-label")
                    yield Sparkline([], id="spark-outliers")
                yield Static(id="timings-text")
            yield RichLog(id="log", classes="panel", max_lines=500, min_width=20, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        titles = {
            "run": "Run",
            "progress": "Progress",
            "loss": "Loss (x: epochs)",
            "evals": "mAP / R1",
            "clusters": "Clustering",
            "log": "Log",
        }
        for wid, title in titles.items():
            self.query_one(f"#{wid}").border_title = title
        self.sub_title = self.run_dir.name
        self.poll()
        self.set_interval(self.poll_interval, self.poll)

    # -- updates ----------------------------------------------------------------------------------
    def poll(self) -> None:
        """Read what the log gained since the last poll and redraw what changed."""
        events = self._tail.poll()
        if events:
            reduce_events(events, self.state)
        self._check_process()
        if events or self.state.n_log != self._log_seen or self._plotted is None:
            self.refresh_view()

    def _check_process(self) -> None:
        if self.process is None or self._process_noted:
            return
        code = self.process.poll()
        if code is None:
            return
        self._process_noted = True
        level = "good" if code == 0 else "error"
        add_log(self.state, self.state.last_t, level, f"training process exited with code {code}")
        if not self.state.finished:
            self.state.status = "exited" if code == 0 else f"exited ({code})"

    def refresh_view(self) -> None:
        """Redraw every panel from ``self.state``."""
        state = self.state
        self.sub_title = f"{state.run or self.run_dir.name} · {state.status}"
        self.query_one("#run", Static).update(view.run_text(state))
        self.query_one("#epoch-text", Static).update(view.epoch_text(state))
        self.query_one("#eta-text", Static).update(view.eta_text(state))
        self.query_one("#bar", ProgressBar).update(total=1.0, progress=state.progress)
        self.query_one("#speed-text", Static).update(view.speed_text(state))
        self.query_one("#checkpoint-text", Static).update(view.checkpoint_text(state))
        self.query_one("#eval-text", Static).update(view.eval_text(state))
        self.query_one("#evals").border_subtitle = view.last_eval_text(state)
        self.query_one("#cluster-text", Static).update(view.cluster_text(state))
        self.query_one("#timings-text", Static).update(view.timings_text(state))
        self.query_one("#loss").border_title = view.loss_title(state)
        clusters = [float(c.n_clusters) for c in state.clusters if c.n_clusters is not None]
        outliers = [c.outlier_ratio * 100 for c in state.clusters if c.outlier_ratio is not None]
        self.query_one("#spark-clusters", Sparkline).data = clusters
        self.query_one("#spark-outliers", Sparkline).data = outliers
        log = self.query_one("#log", RichLog)
        for line in new_log_lines(state, self._log_seen):
            log.write(view.log_line(line))
        self._log_seen = state.n_log
        self._redraw_plots()

    def _redraw_plots(self) -> None:
        state = self.state
        key = (len(state.loss_points), len(state.evals), state.iters_per_epoch or 0)
        if key == self._plotted:
            return
        self._plotted = key
        loss = self.query_one("#loss", PlotextPlot)
        plt = loss.plt
        plt.clear_data()
        points = downsample(state.loss_points, MAX_PLOT_POINTS)
        per = state.iters_per_epoch or 1
        if points:
            plt.plot([x / per for x, _ in points], [y for _, y in points], marker="braille", color="cyan")
        loss.refresh()
        evals = self.query_one("#eval-plot", PlotextPlot)
        plt = evals.plt
        plt.clear_data()
        if state.evals:
            epochs = [e.epoch + 1 for e in state.evals]
            plt.plot(epochs, [e.mAP * 100 for e in state.evals], marker="braille", color="green", label="mAP")
            r1 = [(e.epoch + 1, e.r1 * 100) for e in state.evals if e.r1 is not None]
            if r1:
                plt.plot([x for x, _ in r1], [y for _, y in r1], marker="braille", color="magenta", label="R1")
            best = state.best_eval
            assert best is not None
            plt.scatter([best.epoch + 1], [best.mAP * 100], marker="★", color="yellow")
        evals.refresh()

    # -- actions ----------------------------------------------------------------------------------
    def action_reload(self) -> None:
        """Forget everything and re-read the log from its first line."""
        self.state = RunState()
        self._tail = EventTail(self.run_dir)
        self._log_seen = 0
        self._plotted = None
        self._process_noted = False
        self.query_one("#log", RichLog).clear()
        self.poll()

    def action_toggle_dark(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    async def action_quit(self) -> None:
        """Quit; with a live training process attached, ask first whether to stop it."""
        if self.process is None or self.process.poll() is not None:
            self.exit(QUIT)
            return

        def decided(choice: str | None) -> None:
            if choice is not None:
                self.exit(choice)

        self.push_screen(QuitScreen(), decided)

