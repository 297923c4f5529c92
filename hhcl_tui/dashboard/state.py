"""The dashboard's model: a pure reducer from event-log events to a :class:`RunState` (no Textual here).

Every field read from an event is optional: unknown event types and unknown fields are ignored, missing
or malformed numbers leave the previous value, so a torn, old or foreign log never crashes the view.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

LOG_LINES = 200
STAGES = ("extract", "knn", "jaccard", "dbscan")


@dataclass
class ClusterRecord:
    """One epoch's clustering: what DBSCAN found and how long each stage took (seconds)."""

    epoch: int
    n_samples: int | None
    n_clusters: int | None
    n_outliers: int | None
    outlier_ratio: float | None
    seconds: dict[str, float]


@dataclass
class EvalRecord:
    """One evaluation: mAP and CMC ranks as fractions in [0, 1]."""

    epoch: int
    mAP: float
    r1: float | None
    r5: float | None
    r10: float | None


@dataclass
class LogLine:
    """A line of the dashboard's recent log; ``t`` is seconds since the run started."""

    t: float | None
    level: str  # info | good | warn | error
    text: str


@dataclass
class RunState:
    """Everything the dashboard shows, folded from the events seen so far."""

    run: str = ""
    preset: str = ""
    dataset: str = ""
    device: str = ""
    world_size: int | None = None
    n_train: int | None = None
    n_query: int | None = None
    n_gallery: int | None = None
    total_epochs: int | None = None
    iters_per_epoch: int | None = None
    epoch: int | None = None
    iter: int | None = None
    lr: float | None = None
    loss: float | None = None
    loss_hard: float | None = None
    loss_mean: float | None = None
    images_per_s: float | None = None
    data_wait: float | None = None
    loss_points: list[tuple[int, float]] = field(default_factory=list)
    clusters: list[ClusterRecord] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    best_map: float | None = None
    last_checkpoint: str | None = None
    status: str = "waiting"  # waiting | running | ok | failed | interrupted | ...
    elapsed: float | None = None
    start_t: float | None = None
    last_t: float | None = None
    progress_t: float | None = None
    pace_t0: float | None = None  # ETA pace is measured from the latest run_start (a resume restarts it)
    pace_done0: int = 0
    errors: list[str] = field(default_factory=list)
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    n_log: int = 0  # log lines ever appended (the deque keeps the last LOG_LINES)
    n_events: int = 0
    n_ignored: int = 0

    # -- derived values -------------------------------------------------------------------------
    @property
    def total_iters(self) -> int | None:
        """Iterations in the whole schedule (epochs x iters), when both are known."""
        if self.total_epochs and self.iters_per_epoch:
            return self.total_epochs * self.iters_per_epoch
        return None

    @property
    def done_iters(self) -> int:
        """Iterations finished so far, counted from the last step seen (0-based iter -> iter + 1 done)."""
        if self.epoch is None:
            return 0
        per = self.iters_per_epoch or 0
        return self.epoch * per + (self.iter + 1 if self.iter is not None else 0)

    @property
    def progress(self) -> float:
        """Fraction of the schedule done, in [0, 1]; 1 once the run ended successfully."""
        if self.status == "ok":
            return 1.0
        total = self.total_iters
        if not total:
            return 0.0
        return min(1.0, self.done_iters / total)

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the average pace so far (clustering and evaluation included); None if unknown."""
        if self.finished:
            return 0.0
        total, done = self.total_iters, self.done_iters
        t0 = self.pace_t0 if self.pace_t0 is not None else self.start_t
        if not total or done <= self.pace_done0 or t0 is None or self.progress_t is None:
            return None
        spent = self.progress_t - t0
        if spent <= 0:
            return None
        return spent * max(0, total - done) / (done - self.pace_done0)

    @property
    def finished(self) -> bool:
        return self.status not in ("waiting", "running")

    @property
    def best_eval(self) -> EvalRecord | None:
        """The evaluation with the highest mAP (the first one on ties)."""
        best: EvalRecord | None = None
        for record in self.evals:
            if best is None or record.mAP > best.mAP:
                best = record
        return best

    @property
    def last_cluster(self) -> ClusterRecord | None:
        return self.clusters[-1] if self.clusters else None

    def rel_time(self, t: float | None) -> float | None:
        if t is None or self.start_t is None:
            return None
        return t - self.start_t


# -- field readers: tolerate missing keys and wrong types ----------------------------------------


def _num(event: Mapping[str, Any], key: str) -> float | None:
    value = event.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int(event: Mapping[str, Any], key: str) -> int | None:
    value = _num(event, key)
    return int(value) if value is not None else None


def _str(event: Mapping[str, Any], key: str) -> str | None:
    value = event.get(key)
    return value if isinstance(value, str) else None


def _frac(value: float | None) -> float | None:
    """Metrics as fractions: a value above 1 is taken to be a percentage."""
    if value is None:
        return None
    return value / 100.0 if value > 1.0 else value


def _config_get(config: Any, section: str, key: str) -> Any:
    if isinstance(config, Mapping):
        part = config.get(section)
        if isinstance(part, Mapping):
            return part.get(key)
    return None


# -- the reducer ----------------------------------------------------------------------------------


def add_log(state: RunState, t: float | None, level: str, text: str) -> None:
    """Append a line to the recent log (``t`` in unix seconds; level info, good, warn or error)."""
    state.log.append(LogLine(state.rel_time(t), level, text))
    state.n_log += 1


def new_log_lines(state: RunState, seen: int) -> list[LogLine]:
    """Log lines appended after the first ``seen`` (bounded by what the deque still holds)."""
    fresh = min(state.n_log - seen, len(state.log))
    return list(state.log)[len(state.log) - fresh :] if fresh > 0 else []


def _on_run_start(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    config = e.get("config")
    state.run = _str(e, "run") or state.run
    state.preset = _str(e, "preset") or state.preset
    dataset = _str(e, "dataset") or _config_get(config, "data", "dataset")
    state.dataset = dataset if isinstance(dataset, str) else state.dataset
    state.device = _str(e, "device") or state.device
    state.world_size = _int(e, "world_size") or state.world_size
    for name in ("n_train", "n_query", "n_gallery"):
        value = _int(e, name)
        if value is not None:
            setattr(state, name, value)
    epochs = _int(e, "epochs") or _config_get(config, "train", "epochs")
    iters = _int(e, "iters") or _config_get(config, "train", "iters")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0:
        state.total_epochs = epochs
    if isinstance(iters, int) and not isinstance(iters, bool) and iters > 0:
        state.iters_per_epoch = iters
    start_epoch, start_iter = _int(e, "start_epoch"), _int(e, "start_iter")
    if start_epoch is not None:
        state.epoch, state.iter = start_epoch, (start_iter - 1 if start_iter else None)
    state.pace_t0, state.pace_done0 = t, state.done_iters
    state.status = "running"
    where = state.device or "?"
    if state.world_size and state.world_size > 1:
        where += f" x{state.world_size}"
    verb = "resumed" if e.get("resumed") is True else "started"
    add_log(state, t, "info", f"run {state.run or '?'} {verb} on {where}")


def _on_epoch_start(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    epoch = _int(e, "epoch")
    if epoch is not None:
        state.epoch, state.iter = epoch, None
        state.progress_t = t if t is not None else state.progress_t
    lr = _num(e, "lr")
    if lr is not None:
        state.lr = lr
    total = f"/{state.total_epochs}" if state.total_epochs else ""
    shown = epoch + 1 if epoch is not None else "?"
    add_log(state, t, "info", f"epoch {shown}{total} started" + (f" · lr {lr:.2e}" if lr is not None else ""))


def _on_cluster(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    raw = e.get("seconds")
    seconds = {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)} if isinstance(raw, Mapping) else {}
    epoch = _int(e, "epoch")
    record = ClusterRecord(
        epoch=epoch if epoch is not None else (state.epoch or 0),
        n_samples=_int(e, "n_samples"),
        n_clusters=_int(e, "n_clusters"),
        n_outliers=_int(e, "n_outliers"),
        outlier_ratio=_num(e, "outlier_ratio"),
        seconds=seconds,
    )
    if record.outlier_ratio is None and record.n_outliers is not None and record.n_samples:
        record.outlier_ratio = record.n_outliers / record.n_samples
    state.clusters.append(record)
    ratio = f" ({record.outlier_ratio:.1%})" if record.outlier_ratio is not None else ""
    took = f" in {sum(seconds.values()):.1f} s" if seconds else ""
    add_log(
        state,
        t,
        "info",
        f"{_count(record.n_clusters)} clusters, {_count(record.n_outliers)} outliers{ratio}{took}",
    )


def _on_step(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    epoch, it = _int(e, "epoch"), _int(e, "iter")
    if epoch is not None:
        state.epoch = epoch
    if it is not None:
        state.iter = it
    state.progress_t = t if t is not None else state.progress_t
    loss = _num(e, "loss")
    if loss is not None:  # the loss and its parts describe one step: a part this step lacks is unknown
        state.loss, state.loss_hard, state.loss_mean = loss, _num(e, "loss_hard"), _num(e, "loss_mean")
    for name in ("lr", "images_per_s", "data_wait"):
        value = _num(e, name)
        if value is not None:
            setattr(state, name, value)
    if loss is not None and state.epoch is not None:
        per = state.iters_per_epoch or 0
        state.loss_points.append((state.epoch * per + (state.iter or 0), loss))


def _on_eval(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    mAP = _frac(_num(e, "mAP"))
    if mAP is None:
        return
    cmc = e.get("cmc")
    ranks: list[float | None] = [None, None, None]
    if isinstance(cmc, list):
        for i, value in enumerate(cmc[:3]):
            if isinstance(value, int | float) and not isinstance(value, bool):
                ranks[i] = _frac(float(value))
    epoch = _int(e, "epoch")
    record = EvalRecord(epoch if epoch is not None else (state.epoch or 0), mAP, *ranks)
    state.evals.append(record)
    reported_best = _frac(_num(e, "best"))
    state.best_map = max(v for v in (state.best_map, reported_best, mAP) if v is not None)
    is_best = state.best_eval is record
    r1 = f" · R1 {record.r1:.1%}" if record.r1 is not None else ""
    add_log(
        state,
        t,
        "good" if is_best else "info",
        f"eval epoch {record.epoch + 1}: mAP {mAP:.1%}{r1}" + (" ★ best" if is_best else ""),
    )


def _on_checkpoint(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    path = _str(e, "path")
    if path:
        state.last_checkpoint = path
    if e.get("is_best") is True:  # every epoch writes 'last'; only a new best is worth a log line
        add_log(state, t, "good", f"saved best checkpoint {path or '?'}")


def _on_run_end(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    state.status = _str(e, "status") or "ended"
    state.elapsed = _num(e, "elapsed")
    if state.elapsed is None and t is not None and state.start_t is not None:
        state.elapsed = t - state.start_t
    best = _frac(_num(e, "best_mAP"))
    if best is not None:
        state.best_map = best
    level = {"ok": "good", "interrupted": "warn"}.get(state.status, "error")
    detail = f" · best mAP {state.best_map:.1%}" if state.best_map is not None else ""
    add_log(state, t, level, f"run ended: {state.status}{detail}")
    message = _str(e, "message")
    if message:
        add_log(state, t, level, message)


def _on_error(state: RunState, e: Mapping[str, Any], t: float | None) -> None:
    message = _str(e, "message") or "unknown error"
    state.errors.append(message)
    add_log(state, t, "error", f"error: {message}")


_HANDLERS = {
    "run_start": _on_run_start,
    "epoch_start": _on_epoch_start,
    "cluster": _on_cluster,
    "step": _on_step,
    "eval": _on_eval,
    "checkpoint": _on_checkpoint,
    "run_end": _on_run_end,
    "error": _on_error,
}


def _count(value: int | None) -> str:
    return f"{value:,}" if value is not None else "?"


def apply_event(state: RunState, event: Mapping[str, Any]) -> RunState:
    """Fold one event into ``state`` (in place) and return it; unknown types are counted and ignored."""
    state.n_events += 1
    handler = _HANDLERS.get(event.get("type")) if isinstance(event, Mapping) else None
    if handler is None:
        state.n_ignored += 1
        return state
    t = _num(event, "t")
    if t is not None:
        state.last_t = t if state.last_t is None else max(state.last_t, t)
        if state.start_t is None:
            state.start_t = t
    handler(state, event, t)
    return state


def reduce_events(events: Iterable[Mapping[str, Any]], state: RunState | None = None) -> RunState:
    """Fold a sequence of events into a (new or given) :class:`RunState`."""
    state = state if state is not None else RunState()
    for event in events:
        apply_event(state, event)
    return state


def downsample(points: list[tuple[int, float]], max_points: int) -> list[tuple[float, float]]:
    """At most ``max_points`` (x, y) pairs: consecutive buckets averaged, so long curves plot fast."""
    if len(points) <= max_points:
        return [(float(x), y) for x, y in points]
    out = []
    for b in range(max_points):
        lo, hi = b * len(points) // max_points, (b + 1) * len(points) // max_points
        chunk = points[lo:hi]
        out.append((sum(x for x, _ in chunk) / len(chunk), sum(y for _, y in chunk) / len(chunk)))
    return out
