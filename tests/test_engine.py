"""End-to-end training on tiny synthetic data (CPU): run directory, events, checkpoints, resume, failures."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from helpers.hooks import StopAt
from helpers.tiny_run import TINY
from safetensors.torch import load_file

from hhcl.config import load_config
from hhcl.engine import Hook, Trainer
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import read_raw_events as read_events


def tiny_config(root: Path, *extra: str):
    return load_config("demo", [f"data.root={root}", *TINY, "model.bn_group=8", "train.eval_every=1", *extra])


def fit(cfg, run_dir: Path, **kw):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    return Trainer(cfg, run_dir, preset="demo", **kw).fit()


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.steps: list[tuple[int, int]] = []

    def on_event(self, event):
        self.events.append(event.to_dict())

    def after_step(self, trainer, epoch, it):
        self.steps.append((epoch, it))


def test_end_to_end_run_directory_events_and_checkpoint(synth_root, tmp_path):
    cfg = tiny_config(synth_root)
    rec = Recorder()
    (tmp_path / "run").mkdir()
    trainer = Trainer(cfg, tmp_path / "run", preset="demo", hooks=[rec])
    result = trainer.fit()
    assert result.status == "ok", result.message
    run = tmp_path / "run"
    events = read_events(run)
    assert events == [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    # hooks see every event but the heartbeats (written from the heartbeat thread)
    assert [e["type"] for e in events if e["type"] != "heartbeat"] == [e["type"] for e in rec.events]
    types = {e["type"] for e in events}
    assert types == {"heartbeat", "run_start", "epoch_start", "cluster", "step", "eval", "checkpoint", "run_end",
                     "progress"}
    beat = events[0]  # the first line names the process, before the (possibly long) set-up
    assert beat["type"] == "heartbeat" and beat["pid"] == os.getpid() and beat["host"] == socket.gethostname()
    assert all(e["v"] == 1 and isinstance(e["t"], float) for e in events)
    start = events[1]
    assert start["type"] == "run_start" and start["world_size"] == 1 and start["device"] == "cpu"
    assert start["config"]["cluster"]["eps"] == 0.7 and start["epochs"] == 2 and start["iters"] == 3
    clusters = [e for e in events if e["type"] == "cluster"]
    assert [c["epoch"] for c in clusters] == [0, 1]
    for c in clusters:
        assert 1 <= c["n_clusters"] <= c["n_samples"] - c["n_outliers"]
        assert c["outlier_ratio"] == pytest.approx(c["n_outliers"] / c["n_samples"], abs=1e-6)
        assert {"extract", "knn", "jaccard", "dbscan"} <= set(c["seconds"])
    steps = [e for e in events if e["type"] == "step"]
    assert rec.steps == [(e, i) for e in range(2) for i in range(3)]
    assert all(torch.isfinite(torch.tensor(s["loss"])) and s["images_per_s"] > 0 for s in steps)
    assert {"loss_hard", "loss_mean"} <= set(steps[0]["parts"])
    evals = [e for e in events if e["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [0, 1]
    assert all(0 <= e["mAP"] <= 1 and len(e["cmc"]) == 3 for e in evals)
    assert evals[-1]["best"] == pytest.approx(max(e["mAP"] for e in evals), abs=1e-6)
    assert_progress_in_order(events, start)
    end = events[-1]
    assert end["type"] == "run_end" and end["status"] == "ok"
    assert end["best_mAP"] == pytest.approx(result.best_mAP, abs=1e-6)
    ckpts = run / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} >= {"last.safetensors", "last.state.pt", "best.safetensors"}
    assert not list(ckpts.glob("*.tmp*"))
    # the checkpoint reproduces the trained model's embeddings through the public loader
    from hhcl.models import load_model

    model, info = load_model(run, device="cpu")
    assert info.arch == "resnet18" and (info.height, info.width) == (64, 32)
    x = torch.randn(4, 3, 64, 32)
    last, _ = load_model(ckpts / "last.safetensors", device="cpu")
    with torch.no_grad():
        assert torch.allclose(trainer.model.eval()(x), last.eval()(x), atol=1e-6)
    assert model.feature_dim == last.feature_dim == 512


def assert_progress_in_order(events: list[dict], start: dict) -> None:
    """Per epoch: train extraction, clustering, memory init, then (after the steps) query, gallery, metrics;
    each stage from done 0 to done == total, never past total, with non-decreasing done, seconds and t."""
    sizes = {"extract_train": start["n_train"], "cluster": 3, "memory": 1, "extract_query": start["n_query"],
             "extract_gallery": start["n_gallery"], "eval_metrics": 1}
    for epoch in range(start["epochs"]):
        mine = [e for e in events if e.get("epoch") == epoch and e["type"] in ("progress", "cluster", "step", "eval")]
        order = []  # the epoch's sequence of stages and events, a stage named once per run of its events
        for e in mine:
            name = e["stage"] if e["type"] == "progress" else e["type"]
            if not order or order[-1] != name:
                order.append(name)
        assert order == ["extract_train", "cluster", "memory", "step", "extract_query", "extract_gallery",
                         "eval_metrics", "eval"], order
        for stage, total in sizes.items():
            got = [e for e in mine if e.get("stage") == stage]
            done = [e["done"] for e in got]
            assert {e["total"] for e in got} == {total}, (stage, got)
            assert done[0] == 0 and done[-1] == total and done == sorted(done) and max(done) <= total, (stage, done)
            assert [e["seconds"] for e in got] == sorted(e["seconds"] for e in got) and got[0]["seconds"] == 0
            assert [e["t"] for e in got] == sorted(e["t"] for e in got)
        assert [e["done"] for e in mine if e.get("stage") == "cluster"] == [0, 1, 2, 3]  # one per sub-stage


def weights_of(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "last.safetensors")


def test_resume_mid_epoch_and_extension_equal_uninterrupted(synth_root, tmp_path):
    cfg = tiny_config(synth_root, "train.epochs=3")
    straight = fit(cfg, tmp_path / "a")
    assert straight.status == "ok"

    stopped = fit(cfg, tmp_path / "b", hooks=[StopAt(1, 0)])
    assert stopped.status == "interrupted" and "--resume" in stopped.message
    resumed = Trainer(resume_config(tmp_path / "b"), tmp_path / "b", resume=True).fit()
    assert resumed.status == "ok"
    a, b = weights_of(tmp_path / "a"), weights_of(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "mid-epoch resume diverged from the uninterrupted run"

    short = fit(tiny_config(synth_root, "train.epochs=2"), tmp_path / "c")
    assert short.status == "ok"
    extended = Trainer(resume_config(tmp_path / "c", ["train.epochs=3"]), tmp_path / "c", resume=True).fit()
    assert extended.status == "ok"
    c = weights_of(tmp_path / "c")
    assert all(torch.equal(a[k], c[k]) for k in a), "extending a finished run diverged"
    starts = [e for e in read_events(tmp_path / "b") if e["type"] == "run_start"]
    assert [s["start_epoch"] for s in starts] == [0, 1] and starts[1]["start_iter"] == 1


def test_resume_refuses_changing_keys(synth_root, tmp_path):
    from hhcl.config import ConfigError

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text(tiny_config(synth_root).to_toml())
    with pytest.raises(ConfigError, match="cluster.eps.*cannot change on resume"):
        resume_config(run, ["cluster.eps=0.5"])
    assert resume_config(run, ["train.epochs=9"]).train.epochs == 9


def test_no_clusters_stops_with_eps_in_the_message(synth_root, tmp_path):
    cfg = tiny_config(synth_root, "cluster.eps=0.0001", "cluster.min_samples=50")
    result = fit(cfg, tmp_path / "none")
    assert result.status == "error"
    assert "cluster.eps=0.0001" in result.message and "no clusters" in result.message
    events = read_events(tmp_path / "none")
    assert events[-2]["type"] == "error" and events[-1]["status"] == "error"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(synth_root, tmp_path):
    class Poison(Hook):
        def after_step(self, trainer, epoch, it):
            if epoch == 1:
                with torch.no_grad():
                    for p in trainer.model.parameters():
                        p.fill_(float("nan"))

    cfg = tiny_config(synth_root, "train.epochs=2")
    result = fit(cfg, tmp_path / "nan", hooks=[Poison()])
    assert result.status == "error" and "not finite" in result.message
    good = weights_of(tmp_path / "nan")
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())


def test_supervised_mode_uses_ground_truth_ids(synth_root, tmp_path):
    cfg = tiny_config(synth_root, "train.supervised=true", "train.epochs=1")
    result = fit(cfg, tmp_path / "sup")
    assert result.status == "ok"
    cluster = next(e for e in read_events(tmp_path / "sup") if e["type"] == "cluster")
    from hhcl.data import build_dataset

    ds = build_dataset("synthetic", synth_root)
    assert cluster["n_clusters"] == len({s.pid for s in ds.train}) and cluster["n_outliers"] == 0


def test_too_few_clusters_for_a_batch_is_a_training_error(synth_root, tmp_path):
    cfg = tiny_config(synth_root, "data.batch_size=512", "data.num_instances=16", "model.bn_group=0")
    result = fit(cfg, tmp_path / "few")
    assert result.status == "error"
    assert "lower data.batch_size" in result.message and "cluster.eps=0.7" in result.message
