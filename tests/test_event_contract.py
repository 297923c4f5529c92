"""The contract end to end: the real engine's events.jsonl, read back typed, drives the dashboard (every memory mode)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
from helpers.tiny_run import TINY

from hhcl.config import load_config
from hhcl.engine import Trainer
from hhcl.run.events import EVENT_TYPES, Cluster, Eval, RunEnd, Step, read_events, read_raw_events
from hhcl_tui.dashboard import view
from hhcl_tui.dashboard.state import reduce_events, update_liveness


@pytest.mark.parametrize("mode", ["CM", "CMhard", "CMhybrid", "CMhybrid_v2"])
def test_engine_events_drive_the_dashboard(mode: str, synth_root: Path, tmp_path: Path) -> None:
    overrides = [f"data.root={synth_root}", *TINY, "model.bn_group=8", "train.eval_every=1", "train.epochs=1"]
    cfg = load_config("demo", [*overrides, f"memory.mode={mode}"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml())
    result = Trainer(cfg, run, preset="demo").fit()
    assert result.status == "ok", result.message

    assert {raw["type"] for raw in read_raw_events(run)} <= set(EVENT_TYPES)  # only contract types on disk
    events = read_events(run)
    steps = [e for e in events if isinstance(e, Step) and e.loss is not None]
    clusters = [e for e in events if isinstance(e, Cluster)]
    evals = [e for e in events if isinstance(e, Eval)]
    assert steps and len(clusters) == 1 and len(evals) == 1 and isinstance(events[-1], RunEnd)
    state = reduce_events(events)

    # who runs where: this process on this machine (what the liveness check relies on)
    assert (state.pid, state.host) == (os.getpid(), socket.gethostname())
    # the loss parts are the ones the step carried, named as logged, and shown by those names
    parts = steps[-1].parts
    assert parts and all(name.startswith("loss_") and math.isfinite(v) for name, v in parts.items()), parts
    assert state.parts == parts and state.loss == steps[-1].loss
    title = view.loss_title(state)
    for name, value in parts.items():
        assert f"{name.removeprefix('loss_')} {value:.3f}" in title, title
    assert [y for _, y in state.loss_points] == [s.loss for s in steps]
    # clusters and evaluations as logged
    assert [c.n_clusters for c in state.clusters] == [clusters[0].n_clusters] and clusters[0].n_clusters
    assert view.cluster_text(state).plain.startswith(f"{clusters[0].n_clusters} clusters")
    assert [(r.epoch, r.mAP) for r in state.evals] == [(evals[0].epoch, evals[0].mAP)]
    assert evals[0].mAP is not None and 0.0 <= evals[0].mAP <= 1.0
    # the run ended well: finished, whatever the clock says
    assert state.status == "ok" and state.progress == 1.0
    assert update_liveness(state, (events[-1].t or 0.0) + 3600.0).status == "ok"
    assert view.eta_text(state).plain.startswith("done in")
    # 1 epoch of 3 iterations, shown 1-based everywhere
    assert view.epoch_text(state).plain == "epoch 1/1  iter 3/3"
    assert view.eval_text(state).plain.endswith("(epoch 1)")
    lines = [line.text for line in state.log]
    assert "epoch 1/1 started" in " ".join(lines) and any(t.startswith("eval epoch 1: mAP") for t in lines)
    assert any(t.startswith("run ended: ok") and t.endswith("(epoch 1)") for t in lines), lines
    assert not any("epoch 0" in t for t in lines), lines
