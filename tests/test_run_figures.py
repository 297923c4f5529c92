"""The figures a run shows at its end are true: no "best mAP 0.0% (epoch 0)" for a run that never evaluated, the
whole time of a resumed run, what an unlabelled run could not evaluate, and a resume of a finished run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from helpers.tiny_run import TINY
from typer.testing import CliRunner

from hhcl.config import load_config
from hhcl.engine import Hook, Trainer
from hhcl.run.events import RunEnd, RunStart, read_events, read_raw_events
from hhcl_tui.cli import app
from hhcl_tui.dashboard.state import reduce_events
from hhcl_tui.dashboard.view import eta_text, eval_text

runner = CliRunner()


def train(synth_root: Path, runs: Path, *extra: str):
    sets = [a for s in (*TINY, "model.bn_group=8", "train.iters=2", *extra) for a in ("--set", s)]
    return runner.invoke(app, ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(runs),
                               "--name", "r", *sets])


class TermOnStart(Hook):
    """SIGTERM to this process as the run starts: it ends before any evaluation."""

    def on_event(self, event):
        if event.type == "run_start":
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_run_that_never_evaluated_claims_no_best_map(synth_root, tmp_path):
    """Before, a run that ended before any evaluation said "best mAP 0.0% (epoch 0)" in its log, the terminal and
    the dashboard; its run_end now carries no best figure at all, and the dashboard says it was not evaluated."""
    cfg = load_config("demo", [f"data.root={synth_root}", *TINY, "model.bn_group=8"])
    run = tmp_path / "r"
    assert Trainer(cfg, run, hooks=[TermOnStart()]).fit().status == "interrupted"
    end = read_raw_events(run)[-1]
    assert end["type"] == "run_end" and "best_mAP" not in end and "best_epoch" not in end
    state = reduce_events(read_events(run))
    assert state.best_map is None and all("best mAP" not in line.text for line in state.log)
    assert eval_text(state).plain == "not evaluated"
    # an older log's 0.0 / -1 reads the same way
    old = reduce_events([RunStart(t=1.0, run="x", n_query=5, n_gallery=9, epochs=2, iters=2),
                         RunEnd(t=2.0, status="ok", best_mAP=0.0, best_epoch=-1, elapsed=1.0)])
    assert old.best_map is None and all("0.0%" not in line.text for line in old.log)


def test_a_resumed_run_is_done_in_its_whole_span_with_its_last_process_beside(tmp_path):
    """Started at t=1000, stopped at 1010, resumed at 1200 and finished at 1300: +5:00 in its log, 1:40 in its
    last process. Before, "done in 1:40"."""
    state = reduce_events([
        RunStart(t=1000.0, run="x", epochs=2, iters=2, start_epoch=0, start_iter=0),
        RunEnd(t=1010.0, status="interrupted", elapsed=10.0),
        RunStart(t=1200.0, run="x", epochs=2, iters=2, start_epoch=1, start_iter=0, resumed=True),
        RunEnd(t=1300.0, status="ok", elapsed=100.0),
    ])
    assert eta_text(state).plain == "done in 5:00 (last process 1:40)"
    single = reduce_events([RunStart(t=1000.0, run="x", epochs=2, iters=2), RunEnd(t=1100.0, status="ok", elapsed=100.0)])
    assert eta_text(single).plain == "done in 1:40"


def test_an_unlabelled_run_says_why_it_has_no_evaluation():
    state = reduce_events([RunStart(t=1.0, run="x", n_query=0, n_gallery=0, epochs=1, iters=2),
                           RunEnd(t=2.0, status="ok", elapsed=1.0)])
    assert eval_text(state).plain == "no evaluation: no labelled query/gallery set"


def test_resuming_a_finished_run_says_there_is_nothing_to_train(synth_root, tmp_path):
    """Before: "resumed at epoch 3 iter 1" of a 2-epoch run."""
    assert train(synth_root, tmp_path, "train.epochs=2").exit_code == 0
    again = runner.invoke(app, ["train", "--resume", str(tmp_path / "r")])
    assert again.exit_code == 0, again.output
    text = " ".join(again.output.split())
    assert "resumed after the last of its 2 epochs: nothing to train" in text and "epoch 3" not in text
    assert [e.type for e in read_events(tmp_path / "r")][-1] == "run_end"
