"""Every way a run can fail ends the same way: an ``error`` event (what, where, what to try), ``run_end``,
the lock released, a clean exit code; and a damaged or mismatched checkpoint is refused, never used."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
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
    assert_recorded_error(run, result, code=2, text="cluster.eps: 0.7 -> 0.55")  # a ResumeError: the user's fix


def test_weights_and_state_from_different_saves_are_refused(finished, synth_root, tmp_path):
    run = copy_of(finished, tmp_path)
    other = tmp_path / "other"
    assert Trainer(tiny(synth_root, "train.iters=2"), other).fit().status == "ok"
    shutil.copy(other / "checkpoints" / "last.state.pt", run / "checkpoints" / "last.state.pt")
    result = resume(run, "train.epochs=2")
    assert_recorded_error(run, result, code=2, text="were not written together")


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
    # as a damaged checkpoint given to hhcl eval: the user restores the file or starts again (exit 2)
    assert result.exit_code == 2 and text in result.output and "Traceback" not in result.output
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


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "checkpoints" / "last.safetensors"), load_file(b / "checkpoints" / "last.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_during_set_up_stops_before_training_and_resumes_exactly(synth_root, tmp_path):
    cfg = tiny(synth_root, "train.iters=2")
    straight = tmp_path / "straight"
    assert Trainer(cfg, straight).fit().status == "ok"
    run = tmp_path / "r"
    stopped = Trainer(cfg, run, hooks=[TermOnStart()]).fit()
    assert stopped.status == "interrupted" and stopped.exit_code == 143
    assert "before training any step: there is no checkpoint yet" in stopped.message
    assert [e["type"] for e in read_raw_events(run)][-2:] == ["run_start", "run_end"]  # no step, no checkpoint
    assert not (run / "checkpoints" / "last.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back
    assert resume(run).status == "ok"
    assert same_weights(straight, run)


@pytest.fixture
def fault(monkeypatch):
    """Arms HHCL_FAULT for the runs this test starts in this process (the plan is read once per process)."""
    from hhcl.faults import _plan

    def arm(spec: str) -> None:
        monkeypatch.setenv("HHCL_FAULT", spec)
        _plan.cache_clear()

    yield arm
    monkeypatch.delenv("HHCL_FAULT", raising=False)
    _plan.cache_clear()


TWO_EPOCHS = ("train.iters=2", "train.epochs=2")


@pytest.fixture(scope="module")
def straight(synth_root, tmp_path_factory) -> Path:
    """The uninterrupted 2 x 2 run the stopped and resumed ones below must equal."""
    run = tmp_path_factory.mktemp("straight") / "s"
    assert Trainer(tiny(synth_root, *TWO_EPOCHS), run).fit().status == "ok"
    return run


def checkpoint_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())}


#: every start-up stage of a resume at a mid-epoch checkpoint (epoch 1, iter 2), then of one at an epoch's start
MID_EPOCH_STAGES = ("startup:open", "startup:dataset", "startup:model", "startup:checkpoint", "startup:run-start",
                    "setup:0:replay")
NEW_EPOCH_STAGES = ("setup:1:extract", "setup:1:eps", "setup:1:kNN", "setup:1:Jaccard", "setup:1:DBSCAN",
                    "setup:1:memory")


def test_a_resume_stopped_again_at_every_start_up_stage_keeps_its_checkpoint_and_resumes_exactly(
    synth_root, straight, tmp_path, fault
):
    """SLURM's ordinary case: preempted again while the requeued job starts. Each stop ends the process at that
    stage without training or writing a checkpoint; the run then finishes exactly as an uninterrupted one."""
    cfg = tiny(synth_root, *TWO_EPOCHS)
    run = tmp_path / "r"
    fault("step:0:0=term")
    first = Trainer(cfg, run).fit()
    assert first.status == "interrupted" and "after epoch 1/2 iter 1/2" in first.message
    for stages, position in ((MID_EPOCH_STAGES, "epoch 1/2 iter 2/2"), (NEW_EPOCH_STAGES, "the start of epoch 2/2")):
        for stage in stages:
            before, n_events = checkpoint_bytes(run), len(read_raw_events(run))
            fault(f"{stage}=term")
            stopped = resume(run)
            assert stopped.status == "interrupted" and stopped.exit_code == 143, (stage, stopped.message)
            assert "before training any step" in stopped.message, stage
            assert f"the checkpoint at {position} is kept" in stopped.message, (stage, stopped.message)
            assert checkpoint_bytes(run) == before, f"{stage}: the checkpoint changed"
            new = [e["type"] for e in read_raw_events(run)[n_events:]]
            assert "step" not in new and "checkpoint" not in new and new[-1] == "run_end", (stage, new)
            if stage == "setup:1:extract":  # honoured inside extraction: no clustering first
                assert "cluster" not in new
            assert not (run / "run.lock").exists()
        if stages is MID_EPOCH_STAGES:  # finish epoch 1 and stop at its end: the checkpoint is at epoch 2's start
            fault("step:0:1=term")
            assert resume(run).status == "interrupted"
    fault("")
    assert resume(run).status == "ok"
    assert same_weights(straight, run)
    assert read_raw_events(run)[-1]["status"] == "ok"


@pytest.mark.parametrize(
    "name, text",
    [
        ("../escaped", "is a path, not a name"),
        ("/tmp/hhcl-absolute-run", "is a path, not a name"),
        ("a" * 300, "300 bytes long; this file system allows 255"),
        ("two\nlines", "control character"),
        ("..", "is a path, not a name"),
    ],
    ids=["dot-dot", "absolute", "300-chars", "newline", "parent"],
)
def test_a_run_name_that_is_not_one_folder_name_is_refused(synth_root, tmp_path, name, text):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(runs),
                                 "--name", name, "--set", "train.device=cpu"])
    assert result.exit_code == 2, result.output
    assert text in result.output and "--name" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, inside --runs-dir or out of it
    assert not Path("/tmp/hhcl-absolute-run").exists()


def test_a_resume_cannot_shrink_train_epochs_below_what_was_trained(synth_root, tmp_path, fault):
    """A 2-epoch run stopped inside epoch 2 has trained into epoch 2: train.epochs=1 on resume is refused before
    anything is written (config.toml and the log stay as they were); train.epochs=2 and 3 continue it."""
    cfg = tiny(synth_root, *TWO_EPOCHS)
    run = tmp_path / "r"
    fault("step:1:0=term")
    assert Trainer(cfg, run).fit().status == "interrupted"
    fault("")
    config, log = (run / "config.toml").read_bytes(), (run / "events.jsonl").read_bytes()
    refused = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=1"])
    assert refused.exit_code == 2, refused.output
    assert "train.epochs = 1 is fewer than this run has already trained" in refused.output
    assert "train.epochs >= 2" in refused.output
    assert (run / "config.toml").read_bytes() == config and (run / "events.jsonl").read_bytes() == log
    # the engine refuses it too (a checkpoint whose weights do not record their position), config untouched
    result = Trainer(resume_config(run, ["train.epochs=1"]), run, resume=True).fit()
    assert result.status == "error" and result.exit_code == 2 and "fewer than this run" in result.message
    assert (run / "config.toml").read_bytes() == config
    assert resume(run, "train.epochs=2").status == "ok"


def test_a_resume_on_a_read_only_file_system_is_refused_with_the_fix(synth_root, tmp_path):
    """A run directory on a read-only mount (a copied result share, a snapshot): a clear refusal, exit 2, no
    traceback. A real read-only bind mount (root only; skipped elsewhere)."""
    import subprocess

    run = tmp_path / "rw" / "r"
    assert Trainer(tiny(synth_root, "train.iters=2", "train.epochs=1"), run).fit().status == "ok"
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "rw"), str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here: {mounted.stderr.decode().strip()}")
    try:
        if os.access(ro / "r", os.W_OK) and not _really_read_only(ro / "r"):
            pytest.skip("the bind mount is writable here")
        result = runner.invoke(app, ["train", "--resume", str(ro / "r"), "--set", "train.epochs=2"])
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert result.exit_code == 2, result.output
    assert "Read-only file system" in result.output and "cp -r" in result.output
    assert "Traceback" not in result.output


def _really_read_only(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return True
    (folder / ".probe").unlink()
    return False


def test_a_stop_while_the_image_cache_is_built_ends_after_that_chunk_and_the_build_resumes(
    synth_root, tmp_path, fault, monkeypatch
):
    """At Market scale the first run decodes tens of thousands of images: a SIGTERM then ends the run after the
    chunk being decoded (not after the whole cache, the clustering and a step), and the next start continues the
    cache from that chunk; the finished cache equals one built in one go."""
    from hhcl.data import store

    root = tmp_path / "data"
    shutil.copytree(synth_root / "synthetic", root / "synthetic", ignore=shutil.ignore_patterns("cache"))
    monkeypatch.setattr(store, "CHUNK", 8)
    run = tmp_path / "r"
    fault("startup:cache-chunk=term")
    stopped = Trainer(tiny(root, "train.iters=2"), run).fit()
    assert stopped.status == "interrupted" and stopped.exit_code == 143, stopped.message
    assert "stopped while building the image cache (it resumes where it stopped), before training any step" in stopped.message
    part = next((root / "synthetic" / "cache").glob("train_*.partial.json"))
    assert json.loads(part.read_text())["done"] == 8  # one chunk, then the stop
    fault("")
    assert resume(run).status == "ok"
    built, fresh = (np.load(p / "synthetic" / "cache" / "train_64x32.npy") for p in (root, synth_root))
    assert np.array_equal(built, fresh)


def test_a_stop_during_the_evaluation_keeps_the_trained_epoch_and_evaluates_it_on_resume(
    synth_root, straight, tmp_path, fault
):
    """At Market scale an evaluation extracts ~19k query and gallery crops: a SIGTERM then ends the run after the
    current batch, with the epoch's training kept (a checkpoint at its last iteration); the resume evaluates it,
    and the run ends with the uninterrupted run's weights, mAP and best epoch."""
    cfg = tiny(synth_root, *TWO_EPOCHS)
    run = tmp_path / "r"
    fault("eval:1:gallery=term")
    stopped = Trainer(cfg, run).fit()
    assert stopped.status == "interrupted" and stopped.exit_code == 143
    assert "stopped after epoch 2/2 iter 2/2 with a checkpoint; its evaluation runs on resume" in stopped.message
    assert "eval" not in [e["type"] for e in read_raw_events(run)]  # cut short: no result was recorded
    fault("")
    assert resume(run).status == "ok"
    assert same_weights(straight, run)
    evals = [[e for e in read_raw_events(r) if e["type"] == "eval"] for r in (straight, run)]
    assert len(evals[1]) == 1 and evals[1][0]["mAP"] == evals[0][-1]["mAP"] and evals[1][0]["epoch"] == 1
    ends = [read_raw_events(r)[-1] for r in (straight, run)]
    assert ends[1]["best_mAP"] == ends[0]["best_mAP"] and ends[1]["best_epoch"] == ends[0]["best_epoch"]
