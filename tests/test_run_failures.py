"""Every way a run can fail ends the same way: an ``error`` event (what, where, what to try), ``run_end``,
the lock released, a clean exit code; and a damaged or mismatched checkpoint is refused, never used."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from helpers.tiny_run import TINY
from safetensors.torch import load_file
from typer.testing import CliRunner

from hhcl.config import load_config
from hhcl.engine import Hook, Trainer
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import read_raw_events
from hhcl_tui.cli import app

runner = CliRunner()


def tiny(root: Path, *extra: str):
    return load_config("demo", [f"data.root={root}", *TINY, "model.bn_group=8", "train.epochs=1", *extra])


def last_two(run: Path) -> list[dict]:
    return read_raw_events(run)[-2:]


def assert_recorded_error(run: Path, result, *, code: int, text: str) -> dict:
    assert result.status == "error" and result.exit_code == code, result.message
    assert text in result.message
    error, end = last_two(run)
    assert error["type"] == "error" and text in error["message"] and error["where"]
    assert end["type"] == "run_end" and end["status"] == "error"
    assert not (run / "run.lock").exists()
    return error


class Crash(Hook):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def after_step(self, trainer, epoch, it):
        raise self.error


def test_a_crashing_hook_is_recorded_with_its_traceback(synth_root, tmp_path):
    run = tmp_path / "r"
    result = Trainer(tiny(synth_root), run, hooks=[Crash(ValueError("hook broke"))]).fit()
    error = assert_recorded_error(run, result, code=1, text="ValueError: hook broke")
    assert "training (epoch 1/1, iter 1/3)" == error["where"]
    assert 'raise self.error' in error["traceback"] and "bug" in error["hint"]


def test_out_of_memory_says_what_to_lower(synth_root, tmp_path):
    run = tmp_path / "r"
    result = Trainer(tiny(synth_root), run, hooks=[Crash(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB"))]).fit()
    error = assert_recorded_error(run, result, code=1, text="out of memory")
    assert "data.batch_size" in error["hint"]


def test_a_full_disk_names_the_fix(synth_root, tmp_path):
    run = tmp_path / "r"
    full = OSError(28, "No space left on device", str(run / "checkpoints" / "x"))
    result = Trainer(tiny(synth_root), run, hooks=[Crash(full)]).fit()
    error = assert_recorded_error(run, result, code=1, text="disk is full")
    assert "free space" in error["hint"]


def corrupt_copy(synth_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the tiny dataset without its cache, with one train image overwritten by garbage."""
    root = tmp_path / "data"
    shutil.copytree(synth_root / "synthetic", root / "synthetic", ignore=shutil.ignore_patterns("cache"))
    bad = sorted((root / "synthetic" / "SyntheticPeople" / "bounding_box_train").iterdir())[5]
    bad.write_bytes(b"not a jpeg at all")
    return root, bad


@pytest.mark.parametrize("cache", ["true", "false"])
def test_a_corrupt_image_stops_the_run_naming_it_cached_or_not(synth_root, tmp_path, cache):
    root, bad = corrupt_copy(synth_root, tmp_path)
    run = tmp_path / "r"
    result = Trainer(tiny(root, f"data.cache={cache}"), run).fit()
    error = assert_recorded_error(run, result, code=1, text=str(bad))
    assert "--skip-corrupt" in error["message"]
    # where it was found: opening the dataset with a cache, the first feature extraction without one
    assert ("opening the dataset" if cache == "true" else "features") in error["where"]


@pytest.fixture(scope="module")
def finished(synth_root, tmp_path_factory) -> Path:
    """A tiny finished run to damage in different ways (each test works on its own copy)."""
    run = tmp_path_factory.mktemp("finished") / "r"
    assert Trainer(tiny(synth_root), run).fit().status == "ok"
    return run


def resume(run: Path, *overrides: str):
    return Trainer(resume_config(run, list(overrides)), run, resume=True).fit()


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def test_a_hand_edited_config_is_refused_on_resume(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("eps = 0.7", "eps = 0.55"))
    result = resume(run, "train.epochs=2")
    assert_recorded_error(run, result, code=1, text="cluster.eps: 0.7 -> 0.55")


def test_weights_and_state_from_different_saves_are_refused(finished, synth_root, tmp_path):
    run = copy_of(finished, tmp_path)
    other = tmp_path / "other"
    assert Trainer(tiny(synth_root, "train.iters=2"), other).fit().status == "ok"
    shutil.copy(other / "checkpoints" / "last.state.pt", run / "checkpoints" / "last.state.pt")
    result = resume(run, "train.epochs=2")
    assert_recorded_error(run, result, code=1, text="were not written together")


@pytest.mark.parametrize(
    "damage, text",
    [
        (lambda ck: (ck / "last.state.pt").write_bytes((ck / "last.state.pt").read_bytes()[:1000]), "truncated, corrupt"),
        (lambda ck: (ck / "last.safetensors").write_bytes(b"\x00garbage"), "truncated or corrupt"),
        (lambda ck: (ck / "last.state.pt").unlink(), "checkpoint is incomplete"),
    ],
    ids=["truncated-state", "garbage-weights", "state-missing"],
)
def test_a_damaged_checkpoint_is_refused_by_the_cli_without_a_traceback(finished, tmp_path, damage, text):
    run = copy_of(finished, tmp_path)
    damage(run / "checkpoints")
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert result.exit_code == 1 and text in result.output and "Traceback" not in result.output
    assert "continue with" not in result.output  # resuming again would fail the same way
    assert last_two(run)[-1]["status"] == "error"


def test_resume_without_a_checkpoint_starts_from_the_beginning(synth_root, tmp_path):
    run = tmp_path / "r"
    failed = Trainer(tiny(synth_root, "cluster.eps=0.0001", "cluster.min_samples=50"), run).fit()
    assert failed.status == "error" and failed.resume is None  # nothing to resume yet
    (run / "config.toml").write_text(tiny(synth_root).to_toml())  # fixed by hand: allowed, no checkpoint to guard
    result = resume(run)
    assert result.status == "ok", result.message
    start = [e for e in read_raw_events(run) if e["type"] == "run_start"][-1]
    assert start["resumed"] is False and any("from the beginning" in n for n in start["notes"])


def test_config_and_usage_errors_exit_2_before_anything_is_written(synth_root, tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, evil)  # a well-formed file...
    evil.write_bytes(evil.read_bytes().replace(b"collections", b"posix_bogus"))  # ...now naming a foreign global
    (tmp_path / "afile").write_text("")
    base = ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(tmp_path / "runs"), "--name", "x"]
    for extra, text in [
        (["--set", "train.device=cuda:5"], "cuda:5"),
        (["--set", "optim.lr=inf"], "optim.lr"),
        (["--set", "train.device=cpu", "--set", f"model.pretrained={evil}"], str(evil)),
    ]:
        sets = [a for s in (*TINY, "model.bn_group=8") for a in ("--set", s)]
        result = runner.invoke(app, [*base, *sets, *extra])
        assert result.exit_code == 2, result.output
        assert text in result.output.replace("\n", "") and "Traceback" not in result.output
    refused = runner.invoke(app, ["train", "--preset", "demo", "--runs-dir", str(tmp_path / "afile"), "--dry-run"])
    assert refused.exit_code == 2 and "is a file" in refused.output
    assert not (tmp_path / "runs" / "x" / "checkpoints").exists()
    assert not (tmp_path / "runs" / "x").exists()  # the pickle is refused before the run directory is created


class TermOnStart(Hook):
    """Sends this process SIGTERM as the run starts, as a scheduler would during a long set-up."""

    def on_event(self, event):
        if event.type == "run_start":
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_set_up_stops_before_training_and_resumes_exactly(synth_root, tmp_path):
    cfg = tiny(synth_root, "train.iters=2")
    straight = tmp_path / "straight"
    assert Trainer(cfg, straight).fit().status == "ok"
    run = tmp_path / "r"
    stopped = Trainer(cfg, run, hooks=[TermOnStart()]).fit()
    assert stopped.status == "interrupted" and stopped.exit_code == 143
    assert "stopped before epoch 1/1" in stopped.message
    assert [e["type"] for e in read_raw_events(run)][-3:] == ["run_start", "checkpoint", "run_end"]  # no step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back
    assert resume(run).status == "ok"
    a = load_file(straight / "checkpoints" / "last.safetensors")
    b = load_file(run / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
