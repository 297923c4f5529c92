"""Paths the CLI prints stay whole on one line when its output is piped (a log, grep): a real ``hhcl`` process
with a narrow COLUMNS must neither wrap a long path nor read ``[x]`` in it as Rich markup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.data_fixtures import make_market


def run_hhcl(*args: str) -> subprocess.CompletedProcess:
    """``python -m hhcl ARGS`` with stdout and stderr piped and a 40-column terminal width."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
    }
    env.update(COLUMNS="40", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "hhcl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def long_path(tmp_path: Path, name: str) -> Path:
    """A path of more than 150 characters with a ``[bracket]`` in the middle."""
    path = tmp_path / ("a" * 60) / "[x]" / ("b" * 70) / name
    assert len(str(path)) > 150
    return path


def test_a_missing_config_path_prints_whole_on_one_line(tmp_path: Path) -> None:
    missing = long_path(tmp_path, "missing.toml")
    result = run_hhcl("presets", "show", str(missing))
    assert result.returncode == 2
    assert f"error: config file '{missing}' does not exist" in result.stderr.splitlines()[0]


def test_prepare_errors_print_paths_whole(tmp_path: Path) -> None:
    missing = long_path(tmp_path, "market.zip")
    result = run_hhcl("prepare", "market1501", "--src", str(missing), "--root", str(tmp_path / "data"))
    assert result.returncode == 2
    assert f"error: --src {missing} does not exist" in result.stderr.splitlines()[0]


def test_prepare_lists_each_corrupt_file_whole_on_its_own_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_market(src / "Market-1501-v15.09.15")
    names = ["0002_c1s1_000451_03.jpg", "0011_c5s1_000020_01.jpg"]
    for name in names:
        (src / "Market-1501-v15.09.15" / "bounding_box_train" / name).write_bytes(b"garbage, not a jpeg")
    root = long_path(tmp_path, "data")
    size = ("--height", "16", "--width", "8")
    result = run_hhcl("prepare", "market1501", "--src", str(src), "--root", str(root), *size, "--no-progress")
    assert result.returncode == 1, result.stderr
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0] == "error: 2 corrupt image(s):"
    top = root / "market1501" / "Market-1501-v15.09.15" / "bounding_box_train"
    assert lines[1:3] == [str(top / name) for name in names]
    assert f"`hhcl prepare market1501 --root {root} --skip-corrupt`" in lines[3]
    skipped = run_hhcl("prepare", "market1501", "--root", str(root), *size, "--skip-corrupt", "--no-progress")
    assert skipped.returncode == 0, skipped.stderr
    warnings = [line for line in skipped.stderr.splitlines() if line.startswith("warning: skipped")]
    assert warnings == [f"warning: skipped corrupt image {top / name}" for name in names]
    assert f"cache: {root / 'market1501' / 'cache' / 'train_16x8.npy'}, " in skipped.stdout
