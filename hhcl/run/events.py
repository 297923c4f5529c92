"""The run's event log (``events.jsonl``): the only contract between the engine and any UI.

Each event type is defined once here as a dataclass; the engine emits instances, readers get them back from
:func:`parse_event`. On disk: one JSON object per line, appended and flushed as it happens, each with
``"v"``, ``"t"`` (unix seconds) and ``"type"``. Readers ignore a torn last line, undecodable bytes, unknown
types and unknown fields, and a malformed field reads as ``None``, so a log can be tailed live, replayed
after the fact, or read from a copied or older run directory. The writer starts a fresh line after a torn
one.

Numbering: ``epoch`` and ``iter`` are 0-based indices in events (as in the reference's logs); everything a
user reads shows them 1-based through :func:`epoch_label` / :func:`iter_label`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from hhcl.atomic import naming
from hhcl.run.layout import RunLayout
from hhcl.run.lock import this_process

VERSION = 1
RUN_STATUSES = ("ok", "error", "interrupted")
#: a live run writes an event (a heartbeat if nothing else) at least this often, in seconds
HEARTBEAT_SECONDS = 30.0
#: a reader that sees nothing new for this long says so instead of showing a live ETA
NO_NEWS_SECONDS = 4 * HEARTBEAT_SECONDS


def _now() -> float:
    return round(time.time(), 3)


@dataclass(kw_only=True)
class Event:
    """Fields every event has: the schema version ``v`` and the time ``t`` (unix seconds)."""

    type: ClassVar[str] = ""
    v: int = VERSION
    t: float | None = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to the log: ``v``, ``t``, ``type``, then the fields (None fields left out)."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("v", "t")}
        return {"v": self.v, "t": self.t, "type": self.type, **{k: _jsonable(v) for k, v in body.items() if v is not None}}


@dataclass(kw_only=True)
class RunStart(Event):
    """A process starts (or resumes) training: what runs where, and from which position."""

    type: ClassVar[str] = "run_start"
    run: str | None = None
    preset: str | None = None
    config: dict[str, Any] | None = None
    device: str | None = None
    world_size: int | None = None
    n_train: int | None = None
    n_query: int | None = None
    n_gallery: int | None = None
    epochs: int | None = None
    iters: int | None = None
    start_epoch: int | None = None
    start_iter: int | None = None
    resumed: bool | None = None
    notes: list[str] = field(default_factory=list)
    pid: int | None = None
    host: str | None = None
    started: int | None = None  # the process's start time (clock ticks since boot): a reused pid is not this run
    boot: str | None = None  # the kernel's boot id


@dataclass(kw_only=True)
class EpochStart(Event):
    type: ClassVar[str] = "epoch_start"
    epoch: int | None = None
    lr: float | None = None


@dataclass(kw_only=True)
class Cluster(Event):
    """One epoch's pseudo labels: cluster and outlier counts, the method (``cluster.method``) and the parameters it
    clustered with, by their short names (``hhcl.config.ClusterParam.name``), seconds per stage (``extract``, then
    the method's sub-steps in order).

    ``eps``/``eps_auto`` are DBSCAN's eps and whether ``cluster.eps = auto`` chose it, the fields of logs written
    before ``method``/``params``: such a log reads as DBSCAN with that eps, and a DBSCAN event still writes them.
    """

    type: ClassVar[str] = "cluster"
    epoch: int | None = None
    n_samples: int | None = None
    n_clusters: int | None = None
    n_outliers: int | None = None
    outlier_ratio: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    method: str | None = None
    params: dict[str, int | float] | None = None
    auto: list[str] | None = None  # the params chosen from the data (at the run's first clustering)
    eps: float | None = None
    eps_auto: bool | None = None
    #: pseudo-label quality against the train set's identities when it has them (ari, nmi, precision, recall);
    #: a diagnostic the training never uses
    quality: dict[str, float | None] | None = None

    def __post_init__(self) -> None:
        if self.params is None and self.eps is not None:  # written before the clusterer table: DBSCAN's
            self.method = self.method or "dbscan"
            self.params, self.auto = {"eps": self.eps}, ["eps"] if self.eps_auto else []
        elif self.params is not None and "eps" in self.params and self.eps is None:
            self.eps, self.eps_auto = float(self.params["eps"]), "eps" in (self.auto or [])


@dataclass(kw_only=True)
class Step(Event):
    """Training progress: the global-batch loss and its named parts (e.g. loss_hard, loss_mean, loss_ce)."""

    type: ClassVar[str] = "step"
    epoch: int | None = None
    iter: int | None = None
    loss: float | None = None
    parts: dict[str, float] = field(default_factory=dict)
    lr: float | None = None
    images_per_s: float | None = None
    data_wait: float | None = None


@dataclass(kw_only=True)
class Eval(Event):
    """A query/gallery evaluation: mAP and CMC at ranks 1, 5, 10 as fractions in [0, 1]."""

    type: ClassVar[str] = "eval"
    epoch: int | None = None
    mAP: float | None = None
    cmc: list[float] = field(default_factory=list)
    best: float | None = None
    is_best: bool | None = None
    rerank_mAP: float | None = None


@dataclass(kw_only=True)
class Checkpoint(Event):
    """A checkpoint was written; ``epoch``/``iter`` is the position a resume continues from."""

    type: ClassVar[str] = "checkpoint"
    epoch: int | None = None
    iter: int | None = None
    path: str | None = None
    is_best: bool | None = None


@dataclass(kw_only=True)
class Error(Event):
    """Why a run cannot go on: what happened, where (stage and position), and what to try."""

    type: ClassVar[str] = "error"
    message: str | None = None
    where: str | None = None
    hint: str | None = None
    kind: str | None = None
    traceback: str | None = None


@dataclass(kw_only=True)
class RunEnd(Event):
    """The process stops training: status ok, error or interrupted; ``resume`` is the command to continue.
    ``best_mAP``/``best_epoch`` are absent when the run has never evaluated; ``elapsed`` is this process's time."""

    type: ClassVar[str] = "run_end"
    status: str | None = None
    best_mAP: float | None = None
    best_epoch: int | None = None
    elapsed: float | None = None
    message: str | None = None
    resume: str | None = None


@dataclass(kw_only=True)
class Heartbeat(Event):
    """Written when a run opens its log and then whenever it was silent for HEARTBEAT_SECONDS, so a reader can
    tell a busy run (building a cache, clustering) from a dead one, even before its ``run_start``."""

    type: ClassVar[str] = "heartbeat"
    pid: int | None = None
    host: str | None = None
    started: int | None = None
    boot: str | None = None


#: the long stages a ``progress`` event names, as users read them
PROGRESS_STAGES = {
    "extract_train": "extract train features",
    "cluster": "clustering",
    "memory": "memory init",
    "extract_query": "extract query features",
    "extract_gallery": "extract gallery features",
    "eval_metrics": "distances and rank metrics",
}
#: the stages whose ``done``/``total`` count images
COUNTED_STAGES = ("extract_train", "extract_query", "extract_gallery")
#: the sub-stages of "cluster" in a log whose progress events do not name them (written before the clusterer
#: table: DBSCAN's); newer events carry their clusterer's in ``steps``
OLD_CLUSTER_STEPS = ("kNN", "Jaccard", "DBSCAN")


@dataclass(kw_only=True)
class Progress(Event):
    """A long stage of an epoch's set-up or of an evaluation (a PROGRESS_STAGES key) moved on: ``done`` of
    ``total`` (images for extraction, the clusterer's sub-steps for clustering, named in ``steps``, 0 then 1
    otherwise), ``seconds`` in it so far.

    A stage starts with ``done`` 0 and ends with ``done == total``; under DDP the counts are rank 0's.
    """

    type: ClassVar[str] = "progress"
    epoch: int | None = None
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    seconds: float | None = None
    steps: list[str] | None = None  # a stage made of named sub-steps (clustering): their names, in order


EVENT_CLASSES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (RunStart, EpochStart, Cluster, Step, Eval, Checkpoint, Error, RunEnd, Heartbeat, Progress)
}
EVENT_TYPES = tuple(EVENT_CLASSES)


def epoch_label(epoch: int | None, epochs: int | None = None) -> str:
    """``epoch 3/60`` for the 0-based index 2: the one numbering users read."""
    shown = "?" if epoch is None else str(epoch + 1)
    return f"epoch {shown}" + (f"/{epochs}" if epochs else "")


def iter_label(it: int | None, iters: int | None = None) -> str:
    """``iter 10/200`` for the 0-based index 9."""
    shown = "?" if it is None else str(it + 1)
    return f"iter {shown}" + (f"/{iters}" if iters else "")


def progress_text(event: Progress) -> str:
    """What a ``progress`` event says, e.g. ``extract train features 3,200/12,936`` or ``clustering: kNN done,
    Jaccard...``; the one wording of the terminal, log.txt and the dashboard."""
    label = PROGRESS_STAGES.get(event.stage or "", event.stage or "?")
    done, total = event.done, event.total
    if done is None or total is None:
        return label
    steps = event.steps or (OLD_CLUSTER_STEPS if event.stage == "cluster" else [])
    if steps and len(steps) == total:
        if done <= 0:
            return f"{label} ({', '.join(steps)})..."
        finished = f"{', '.join(steps[:done])} done"
        return f"{label}: {finished}" + (f", {steps[done]}..." if done < total else "")
    if event.stage in COUNTED_STAGES:
        return f"{label} {done:,}/{total:,}"
    return f"{label} done" if done >= total else f"{label}..."


# -- writing ---------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors/arrays become lists or numbers, paths become strings, NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return _jsonable(value.tolist())
    return str(value)


class EventWriter:
    """Appends events to a log file; thread-safe (the heartbeat writes from its own thread).

    A disabled writer (non-zero rank) writes nothing. When the file ends in a torn line (a killed writer),
    the first event starts on a fresh line so that it is not glued onto the fragment and lost.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, enabled: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.enabled = enabled and path is not None
        self._fh: IO[bytes] | None = None
        self._lock = threading.Lock()
        self._last_write = time.monotonic()
        if self.enabled:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the run
            if self._fh.tell() > 0 and not _ends_with_newline(self.path):
                self._fh.write(b"\n")
                self._fh.flush()

    def emit(self, event: Event) -> dict[str, Any]:
        """Write one event line and flush it; returns the event as written."""
        data = event.to_dict()
        line = (json.dumps(data, separators=(", ", ": "), allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.write(line)
                    self._fh.flush()
                except OSError as err:
                    raise naming(err, self.path) from None
                self._last_write = time.monotonic()
        return data

    @contextmanager
    def heartbeat(self, interval: float) -> Iterator[None]:
        """Write a heartbeat now, then (from a thread) whenever nothing was written for ``interval`` seconds."""
        if not self.enabled:
            yield
            return
        me = this_process()
        self.emit(Heartbeat(**me))
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(min(1.0, interval / 4)):
                if time.monotonic() - self._last_write >= interval:
                    try:
                        self.emit(Heartbeat(**me))
                    except (OSError, ValueError):  # a full disk or a closed file: the main thread reports it
                        return

        thread = threading.Thread(target=beat, name="hhcl-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.close()
                finally:
                    self._fh = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


# -- reading ---------------------------------------------------------------------------------------


def _check(kind: Any, value: Any) -> Any:
    """``value`` if it has the annotated ``kind`` (ints accepted as floats), else None."""
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        for arm in typing.get_args(kind):
            if arm is not type(None):
                checked = _check(arm, value)
                if checked is not None:
                    return checked
        return None
    if kind is bool:
        return value if isinstance(value, bool) else None
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None
    if kind is str:
        return value if isinstance(value, str) else None
    if origin is dict:
        if not isinstance(value, Mapping):
            return None
        _, item = typing.get_args(kind)
        if item is Any:
            return dict(value)
        checked = {str(k): _check(item, v) for k, v in value.items()}
        return {k: v for k, v in checked.items() if v is not None}
    if origin is list:
        if not isinstance(value, list):
            return None
        (item,) = typing.get_args(kind)
        return [v for v in (_check(item, x) for x in value) if v is not None]
    return None


_HINTS = {name: typing.get_type_hints(cls) for name, cls in EVENT_CLASSES.items()}


def parse_event(raw: Any) -> Event | None:
    """The typed event a decoded JSON object describes, or None for an unknown type.

    Unknown fields are ignored and a field of the wrong type reads as its default. A step written with its
    loss parts as top-level ``loss_*`` numbers (older logs) gets them in ``parts``.
    """
    if not isinstance(raw, Mapping):
        return None
    cls = EVENT_CLASSES.get(raw.get("type"))  # type: ignore[arg-type]
    if cls is None:
        return None
    hints = _HINTS[cls.type]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            value = _check(hints[f.name], raw[f.name])
            if value is not None:
                kwargs[f.name] = value
    kwargs.setdefault("t", None)  # an event without a (valid) time: readers treat it as unknown
    event = cls(**kwargs)
    if isinstance(event, Step) and not event.parts:
        event.parts = {k: float(v) for k, v in raw.items() if k.startswith("loss_") and _check(float, v) is not None}
    return event


def parse_lines(data: bytes | str) -> list[Event]:
    """Typed events from a chunk of log text; torn lines, garbage and unknown types are skipped."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            continue  # a torn (half-written) line, or garbage
        event = parse_event(raw)
        if event is not None:
            events.append(event)
    return events


def events_path(path: str | os.PathLike[str]) -> Path:
    """The log file itself, or ``<run_dir>/events.jsonl`` for a run directory (which may not exist yet)."""
    path = Path(path)
    return path if path.suffix == ".jsonl" else RunLayout(path).events


def read_raw_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete JSON objects of a log file, as written (for tools and tests that want the raw lines)."""
    out = []
    for line in events_path(path).read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict) and "type" in raw:
            out.append(raw)
    return out


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """All complete, known events of a log file (or of ``<run_dir>/events.jsonl`` for a directory)."""
    return parse_lines(events_path(path).read_bytes())


class EventTail:
    """Incremental reader for a growing log: ``poll()`` returns the events appended since the last call.

    Only complete lines are consumed, so a line being written is picked up whole on a later poll.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = events_path(path)
        self._offset = 0

    def poll(self) -> list[Event]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        return parse_lines(chunk[: end + 1])
