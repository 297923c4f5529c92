"""Errors that a resume would meet again (the run is deterministic from its checkpoint) never suggest
``--resume`` or "the same command": they print a ready command for a new run that gets past them."""

from __future__ import annotations

import shlex

from helpers.tiny_run import TINY
from typer.testing import CliRunner

from hhcl.data.sampler import batch_that_fits
from hhcl.run.events import read_raw_events
from hhcl_tui.cli import app

runner = CliRunner()


def test_batch_that_fits_by_hand():
    # 56 images a pass, 8 per cluster: 56 is itself a multiple; ghost BN 32 does not divide it -> 28
    assert batch_that_fits(56, 8, 32) == {"data.batch_size": 56, "model.bn_group": 28}
    assert batch_that_fits(60, 8, 0) == {"data.batch_size": 56}
    assert batch_that_fits(64, 4, 32) == {"data.batch_size": 64}
    assert batch_that_fits(15, 8, 0) is None  # fewer than two clusters' worth: no batch helps


def printed_command(output: str) -> list[str]:
    """The new-run command in the error message (printed whole on its line), as CLI arguments."""
    line = next(line for line in output.splitlines() if "hhcl train --preset" in line)
    return shlex.split(line[line.index("hhcl train --preset"):].split(";")[0])[1:]


def test_clusters_that_cannot_fill_a_batch_print_a_new_run_that_works(synth_root, tmp_path):
    """The own-cameras first run: the first clustering leaves too few clusters for the batch. Before: "continue
    with: hhcl train --resume", which failed the same way, and a resume may not change the batch. Now: the new-run
    command with a batch the clusters fill, which trains."""
    runs = tmp_path / "runs"
    sets = [a for s in (*TINY, "model.bn_group=8", "data.batch_size=64", "train.iters=2", "train.epochs=1")
            for a in ("--set", s)]
    first = runner.invoke(app, ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(runs),
                                "--name", "r", *sets])
    assert first.exit_code == 1, first.output
    out = " ".join(first.output.split())
    assert "but a batch needs 64" in out and "A new run with a batch these clusters fill:" in out
    assert "--resume" not in out and "same command" not in out
    assert "resume" not in read_raw_events(runs / "r")[-1]  # the run_end names no resume command either
    cmd = printed_command(first.output)
    assert cmd[:3] == ["train", "--preset", str(runs / "r" / "config.toml")] and "--name" in cmd
    assert cmd[cmd.index("--name") + 1] == "r-2"
    fixed = runner.invoke(app, cmd)
    assert fixed.exit_code == 0, fixed.output
    assert read_raw_events(runs / "r-2")[-1]["status"] == "ok"


def test_no_clusters_at_all_prints_a_new_run_with_a_larger_eps(synth_root, tmp_path):
    runs = tmp_path / "runs"
    sets = [a for s in (*TINY, "model.bn_group=8", "cluster.eps=0.0001", "cluster.min_samples=50", "train.epochs=1") for a in ("--set", s)]
    first = runner.invoke(app, ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(runs),
                                "--name", "r", *sets])
    assert first.exit_code == 1, first.output
    out = " ".join(first.output.split())
    assert "found no clusters" in out and "--resume" not in out and "same command" not in out
    cmd = printed_command(first.output)
    assert "cluster.eps=0.1" in cmd


def test_dry_run_states_what_the_batch_needs_and_refuses_one_no_clustering_can_fill(synth_root, tmp_path):
    """`--dry-run` cannot cluster, but it can say what each clustering must find, and refuse a batch that no
    clustering of these images could fill (before: accepted, then the run failed at its first clustering)."""
    base = ["train", "--preset", "demo", "--root", str(synth_root), "--runs-dir", str(tmp_path), "--name", "d",
            "--set", "train.device=cpu", "--dry-run"]
    ok = runner.invoke(app, base)
    assert ok.exit_code == 0, ok.output
    # the synthetic set has 53 train images; the demo batch is 64 = 16 clusters x 4
    assert "a batch of 64 = 16 clusters x 4 images: every clustering of the 53 train images must find at least 16 " \
           "clusters of 2+ images" in " ".join(ok.output.split())
    big = runner.invoke(app, [*base, "--set", "data.batch_size=256", "--set", "data.num_instances=4",
                              "--set", "model.bn_group=0"])
    assert big.exit_code == 2, big.output
    out = " ".join(big.output.split())
    assert "53 images form at most 26 clusters of 2+ images: use a smaller batch (--set data.batch_size=52)" in out
    assert not (tmp_path / "d").exists()
