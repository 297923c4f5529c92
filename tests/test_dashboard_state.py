"""The dashboard's reducer (events -> RunState) and panel texts, without Textual."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hhcl.events import EventWriter, read_events
from hhcl_tui.dashboard import view
from hhcl_tui.dashboard.state import RunState, downsample, new_log_lines, reduce_events

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "events-sample.jsonl"


def write_tiny_log(run_dir: Path, *, upto: int | None = None, torn: bool = True) -> Path:
    """A hand-made 4-epoch x 10-iter run stopped in epoch 3 (fixed timestamps), plus a torn last line."""
    events: list[tuple[str, dict]] = [
        ("run_start", dict(t=1000.0, run="tiny-run", preset="demo", device="cpu", world_size=1, n_train=240,
                           n_query=60, n_gallery=120, epochs=4, iters=10, future_field={"x": 1},
                           config={"data": {"dataset": "synthetic"}, "train": {"epochs": 99, "iters": 99}})),
        ("epoch_start", dict(t=1000.0, epoch=0, lr=3.5e-4)),
        ("cluster", dict(t=1002.0, epoch=0, n_samples=240, n_clusters=12, n_outliers=60, outlier_ratio=0.25,
                         seconds={"extract": 1.5, "knn": 0.1, "jaccard": 0.3, "dbscan": 0.1})),
        ("step", dict(t=1010.0, epoch=0, iter=4, loss=3.0, loss_hard=2.0, loss_mean=1.0, lr=3.5e-4,
                      images_per_s=100.0, data_wait=0.004)),
        ("step", dict(t=1020.0, epoch=0, iter=9, loss=2.5, loss_hard=1.6, loss_mean=0.9, lr=3.5e-4,
                      images_per_s=110.0, data_wait=0.004)),
        ("eval", dict(t=1025.0, epoch=0, mAP=0.30, cmc=[0.40, 0.60, 0.70], best=0.30)),
        ("checkpoint", dict(t=1025.0, epoch=1, path="checkpoints/last.safetensors", is_best=False)),
        ("epoch_start", dict(t=1025.0, epoch=1, lr=3.5e-4)),
        ("cluster", dict(t=1027.0, epoch=1, n_samples=240, n_clusters=15, n_outliers=30, outlier_ratio=0.125,
                         seconds={"extract": 1.25, "knn": 0.5, "jaccard": 0.25, "dbscan": 0.125})),
        ("step", dict(t=1035.0, epoch=1, iter=4, loss=2.0, loss_hard=1.25, loss_mean=0.75, lr=3.5e-4,
                      images_per_s=120.0, data_wait=0.002)),
        ("step", dict(t=1045.0, epoch=1, iter=9, loss=1.5, loss_hard=1.0, loss_mean=0.5, lr=3.5e-4,
                      images_per_s=120.0, data_wait=0.002)),
        ("eval", dict(t=1050.0, epoch=1, mAP=0.45, cmc=[0.55, 0.75, 0.85], best=0.45)),
        ("checkpoint", dict(t=1050.0, epoch=2, path="checkpoints/best.safetensors", is_best=True)),
        ("epoch_start", dict(t=1050.0, epoch=2, lr=3.5e-5)),
        ("step", dict(t=1060.0, epoch=2, iter=4, loss=1.25, lr=3.5e-5, images_per_s=125.0)),
    ]
    run_dir.mkdir(parents=True, exist_ok=True)
    with EventWriter(run_dir / "events.jsonl") as writer:
        for kind, fields in events[:upto]:
            writer.emit(kind, **fields)
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as fh:
        if upto is None:
            fh.write('{"v": 1, "t": 1061.0, "type": "heartbeat", "note": "an event type from the future"}\n')
        if torn:
            fh.write('{"v": 1, "t": 1062.0, "type": "step", "epoch": 2, "it')
    return run_dir


def test_tiny_log_numbers(tmp_path: Path) -> None:
    state = reduce_events(read_events(write_tiny_log(tmp_path / "run")))
    assert (state.run, state.preset, state.dataset, state.device, state.world_size) == (
        "tiny-run", "demo", "synthetic", "cpu", 1)
    # run_start's own epochs/iters win over config.train
    assert (state.total_epochs, state.iters_per_epoch) == (4, 10)
    assert (state.epoch, state.iter) == (2, 4)
    assert state.done_iters == 2 * 10 + 5 and state.total_iters == 40
    assert state.progress == pytest.approx(25 / 40)
    # 60 s for 25 iterations -> 15 left take 36 s
    assert state.eta_seconds == pytest.approx(60 * 15 / 25)
    assert state.loss_points == [(4, 3.0), (9, 2.5), (14, 2.0), (19, 1.5), (24, 1.25)]
    assert state.loss == 1.25 and state.loss_hard is None and state.loss_mean is None  # parts are per step
    assert state.lr == pytest.approx(3.5e-5) and state.images_per_s == 125.0
    assert [c.n_clusters for c in state.clusters] == [12, 15]
    assert state.last_cluster is not None and state.last_cluster.outlier_ratio == 0.125
    assert state.best_map == 0.45 and state.best_eval is not None and state.best_eval.epoch == 1
    assert state.best_eval.r1 == 0.55
    assert state.last_checkpoint == "checkpoints/best.safetensors"
    assert state.status == "running" and not state.finished
    assert state.n_ignored == 1  # the heartbeat; the torn line never became an event


def test_panel_texts(tmp_path: Path) -> None:
    state = reduce_events(read_events(write_tiny_log(tmp_path / "run")))
    assert view.epoch_text(state).plain == "epoch 3/4  iter 5/10"
    assert view.eta_text(state).plain == "ETA 0:36  elapsed 1:00"
    assert view.speed_text(state).plain == "lr 3.50e-05  img/s 125  wait 2 ms"  # wait: last known
    assert view.cluster_text(state).plain == "15 clusters  30 outliers (12.5%)"
    assert view.timings_text(state).plain == "extract 1.25s  knn 0.50s  jaccard 0.25s  dbscan 0.12s"
    assert view.eval_text(state).plain == "★ best mAP 45.0% R1 55.0% (epoch 2)"
    assert view.last_eval_text(state) == "last: mAP 45.0% · R1 55.0% · R5 75.0%"
    assert view.loss_title(state) == "Loss 1.250"
    assert "run tiny-run started on cpu" in [line.text for line in state.log]


def test_run_end_and_error(tmp_path: Path) -> None:
    state = reduce_events(read_events(write_tiny_log(tmp_path / "run")))
    reduce_events(
        [
            {"type": "error", "t": 1070.0, "message": "the loss became nan"},
            {"type": "run_end", "t": 1071.0, "status": "error", "best_mAP": 0.45, "elapsed": 71.0},
        ],
        state,
    )
    assert state.finished and state.status == "error" and state.errors == ["the loss became nan"]
    assert state.eta_seconds == 0.0
    assert view.eta_text(state).plain == "done in 1:11"
    assert [line.level for line in list(state.log)[-2:]] == ["error", "error"]


def test_missing_and_malformed_fields_are_tolerated() -> None:
    events = [
        {"type": "run_start"},
        {"type": "step", "epoch": "three", "iter": None, "loss": "nan?"},
        {"type": "cluster", "n_samples": 100, "n_outliers": 20, "seconds": "fast"},
        {"type": "eval", "mAP": 61.5, "cmc": [70.0, "x"]},  # percentages are read as such
        {"type": "eval"},  # no mAP: ignored
        {"type": "run_end"},
        {"no_type": 1},
        ["not", "a", "dict"],
    ]
    state = reduce_events(events)  # type: ignore[arg-type]
    assert state.epoch is None and state.loss is None and state.loss_points == []
    assert state.clusters[0].outlier_ratio == pytest.approx(0.2)
    assert len(state.evals) == 1 and state.evals[0].mAP == pytest.approx(0.615)
    assert state.evals[0].r1 == pytest.approx(0.70) and state.evals[0].r5 is None
    assert state.status == "ended" and state.n_ignored == 2
    assert view.eta_text(state).plain == "done in --"


def test_eta_restarts_its_pace_on_resume() -> None:
    events = [
        {"type": "run_start", "t": 0.0, "epochs": 2, "iters": 10},
        {"type": "step", "t": 100.0, "epoch": 0, "iter": 9, "loss": 1.0},
        # resumed a day later at epoch 1 iter 0: the gap must not count towards the pace
        {"type": "run_start", "t": 86400.0, "epochs": 2, "iters": 10, "start_epoch": 1, "start_iter": 0,
         "resumed": True},
        {"type": "step", "t": 86420.0, "epoch": 1, "iter": 4, "loss": 0.5},
    ]
    state = reduce_events(events)
    assert state.done_iters == 15
    assert state.eta_seconds == pytest.approx(20 / 5 * 5)
    assert "resumed" in state.log[-1].text


def test_new_log_lines_and_downsample() -> None:
    state = RunState()
    reduce_events([{"type": "epoch_start", "epoch": i} for i in range(5)], state)
    assert [line.text for line in new_log_lines(state, 3)] == ["epoch 4 started", "epoch 5 started"]
    assert new_log_lines(state, 5) == []
    points = [(i, float(i % 2)) for i in range(10)]
    assert downsample(points, 20) == [(float(x), y) for x, y in points]
    assert downsample(points, 5) == [(0.5, 0.5), (2.5, 0.5), (4.5, 0.5), (6.5, 0.5), (8.5, 0.5)]


def test_fmt_helpers() -> None:
    assert view.fmt_duration(3725) == "1:02:05" and view.fmt_duration(59.6) == "1:00"
    assert view.fmt_duration(None) == "--"
    assert view.fmt_pct(0.8343) == "83.4%" and view.fmt_count(12936) == "12,936"


def test_reference_sample_log() -> None:
    if not SAMPLE.is_file():
        pytest.skip(f"reference sample log not found at {SAMPLE}")
    raw = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    state = reduce_events(read_events(SAMPLE))
    clusters = [e for e in raw if e["type"] == "cluster"]
    evals = [e for e in raw if e["type"] == "eval"]
    steps = [e for e in raw if e["type"] == "step"]
    assert len(state.clusters) == len(clusters) and len(state.loss_points) == len(steps)
    assert state.last_cluster is not None and state.last_cluster.n_clusters == clusters[-1]["n_clusters"]
    best = max(evals, key=lambda e: e["mAP"])
    assert state.best_eval is not None and state.best_eval.mAP == best["mAP"] and state.best_eval.epoch == best["epoch"]
    assert state.status == "ok" and state.progress == 1.0
