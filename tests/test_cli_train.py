"""``hhcl train`` through the CLI: dry runs, config errors (exit 2), a tiny real run with log.txt, resume rules."""

from __future__ import annotations

from helpers.tiny_run import TINY
from typer.testing import CliRunner

from hhcl.run.events import read_raw_events
from hhcl_tui.cli import app

runner = CliRunner()


def test_dry_run_shows_override_run_dir_and_the_checked_dataset(synth_root, tmp_path):
    result = runner.invoke(
        app, ["train", "--preset", "demo", "--root", str(synth_root), "--set", "optim.lr=0.0001", "--set",
              "data.height=64", "--set", "data.width=32", "--dry-run", "--runs-dir", str(tmp_path), "--name", "x"]
    )
    assert result.exit_code == 0, result.output
    assert "lr = 0.0001" in result.output
    assert f'root = "{synth_root}"' in result.output  # the absolute root the run would record
    assert str(tmp_path / "x") in result.output.replace("\n", "")
    # the synth_root fixture: 12 ids x 3 cameras, cached at 64x32 by prepare; junk (pid -1) files are not counted
    top = synth_root / "synthetic" / "SyntheticPeople"
    train, query, gallery = (
        len([p for p in (top / d).glob("*.jpg") if not p.name.startswith("-1_")])
        for d in ("bounding_box_train", "query", "bounding_box_test")
    )
    assert f"dataset: synthetic in {top}: train {train} images from 3 cameras; query {query}, gallery {gallery}; " \
           "cache 64x32: ready" in result.output
    assert not (tmp_path / "x").exists()


def test_dry_run_refuses_an_unprepared_dataset_with_the_prepare_command(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "market", "--root", str(tmp_path / "data"), "--dry-run",
                                 "--runs-dir", str(tmp_path / "runs"), "--name", "x"])
    assert result.exit_code == 2, result.output
    assert f"hhcl prepare market1501 --src ARCHIVE_OR_DIR --root {tmp_path / 'data'}" in result.output
    assert not (tmp_path / "runs").exists()


def test_unknown_key_exits_2_naming_it():
    result = runner.invoke(app, ["train", "--preset", "market", "--set", "optim.lrr=1", "--dry-run"])
    assert result.exit_code == 2
    assert "optim.lrr" in result.output and "optim.lr" in result.output


def test_missing_preset_and_existing_run_dir(tmp_path):
    assert runner.invoke(app, ["train", "--dry-run"]).exit_code == 2
    (tmp_path / "taken" / "checkpoints").mkdir(parents=True)
    (tmp_path / "taken" / "events.jsonl").write_text("")
    (tmp_path / "taken" / "checkpoints" / "last.safetensors").write_bytes(b"x")
    result = runner.invoke(app, ["train", "--preset", "demo", "--runs-dir", str(tmp_path), "--name", "taken"])
    assert result.exit_code == 2 and "--resume" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("mine")
    result = runner.invoke(app, ["train", "--preset", "demo", "--runs-dir", str(tmp_path), "--name", "other"])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_unprepared_dataset_names_the_prepare_command_and_the_name_can_start_again(tmp_path):
    args = ["train", "--preset", "market", "--root", str(tmp_path), "--runs-dir", str(tmp_path / "runs"),
            "--name", "m", "--set", "train.device=cpu", "--set", "model.pretrained=none"]
    for _ in range(2):  # a run that failed before its first checkpoint is no dead end: the same name starts again
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert "hhcl prepare market1501" in result.output.replace("\n", " ")
    events = read_raw_events(tmp_path / "runs" / "m")
    assert [e["type"] for e in events] == ["heartbeat", "error", "run_end"] * 2
    assert events[2]["status"] == "error" and events[2].get("resume") is None
    assert "hhcl prepare market1501" in (tmp_path / "runs" / "m" / "log.txt").read_text()
    assert not (tmp_path / "runs" / "m" / "run.lock").exists()


def test_tiny_run_writes_log_and_resume_rules(synth_root, tmp_path):
    sets = [*TINY, "model.bn_group=0", "train.iters=2", "train.epochs=1"]
    args = ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(tmp_path), "--name", "r"]
    for s in sets:
        args += ["--set", s]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "r"
    log = (run / "log.txt").read_text()
    assert "epoch 1/1:" in log and "clusters" in log and "eval epoch 1/1: mAP" in log and "run ok" in log
    assert (run / "config.toml").read_text().count("[") == 7
    refused = runner.invoke(app, ["train", "--resume", str(run), "--set", "cluster.eps=0.3"])
    assert refused.exit_code == 2 and "cluster.eps" in refused.output
    both = runner.invoke(app, ["train", "--resume", str(run), "--preset", "demo"])
    assert both.exit_code == 2
    extended = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert extended.exit_code == 0, extended.output
    assert "eval epoch 2/2: mAP" in (run / "log.txt").read_text()
