"""The dashboard's reducer (typed events -> RunState), liveness, and panel texts, without Textual."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hhcl.run.events import (
    NO_NEWS_SECONDS,
    Checkpoint,
    Cluster,
    EpochStart,
    Error,
    Eval,
    Event,
    EventWriter,
    Heartbeat,
    Progress,
    RunEnd,
    RunStart,
    Step,
    read_events,
)
from hhcl_tui.dashboard import view
from hhcl_tui.dashboard.bars import scale_label, zero_bars
from hhcl_tui.dashboard.state import (
    LogLine,
    RunState,
    apply_event,
    downsample,
    new_log_lines,
    reduce_events,
    update_liveness,
)

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "events-sample.jsonl"
NOW = 1065.0  # "now" for the tiny log: 4 s after its last event, so it reads as a live run
HARD_MEAN = ("loss_hard", "loss_mean")


def tiny_events() -> list[Event]:
    """A hand-made 4-epoch x 10-iter run stopped in epoch 3 (0-based index 2), with fixed timestamps."""

    def parts(hard: float, mean: float) -> dict[str, float]:
        return dict(zip(HARD_MEAN, (hard, mean), strict=True))

    return [
        RunStart(t=1000.0, run="tiny-run", preset="demo", device="cpu", world_size=1, n_train=240, n_query=60,
                 n_gallery=120, epochs=4, iters=10, start_epoch=0, start_iter=0, resumed=False,
                 notes=["no pretrained weights: training from scratch"],
                 config={"data": {"dataset": "synthetic"}, "model": {"arch": "resnet18"},
                         "memory": {"mode": "CMhybrid", "camera_aware": True}, "train": {"epochs": 99, "iters": 99}}),
        EpochStart(t=1000.0, epoch=0, lr=3.5e-4),
        Cluster(t=1002.0, epoch=0, n_samples=240, n_clusters=12, n_outliers=60, outlier_ratio=0.25,
                seconds={"extract": 1.5, "knn": 0.1, "jaccard": 0.3, "dbscan": 0.1}),
        Step(t=1010.0, epoch=0, iter=4, loss=3.0, parts=parts(2.0, 1.0), lr=3.5e-4, images_per_s=100.0,
             data_wait=0.004),
        Step(t=1020.0, epoch=0, iter=9, loss=2.5, parts=parts(1.6, 0.9), lr=3.5e-4, images_per_s=110.0,
             data_wait=0.004),
        Eval(t=1025.0, epoch=0, mAP=0.30, cmc=[0.40, 0.60, 0.70], best=0.30, is_best=True),
        Checkpoint(t=1025.0, epoch=1, iter=0, path="checkpoints/last.safetensors", is_best=False),
        EpochStart(t=1025.0, epoch=1, lr=3.5e-4),
        Cluster(t=1027.0, epoch=1, n_samples=240, n_clusters=15, n_outliers=30, outlier_ratio=0.125,
                seconds={"extract": 1.25, "knn": 0.5, "jaccard": 0.25, "dbscan": 0.125}),
        Step(t=1035.0, epoch=1, iter=4, loss=2.0, parts=parts(1.25, 0.75), lr=3.5e-4, images_per_s=120.0,
             data_wait=0.002),
        Step(t=1045.0, epoch=1, iter=9, loss=1.5, parts=parts(1.0, 0.5), lr=3.5e-4, images_per_s=120.0,
             data_wait=0.002),
        Eval(t=1050.0, epoch=1, mAP=0.45, cmc=[0.55, 0.75, 0.85], best=0.45, is_best=True, rerank_mAP=0.52),
        Checkpoint(t=1050.0, epoch=2, iter=0, path="checkpoints/best.safetensors", is_best=True),
        EpochStart(t=1050.0, epoch=2, lr=3.5e-5),
        Step(t=1060.0, epoch=2, iter=4, loss=1.25, parts=parts(0.75, 0.5), lr=3.5e-5, images_per_s=125.0),
    ]


def write_tiny_log(run_dir: Path, *, upto: int | None = None, torn: bool = True) -> Path:
    """The tiny run as an events.jsonl; complete logs end with an unknown type, a heartbeat and a torn line."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with EventWriter(run_dir / "events.jsonl") as writer:
        for event in tiny_events()[:upto]:
            writer.emit(event)
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as fh:
        if upto is None:
            fh.write('{"v": 1, "t": 1061.0, "type": "heartbeat"}\n')
            fh.write('{"v": 1, "t": 1063.0, "type": "gpu_temperature", "celsius": 71}\n')  # from the future
        if torn:
            fh.write('{"v": 1, "t": 1064.0, "type": "step", "epoch": 2, "it')
    return run_dir


def tiny_state(tmp_path: Path) -> RunState:
    """The tiny log read back from disk and reduced, with liveness checked at NOW."""
    return update_liveness(reduce_events(read_events(write_tiny_log(tmp_path / "run"))), NOW)


def test_tiny_log_numbers(tmp_path: Path) -> None:
    state = tiny_state(tmp_path)
    assert (state.run, state.preset, state.dataset, state.device, state.world_size) == (
        "tiny-run", "demo", "synthetic", "cpu", 1)
    assert (state.arch, state.memory) == ("resnet18", "CMhybrid + cameras")  # from the config, as the run panel shows
    # run_start's own epochs/iters, not the config's
    assert (state.total_epochs, state.iters_per_epoch) == (4, 10)
    assert (state.epoch, state.iter) == (2, 4)
    assert state.done_iters == 2 * 10 + 5 and state.total_iters == 40
    assert state.progress == pytest.approx(25 / 40)
    # 60 s for 25 iterations -> 15 left take 36 s
    assert state.eta_seconds == pytest.approx(60 * 15 / 25)
    assert state.loss_points == [(4, 3.0), (9, 2.5), (14, 2.0), (19, 1.5), (24, 1.25)]
    assert state.loss == 1.25 and state.parts == {"loss_hard": 0.75, "loss_mean": 0.5}
    assert state.lr == pytest.approx(3.5e-5) and state.images_per_s == 125.0
    assert [c.n_clusters for c in state.clusters] == [12, 15]
    assert state.last_cluster is not None and state.last_cluster.outlier_ratio == 0.125
    assert state.best_map == 0.45 and state.best_eval is not None and state.best_eval.epoch == 1
    assert state.best_eval.r1 == 0.55 and state.best_eval.rerank_mAP == 0.52
    assert state.last_checkpoint == "checkpoints/best.safetensors"
    assert state.status == "running" and not state.ended
    # 15 events + the heartbeat; the unknown type and the torn line never became events
    assert state.n_events == 16 and state.last_t == 1061.0


def test_panel_texts_are_one_based(tmp_path: Path) -> None:
    state = tiny_state(tmp_path)
    assert view.epoch_text(state).plain == "epoch 3/4  iter 5/10"
    assert view.eta_text(state).plain == "ETA 0:36  elapsed 1:01"
    assert view.speed_text(state).plain == "lr 3.50e-05  img/s 125  wait 2 ms"  # wait: last known
    assert view.cluster_text(state).plain == "15 clusters  30 outliers (12.5%)"
    assert view.timings_text(state).plain == "extract 1.25s  knn 0.50s  jaccard 0.25s  dbscan 0.12s"
    assert view.eval_text(state).plain == "★ best mAP 45.0% R1 55.0% (epoch 2)"
    assert view.last_eval_text(state) == "last: mAP 45.0% · R1 55.0% · R5 75.0%"
    assert view.loss_title(state) == "Loss 1.250 (hard 0.750, mean 0.500)"
    assert view.status_text(state).plain == "● running"
    assert [line.text for line in state.log] == [
        "run tiny-run started on cpu",
        "no pretrained weights: training from scratch",
        "epoch 1/4 started · lr 3.50e-04",
        "12 clusters, 60 outliers (25.0%) in 2.0 s",
        "eval epoch 1: mAP 30.0% · R1 40.0% ★ best",
        "epoch 2/4 started · lr 3.50e-04",
        "15 clusters, 30 outliers (12.5%) in 2.1 s",
        "eval epoch 2: mAP 45.0% · R1 55.0% · re-ranked mAP 52.0% ★ best",
        "saved best checkpoint checkpoints/best.safetensors",
        "epoch 3/4 started · lr 3.50e-05",
    ]
    assert [(line.t, line.level) for line in state.log][:4] == [(0.0, "info"), (0.0, "warn"), (0.0, "info"),
                                                                 (2.0, "info")]


def test_plot_axes_are_epochs_one_based(tmp_path: Path) -> None:
    state = tiny_state(tmp_path)
    # iteration index i of 10 per epoch -> (i + 1) / 10 epochs done: epoch 1 ends at x = 1, where its eval is
    assert view.loss_curve(state, 400) == [(0.5, 3.0), (1.0, 2.5), (1.5, 2.0), (2.0, 1.5), (2.5, 1.25)]
    assert view.eval_points(state) == [(1, pytest.approx(30.0), pytest.approx(40.0)),
                                      (2, pytest.approx(45.0), pytest.approx(55.0))]


def test_loss_parts_are_whatever_the_step_carries() -> None:
    state = reduce_events([
        RunStart(t=0.0, epochs=1, iters=10),
        Step(t=1.0, epoch=0, iter=0, loss=2.0, parts={"loss_ce": 2.0}),
    ])
    assert state.parts == {"loss_ce": 2.0} and view.loss_title(state) == "Loss 2.000 (ce 2.000)"
    reduce_events([Step(t=2.0, epoch=0, iter=1, loss=1.75, parts={"loss_ce": 1.5, "loss_centroid": 0.25})], state)
    assert view.loss_title(state) == "Loss 1.750 (ce 1.500, centroid 0.250)"
    reduce_events([Step(t=3.0, epoch=0, iter=2, loss=1.5)], state)  # parts belong to one step
    assert state.parts == {} and view.loss_title(state) == "Loss 1.500"
    reduce_events([Step(t=4.0, epoch=0, iter=3, images_per_s=80.0)], state)  # no loss: the last one stays
    assert state.loss == 1.5 and state.images_per_s == 80.0 and state.loss_points[-1] == (2, 1.5)


def test_eps_and_pseudo_label_quality_per_epoch() -> None:
    state = reduce_events([
        RunStart(t=0.0, epochs=3, iters=10),
        Cluster(t=1.0, epoch=0, n_samples=100, n_clusters=9, n_outliers=10, outlier_ratio=0.1, eps=0.4312,
                quality={"ari": 0.5, "nmi": 0.75, "precision": 0.9}),
        Cluster(t=2.0, epoch=1, n_samples=100, n_clusters=10, n_outliers=5, outlier_ratio=0.05, eps=0.4312),
        Cluster(t=3.0, epoch=2, n_samples=100, n_clusters=11, n_outliers=4, outlier_ratio=0.04, eps=0.4312,
                quality={"ari": 0.625, "nmi": 0.8}),
    ])
    assert view.quality_points(state) == {"ARI": [(1, 50.0), (3, 62.5)], "NMI": [(1, 75.0), (3, 80.0)]}
    assert "eps 0.431" in view.cluster_text(state).plain and "ARI 0.62" in view.cluster_text(state).plain
    assert "eps 0.431; vs identities ARI 0.500" in state.log[-3].text


def test_old_logs_top_level_loss_parts_are_shown(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"v": 1, "t": 5.0, "type": "step", "epoch": 0, "iter": 0, "loss": 4.25, '
                    '"loss_hard": 2.75, "loss_mean": 1.5}\n')
    state = reduce_events(read_events(path))
    assert view.loss_title(state) == "Loss 4.250 (hard 2.750, mean 1.500)"


def test_error_and_run_end(tmp_path: Path) -> None:
    state = tiny_state(tmp_path)
    reduce_events([
        Error(t=1070.0, message="the loss became nan", where="train, epoch 3 iter 5", hint="lower optim.lr",
              kind="nan"),
        RunEnd(t=1071.0, status="error", best_mAP=0.45, best_epoch=1, elapsed=71.0, message="stopped by nan",
               resume="hhcl train --resume runs/tiny-run"),
    ], state)
    assert state.ended and state.status == "error"
    assert state.eta_seconds == 0.0 and view.eta_text(state).plain == "done in 1:11"
    assert [(line.level, line.text) for line in list(state.log)[-5:]] == [
        ("error", "error (train, epoch 3 iter 5): the loss became nan"),
        ("warn", "hint: lower optim.lr"),
        ("error", "run ended: error · best mAP 45.0% (epoch 2)"),
        ("error", "stopped by nan"),
        ("info", "continue with: hhcl train --resume runs/tiny-run"),
    ]
    # a run that ended is not judged by liveness, however old its last event
    assert update_liveness(state, 1071.0 + 10 * NO_NEWS_SECONDS, process_alive=lambda pid: False).status == "error"


@pytest.mark.parametrize(("status", "shown"), [("ok", "ok"), ("interrupted", "interrupted"), (None, "error"),
                                               ("failed", "error")])
def test_run_end_status(status: str | None, shown: str) -> None:
    state = reduce_events([RunStart(t=0.0), RunEnd(t=10.0, status=status)])
    assert state.status == shown and state.ended and view.eta_text(state).plain == "done in 0:10"


def test_malformed_fields_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        {"v": 1, "t": 1.0, "type": "run_start", "epochs": "four", "config": "not a table"},
        {"v": 1, "t": 2.0, "type": "step", "epoch": "three", "iter": None, "loss": "nan?"},
        {"v": 1, "t": 3.0, "type": "cluster", "n_samples": 100, "n_outliers": 20, "seconds": "fast"},
        {"v": 1, "t": 4.0, "type": "eval", "mAP": 0.615, "cmc": [0.7, "x"]},
        {"v": 1, "t": 5.0, "type": "eval"},  # no mAP: nothing to show
        {"v": 1, "t": 6.0, "type": "run_end", "status": 3},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '["not", "an", "event"]\n')
    state = reduce_events(read_events(path))
    assert state.total_epochs is None and state.dataset == ""
    assert state.epoch is None and state.loss is None and state.loss_points == []
    assert state.clusters[0].n_outliers == 20 and state.clusters[0].seconds == {}
    assert len(state.evals) == 1 and state.evals[0].mAP == 0.615
    assert state.evals[0].r1 == 0.7 and state.evals[0].r5 is None
    assert state.status == "error" and state.n_events == 6
    assert view.eta_text(state).plain == "done in 0:05"
    assert view.epoch_text(state).plain == "epoch --  iter --"


def test_eta_restarts_its_pace_on_resume() -> None:
    events = [
        RunStart(t=0.0, epochs=2, iters=10, start_epoch=0, start_iter=0, resumed=False),
        Cluster(t=5.0, epoch=0, n_clusters=7),
        Step(t=100.0, epoch=0, iter=9, loss=1.0),
        RunEnd(t=101.0, status="interrupted"),
        # resumed a day later at epoch index 1, iter 0: the gap must not count towards the pace
        RunStart(t=86400.0, epochs=2, iters=10, start_epoch=1, start_iter=0, resumed=True),
        Step(t=86420.0, epoch=1, iter=4, loss=0.5),
    ]
    state = reduce_events(events)
    assert state.status == "running" and state.done_iters == 15
    assert state.eta_seconds == pytest.approx(20 / 5 * 5)
    assert state.loss_points == [(9, 1.0), (14, 0.5)] and [c.n_clusters for c in state.clusters] == [7]
    assert state.log[-1].text == "run ? resumed on ?"


def test_fresh_start_after_a_failed_attempt_resets_progress() -> None:
    first = [
        RunStart(t=0.0, run="r", epochs=2, iters=10, start_epoch=0, start_iter=0, resumed=False),
        EpochStart(t=0.0, epoch=0),
        Cluster(t=2.0, epoch=0, n_clusters=9, n_outliers=3),
        Step(t=10.0, epoch=0, iter=4, loss=3.0, parts={"loss_ce": 3.0}, lr=1e-3),
        Eval(t=12.0, epoch=0, mAP=0.2, cmc=[0.3, 0.4, 0.5]),
        Error(t=13.0, message="out of memory"),
        RunEnd(t=13.0, status="error", best_mAP=0.2),
    ]
    state = reduce_events(first)
    lines_before = [line.text for line in state.log]
    reduce_events([RunStart(t=500.0, run="r", epochs=2, iters=10, start_epoch=0, start_iter=0, resumed=False)],
                  state)
    assert state.status == "running" and state.attempt == 2
    assert (state.epoch, state.iter, state.done_iters, state.progress) == (0, None, 0, 0.0)
    assert state.loss is None and state.parts == {} and state.lr is None and state.loss_points == []
    assert state.clusters == [] and state.evals == [] and state.best_map is None
    assert state.start_t == 500.0 and state.elapsed is None
    assert [line.text for line in state.log] == [*lines_before, "run r started again (attempt 2) on ?"]
    reduce_events([Step(t=520.0, epoch=0, iter=4, loss=2.0)], state)
    assert state.loss_points == [(4, 2.0)] and state.eta_seconds == pytest.approx(20 / 5 * 15)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped (so no process has it, barring reuse)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)
    return process.pid


def live_run(now: float, *, host: str | None, pid: int | None, last: float) -> RunState:
    """A run on host/pid whose 5th of 10 steps, 95 s after its start, was its last news, ``last`` s before now."""
    return reduce_events([
        RunStart(t=now - last - 95.0, epochs=1, iters=10, start_epoch=0, start_iter=0, pid=pid, host=host),
        Step(t=now - last, epoch=0, iter=4, loss=1.0),
    ])


def test_a_dead_local_process_shows_stopped() -> None:
    now = 1_000_000.0
    state = update_liveness(live_run(now, host=socket.gethostname(), pid=dead_pid(), last=5.0), now)
    assert state.status == "stopped" and not state.ended
    assert view.status_label(state) == "stopped (process gone, no run_end)"
    assert state.eta_seconds is None and view.eta_text(state).plain == "ETA --  elapsed 1:35"


def test_a_remote_run_that_went_quiet_shows_no_news() -> None:
    now = 1_000_000.0
    # the pid is dead here, but it names a process on another machine: only the silence counts
    state = update_liveness(live_run(now, host="gpu-node-7.example", pid=dead_pid(), last=600.0), now)
    assert state.status == "silent" and view.status_label(state) == "no news for 10 min"
    assert view.eta_text(state).plain.startswith("ETA --")
    # news arrives: running again, with an estimate
    reduce_events([Heartbeat(t=now + 1.0), Step(t=now + 2.0, epoch=0, iter=5, loss=0.9)], state)
    assert update_liveness(state, now + 3.0).status == "running" and state.eta_seconds is not None


def test_a_live_local_process_with_recent_news_is_running() -> None:
    now = 1_000_000.0
    state = update_liveness(live_run(now, host=socket.gethostname(), pid=os.getpid(), last=5.0), now)
    assert state.status == "running" and view.status_label(state) == "running"
    # 95 s for 5 of 10 iterations -> 95 s left
    assert state.eta_seconds == pytest.approx(95.0) and view.eta_text(state).plain == "ETA 1:35  elapsed 1:35"


def test_liveness_thresholds_and_injected_checks() -> None:
    now = 5000.0
    asked: list[int] = []

    def alive(pid: int) -> bool:
        asked.append(pid)
        return True

    state = live_run(now, host="here", pid=4242, last=NO_NEWS_SECONDS)
    assert update_liveness(state, now, process_alive=alive, hostname="here").status == "running"
    assert asked == [4242]
    assert update_liveness(state, now + 1.0, process_alive=alive, hostname="here").status == "silent"
    assert state.silent_for == pytest.approx(NO_NEWS_SECONDS + 1.0)
    assert update_liveness(state, now, process_alive=lambda pid: False, hostname="here").status == "stopped"
    assert update_liveness(state, now, process_alive=alive, hostname="elsewhere").status == "running"
    # the caller saw the process exit (hhcl train --tui), even before it wrote run_start
    assert update_liveness(RunState(), now, process_gone=True).status == "stopped"
    assert update_liveness(RunState(), now).status == "waiting"


def test_fmt_ago() -> None:
    assert view.fmt_ago(45.4) == "45 s"
    assert view.fmt_ago(600.0) == "10 min" and view.fmt_ago(629.0) == "10 min" and view.fmt_ago(631.0) == "11 min"
    assert view.fmt_ago(3 * 3600 + 100) == "3 h" and view.fmt_ago(3 * 86400) == "3 days"


def test_new_log_lines_and_downsample() -> None:
    state = RunState()
    reduce_events([EpochStart(t=None, epoch=i) for i in range(5)], state)
    assert [line.text for line in new_log_lines(state, 3)] == ["epoch 4 started", "epoch 5 started"]
    assert new_log_lines(state, 5) == []
    points = [(i, float(i % 2)) for i in range(10)]
    assert downsample(points, 20) == [(float(x), y) for x, y in points]
    assert downsample(points, 5) == [(0.5, 0.5), (2.5, 0.5), (4.5, 0.5), (6.5, 0.5), (8.5, 0.5)]


def test_fmt_helpers() -> None:
    assert view.fmt_duration(3725) == "1:02:05" and view.fmt_duration(59.6) == "1:00"
    assert view.fmt_duration(None) == "--"
    assert view.fmt_pct(0.8343) == "83.4%" and view.fmt_count(12936) == "12,936"


def test_log_times_are_marked_as_spans_since_the_start() -> None:
    assert view.log_line(LogLine(725.0, "info", "epoch 2/60 started")).plain == "+12:05 epoch 2/60 started"
    assert view.log_line(LogLine(61.0, "warn", "x")).plain == " +1:01 x"  # aligned on the right
    assert view.log_line(LogLine(3725.0, "warn", "x")).plain == "+1:02:05 x"
    assert view.log_line(LogLine(None, "info", "no time")).plain == "       no time"


def test_zero_based_bars_and_their_scale() -> None:
    # 49 -> 55 clusters: 49/55 of a cell is 7.1 eighths (min-max scaling would draw an empty bar, then a full one)
    assert zero_bars([49, 55], 10) == "▇█"
    assert zero_bars([0, 4, 8], 10) == " ▄█"  # zero draws nothing; the scale starts at 0
    assert zero_bars([1, 100], 5) == "▁█"  # a positive value under half an eighth still shows
    assert zero_bars([1, 2, 3, 4, 5, 6, 7, 8], 4) == "▂▄▆█"  # too many for the width: each bar the max of two
    assert zero_bars([], 4) == "" and zero_bars([0.0, 0.0], 4) == "  " and zero_bars([3.0], 0) == ""
    assert scale_label(55) == "0–55" and scale_label(12.5, "%") == "0–12.5%"


def test_reload_summary_says_what_was_read(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr(time, "localtime", time.gmtime)  # clock times in UTC, whatever the machine's zone
    assert view.reload_summary(RunState(), "runs/x/events.jsonl") == "reloaded runs/x/events.jsonl: no events yet"
    state = reduce_events(tiny_events())
    assert view.reload_summary(state, "ignored") == "reloaded: 15 events, last at 1970-01-01 00:17:40 (+1:00)"


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
    assert set(state.parts) == {k for k in steps[-1] if k.startswith("loss_")}
    best = max(evals, key=lambda e: e["mAP"])
    assert state.best_eval is not None and state.best_eval.mAP == best["mAP"] and state.best_eval.epoch == best["epoch"]
    assert view.eval_text(state).plain.endswith(f"(epoch {best['epoch'] + 1})")
    assert state.status == "ok" and state.progress == 1.0


def test_a_run_killed_during_its_set_up_is_told_by_its_first_heartbeat() -> None:
    now = 1_000_000.0
    here = socket.gethostname()
    # killed while building its cache: the log holds only the heartbeat that opened it
    state = update_liveness(reduce_events([Heartbeat(t=now - 20.0, pid=dead_pid(), host=here)]), now)
    assert state.status == "stopped" and view.status_label(state) == "stopped (process gone, no run_end)"
    # alive and setting up: running, without an estimate yet
    state = update_liveness(reduce_events([Heartbeat(t=now - 20.0, pid=os.getpid(), host=here)]), now)
    assert state.status == "running" and state.eta_seconds is None
    # an attempt that failed, then a new process in the same run directory: running again
    ended = reduce_events([
        Heartbeat(t=now - 60.0, pid=dead_pid(), host=here),
        RunEnd(t=now - 59.0, status="error", message="dataset not found"),
        Heartbeat(t=now - 1.0, pid=os.getpid(), host=here),
    ])
    assert update_liveness(ended, now).status == "running"


def test_the_running_stage_is_shown_until_iterations_start() -> None:
    state = reduce_events([RunStart(t=0.0, run="r", epochs=60, iters=200, start_epoch=0, start_iter=0),
                           EpochStart(t=0.0, epoch=2, lr=3.5e-4)])
    assert view.stage_text(state) == ""

    def shown_after(stage: str, done: int, total: int, seconds: float) -> str:
        reduce_events([Progress(t=1.0 + seconds, epoch=2, stage=stage, done=done, total=total, seconds=seconds)],
                      state)
        return view.stage_text(state)

    assert shown_after("extract_train", 0, 12936, 0.0) == "extract train features 0/12,936 (0%) · 0:00"
    assert shown_after("extract_train", 3200, 12936, 41.0) == "extract train features 3,200/12,936 (25%) · 0:41"
    assert shown_after("cluster", 0, 3, 0.0) == "clustering (kNN, Jaccard, DBSCAN)... · 0:00"
    assert shown_after("cluster", 1, 3, 5.4) == "clustering: kNN done, Jaccard... · 0:05"
    assert shown_after("memory", 1, 1, 0.3) == "memory init done · 0:00"
    reduce_events([Step(t=60.0, epoch=2, iter=0, loss=1.0)], state)
    assert state.stage is None and view.stage_text(state) == ""  # iterations started
    assert shown_after("extract_query", 1684, 3368, 75.0) == "extract query features 1,684/3,368 (50%) · 1:15"
    reduce_events([Eval(t=90.0, epoch=2, mAP=0.5, cmc=[0.6, 0.7, 0.8])], state)
    assert view.stage_text(state) == ""  # the evaluation's result replaces its stages
    assert not any("extract" in line.text for line in state.log)  # stages are shown, not logged


def test_an_infomap_clustering_shows_its_own_parameters_and_steps() -> None:
    infomap = Cluster(t=1.0, epoch=0, n_samples=80, n_clusters=7, n_outliers=8, outlier_ratio=0.1, method="infomap",
                      seconds={"extract": 1.5, "knn": 0.25, "links": 0.01, "infomap": 0.125},
                      params={"min_sim": 0.5, "k": 15, "min_size": 5}, auto=[])
    state = reduce_events([RunStart(t=0.0, epochs=3, iters=10), infomap])
    assert "min_sim 0.5 k 15 min_size 5" in view.cluster_text(state).plain and "eps" not in view.cluster_text(state).plain
    assert state.log[-1].text.endswith("in 1.9 s, min_sim 0.5, k 15, min_size 5")
    assert view.timings_text(state).plain == "extract 1.50s  knn 0.25s  links 0.01s  infomap 0.12s"
    assert view.clusters_title(state) == "Clustering · infomap"
    auto = Cluster(t=2.0, epoch=1, n_samples=80, n_clusters=9, n_outliers=2, outlier_ratio=0.025, method="dbscan",
                   params={"eps": 0.4312}, auto=["eps"])
    apply_event(state, auto)
    assert "eps 0.431 auto" in view.cluster_text(state).plain and state.log[-1].text.endswith("eps 0.431 (auto)")
    assert view.clusters_title(state) == "Clustering · dbscan"
    assert view.clusters_title(reduce_events([])) == "Clustering"
