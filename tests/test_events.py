"""The event log: writing, torn lines, unknown fields, tailing a run directory that does not exist yet."""

from __future__ import annotations

import json

from hhcl.events import EventTail, EventWriter, read_events


def test_tail_waits_for_a_run_directory_created_later(tmp_path):
    run = tmp_path / "not-yet"
    tail = EventTail(run)
    assert tail.poll() == []
    with EventWriter(run / "events.jsonl") as log:
        log.emit("epoch_start", epoch=0, lr=3.5e-4)
    assert [e["type"] for e in tail.poll()] == ["epoch_start"]


def test_torn_last_line_and_unknown_fields(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as log:
        log.emit("run_start", run="r", extra={"new": 1}, value=float("nan"))
    with open(path, "a") as fh:
        fh.write('{"v": 1, "t": 1.0, "type": "st')  # a line being written
    tail = EventTail(tmp_path)
    events = tail.poll()
    assert [e["type"] for e in events] == ["run_start"]
    assert events[0]["value"] is None and events[0]["extra"] == {"new": 1}  # NaN is written as null
    with open(path, "a") as fh:
        fh.write('ep", "epoch": 0, "iter": 9}\n')
    assert tail.poll() == [{"v": 1, "t": 1.0, "type": "step", "epoch": 0, "iter": 9}]
    assert [e["type"] for e in read_events(tmp_path)] == ["run_start", "step"]
    assert all(json.loads(line)["v"] == 1 for line in path.read_text().splitlines())
