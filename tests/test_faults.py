"""Crash consistency with real processes: training runs killed (SIGKILL, SIGTERM, SIGINT twice, a full disk)
at chosen points, inside checkpoint writes included, then resumed. Each resumed run must end with exactly
the weights of an uninterrupted run, or be refused with a message; the log ends with ``run_end`` wherever
the process could still write one. The moment is picked with ``HHCL_FAULT`` (:mod:`hhcl.faults`).
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
from helpers.terminal import Terminal
from helpers.tiny_run import PROCESS_TINY
from safetensors.torch import load_file

from hhcl.run.events import read_events, read_raw_events
from hhcl_tui.dashboard.state import reduce_events, update_liveness
from hhcl_tui.dashboard.view import eta_text, status_label

TINY = ["data.height=32", "data.width=32", *PROCESS_TINY, "train.epochs=2", "train.eval_every=2"]
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
    assert f"({tmp_path / 'r' / 'checkpoints' / 'last.state.pt'})" in full.stderr  # the file it could not write
    end = read_raw_events(tmp_path / "r")[-2:]
    assert [e["type"] for e in end] == ["error", "run_end"] and end[1]["status"] == "error"
    no_leftovers(tmp_path / "r")
    resumed = run(train_cmd(data_root, tmp_path, "r", "train.epochs=2", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight, tmp_path / "r")


def checkpoint_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "checkpoints").iterdir())}


#: start-up stages of a resume at a mid-epoch checkpoint, then of one at an epoch's start (every one of them is
#: covered in-process by tests/test_run_failures.py; here real processes get SIGTERM at a representative few)
RESUME_STAGES = {
    "representative": (("startup:checkpoint",), ("setup:1:extract",)),
    "every-stage": (
        ("startup:open", "startup:dataset", "startup:model", "startup:checkpoint", "startup:run-start", "setup:0:replay"),
        ("setup:1:extract", "setup:1:eps", "setup:1:kNN", "setup:1:Jaccard", "setup:1:DBSCAN", "setup:1:memory"),
    ),
}


@pytest.mark.parametrize(
    "which", ["representative", pytest.param("every-stage", marks=pytest.mark.slow)]
)
def test_a_resume_stopped_again_during_start_up_resumes_exactly(data_root, straight, tmp_path, which):
    """Preempted mid-epoch, then preempted again while the requeued job starts up: each such stop exits 143 at that
    stage with the checkpoint untouched (before: it was overwritten without the epoch's labels and memory, and
    the run silently retrained part of an epoch); the run then ends with the uninterrupted run's weights."""
    first = run(train_cmd(data_root, tmp_path, "r"), "step:0:0=term")
    assert first.returncode == 143, first.stderr
    mid_epoch, new_epoch = RESUME_STAGES[which]
    for stages, position in ((mid_epoch, "epoch 1/2 iter 2/2"), (new_epoch, "the start of epoch 2/2")):
        for stage in stages:
            before, n_events = checkpoint_files(tmp_path / "r"), len(read_raw_events(tmp_path / "r"))
            stopped = run(train_cmd(data_root, tmp_path, "r", resume=True), f"{stage}=term")
            assert stopped.returncode == 143, (stage, stopped.stdout, stopped.stderr)
            assert f"before training any step: the checkpoint at {position} is kept" in stopped.stdout, stage
            assert "Traceback" not in stopped.stdout + stopped.stderr
            assert checkpoint_files(tmp_path / "r") == before, f"{stage}: the checkpoint changed"
            new = [e["type"] for e in read_raw_events(tmp_path / "r")[n_events:]]
            assert "step" not in new and "checkpoint" not in new and new[-1] == "run_end", (stage, new)
            no_leftovers(tmp_path / "r")
        if stages is mid_epoch:  # finish epoch 1, stopped at its last step: the checkpoint is at epoch 2's start
            assert run(train_cmd(data_root, tmp_path, "r", resume=True), "step:0:1=term").returncode == 143
    resumed = run(train_cmd(data_root, tmp_path, "r", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight, tmp_path / "r")


def test_sighup_from_a_closed_terminal_checkpoints_and_resumes_exactly(data_root, straight, tmp_path):
    """The terminal (or tmux pane) running the training is closed: the kernel hangs up its pty and sends SIGHUP.
    The run finishes its step, checkpoints, records run_end and releases the lock (exit 129); its output from then
    on goes to log.txt only. Before: killed at once, no checkpoint, no run_end, lock left."""
    env = {**{k: v for k, v in os.environ.items() if k != "HHCL_FAULT"}, "HHCL_FAULT": "step:0:0=stop"}
    terminal = Terminal(train_cmd(data_root, tmp_path, "r"), env=env)
    proc = terminal.process
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # frozen at its first step, like a user looking away
        assert os.WIFSTOPPED(status)
        terminal.close()  # the terminal window is closed: SIGHUP (and SIGCONT) to the session
        os.kill(proc.pid, signal.SIGCONT)
        code = proc.wait(timeout=TIMEOUT)
    finally:
        terminal.kill()
    assert code == 129, terminal.output()[-2000:]
    end = read_raw_events(tmp_path / "r")[-1]
    # the hang-up reaches the process as it continues: it stops after that step or, if the step was the epoch's
    # last by then, after the epoch
    assert end["type"] == "run_end" and end["status"] == "interrupted" and "with a checkpoint" in end["message"]
    assert end["message"] in (tmp_path / "r" / "log.txt").read_text()
    no_leftovers(tmp_path / "r")
    resumed = run(train_cmd(data_root, tmp_path, "r", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(straight, tmp_path / "r")


def test_a_lock_left_by_a_dead_pid_1_is_taken_over(data_root, straight, tmp_path):
    """A container's training process is pid 1; killed, it leaves run.lock naming pid 1, which always runs (the
    next container's process, or here the host's init). The lock names the process's start time too, so the
    resume takes it over and the monitor calls the run stopped. Run for real as pid 1 of a new pid namespace."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a pid namespace here (unshare: {probe.stderr.decode().strip()})")
    # pid 1 of a namespace cannot stop itself with a signal: it hangs at epoch 2's first step, holding the lock
    env = {**os.environ, "HHCL_FAULT": "step:1:0=hang", "COLUMNS": "200"}
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", *train_cmd(data_root, tmp_path, "r")]
    ns = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        log = tmp_path / "r" / "events.jsonl"
        while not (log.exists() and any(e["type"] == "step" and e.get("epoch") == 1 for e in read_raw_events(log))):
            assert time.time() < deadline and ns.poll() is None, "the pid-1 run never reached epoch 2"
            time.sleep(0.2)
        assert '"pid": 1,' in (tmp_path / "r" / "run.lock").read_text()  # written by pid 1 of its namespace
    finally:
        os.killpg(ns.pid, signal.SIGKILL)  # the container is killed: its pid 1 dies with the lock held
        ns.wait()
    assert (tmp_path / "r" / "run.lock").exists()
    shown = update_liveness(reduce_events(read_events(tmp_path / "r")), time.time())
    assert status_label(shown) == "stopped (process gone, no run_end)"  # not "running": pid 1 here is another process
    resumed = run(train_cmd(data_root, tmp_path, "r", resume=True))
    assert resumed.returncode == 0, resumed.stderr
    assert "took over the lock of pid 1 " in (tmp_path / "r" / "log.txt").read_text()
    assert_same_weights(straight, tmp_path / "r")
