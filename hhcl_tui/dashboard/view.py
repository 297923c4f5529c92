"""Rich text for each dashboard panel, computed from a :class:`RunState` (pure: testable without an app)."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text

from hhcl.run.events import COUNTED_STAGES, epoch_label, iter_label, progress_text
from hhcl_tui.dashboard.state import LogLine, RunState, downsample

STATUS_STYLE = {
    "waiting": "dim",
    "running": "bold cyan",
    "ok": "bold green",
    "error": "bold red",
    "interrupted": "bold yellow",
    "stopped": "bold red",
    "silent": "bold yellow",
}
LEVEL_STYLE = {"info": "", "good": "bold green", "warn": "yellow", "error": "bold red"}


def fmt_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``--`` when unknown."""
    if seconds is None:
        return "--"
    total = max(0, round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_ago(seconds: float) -> str:
    """A rounded span for "no news for ...": seconds under a minute, minutes under 2 h, hours under 2 days."""
    if seconds < 60:
        return f"{round(seconds)} s"
    if seconds < 2 * 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; ``--`` when unknown."""
    return f"{value * 100:.{digits}f}%" if value is not None else "--"


def fmt_count(value: int | float | None) -> str:
    """A count with thousands separators; ``--`` when unknown."""
    return f"{value:,.0f}" if value is not None else "--"


def fmt_lr(value: float | None) -> str:
    """A learning rate in scientific notation; ``--`` when unknown."""
    return f"{value:.2e}" if value is not None else "--"


def _pair(text: Text, label: str, value: str, style: str = "bold") -> None:
    text.append(f"{label} ", style="dim")
    text.append(value, style=style)


def status_label(state: RunState) -> str:
    """The status as users read it; the liveness states say what is known about the process."""
    if state.status == "stopped":
        return "stopped (process gone, no run_end)"
    if state.status == "silent" and state.silent_for is not None:
        return f"no news for {fmt_ago(state.silent_for)}"
    return state.status


def status_text(state: RunState) -> Text:
    """The status with a coloured bullet."""
    style = STATUS_STYLE.get(state.status, "bold red")
    label = status_label(state)
    return Text.assemble(("● ", style), (label, style))


def run_text(state: RunState) -> Text:
    """Run name, preset, dataset (with split sizes), backbone and memory, device and world size, status."""
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
    _pair(text, "model", state.arch or "--", "bold")
    text.append("  memory ", style="dim")
    text.append(state.memory or "--", style="bold")
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


def _position(label: Callable[[int | None, int | None], str], index: int | None, count: int | None) -> str:
    """``3/60`` for the 0-based index 2 (the shared 1-based label, without its word); ``--/60`` when unknown."""
    if index is None:
        return "--" + (f"/{count}" if count else "")
    return label(index, count).split(" ", 1)[1]


def epoch_text(state: RunState) -> Text:
    """Epoch and iteration of the schedule, 1-based."""
    text = Text(no_wrap=True, overflow="ellipsis")
    _pair(text, "epoch", _position(epoch_label, state.epoch, state.total_epochs), "bold cyan")
    text.append("  ")
    _pair(text, "iter", _position(iter_label, state.iter, state.iters_per_epoch), "bold cyan")
    return text


def eta_text(state: RunState) -> Text:
    """Time left (while running; "--" for a stopped or silent run) and time spent."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if state.ended:
        _pair(text, "done in", fmt_duration(state.elapsed))
        last = state.process_elapsed
        if last is not None and state.elapsed is not None and state.elapsed - last > 1.0:  # resumed: say both
            text.append(f" (last process {fmt_duration(last)})", style="dim")
        return text
    _pair(text, "ETA", fmt_duration(state.eta_seconds), "bold yellow")
    text.append("  ")
    _pair(text, "elapsed", fmt_duration(state.rel_time(state.last_t)))
    return text


def stage_text(state: RunState) -> str:
    """The running set-up or evaluation stage, e.g. ``extract train features 3,200/12,936 (41%) · 0:41``; empty
    when there is none (iterations running, or no ``progress`` events in the log)."""
    e = state.stage
    if e is None:
        return ""
    text = progress_text(e)
    if e.stage in COUNTED_STAGES and e.done is not None and e.total:
        text += f" ({e.done / e.total:.0%})"
    if e.seconds is not None:
        text += f" · {fmt_duration(e.seconds)}"
    return text


def checkpoint_text(state: RunState) -> Text:
    """The latest checkpoint's path (empty before the first)."""
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
    """The latest loss and each of its parts by its logged name (``loss_hard`` reads ``hard`` after "Loss")."""
    if state.loss is None:
        return "Loss"
    parts = ", ".join(f"{name.removeprefix('loss_')} {value:.3f}" for name, value in state.parts.items())
    return f"Loss {state.loss:.3f}" + (f" ({parts})" if parts else "")


def loss_curve(state: RunState, max_points: int) -> list[tuple[float, float]]:
    """The loss against epochs done (iteration index + 1 over iters per epoch: epoch 1 ends at x = 1)."""
    per = state.iters_per_epoch or 1
    return [((x + 1) / per, y) for x, y in downsample(state.loss_points, max_points)]


def eval_points(state: RunState) -> list[tuple[int, float, float | None]]:
    """(1-based epoch, mAP %, R1 % or None) per evaluation, for the mAP/R1 plot."""
    return [(e.epoch + 1, e.mAP * 100, e.r1 * 100 if e.r1 is not None else None) for e in state.evals]


def quality_points(state: RunState) -> dict[str, list[tuple[int, float]]]:
    """(1-based epoch, value x 100) of the pseudo labels' ARI and NMI against the train identities, per epoch."""
    out: dict[str, list[tuple[int, float]]] = {"ARI": [], "NMI": []}
    for c in state.clusters:
        for name in out:
            value = (c.quality or {}).get(name.lower())
            if value is not None:
                out[name].append((c.epoch + 1, value * 100))
    return out


def eval_text(state: RunState) -> Text:
    """The best evaluation (highlighted: mAP, R1 and its epoch)."""
    text = Text(no_wrap=True, overflow="ellipsis")
    best = state.best_eval
    if best is None:
        if state.n_query == 0 or state.n_gallery == 0:  # unlabelled crops: there is nothing to evaluate on
            text.append("no evaluation: no labelled query/gallery set", style="dim")
        else:
            text.append("not evaluated" if state.ended else "no evaluation yet", style="dim")
        return text
    text.append("★ best ", style="bold green")
    _pair(text, "mAP", fmt_pct(best.mAP), "bold green")
    text.append(" ")
    _pair(text, "R1", fmt_pct(best.r1), "bold green")
    text.append(f" ({epoch_label(best.epoch)})", style="green")
    return text


def last_eval_text(state: RunState) -> str:
    """The latest evaluation, for the panel's bottom border (markup)."""
    if not state.evals:
        return ""
    last = state.evals[-1]
    return f"last: mAP {fmt_pct(last.mAP)} · R1 {fmt_pct(last.r1)} · R5 {fmt_pct(last.r5)}"


def cluster_text(state: RunState) -> Text:
    """Clusters and outliers (count and %) of the latest clustering, and the parameters its method used."""
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
    if last.params:
        text.append("  " + last.params_text(" ", " auto"), style="dim")
    if last.quality and last.quality.get("ari") is not None:
        text.append("  ARI ", style="dim")
        text.append(f"{last.quality['ari']:.2f}", style="bold")
    return text


def timings_text(state: RunState) -> Text:
    """Seconds per clustering stage of the latest epoch, in the event's order (extraction, then the method's
    sub-steps)."""
    text = Text(overflow="fold")
    last = state.last_cluster
    if last is None or not last.seconds:
        return text
    for i, name in enumerate(last.seconds):
        if i:
            text.append("  ")
        _pair(text, name, f"{last.seconds[name]:.2f}s", "bold")
    return text


def clusters_title(state: RunState) -> str:
    """The Clustering panel's title, with the latest clustering's method when the log names one."""
    last = state.last_cluster
    return "Clustering" + (f" · {last.method}" if last is not None and last.method else "")


def log_line(line: LogLine) -> Text:
    """A log line with its time since the run started, marked ``+`` (``+12:05``: not a clock time), by level."""
    stamp = f"+{fmt_duration(line.t)}" if line.t is not None else ""
    return Text.assemble((f"{stamp:>6} ", "dim"), (line.text, LEVEL_STYLE.get(line.level, "")))


def reload_summary(state: RunState, source: str) -> str:
    """What a reload read, for its notification: the event count and the last event's clock time (local)."""
    if not state.n_events:
        return f"reloaded {source}: no events yet"
    text = f"reloaded: {state.n_events:,} event{'s' * (state.n_events != 1)}"
    if state.last_t is not None:
        text += f", last at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state.last_t))}"
        rel = state.rel_time(state.last_t)
        if rel is not None:
            text += f" (+{fmt_duration(rel)})"
    return text
