"""Every file and folder hhcl writes has the mode a plain ``open``/``mkdir`` gives under the user's umask.

Was: everything written atomically (checkpoints, config, events' neighbours, PNGs, .onnx, .npy, clusters.json,
the wizard's TOML) was 0600, since ``tempfile.mkstemp`` makes private files and ``os.replace`` keeps that mode.
The commands run in this process under a umask set here (and restored): 022 must give 0644 files and 0755
folders, 077 must give 0600 and 0700.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tiny_run import TINY
from typer.testing import CliRunner

from hhcl.atomic import atomic_write_bytes, make_tmp_dir, write_tmp
from hhcl_tui.cli import app
from hhcl_tui.wizard import WizardForm

runner = CliRunner()


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Set the process umask to the test's parameter for the test's duration."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def wrong_modes(top: Path, mask: int) -> list[str]:
    """Every file and folder under ``top`` (not ``top`` itself) whose permission bits differ from what ``open``
    (0o666) and ``mkdir`` (0o777) give under ``mask``, as 'path: mode'."""
    want = {True: 0o777 & ~mask, False: 0o666 & ~mask}
    wrong = []
    for path in sorted(top.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = stat.S_IMODE(info.st_mode)
        if mode != want[stat.S_ISDIR(info.st_mode)]:
            wrong.append(f"{path.relative_to(top)}: {oct(mode)}")
    return wrong


def invoke(*args: str) -> None:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"hhcl {' '.join(args)}:\n{result.output}"


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True)
def test_every_command_writes_files_with_the_umask_mode(umask: int, tmp_path: Path) -> None:
    root, runs, out = tmp_path / "data", tmp_path / "runs", tmp_path / "out"
    invoke("prepare", "synthetic", "--root", str(root), "--ids", "12", "--cams", "3", "--seed", "3",
           "--height", "64", "--width", "32", "--no-progress")
    sets = [*TINY, "model.bn_group=0", "train.iters=2", "train.epochs=1", "train.tensorboard=true"]
    invoke("train", "--preset", "demo", "--root", str(root), "--runs-dir", str(runs), "--name", "r",
           *[arg for s in sets for arg in ("--set", s)])
    run = runs / "r"
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.pt"), ("safetensors", "m.safetensors")):
        invoke("export", str(run), "--format", fmt, "--out", str(out / name))
    people = root / "synthetic" / "SyntheticPeople"
    query = sorted((people / "query").glob("*.jpg"))[0]
    invoke("embed", str(run), str(people / "query"), "--out", str(out / "query.npy"))
    invoke("clusters", str(run), "--out", str(out / "sheets"))
    invoke("eval", str(run), "--json", str(out / "eval.json"), "--ranklist", "2", "--out", str(out / "ranks"),
           "--num-queries", "1", "--device", "cpu")
    invoke("search", str(run), "--gallery", str(people / "bounding_box_test"), "--query", str(query),
           "--out", str(out / "search"), "--top", "2", "--device", "cpu")
    invoke("tensorboard", str(run), "--out", str(out / "tb"))
    invoke("tensorboard", str(run), "--out", str(out / "tb"))  # again: the earlier export is replaced
    WizardForm("demo", root).save(out / "wizard" / "mine.toml")

    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    for expected in ("runs/r/config.toml", "runs/r/events.jsonl", "runs/r/checkpoints/last.safetensors",
                     "runs/r/checkpoints/last.state.pt", "runs/r/labels/epoch_001.npy", "out/m.onnx", "out/m.pt",
                     "out/m.safetensors", "out/query.npy", "out/query.txt", "out/sheets/clusters.json",
                     "out/sheets/sizes.png", "out/eval.json", "out/search/results.json", "out/wizard/mine.toml"):
        assert expected in written, f"{expected} was not written: the check below would miss it"
    assert any(p.startswith("out/ranks/") and p.endswith(".png") for p in written)
    assert any(p.startswith("out/tb/") and "tfevents" in p for p in written)
    assert any(p.startswith("runs/r/tensorboard/") for p in written)
    assert wrong_modes(tmp_path, umask) == []


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True)
def test_atomic_writers_follow_the_umask(umask: int, tmp_path: Path) -> None:
    """The writers themselves, for a file that replaces an older private one: the new file gets the mode a new
    file gets, as ``open`` would give it; a temporary folder gets ``mkdir``'s."""
    old = tmp_path / "out" / "file.bin"
    old.parent.mkdir()
    old.write_bytes(b"old")
    old.chmod(0o600)
    atomic_write_bytes(old, b"new")
    assert stat.S_IMODE(old.stat().st_mode) == 0o666 & ~umask
    tmp = write_tmp(tmp_path / "out" / "other.bin", b"x")
    assert tmp.name.startswith(".other.bin.") and tmp.name.endswith(".tmp")
    folder = make_tmp_dir(tmp_path / "out" / "tb")
    assert folder.name.startswith(".tb.") and folder.is_dir() and not any(folder.iterdir())
    assert wrong_modes(tmp_path / "out", umask) == []
