"""The dashboard's model: a pure reducer from typed event-log events to a :class:`RunState` (no Textual here).

Events come from :mod:`hhcl.run.events` (unknown types and malformed fields are already dropped there), so
the reducer dispatches on the event class and reads typed fields; a ``None`` field leaves the previous value.
Epoch and iteration indices stay 0-based in the state, as in the events; every text shows them 1-based.
Liveness (a run whose process died without a ``run_end``, or went silent) is derived by
:func:`update_liveness` from the clock and the run's pid/host, both injectable.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hhcl.run.events import (
    NO_NEWS_SECONDS,
    RUN_STATUSES,
    Checkpoint,
    Cluster,
    EpochStart,
    Error,
    Eval,
    Event,
    Heartbeat,
    Progress,
    RunEnd,
    RunStart,
    Step,
    epoch_label,
)
from hhcl.run.lock import process_alive as lock_process_alive
from hhcl.run.lock import this_host
from hhcl.words import plural

LOG_LINES = 200
#: waiting (no run_start yet), running, the run_end statuses, and the two liveness states: stopped (the
#: process is gone without a run_end) and silent (nothing written for more than NO_NEWS_SECONDS)
STATUSES = ("waiting", "running", *RUN_STATUSES, "stopped", "silent")
LIVE_STATUSES = ("running", "stopped", "silent")


@dataclass
class ClusterRecord:
    """One epoch's clustering: what its method found, with which parameters (by their short names), and how long
    each stage took (seconds, extraction first, then the method's sub-steps in order)."""

    epoch: int
    n_samples: int | None
    n_clusters: int | None
    n_outliers: int | None
    outlier_ratio: float | None
    seconds: dict[str, float]
    method: str | None = None  # cluster.method (a log from before the clusterer table: dbscan when it has an eps)
    params: dict[str, int | float] = field(default_factory=dict)
    auto: tuple[str, ...] = ()  # the params chosen from the data (DBSCAN's eps with cluster.eps = auto)
    quality: dict[str, float] | None = None  # against the train identities, when the train set has them

    def params_text(self, sep: str, auto: str) -> str:
        """The parameters as ``eps 0.431`` pairs joined by ``sep``, ``auto`` after one chosen from the data."""
        shown = {name: f"{value:.3g}" if isinstance(value, float) else str(value) for name, value in self.params.items()}
        return sep.join(f"{name} {value}" + (auto if name in self.auto else "") for name, value in shown.items())


@dataclass
class EvalRecord:
    """One evaluation: mAP, CMC ranks and the re-ranked mAP as fractions in [0, 1]."""

    epoch: int
    mAP: float
    r1: float | None
    r5: float | None
    r10: float | None
    rerank_mAP: float | None = None


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
    arch: str = ""  # model.arch of the run's config
    memory: str = ""  # memory.mode, "+ cameras" when memory.camera_aware adds O2CAP's terms
    device: str = ""
    world_size: int | None = None
    n_train: int | None = None
    n_query: int | None = None
    n_gallery: int | None = None
    pid: int | None = None
    host: str | None = None
    started: int | None = None  # the process's start time and boot id: a reused pid is not this run
    boot: str | None = None
    total_epochs: int | None = None
    iters_per_epoch: int | None = None
    epoch: int | None = None
    iter: int | None = None
    lr: float | None = None
    loss: float | None = None
    parts: dict[str, float] = field(default_factory=dict)  # the latest step's named loss parts
    images_per_s: float | None = None
    data_wait: float | None = None
    loss_points: list[tuple[int, float]] = field(default_factory=list)
    clusters: list[ClusterRecord] = field(default_factory=list)
    evals: list[EvalRecord] = field(default_factory=list)
    best_map: float | None = None
    last_checkpoint: str | None = None
    status: str = "waiting"  # one of STATUSES
    silent_for: float | None = None  # seconds without news, while status is "silent"
    elapsed: float | None = None  # an ended run's span from its first start to its run_end
    process_elapsed: float | None = None  # the time of the process that wrote the run_end (run_end.elapsed)
    start_t: float | None = None
    last_t: float | None = None
    progress_t: float | None = None
    pace_t0: float | None = None  # ETA pace is measured from the latest run_start (a resume restarts it)
    pace_done0: int = 0
    stage: Progress | None = None  # the latest long stage of a set-up or an evaluation, until iterations start
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    n_log: int = 0  # log lines ever appended (the deque keeps the last LOG_LINES)
    n_events: int = 0
    attempt: int = 0  # fresh starts seen in this log (a run restarted from scratch under the same name)

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
        """Time left at the average pace so far (clustering and evaluation included); None if unknown.

        A run that is stopped or silent gets no estimate: its pace says nothing about when it ends.
        """
        if self.ended:
            return 0.0
        if self.status != "running":
            return None
        total, done = self.total_iters, self.done_iters
        t0 = self.pace_t0 if self.pace_t0 is not None else self.start_t
        if not total or done <= self.pace_done0 or t0 is None or self.progress_t is None:
            return None
        spent = self.progress_t - t0
        if spent <= 0:
            return None
        return spent * max(0, total - done) / (done - self.pace_done0)

    @property
    def ended(self) -> bool:
        """Whether the run said how it ended (a ``run_end`` after the latest ``run_start``)."""
        return self.status in RUN_STATUSES

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
        """The latest clustering, or None before the first one."""
        return self.clusters[-1] if self.clusters else None

    def rel_time(self, t: float | None) -> float | None:
        """Seconds from the run's start to unix time ``t`` (None when either is unknown)."""
        if t is None or self.start_t is None:
            return None
        return t - self.start_t


# -- the reducer ----------------------------------------------------------------------------------


def add_log(state: RunState, t: float | None, level: str, text: str) -> None:
    """Append a line to the recent log (``t`` in unix seconds; level info, good, warn or error)."""
    state.log.append(LogLine(state.rel_time(t), level, text))
    state.n_log += 1


def new_log_lines(state: RunState, seen: int) -> list[LogLine]:
    """Log lines appended after the first ``seen`` (bounded by what the deque still holds)."""
    fresh = min(state.n_log - seen, len(state.log))
    return list(state.log)[len(state.log) - fresh :] if fresh > 0 else []


def _dataset(config: dict[str, Any] | None) -> str | None:
    """``config.data.dataset`` of a run_start (the config is free-form JSON, so its shape is checked)."""
    data = (config or {}).get("data")
    dataset = data.get("dataset") if isinstance(data, dict) else None
    return dataset if isinstance(dataset, str) else None


def _setting(config: dict[str, Any] | None, section: str, key: str) -> Any:
    """``config[section][key]`` of a run_start, or None when the free-form JSON does not have it."""
    values = (config or {}).get(section)
    return values.get(key) if isinstance(values, dict) else None


def _memory(config: dict[str, Any] | None) -> str | None:
    """The run's memory as the run panel names it: ``memory.mode``, ``+ cameras`` when camera-aware terms are on."""
    mode = _setting(config, "memory", "mode")
    if not isinstance(mode, str):
        return None
    return mode + (" + cameras" if _setting(config, "memory", "camera_aware") is True else "")


def _restart(state: RunState) -> None:
    """Forget an earlier attempt's progress, curves, clusters and evals; the log lines stay."""
    blank = RunState(log=state.log, n_log=state.n_log, n_events=state.n_events, attempt=state.attempt)
    for f in dataclasses.fields(RunState):
        setattr(state, f.name, getattr(blank, f.name))


def _on_run_start(state: RunState, e: RunStart, t: float | None) -> None:
    fresh = not e.resumed and not e.start_epoch and not e.start_iter
    if fresh and state.status != "waiting":  # started again from scratch after an earlier attempt
        _restart(state)
        state.start_t = state.last_t = t
    if fresh:
        state.attempt += 1
    state.run = e.run or state.run
    state.preset = e.preset or state.preset
    state.dataset = _dataset(e.config) or state.dataset
    arch = _setting(e.config, "model", "arch")
    state.arch = arch if isinstance(arch, str) else state.arch
    state.memory = _memory(e.config) or state.memory
    state.device = e.device or state.device
    state.world_size = e.world_size or state.world_size
    state.n_train = e.n_train if e.n_train is not None else state.n_train
    state.n_query = e.n_query if e.n_query is not None else state.n_query
    state.n_gallery = e.n_gallery if e.n_gallery is not None else state.n_gallery
    state.pid, state.host, state.started, state.boot = e.pid, e.host, e.started, e.boot
    if e.epochs and e.epochs > 0:
        state.total_epochs = e.epochs
    if e.iters and e.iters > 0:
        state.iters_per_epoch = e.iters
    if e.start_epoch is not None:
        state.epoch, state.iter = e.start_epoch, (e.start_iter - 1 if e.start_iter else None)
    state.pace_t0, state.pace_done0 = t, state.done_iters
    state.status, state.silent_for = "running", None
    where = state.device or "?"
    if state.world_size and state.world_size > 1:
        where += f" x{state.world_size}"
    verb = "started" if state.attempt <= 1 else f"started again (attempt {state.attempt})"
    verb = "resumed" if e.resumed else verb
    add_log(state, t, "info", f"run {state.run or '?'} {verb} on {where}")
    for note in e.notes:
        add_log(state, t, "warn", note)


def _on_epoch_start(state: RunState, e: EpochStart, t: float | None) -> None:
    state.stage = None
    if e.epoch is not None:
        state.epoch, state.iter = e.epoch, None
        state.progress_t = t if t is not None else state.progress_t
    if e.lr is not None:
        state.lr = e.lr
    lr = f" · lr {e.lr:.2e}" if e.lr is not None else ""
    add_log(state, t, "info", f"{epoch_label(e.epoch, state.total_epochs)} started{lr}")


def _on_cluster(state: RunState, e: Cluster, t: float | None) -> None:
    record = ClusterRecord(
        epoch=e.epoch if e.epoch is not None else (state.epoch or 0),
        n_samples=e.n_samples,
        n_clusters=e.n_clusters,
        n_outliers=e.n_outliers,
        outlier_ratio=e.outlier_ratio,
        seconds=dict(e.seconds),
        method=e.method,
        params=dict(e.params or {}),
        auto=tuple(e.auto or ()),
        quality=dict(e.quality) if e.quality else None,
    )
    state.clusters.append(record)
    ratio = f" ({record.outlier_ratio:.1%})" if record.outlier_ratio is not None else ""
    took = f" in {sum(record.seconds.values()):.1f} s" if record.seconds else ""
    text = f"{plural(record.n_clusters, 'cluster', spec=',')}, {plural(record.n_outliers, 'outlier', spec=',')}{ratio}{took}"
    if record.params:
        text += ", " + record.params_text(", ", " (auto)")
    if record.quality and "ari" in record.quality:
        text += f"; vs identities ARI {record.quality['ari']:.3f}"
    add_log(state, t, "info", text)


def _on_step(state: RunState, e: Step, t: float | None) -> None:
    state.stage = None  # iterations started: the set-up is over
    if e.epoch is not None:
        state.epoch = e.epoch
    if e.iter is not None:
        state.iter = e.iter
    state.progress_t = t if t is not None else state.progress_t
    if e.loss is not None:  # the loss and its parts describe one step: a part this step lacks is unknown
        state.loss, state.parts = e.loss, dict(e.parts)
        if state.epoch is not None:
            per = state.iters_per_epoch or 0
            state.loss_points.append((state.epoch * per + (state.iter or 0), e.loss))
    state.lr = e.lr if e.lr is not None else state.lr
    state.images_per_s = e.images_per_s if e.images_per_s is not None else state.images_per_s
    state.data_wait = e.data_wait if e.data_wait is not None else state.data_wait


def _on_eval(state: RunState, e: Eval, t: float | None) -> None:
    state.stage = None
    if e.mAP is None:
        return
    r1, r5, r10 = [*e.cmc, None, None, None][:3]
    epoch = e.epoch if e.epoch is not None else (state.epoch or 0)
    record = EvalRecord(epoch, e.mAP, r1, r5, r10, e.rerank_mAP)
    state.evals.append(record)
    state.best_map = max(v for v in (state.best_map, e.best, e.mAP) if v is not None)
    is_best = state.best_eval is record
    r1_text = f" · R1 {r1:.1%}" if r1 is not None else ""
    rerank = f" · re-ranked mAP {e.rerank_mAP:.1%}" if e.rerank_mAP is not None else ""
    text = f"eval {epoch_label(epoch)}: mAP {e.mAP:.1%}{r1_text}{rerank}" + (" ★ best" if is_best else "")
    add_log(state, t, "good" if is_best else "info", text)


def _on_checkpoint(state: RunState, e: Checkpoint, t: float | None) -> None:
    if e.path:
        state.last_checkpoint = e.path
    if e.is_best:  # every epoch writes 'last'; only a new best is worth a log line
        add_log(state, t, "good", f"saved best checkpoint {e.path or '?'}")


def _on_run_end(state: RunState, e: RunEnd, t: float | None) -> None:
    state.stage = None
    state.status = e.status if e.status in RUN_STATUSES else "error"  # a run_end without a valid status
    state.silent_for = None
    # the run's whole span, from its first start (as the log's +m:ss); a resumed run's last process took less
    state.process_elapsed = e.elapsed
    state.elapsed = t - state.start_t if t is not None and state.start_t is not None else e.elapsed
    evaluated = e.best_epoch is not None and e.best_epoch >= 0  # older logs wrote 0.0 / -1 for "never evaluated"
    if e.best_mAP is not None and evaluated:
        state.best_map = e.best_mAP
    level = {"ok": "good", "interrupted": "warn"}.get(state.status, "error")
    best_at = f" ({epoch_label(e.best_epoch)})" if evaluated else ""
    detail = f" · best mAP {state.best_map:.1%}{best_at}" if state.best_map is not None else ""
    add_log(state, t, level, f"run ended: {state.status}{detail}")
    if e.message:
        add_log(state, t, level, e.message)
    if e.resume:
        add_log(state, t, "info", f"continue with: {e.resume}")


def _on_error(state: RunState, e: Error, t: float | None) -> None:
    where = f" ({e.where})" if e.where else ""
    add_log(state, t, "error", f"error{where}: {e.message or 'unknown error'}")
    if e.hint:
        add_log(state, t, "warn", f"hint: {e.hint}")


def _on_progress(state: RunState, e: Progress, t: float | None) -> None:
    """A long stage moved on: shown until the next stage, the iterations, the evaluation's result or the end."""
    if e.stage is not None:
        state.stage = e


def _on_heartbeat(state: RunState, e: Heartbeat, t: float | None) -> None:
    """A heartbeat names the live process, also before its ``run_start`` (a long set-up)."""
    if e.pid is None:
        return
    new_process = e.pid != state.pid or e.host != state.host or e.started != state.started
    state.pid, state.host, state.started, state.boot = e.pid, e.host, e.started, e.boot
    if state.status == "waiting" or (new_process and state.ended):
        state.status = "running"


_HANDLERS: dict[type[Event], Callable[[RunState, Any, float | None], None]] = {
    RunStart: _on_run_start,
    EpochStart: _on_epoch_start,
    Cluster: _on_cluster,
    Step: _on_step,
    Eval: _on_eval,
    Checkpoint: _on_checkpoint,
    RunEnd: _on_run_end,
    Error: _on_error,
    Heartbeat: _on_heartbeat,
    Progress: _on_progress,
}


def apply_event(state: RunState, event: Event) -> RunState:
    """Fold one event into ``state`` (in place) and return it."""
    state.n_events += 1
    t = event.t
    if t is not None:
        state.last_t = t if state.last_t is None else max(state.last_t, t)
        if state.start_t is None:
            state.start_t = t
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(state, event, t)
    return state


def reduce_events(events: Iterable[Event], state: RunState | None = None) -> RunState:
    """Fold a sequence of events into a (new or given) :class:`RunState`."""
    state = state if state is not None else RunState()
    for event in events:
        apply_event(state, event)
    return state


# -- liveness -------------------------------------------------------------------------------------


def update_liveness(
    state: RunState,
    now: float,
    *,
    process_alive: Callable[[int], bool] | None = None,
    hostname: str | None = None,
    process_gone: bool = False,
) -> RunState:
    """Tell a live run from a dead or silent one, while no ``run_end`` was seen; returns ``state``.

    A run that names this host (``hostname``, default this machine) and a process that is gone (its pid, or a
    process with another start time or boot under that pid: ``process_alive`` by default), or
    whose process the caller saw exit (``process_gone``), is "stopped": a SIGKILL writes nothing. Otherwise a
    run with nothing written for more than NO_NEWS_SECONDS before ``now`` is "silent", else "running".
    """
    if state.status not in LIVE_STATUSES and not (process_gone and state.status == "waiting"):
        return state
    state.silent_for = None
    here_host = hostname if hostname is not None else this_host()
    here = state.host is not None and state.host == here_host
    alive = process_alive or (lambda pid: lock_process_alive(pid, state.started, state.boot))
    if process_gone or (here and state.pid is not None and not alive(state.pid)):
        state.status = "stopped"
    elif state.last_t is not None and now - state.last_t > NO_NEWS_SECONDS:
        state.status, state.silent_for = "silent", now - state.last_t
    else:
        state.status = "running"
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
