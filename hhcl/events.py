"""The run's event log (``events.jsonl``): the only contract between the engine and any UI.

One JSON object per line, appended and flushed as it happens, each with ``"v": 1``, ``"t"`` (unix
seconds) and ``"type"``. Readers ignore a torn last line and unknown fields, so a log can be tailed
live, replayed after the fact, or read from a copied run directory.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

VERSION = 1
EVENT_TYPES = ("run_start", "epoch_start", "cluster", "step", "eval", "checkpoint", "run_end", "error")
EVENTS_FILE = "events.jsonl"


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
    """Appends events to ``<run_dir>/events.jsonl``; a disabled writer (non-zero rank) drops them."""

    def __init__(self, path: str | os.PathLike[str] | None, *, enabled: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self.enabled = enabled and path is not None
        self._fh: IO[str] | None = None
        if self.enabled:
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        """Write one event line and flush it; returns the event as written."""
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type '{type}': use one of {', '.join(EVENT_TYPES)}")
        event = {"v": VERSION, "t": round(time.time(), 3), "type": type, **_jsonable(fields)}
        if self._fh is not None:
            self._fh.write(json.dumps(event, separators=(", ", ": ")) + "\n")
            self._fh.flush()
        return event

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Events from a chunk of log text; lines that are not complete JSON objects are skipped."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn (half-written) last line, or garbage
        if isinstance(event, dict) and "type" in event:
            events.append(event)
    return events


def events_path(path: str | os.PathLike[str]) -> Path:
    """The log file itself, or ``<run_dir>/events.jsonl`` for a run directory (which may not exist yet)."""
    path = Path(path)
    return path if path.suffix == ".jsonl" else path / EVENTS_FILE


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All complete events of a log file (or of ``<run_dir>/events.jsonl`` when given a directory)."""
    return parse_lines(events_path(path).read_text(encoding="utf-8"))


class EventTail:
    """Incremental reader for a growing log: ``poll()`` returns the events appended since the last call.

    Only complete lines are consumed, so a line being written is picked up whole on a later poll.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = events_path(path)
        self._offset = 0

    def poll(self) -> list[dict[str, Any]]:
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
        return parse_lines(chunk[: end + 1].decode("utf-8", errors="replace"))

    def follow(self, interval: float = 0.5) -> Iterator[dict[str, Any]]:
        """Yield events forever as they arrive (for plain-terminal tailing)."""
        while True:
            yield from self.poll()
            time.sleep(interval)
