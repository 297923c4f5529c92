"""TensorBoard scalars: ``hhcl tensorboard RUN`` from a recorded event log, resumed runs, the live hook of a tiny
training run, and the refusals (no run, a folder we must not replace, no tensorboard package).

Everything is read back with TensorBoard's own reader (EventAccumulator), which stores values as float32.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from helpers.hooks import StopAt
from helpers.tiny_run import TINY
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from hhcl.config import ConfigError, load_config
from hhcl.engine import Trainer
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import parse_event, read_raw_events
from hhcl.tensorboard import TensorBoardHook, TensorBoardMissingError, write_tensorboard
from hhcl_tui.cli import app

runner = CliRunner()


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, value, wall time)] as TensorBoard's own reader sees the folder."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_scalars(seen: dict, expected: dict) -> None:
    assert sorted(seen) == sorted(expected)
    for tag, points in expected.items():
        got = seen[tag]
        assert [p[0] for p in got] == [p[0] for p in points], tag
        assert [p[1] for p in got] == pytest.approx([p[1] for p in points], rel=1e-6), tag
        assert [p[2] for p in got] == [p[2] for p in points], tag


def write_log(run: Path, events: list[dict], tail: str = "") -> Path:
    run.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({"v": 1, **e}) + "\n" for e in events) + tail
    (run / "events.jsonl").write_text(text)
    return run


# A recorded log in the shape the engine writes: run_start without top-level iters (iters from its config, as in
# reference/events-sample.jsonl), a step with its parts as top-level loss_* numbers (older logs), events without
# numbers, and a torn last line.
RECORDED = [
    {"t": 100.0, "type": "run_start", "run": "r", "config": {"train": {"iters": 4, "epochs": 2}}, "epochs": 2,
     "start_epoch": 0, "start_iter": 0, "resumed": False},
    {"t": 100.5, "type": "heartbeat", "pid": 1, "host": "h"},
    {"t": 100.5, "type": "epoch_start", "epoch": 0, "lr": 0.00035},
    {"t": 100.7, "type": "progress", "epoch": 0, "stage": "cluster", "done": 1, "total": 3, "seconds": 0.2},
    {"t": 101.0, "type": "cluster", "epoch": 0, "n_samples": 100, "n_clusters": 7, "n_outliers": 20,
     "outlier_ratio": 0.2, "seconds": {"extract": 1.0}, "eps": 0.6, "eps_auto": False,
     "quality": {"ari": 0.5, "nmi": 0.75, "precision": 0.875, "recall": None}},
    {"t": 102.0, "type": "step", "epoch": 0, "iter": 0, "loss": 4.5, "parts": {"loss_hard": 2.5, "loss_mean": 2.0},
     "lr": 0.00035, "images_per_s": 100.0, "data_wait": 0.01},
    {"t": 103.0, "type": "step", "epoch": 0, "iter": 3, "loss": 4.25, "loss_hard": 2.25, "loss_mean": 2.0,
     "lr": 0.00035, "images_per_s": 110.0, "data_wait": 0.01},
    {"t": 104.0, "type": "eval", "epoch": 0, "mAP": 0.125, "cmc": [0.25, 0.5, 0.625], "best": 0.125, "is_best": True},
    {"t": 104.5, "type": "checkpoint", "epoch": 1, "iter": 0, "path": "checkpoints/last.safetensors"},
    {"t": 105.0, "type": "run_end", "status": "ok", "best_mAP": 0.125, "best_epoch": 0, "elapsed": 5.0},
]
# by hand: steps at epoch * 4 + iter; the cluster at its epoch's first iteration (0), the eval at its last (3)
RECORDED_SCALARS = {
    "loss/total": [(0, 4.5, 102.0), (3, 4.25, 103.0)],
    "loss/hard": [(0, 2.5, 102.0), (3, 2.25, 103.0)],
    "loss/mean": [(0, 2.0, 102.0), (3, 2.0, 103.0)],
    "train/lr": [(0, 0.00035, 102.0), (3, 0.00035, 103.0)],
    "train/images_per_s": [(0, 100.0, 102.0), (3, 110.0, 103.0)],
    "cluster/clusters": [(0, 7.0, 101.0)],
    "cluster/outliers": [(0, 20.0, 101.0)],
    "cluster/outlier_ratio": [(0, 0.2, 101.0)],
    "cluster/eps": [(0, 0.6, 101.0)],
    "cluster/ari": [(0, 0.5, 101.0)],
    "cluster/nmi": [(0, 0.75, 101.0)],
    "cluster/precision": [(0, 0.875, 101.0)],
    "eval/mAP": [(3, 0.125, 104.0)],
    "eval/rank1": [(3, 0.25, 104.0)],
    "eval/rank5": [(3, 0.5, 104.0)],
    "eval/rank10": [(3, 0.625, 104.0)],
}


def test_cli_writes_the_expected_scalars_from_a_recorded_log_and_rewrites_without_doubling(tmp_path):
    run = write_log(tmp_path / "r", RECORDED, tail='{"v": 1, "t": 106.0, "type": "st')
    result = runner.invoke(app, ["tensorboard", str(run)])
    assert result.exit_code == 0, result.output
    folder = run / "tensorboard"
    assert f"tensorboard --logdir {folder}" in result.output
    assert_scalars(read_scalars(folder), RECORDED_SCALARS)

    again = runner.invoke(app, ["tensorboard", str(run)])
    assert again.exit_code == 0, again.output
    assert len(list(folder.iterdir())) == 1  # replaced, not a second event file beside the first
    assert_scalars(read_scalars(folder), RECORDED_SCALARS)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left


def _run_start(t: float, epoch: int, it: int) -> dict:
    return {"t": t, "type": "run_start", "iters": 4, "epochs": 2, "start_epoch": epoch, "start_iter": it,
            "resumed": epoch + it > 0}


def _step(t: float, epoch: int, it: int, loss: float) -> dict:
    return {"t": t, "type": "step", "epoch": epoch, "iter": it, "loss": loss, "parts": {}, "lr": 0.1,
            "images_per_s": 50.0}


def _cluster(t: float, epoch: int, n: int) -> dict:
    return {"t": t, "type": "cluster", "epoch": epoch, "n_samples": 40, "n_clusters": n, "n_outliers": 4,
            "outlier_ratio": 0.1, "eps": 0.5}


# Three processes over one run (4 iterations per epoch): A stops on SIGTERM after iter 1 of epoch 0 (checkpoint at
# epoch 0 iter 2); B resumes there, finishes epoch 0 (checkpoint at epoch 1 iter 0), clusters epoch 1, logs two
# steps and is killed; C resumes at epoch 1 iter 0 and redoes the clustering and those steps.
PROCESSES = [
    [_run_start(100, 0, 0), _cluster(101, 0, 10), _step(102, 0, 0, 5.0), _step(103, 0, 1, 4.9),
     {"t": 104, "type": "run_end", "status": "interrupted"}],
    [_run_start(200, 0, 2), _step(201, 0, 2, 4.8), _step(202, 0, 3, 4.7),
     {"t": 203, "type": "eval", "epoch": 0, "mAP": 0.1, "cmc": [0.2, 0.3, 0.4]},
     _cluster(204, 1, 11), _step(205, 1, 0, 4.6), _step(206, 1, 1, 4.5)],
    [_run_start(300, 1, 0), _cluster(301, 1, 12), _step(302, 1, 0, 4.4), _step(303, 1, 1, 4.3),
     _step(304, 1, 2, 4.2), _step(305, 1, 3, 4.1),
     {"t": 306, "type": "eval", "epoch": 1, "mAP": 0.2, "cmc": [0.3, 0.4, 0.5]},
     {"t": 307, "type": "run_end", "status": "ok"}],
]
# by hand: every step once; from epoch 1 iter 0 on (global step 4), C's values and times
RESUMED_SCALARS = {
    "loss/total": [(0, 5.0, 102), (1, 4.9, 103), (2, 4.8, 201), (3, 4.7, 202), (4, 4.4, 302), (5, 4.3, 303),
                   (6, 4.2, 304), (7, 4.1, 305)],
    "cluster/clusters": [(0, 10, 101), (4, 12, 301)],
    "eval/mAP": [(3, 0.1, 203), (7, 0.2, 306)],
    "eval/rank1": [(3, 0.2, 203), (7, 0.3, 306)],
}


def test_a_resumed_run_shows_each_step_once_offline_and_live(tmp_path):
    run = write_log(tmp_path / "r", [e for process in PROCESSES for e in process])
    done = write_tensorboard(run, tmp_path / "offline")
    assert done.out == tmp_path / "offline"
    offline = read_scalars(tmp_path / "offline")
    assert_scalars({tag: offline[tag] for tag in RESUMED_SCALARS}, RESUMED_SCALARS)

    live = tmp_path / "live"
    for process in PROCESSES:  # one hook per process, as each process's Trainer attaches its own
        hook = TensorBoardHook(live)
        for raw in process:
            hook.on_event(parse_event({"v": 1, **raw}))
        hook.close()  # B is killed: what it flushed before stays in its event file
    assert len(list(live.iterdir())) == 3
    assert read_scalars(live) == offline


def test_a_resume_within_the_same_second_is_read_after_the_stopped_process(tmp_path):
    live = tmp_path / "live"
    hook = TensorBoardHook(live)
    for raw in PROCESSES[0]:
        hook.on_event(parse_event({"v": 1, **raw}))
    (first,) = live.iterdir()
    # TensorBoard reads event files in name order, and a name is <creation second>.<host>.<pid>...: as if the stopped
    # process ran on a host (or pid) that sorts last, in this very second
    first.rename(live / f"events.out.tfevents.{int(time.time()):010d}.zzzz.1.0")
    hook = TensorBoardHook(live)
    for raw in PROCESSES[1][:3]:  # resumed at epoch 0 iter 2
        hook.on_event(parse_event({"v": 1, **raw}))
    hook.close()
    assert [p[0] for p in read_scalars(live)["loss/total"]] == [0, 1, 2, 3]


def test_refuses_non_runs_and_folders_it_must_not_replace(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    result = runner.invoke(app, ["tensorboard", str(plain)])
    assert result.exit_code == 2 and "not a run directory" in result.output and "events.jsonl" in result.output
    assert not (plain / "tensorboard").exists()
    missing = runner.invoke(app, ["tensorboard", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output

    run = write_log(tmp_path / "r", RECORDED)
    before = sorted(p.name for p in run.iterdir())
    # --out tmp_path would put run "r" at tmp_path/r: the run directory itself, which is not ours to replace
    refused = runner.invoke(app, ["tensorboard", str(run), "--out", str(tmp_path)])
    assert refused.exit_code == 2 and "is not replaced" in refused.output
    assert sorted(p.name for p in run.iterdir()) == before


def test_two_runs_go_to_out_under_their_names(tmp_path):
    a = write_log(tmp_path / "runs" / "a", RECORDED)
    b = write_log(tmp_path / "runs" / "b", PROCESSES[0])
    out = tmp_path / "tb"
    result = runner.invoke(app, ["tensorboard", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {out}" in result.output
    assert_scalars(read_scalars(out / "a"), RECORDED_SCALARS)
    assert read_scalars(out / "b")["loss/total"] == [(0, 5.0, 102.0), (1, pytest.approx(4.9), 103.0)]


def test_without_the_package_tensorboard_fails_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    run = write_log(tmp_path / "r", RECORDED)
    result = runner.invoke(app, ["tensorboard", str(run)])
    assert result.exit_code == 2 and 'pip install "hhcl[tensorboard]"' in result.output
    assert not (run / "tensorboard").exists()

    cfg = load_config("demo", ["train.tensorboard=true", "train.device=cpu", f"data.root={tmp_path}"])
    with pytest.raises(TensorBoardMissingError, match=r'pip install "hhcl\[tensorboard\]"'):
        Trainer(cfg, tmp_path / "run")
    train = runner.invoke(app, ["train", "--preset", "demo", "--set", "train.tensorboard=true", "--set",
                                "train.device=cpu", "--root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
                                "--name", "x"])
    assert train.exit_code == 2 and 'pip install "hhcl[tensorboard]"' in train.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs" / "x").exists()


def test_live_hook_of_a_stopped_and_resumed_tiny_run_matches_the_log_and_the_offline_writer(synth_root, tmp_path):
    cfg = load_config("demo", [f"data.root={synth_root}", *TINY, "model.bn_group=0", "train.epochs=1",
                               "train.eval_every=1", "train.tensorboard=true"])
    run = tmp_path / "run"
    assert Trainer(cfg, run, hooks=[StopAt(0, 0)]).fit().status == "interrupted"
    assert Trainer(resume_config(run), run, resume=True).fit().status == "ok"
    live = read_scalars(run / "tensorboard")

    raw = read_raw_events(run)
    iters = cfg.train.iters
    steps = [e for e in raw if e["type"] == "step"]
    assert [(e["epoch"], e["iter"]) for e in steps] == [(0, 0), (0, 1), (0, 2)]  # the resume redid nothing
    assert live["loss/total"] == [(e["epoch"] * iters + e["iter"], pytest.approx(e["loss"]), e["t"]) for e in steps]
    parts = {f"loss/{k.removeprefix('loss_')}" for k in steps[0]["parts"]}
    assert parts and parts <= set(live)
    (cluster,) = [e for e in raw if e["type"] == "cluster"]
    assert live["cluster/clusters"] == [(0, cluster["n_clusters"], cluster["t"])]
    assert {"cluster/ari", "cluster/nmi"} <= set(live)  # synthetic people have identities
    (ev,) = [e for e in raw if e["type"] == "eval"]
    assert live["eval/mAP"] == [(iters - 1, pytest.approx(ev["mAP"]), ev["t"])]
    assert live["eval/rank1"] == [(iters - 1, pytest.approx(ev["cmc"][0]), ev["t"])]

    write_tensorboard(run, tmp_path / "offline")
    assert read_scalars(tmp_path / "offline") == live


def test_tensorboard_can_be_switched_on_when_resuming(tmp_path):
    cfg = load_config("demo")
    (tmp_path / "config.toml").write_text(cfg.to_toml())
    assert cfg.train.tensorboard is False
    assert resume_config(tmp_path, ["train.tensorboard=true"]).train.tensorboard is True
    with pytest.raises(ConfigError, match="cannot change on resume"):
        resume_config(tmp_path, ["memory.temp=0.1"])  # a key that changes the computation is still refused


def test_a_full_disk_is_one_message_and_the_previous_export_stays(tmp_path):
    """A real process under a file size limit (writes past it fail with EFBIG, as on a full disk): one line naming
    the folder and the fix, exit 1 (before: a 139-line traceback), and the earlier export is left as it was."""
    import os
    import resource
    import subprocess
    import sys

    run = write_log(tmp_path / "r", RECORDED)
    assert runner.invoke(app, ["tensorboard", str(run)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in (run / "tensorboard").iterdir()}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))  # the event file's header fits, the scalars do not

    full = subprocess.run([sys.executable, "-m", "hhcl", "tensorboard", str(run)], capture_output=True, text=True,
                          preexec_fn=limit, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr and len(full.stderr.strip().splitlines()) == 1, full.stderr
    assert f"cannot write the TensorBoard scalars of {run} to {run / 'tensorboard'}" in full.stderr
    assert "File too large" in full.stderr and "free space" in full.stderr
    assert {p.name: p.read_bytes() for p in (run / "tensorboard").iterdir()} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left
