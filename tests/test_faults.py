"""Crash consistency with real processes: training runs killed (SIGKILL, SIGTERM, SIGINT twice, a full disk)
at chosen points, inside checkpoint writes included, then resumed. Each resumed run must end with exactly
the weights of an uninterrupted run, or be refused with a message; the log ends with ``run_end`` wherever
the process could still write one. The moment is picked with ``HHCL_FAULT`` (:mod:`hhcl.run.faults`).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hhcl.run.events import read_events, read_raw_events
from hhcl_tui.dashboard.state import reduce_events, update_liveness
from hhcl_tui.dashboard.view import eta_text, status_label

TINY = [
    "data.height=32",
    "data.width=32",
    "data.batch_size=16",
    "data.num_instances=4",
    "model.bn_group=8",
    "cluster.k1=8",
    "cluster.k2=3",
    "cluster.eps=0.7",
    "cluster.min_samples=3",
    "train.iters=2",
    "train.epochs=2",
    "train.eval_every=2",
    "train.device=cpu",
]
TIMEOUT = 300


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tiny synthetic people cached at 32x32 for these runs."""
    from hhcl.data import prepare_synthetic

    root = tmp_path_factory.mktemp("fault-data")
    prepare_synthetic(root, ids=12, cams=3, seed=3, height=32, width=32, progress=False)
    return root


def train_cmd(root: Path, runs: Path, name: str, *extra: str, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "hhcl", "train", "--root", str(root)]
    if resume:
        args += ["--resume", str(runs / name)]
    else:
        args += ["--preset", "demo", "--runs-dir", str(runs), "--name", name]
        for item in TINY:
            args += ["--set", item]
    for item in extra:
        args += ["--set", item]
    return args


def run(cmd: list[str], fault: str | None = None, fsize: int | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HHCL_FAULT"}
    env["COLUMNS"] = "200"
    if fault:
        env["HHCL_FAULT"] = fault

    def limit() -> None:  # a real "disk full": writes past fsize bytes fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=limit if fsize else None
    )


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "last.safetensors")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"


def types(run_dir: Path) -> list[str]:
    return [e["type"] for e in read_raw_events(run_dir)]


def no_leftovers(run_dir: Path) -> None:
    ckpts = run_dir / "checkpoints"
    left = [p.name for p in ckpts.iterdir() if p.name.endswith(".tmp") or p.name == "last.commit"] if ckpts.exists() else []
    assert not left and not (run_dir / "run.lock").exists(), left


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must equal."""
    runs = tmp_path_factory.mktemp("straight")
    done = run(train_cmd(data_root, runs, "s"))
    assert done.returncode == 0, done.stderr
    assert types(runs / "s")[-1] == "run_end"
    return runs / "s"


@pytest.mark.parametrize(
    "fault, notes",
    [
        # killed after the new weights were written, before the commit: the previous pair is kept
        ("checkpoint:2:0:weights-written=kill", "unfinished temporary"),
        # killed between the two renames (new weights beside the old state): the commit is rolled forward
        ("checkpoint:2:0:weights-renamed=kill", "completed a checkpoint"),
        # killed half-way through the first state file ever written: nothing to resume, start from scratch
        ("write:last.state.pt:half=kill", "unfinished temporary"),
    ],
)
def test_sigkill_inside_a_checkpoint_write_resumes_exactly(data_root, straight, tmp_path, fault, notes):
    killed = run(train_cmd(data_root, tmp_path, "r"), fault)
    assert killed.returncode == -signal.SIGKILL
    assert "run_end" not in types(tmp_path / "r")  # SIGKILL: nothing could be written
    assert (tmp_path / "r" / "run.lock").exists()  # ... not even the lock's release
    shown = update_liveness(reduce_events(read_events(tmp_path / "r")), time.time())
    assert status_label(shown) == "stopped (process gone, no run_end)" and eta_text(shown).plain.startswith("ETA --")
    resumed = run(train_cmd(data_root, tmp_path, "r", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert notes in (tmp_path / "r" / "log.txt").read_text()
    assert_same_weights(straight, tmp_path / "r")
    events = read_raw_events(tmp_path / "r")
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "ok"
    assert sum(e["type"] == "run_start" for e in events) == 2  # the killed run's torn tail did not swallow it
    no_leftovers(tmp_path / "r")


@pytest.mark.parametrize("fault, code", [("step:1:0=term", 143), ("step:1:0=int2", 130)])
def test_sigterm_and_a_second_ctrl_c_end_the_log_and_resume_exactly(data_root, straight, tmp_path, fault, code):
    stopped = run(train_cmd(data_root, tmp_path, "r"), fault)
    assert stopped.returncode == code, stopped.stderr
    assert f"hhcl train --resume {tmp_path / 'r'}" in stopped.stdout
    assert "Traceback" not in stopped.stderr + stopped.stdout
    end = read_raw_events(tmp_path / "r")[-1]
    assert end["type"] == "run_end" and end["status"] == "interrupted"
    assert end["resume"] == f"hhcl train --resume {tmp_path / 'r'}"
    if code == 130:  # the second Ctrl-C stops at once, without a new checkpoint
        assert "stopped at once" in end["message"]
    resumed = run(train_cmd(data_root, tmp_path, "r", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight, tmp_path / "r")
    no_leftovers(tmp_path / "r")


def test_a_live_run_is_not_written_twice_and_a_dead_ones_lock_is_taken_over(data_root, straight, tmp_path):
    env = {**os.environ, "HHCL_FAULT": "step:1:0=stop"}
    frozen = subprocess.Popen(train_cmd(data_root, tmp_path, "r"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(frozen.pid, os.WUNTRACED)  # returns once the run stopped itself at the step
        assert os.WIFSTOPPED(status)
        for cmd in (train_cmd(data_root, tmp_path, "r", resume=True), train_cmd(data_root, tmp_path, "r")):
            refused = run(cmd)
            assert refused.returncode == 2
            assert f"pid {frozen.pid} on host {socket.gethostname()}" in refused.stderr
            assert "Traceback" not in refused.stderr
        before = (tmp_path / "r" / "events.jsonl").read_bytes()
    finally:
        frozen.kill()
        frozen.wait()
    assert (tmp_path / "r" / "events.jsonl").read_bytes() == before  # the refused runs wrote nothing
    resumed = run(train_cmd(data_root, tmp_path, "r", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert f"took over the lock of pid {frozen.pid}" in (tmp_path / "r" / "log.txt").read_text()
    assert_same_weights(straight, tmp_path / "r")


def test_a_full_disk_keeps_the_previous_checkpoint(data_root, straight, tmp_path):
    first = run(train_cmd(data_root, tmp_path, "r", "train.epochs=1"))
    assert first.returncode == 0, first.stderr
    size = (tmp_path / "r" / "checkpoints" / "last.safetensors").stat().st_size
    # the weights still fit, the (twice larger) optimizer state does not: a disk that fills up mid-checkpoint
    full = run(train_cmd(data_root, tmp_path, "r", "train.epochs=2", resume=True), fsize=size + size // 2)
    assert full.returncode == 1, full.stderr
    assert "disk is full" in full.stderr and "Traceback" not in full.stderr
    end = read_raw_events(tmp_path / "r")[-2:]
    assert [e["type"] for e in end] == ["error", "run_end"] and end[1]["status"] == "error"
    no_leftovers(tmp_path / "r")
    resumed = run(train_cmd(data_root, tmp_path, "r", "train.epochs=2", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight, tmp_path / "r")
