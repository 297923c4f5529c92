"""The event log: typed events, torn lines, undecodable bytes, unknown fields, tailing a run created later."""

from __future__ import annotations

import json

from hhcl.run.events import (
    Cluster,
    EpochStart,
    EventTail,
    EventWriter,
    Progress,
    RunStart,
    Step,
    parse_event,
    progress_text,
    read_events,
    read_raw_events,
)


def test_tail_waits_for_a_run_directory_created_later(tmp_path):
    run = tmp_path / "not-yet"
    tail = EventTail(run)
    assert tail.poll() == []
    with EventWriter(run / "events.jsonl") as log:
        log.emit(EpochStart(epoch=0, lr=3.5e-4))
    events = tail.poll()
    assert [type(e) for e in events] == [EpochStart] and events[0].lr == 3.5e-4


def test_torn_last_line_and_unknown_fields(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as log:
        log.emit(RunStart(run="r", config={"train": {"epochs": 2}}))
    with open(path, "a") as fh:
        fh.write('{"v": 1, "t": 1.0, "type": "st')  # a line being written
    tail = EventTail(tmp_path)
    events = tail.poll()
    assert [e.type for e in events] == ["run_start"] and events[0].run == "r"
    with open(path, "a") as fh:
        fh.write('ep", "epoch": 0, "iter": 9, "future_field": [1]}\n')
    assert tail.poll() == [Step(t=1.0, epoch=0, iter=9)]
    assert [e.type for e in read_events(tmp_path)] == ["run_start", "step"]
    assert all(json.loads(line)["v"] == 1 for line in path.read_text().splitlines())


def test_writer_starts_a_fresh_line_after_a_torn_one(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"v": 1, "t": 1.0, "type": "step", "epoch": 0, "it')  # a killed writer's last line
    with EventWriter(path) as log:
        log.emit(RunStart(run="again"))
    events = read_events(path)
    assert [(e.type, getattr(e, "run", None)) for e in events] == [("run_start", "again")]


def test_readers_survive_undecodable_bytes_and_bad_field_types(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b'\xff\xfe garbage\n'
        b'{"v": 1, "t": 2.0, "type": "step", "epoch": "one", "loss": 1.5, "loss_hard": 1.0, "note": "\xe9"}\n'
        b'{"v": 1, "t": 3.0, "type": "no_such_type"}\n'
        b'[1, 2]\n'
    )
    (step,) = read_events(path)
    assert step == Step(t=2.0, epoch=None, loss=1.5, parts={"loss_hard": 1.0})  # old flat loss parts are mapped
    assert [e["type"] for e in read_raw_events(path)] == ["step", "no_such_type"]


def test_nan_is_written_as_null_and_read_back_as_unknown(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as log:
        log.emit(Step(epoch=1, iter=0, loss=float("nan"), parts={"loss_ce": float("inf"), "loss_x": 2.0}))
    raw = json.loads(path.read_text())
    assert raw["loss"] is None and raw["parts"] == {"loss_ce": None, "loss_x": 2.0}
    event = parse_event(raw)
    assert event is not None and event.loss is None and event.parts == {"loss_x": 2.0}


def test_progress_round_trips_and_tolerates_bad_fields(tmp_path):
    path = tmp_path / "events.jsonl"
    sent = Progress(t=5.0, epoch=2, stage="extract_train", done=3200, total=12936, seconds=41.25)
    with EventWriter(path) as log:
        log.emit(sent)
    raw = json.loads(path.read_text())
    assert raw == {"v": 1, "t": 5.0, "type": "progress", "epoch": 2, "stage": "extract_train", "done": 3200,
                   "total": 12936, "seconds": 41.25}
    assert parse_event(raw) == sent
    bad = parse_event({"type": "progress", "t": 6.0, "stage": 7, "done": "3", "total": 9.5, "seconds": 2, "x": 1})
    assert bad == Progress(t=6.0, seconds=2.0)  # wrong types read as unknown, an int is a valid float


def test_progress_text_names_each_stage():
    def text(stage, done, total):
        return progress_text(Progress(stage=stage, done=done, total=total))

    assert text("extract_train", 3200, 12936) == "extract train features 3,200/12,936"
    assert text("extract_gallery", 0, 15913) == "extract gallery features 0/15,913"
    assert text("cluster", 0, 3) == "clustering (kNN, Jaccard, DBSCAN)..."
    assert text("cluster", 1, 3) == "clustering: kNN done, Jaccard..."
    assert text("cluster", 2, 3) == "clustering: kNN, Jaccard done, DBSCAN..."
    assert text("cluster", 3, 3) == "clustering: kNN, Jaccard, DBSCAN done"
    assert (text("memory", 0, 1), text("memory", 1, 1)) == ("memory init...", "memory init done")
    assert text("from_the_future", None, None) == "from_the_future"  # a newer writer's stage: named as is


def test_a_clusterers_event_round_trips_and_an_older_cluster_event_reads_as_dbscan(tmp_path):
    path = tmp_path / "events.jsonl"
    infomap = Cluster(t=1.0, epoch=0, n_samples=60, n_clusters=7, n_outliers=4, outlier_ratio=0.066667,
                      seconds={"extract": 1.5, "knn": 0.25, "links": 0.01, "infomap": 0.125}, method="infomap",
                      params={"min_sim": 0.5, "k": 15, "min_size": 5}, auto=[])
    dbscan = Cluster(t=2.0, epoch=1, method="dbscan", params={"eps": 0.4312}, auto=["eps"])
    with EventWriter(path) as log:
        log.emit(infomap)
        log.emit(dbscan)
    raw = read_raw_events(path)
    assert "eps" not in raw[0] and raw[0]["params"] == {"min_sim": 0.5, "k": 15, "min_size": 5}
    assert raw[1]["eps"] == 0.4312 and raw[1]["eps_auto"] is True  # DBSCAN still writes the fields readers knew
    assert read_events(path) == [infomap, dbscan] and isinstance(read_events(path)[0].params["k"], int)
    old = parse_event({"v": 1, "t": 3.0, "type": "cluster", "epoch": 2, "n_clusters": 9, "eps": 0.6, "eps_auto": False,
                       "seconds": {"extract": 1.0, "knn": 0.5, "jaccard": 0.25, "dbscan": 0.125}})
    assert (old.method, old.params, old.auto, old.eps) == ("dbscan", {"eps": 0.6}, [], 0.6)
    bare = parse_event({"v": 1, "t": 4.0, "type": "cluster", "epoch": 3, "n_clusters": 9})  # e.g. supervised
    assert (bare.method, bare.params, bare.auto) == (None, None, None)
    junk = parse_event({"type": "cluster", "t": 5.0, "method": 3, "params": {"k": "15", "min_sim": 0.5}, "auto": "eps"})
    assert (junk.method, junk.params, junk.auto) == (None, {"min_sim": 0.5}, None)


def test_progress_names_its_sub_steps_and_older_cluster_progress_reads_as_dbscans():
    def text(done, steps=None):
        return progress_text(Progress(stage="cluster", done=done, total=3, steps=steps))

    steps = ["kNN", "links", "InfoMap"]
    assert text(0, steps) == "clustering (kNN, links, InfoMap)..."
    assert text(2, steps) == "clustering: kNN, links done, InfoMap..."
    assert text(3, steps) == "clustering: kNN, links, InfoMap done"
    assert text(1) == "clustering: kNN done, Jaccard..."  # written before the steps were named: DBSCAN's
    sent = Progress(t=1.0, epoch=0, stage="cluster", done=1, total=3, seconds=0.5, steps=steps)
    assert parse_event(sent.to_dict()) == sent and "steps" not in Progress(t=1.0, stage="memory").to_dict()
