"""Rich text for each dashboard panel, computed from a :class:`RunState` (pure: testable without an app)."""

from __future__ import annotations

from rich.text import Text

from hhcl_tui.dashboard.state import STAGES, LogLine, RunState

STATUS_STYLE = {"waiting": "dim", "running": "bold cyan", "ok": "bold green", "interrupted": "bold yellow"}
LEVEL_STYLE = {"info": "", "good": "bold green", "warn": "yellow", "error": "bold red"}


def fmt_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``--`` when unknown."""
    if seconds is None:
        return "--"
    total = max(0, round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return f"{value * 100:.{digits}f}%" if value is not None else "--"


def fmt_count(value: int | float | None) -> str:
    return f"{value:,.0f}" if value is not None else "--"


def fmt_lr(value: float | None) -> str:
    return f"{value:.2e}" if value is not None else "--"


def _pair(text: Text, label: str, value: str, style: str = "bold") -> None:
    text.append(f"{label} ", style="dim")
    text.append(value, style=style)


def status_text(state: RunState) -> Text:
    style = STATUS_STYLE.get(state.status, "bold red")
    return Text.assemble(("● ", style), (state.status, style))


def run_text(state: RunState) -> Text:
    """Run name, preset, dataset (with split sizes), device and world size, status."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(state.run or "(waiting for run_start)", style="bold")
    if state.preset:
        text.append("  preset ", style="dim")
        text.append(state.preset, style="bold magenta")
    text.append("\n")
    _pair(text, "dataset", state.dataset or "--", "bold")
    if state.n_train is not None:
        text.append(f"  {fmt_count(state.n_train)} train", style="dim")
    text.append("\n")
    _pair(text, "device", state.device or "--", "bold")
    if state.world_size is not None:
        text.append("  world size ", style="dim")
        text.append(str(state.world_size), style="bold")
    text.append("\n")
    text.append("status ", style="dim")
    text.append_text(status_text(state))
    sizes = [(n, label) for n, label in ((state.n_query, "query"), (state.n_gallery, "gallery")) if n is not None]
    if sizes:
        text.append("\n" + "  ".join(f"{fmt_count(n)} {label}" for n, label in sizes), style="dim")
    return text


def epoch_text(state: RunState) -> Text:
    """Epoch and iteration of the schedule, 1-based."""
    text = Text(no_wrap=True, overflow="ellipsis")
    epoch = "--" if state.epoch is None else str(state.epoch + 1)
    epochs = f"/{state.total_epochs}" if state.total_epochs else ""
    it = "--" if state.iter is None else str(state.iter + 1)
    iters = f"/{state.iters_per_epoch}" if state.iters_per_epoch else ""
    _pair(text, "epoch", f"{epoch}{epochs}", "bold cyan")
    text.append("  ")
    _pair(text, "iter", f"{it}{iters}", "bold cyan")
    return text


def eta_text(state: RunState) -> Text:
    """Time left (while running) and time spent."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if state.finished:
        _pair(text, "done in", fmt_duration(state.elapsed))
        return text
    _pair(text, "ETA", fmt_duration(state.eta_seconds), "bold yellow")
    text.append("  ")
    _pair(text, "elapsed", fmt_duration(state.rel_time(state.last_t)))
    return text


def checkpoint_text(state: RunState) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    if state.last_checkpoint:
        _pair(text, "checkpoint", state.last_checkpoint, "")
    return text


def speed_text(state: RunState) -> Text:
    """Learning rate, throughput and data wait."""
    text = Text(no_wrap=True, overflow="ellipsis")
    _pair(text, "lr", fmt_lr(state.lr))
    text.append("  ")
    _pair(text, "img/s", fmt_count(state.images_per_s))
    if state.data_wait is not None:
        text.append("  ")
        _pair(text, "wait", f"{state.data_wait * 1000:.0f} ms")
    return text


def loss_title(state: RunState) -> str:
    if state.loss is None:
        return "Loss"
    parts = f" (CE hard {state.loss_hard:.3f}, CE mean {state.loss_mean:.3f})" if (
        state.loss_hard is not None and state.loss_mean is not None
    ) else ""
    return f"Loss {state.loss:.3f}{parts}"


def eval_text(state: RunState) -> Text:
    """The best evaluation (highlighted: mAP, R1 and its epoch)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    best = state.best_eval
    if best is None:
        text.append("no evaluation yet", style="dim")
        return text
    text.append("★ best ", style="bold green")
    _pair(text, "mAP", fmt_pct(best.mAP), "bold green")
    text.append(" ")
    _pair(text, "R1", fmt_pct(best.r1), "bold green")
    text.append(f" (epoch {best.epoch + 1})", style="green")
    return text


def last_eval_text(state: RunState) -> str:
    """The latest evaluation, for the panel's bottom border (markup)."""
    if not state.evals:
        return ""
    last = state.evals[-1]
    return f"last: mAP {fmt_pct(last.mAP)} · R1 {fmt_pct(last.r1)} · R5 {fmt_pct(last.r5)}"


def cluster_text(state: RunState) -> Text:
    """Clusters and outliers (count and %) of the latest clustering."""
    text = Text(no_wrap=True, overflow="ellipsis")
    last = state.last_cluster
    if last is None:
        text.append("no clustering yet", style="dim")
        return text
    text.append(fmt_count(last.n_clusters), style="bold green")
    text.append(" clusters  ", style="dim")
    text.append(fmt_count(last.n_outliers), style="bold red")
    text.append(" outliers ", style="dim")
    text.append(f"({fmt_pct(last.outlier_ratio)})", style="red")
    return text


def timings_text(state: RunState) -> Text:
    """Seconds per clustering stage of the latest epoch (known stages first, then any others)."""
    text = Text(overflow="fold")
    last = state.last_cluster
    if last is None or not last.seconds:
        return text
    names = [s for s in STAGES if s in last.seconds] + [s for s in last.seconds if s not in STAGES]
    for i, name in enumerate(names):
        if i:
            text.append("  ")
        _pair(text, name, f"{last.seconds[name]:.2f}s", "bold")
    return text


def log_line(line: LogLine) -> Text:
    stamp = f"{fmt_duration(line.t)}" if line.t is not None else ""
    return Text.assemble((f"{stamp:>5} ", "dim"), (line.text, LEVEL_STYLE.get(line.level, "")))
