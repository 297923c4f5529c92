"""The Textual dashboard over one run's ``events.jsonl``: tails it live, or replays a finished run.

The app only reads the run directory: the event log (through :class:`hhcl.run.events.EventTail`), folded
into a :class:`RunState`, with the run's liveness re-checked on every poll (new events or not); and, for the
Clusters tab, the newest epoch's kept pseudo labels, loaded off the UI thread when a newer epoch appears.
With a training ``process`` attached, quitting asks whether to stop it (leaving it running is the default).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from rich.markup import escape
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    Footer,
    Header,
    Label,
    ProgressBar,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
)
from textual.worker import Worker, WorkerState
from textual_plotext import PlotextPlot

from hhcl.run.events import EventTail
from hhcl.run.layout import RunLayout
from hhcl_tui.dashboard import view
from hhcl_tui.dashboard.bars import ZeroBars
from hhcl_tui.dashboard.clusters import ClusterGallery, ClustersPane, labels_key, load_gallery
from hhcl_tui.dashboard.state import RunState, add_log, new_log_lines, reduce_events, update_liveness

MAX_PLOT_POINTS = 400

STOP, LEAVE, QUIT = "stop", "leave", "quit"


class QuitScreen(ModalScreen[str | None]):
    """Asks what to do with the training process: leave it running (the focused default), stop it, or stay."""

    AUTO_FOCUS = "#leave"  # Enter keeps the training: stopping it must be a deliberate choice
    BINDINGS = [Binding("escape", "dismiss_none", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog"):
            yield Label("Training is still running. What now?", id="quit-question")
            with Horizontal(id="quit-buttons"):
                yield Button("Leave it running", id="leave", variant="primary")
                yield Button("Stop training", id="stop", variant="error")
                yield Button("Cancel", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss({"stop": STOP, "leave": LEAVE}.get(event.button.id or ""))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class DashboardApp(App[str]):
    """Live view of a run: progress, loss, clustering, mAP/R1, throughput and the recent log; and a Clusters
    tab with the newest epoch's largest clusters as pictures."""

    TITLE = "hhcl monitor"
    CSS_PATH = "dashboard.tcss"
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("r", "reload", "Reload log"),
        Binding("d", "toggle_dark", "Light/dark"),
        Binding("t", "show_tab('tab-training')", "Training"),
        Binding("c", "show_tab('tab-clusters')", "Clusters"),
    ]

    def __init__(
        self,
        run_dir: str | Path,
        *,
        process: subprocess.Popen | None = None,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.time,
        wait_note: str | None = None,
    ) -> None:
        """Watch ``run_dir`` (or its events.jsonl); ``clock`` gives unix seconds for liveness (tests fix it);
        ``wait_note``: the run directory is still to appear, and the log says this until it does."""
        super().__init__()
        self.run_dir = Path(run_dir)
        self.process = process
        self.wait_note = wait_note
        self._wait_noted = False
        self.poll_interval = poll_interval
        self.clock = clock
        self.state = RunState()
        self._tail = EventTail(self.run_dir)
        self._log_seen = 0
        self._shown_status = ""
        self._plotted: tuple[int, int, int, int] | None = None
        self._process_noted = False
        self._labels_key: tuple[int, int] | None = None
        self._gallery_worker: Worker[ClusterGallery] | None = None

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with TabbedContent(id="tabs", initial="tab-training"):
            with TabPane("Training", id="tab-training"), Grid(id="grid"):
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
                        yield ZeroBars(id="spark-clusters")
                    with Horizontal(classes="spark-row"):
                        yield Label("outliers", classes="spark-label")
                        yield ZeroBars(unit="%", id="spark-outliers")
                    yield Static(id="timings-text")
                yield RichLog(id="log", classes="panel", max_lines=500, min_width=20, wrap=True)
            with TabPane("Clusters", id="tab-clusters"):
                yield ClustersPane(id="clusters-pane")
        yield Footer()

    def on_mount(self) -> None:
        titles = {
            "run": "Run",
            "progress": "Progress",
            "loss": "Loss (x: epochs)",
            "evals": "mAP / R1 · labels ARI / NMI",
            "clusters": "Clustering",
            "log": "Log (+time since start)",
        }
        for wid, title in titles.items():
            self.query_one(f"#{wid}").border_title = title
        self.sub_title = RunLayout.of(self.run_dir).root.name
        self.poll()
        self.set_interval(self.poll_interval, self.poll)

    # -- updates ----------------------------------------------------------------------------------
    def poll(self) -> None:
        """Read what the log gained since the last poll, re-check liveness, and redraw what changed."""
        self._note_waiting()
        events = self._tail.poll()
        if events:
            reduce_events(events, self.state)
        self._check_process()
        update_liveness(self.state, self.clock(), process_gone=self._process_noted)
        self._check_labels()
        changed = view.status_label(self.state) != self._shown_status  # e.g. "no news for 3 min" -> "4 min"
        if events or changed or self.state.n_log != self._log_seen or self._plotted is None:
            self.refresh_view()

    def _note_waiting(self) -> None:
        """While the run directory is still to appear, say so (once) in the log, with how to quit; once it
        is a run, say that it appeared and stop waiting."""
        if self.wait_note is None:
            return
        if RunLayout.of(self.run_dir).is_run():
            add_log(self.state, None, "good", f"{RunLayout.of(self.run_dir).root} appeared: showing the run")
            self.wait_note = None
        elif not self._wait_noted:
            add_log(self.state, None, "warn", f"{self.wait_note}; q quits")
            self._wait_noted = True

    def _check_process(self) -> None:
        """Note (once) in the log that the attached training process exited, with its exit code."""
        if self.process is None or self._process_noted:
            return
        code = self.process.poll()
        if code is None:
            return
        self._process_noted = True
        level = "good" if code == 0 else "error"
        add_log(self.state, self.state.last_t, level, f"training process exited with code {code}")

    def _check_labels(self) -> None:
        """(Re)load the Clusters tab in a thread when the newest kept labels changed (or were never read)."""
        key = labels_key(self.run_dir)
        if self._gallery_worker is not None and key == self._labels_key:
            return
        self._labels_key = key
        self._gallery_worker = self.run_worker(
            partial(load_gallery, self.run_dir), name="clusters", group="clusters", thread=True, exclusive=True,
            exit_on_error=False,
        )

    async def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Show the Clusters tab's newest gallery (an older, superseded load is ignored)."""
        worker = event.worker
        panes = self.query("#clusters-pane").results(ClustersPane)
        pane = next(panes, None)
        if worker is not self._gallery_worker or pane is None:  # superseded, or the app is closing
            return
        if event.state == WorkerState.SUCCESS and isinstance(worker.result, ClusterGallery):
            await pane.show(worker.result)
        elif event.state == WorkerState.ERROR:
            await pane.show(ClusterGallery(None, note=f"could not load the clusters: {worker.error}"))

    def refresh_view(self) -> None:
        """Redraw every panel from ``self.state``."""
        state = self.state
        self._shown_status = view.status_label(state)
        self.sub_title = f"{state.run or RunLayout.of(self.run_dir).root.name} · {self._shown_status}"
        self.query_one("#run", Static).update(view.run_text(state))
        self.query_one("#epoch-text", Static).update(view.epoch_text(state))
        self.query_one("#eta-text", Static).update(view.eta_text(state))
        self.query_one("#bar", ProgressBar).update(total=1.0, progress=state.progress)
        self.query_one("#speed-text", Static).update(view.speed_text(state))
        self.query_one("#checkpoint-text", Static).update(view.checkpoint_text(state))
        self.query_one("#progress").border_subtitle = escape(view.stage_text(state))
        self.query_one("#eval-text", Static).update(view.eval_text(state))
        self.query_one("#evals").border_subtitle = view.last_eval_text(state)
        self.query_one("#cluster-text", Static).update(view.cluster_text(state))
        self.query_one("#timings-text", Static).update(view.timings_text(state))
        self.query_one("#clusters").border_title = view.clusters_title(state)
        self.query_one("#loss").border_title = view.loss_title(state)
        clusters = [float(c.n_clusters) for c in state.clusters if c.n_clusters is not None]
        outliers = [c.outlier_ratio * 100 for c in state.clusters if c.outlier_ratio is not None]
        self.query_one("#spark-clusters", ZeroBars).data = tuple(clusters)
        self.query_one("#spark-outliers", ZeroBars).data = tuple(outliers)
        log = self.query_one("#log", RichLog)
        for line in new_log_lines(state, self._log_seen):
            log.write(view.log_line(line))
        self._log_seen = state.n_log
        self._redraw_plots()

    def _redraw_plots(self) -> None:
        """Replot the loss and mAP/R1 curves when they gained points or a fresh attempt reset them."""
        state = self.state
        key = (state.attempt, len(state.loss_points), len(state.evals), len(state.clusters), state.iters_per_epoch or 0)
        if key == self._plotted:
            return
        self._plotted = key
        loss = self.query_one("#loss", PlotextPlot)
        plt = loss.plt
        plt.clear_data()
        points = view.loss_curve(state, MAX_PLOT_POINTS)
        if points:
            plt.plot([x for x, _ in points], [y for _, y in points], marker="braille", color="cyan")
        loss.refresh()
        evals = self.query_one("#eval-plot", PlotextPlot)
        plt = evals.plt
        plt.clear_data()
        points = view.eval_points(state)
        if points:
            epochs = [x for x, _, _ in points]
            plt.plot(epochs, [m for _, m, _ in points], marker="braille", color="green", label="mAP")
            r1 = [(x, r) for x, _, r in points if r is not None]
            if r1:
                plt.plot([x for x, _ in r1], [y for _, y in r1], marker="braille", color="magenta", label="R1")
            best = max(points, key=lambda p: p[1])  # the first of equal maxima, like RunState.best_eval
            plt.scatter([best[0]], [best[1]], marker="★", color="yellow")
        for (name, series), colour in zip(view.quality_points(state).items(), ("orange", "blue"), strict=True):
            if series:  # pseudo-label quality, when the train set has identities (never used in training)
                plt.plot([x for x, _ in series], [y for _, y in series], marker="braille", color=colour, label=name)
        evals.refresh()

    # -- actions ----------------------------------------------------------------------------------
    def action_reload(self) -> None:
        """Forget everything, re-read the log from its first line and the newest labels; say what was read."""
        self.state = RunState()
        self._tail = EventTail(self.run_dir)
        self._log_seen = 0
        self._shown_status = ""
        self._plotted = None
        self._process_noted = False
        self._wait_noted = False
        self._gallery_worker = None
        self.query_one("#log", RichLog).clear()
        self.poll()
        self.notify(view.reload_summary(self.state, str(self._tail.path)), title="Reloaded")

    def action_show_tab(self, tab: str) -> None:
        """Switch to the Training or the Clusters tab."""
        self.query_one("#tabs", TabbedContent).active = tab

    def action_toggle_dark(self) -> None:
        """Switch between the light and the dark theme."""
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

