"""A full disk and oversized settings end with a message, never a crash: real processes on a real full filesystem
(a few-MB tmpfs, skipped where mounting is not permitted) and under ``ulimit -f`` (always), in-process checks of
the free-space arithmetic with a patched ``shutil.disk_usage``, and the config bounds on the command line.

Before these fixes an image cache built in a full filesystem died of SIGBUS (exit 135) in its sparse memory map,
leaving no message, no ``run_end`` and the run's lock; ``data.height=6400000`` passed validation and ``--dry-run``;
a 20-digit seed and a 10**9-wide embedding failed deep in the run as "a bug" or "out of memory".
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_run import PROCESS_TINY
from typer.testing import CliRunner

from hhcl.config import load_config
from hhcl.data import build_dataset, load_image, prepare_synthetic
from hhcl.data.store import build_cache, cache_paths, read_cache_index
from hhcl.run.events import read_raw_events
from hhcl_tui.cli import app

TINY = [*PROCESS_TINY, "train.epochs=1"]
BIG = ["--height", "256", "--width", "128"]  # a cache of ~100 kB per image: megabytes for the tiny dataset
TIMEOUT = 300


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Tiny synthetic people (12 ids x 3 cameras), cached at 32x32, to copy elsewhere without their cache."""
    root = tmp_path_factory.mktemp("disk-data")
    prepare_synthetic(root, ids=12, cams=3, seed=3, height=32, width=32, progress=False)
    return root


def copy_dataset(images: Path, root: Path) -> Path:
    """The dataset's images and manifest under data root ``root`` (no cache: a run must build it)."""
    shutil.copytree(images / "synthetic", root / "synthetic", ignore=shutil.ignore_patterns("cache"))
    return root


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (mount's size=, e.g. 2m) mounted at ``folder``; skips where not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}); the ulimit -f variant "
                    "of this test covers the same code path")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def hhcl(*args: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    """``python -m hhcl ARGS`` as its own process; ``fsize``: a file size limit (writes past it fail with EFBIG)."""
    env = {**{k: v for k, v in os.environ.items() if k != "HHCL_FAULT"}, "COLUMNS": "200"}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "hhcl", *args], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, preexec_fn=limit if fsize else None)


def train_args(root: Path, runs: Path, *sets: str) -> list[str]:
    args = ["train", "--preset", "demo", "--root", str(root), "--runs-dir", str(runs), "--name", "r"]
    for item in (*TINY, *sets):
        args += ["--set", item]
    return args


def cache_files(root: Path) -> list[str]:
    """Every cache file (complete or partial) under the data root."""
    return sorted(p.name for p in root.rglob("cache/*"))


def one_line(text: str) -> str:
    return " ".join(text.split())


def assert_run_recorded_disk_error(run: Path, result: subprocess.CompletedProcess, cache: Path) -> None:
    """Exit 1 with the cache named, the log ending with error + run_end, the lock released."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert "disk is full or a file size limit was reached" in one_line(result.stderr)
    assert str(cache) in one_line(result.stderr)
    error, end = read_raw_events(run)[-2:]
    assert error["type"] == "error" and str(cache) in error["message"] and error["where"] == "opening the dataset"
    assert end["type"] == "run_end" and end["status"] == "error"
    assert not (run / "run.lock").exists()


# ---------------------------------------------------------------- a real full filesystem (tmpfs)
def test_prepare_on_a_full_disk_names_the_cache_and_leaves_none(tmp_path):
    with tmpfs(tmp_path / "fs", "2m") as fs:  # the images fit (~0.7 MB), their 256x128 cache (~11 MB) does not
        result = hhcl("prepare", "synthetic", "--root", str(fs), "--ids", "12", "--cams", "3", *BIG, "--no-progress")
        text = one_line(result.stderr)
        assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # was 135: SIGBUS
        assert "Traceback" not in result.stderr
        assert f"cannot write {fs / 'synthetic' / 'cache' / 'train_256x128.npy'}:" in text
        assert "is free on that disk" in text and "--root" in text and "--height/--width" in text
        assert cache_files(fs) == []


def test_prepare_whose_images_do_not_fit_names_the_image_and_leaves_no_partial_folder(tmp_path):
    with tmpfs(tmp_path / "fs", "256k") as fs:
        result = hhcl("prepare", "synthetic", "--root", str(fs), "--ids", "12", "--cams", "3", "--no-progress")
        text = one_line(result.stderr)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"cannot write {fs / 'synthetic' / 'SyntheticPeople.partial'}" in text and ".jpg:" in text
        assert "No space left on device" in text and "--ids" in text
        assert not (fs / "synthetic" / "SyntheticPeople.partial").exists()


def test_a_run_whose_cache_does_not_fit_ends_with_its_message(images, tmp_path):
    runs = tmp_path / "runs"  # on the normal disk: the event log can still be written
    with tmpfs(tmp_path / "fs", "2m") as fs:
        copy_dataset(images, fs)
        result = hhcl(*train_args(fs, runs, "data.height=256", "data.width=128"))
        assert_run_recorded_disk_error(runs / "r", result, fs / "synthetic" / "cache" / "train_256x128.npy")
        assert "would take" in one_line(result.stderr)
        assert cache_files(fs) == []


def test_dry_run_refuses_a_cache_that_does_not_fit(images, tmp_path):
    with tmpfs(tmp_path / "fs", "2m") as fs:
        copy_dataset(images, fs)
        result = hhcl(*train_args(fs, tmp_path / "runs", "data.height=256", "data.width=128"), "--dry-run")
        text = one_line(result.stderr)
        assert result.returncode == 1, (result.returncode, text)
        assert f"the run would fail: cannot write {fs / 'synthetic' / 'cache' / 'train_256x128.npy'}" in text
        assert "train, query, gallery image caches at 256x128 would take" in text
        assert cache_files(fs) == [] and not (tmp_path / "runs").exists()


def no_fallocate(fd: int, offset: int, length: int) -> None:
    """``os.posix_fallocate`` on a filesystem that cannot do it."""
    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))


def in_child(body: Callable[[], dict], result: Path) -> int:
    """Run ``body`` in a forked process (a SIGBUS there cannot take pytest down); its dict lands in ``result``.
    Returns the child's exit code (negative: the signal that killed it)."""

    def main() -> None:
        result.write_text(json.dumps(body()))

    child = multiprocessing.get_context("fork").Process(target=main)
    child.start()
    child.join(TIMEOUT)
    return child.exitcode


@pytest.mark.parametrize("fallocate", ["supported", "unsupported"])
def test_a_cache_that_passes_the_check_but_not_the_disk_fails_at_allocation(images, tmp_path, monkeypatch, fallocate):
    """Space taken between the check and the write (here: a check that sees 1 TB free): the reservation, by
    posix_fallocate or by writing zeros where the filesystem cannot fallocate, fails at once with ENOSPC."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10**12))
    if fallocate == "unsupported":
        monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    with tmpfs(tmp_path / "fs", "2m") as fs:
        data = build_dataset("synthetic", copy_dataset(images, fs))

        def build() -> dict:
            try:
                build_cache(data.root, "train", data.train, 256, 128, progress=False, workers=0)
            except OSError as err:
                return {"type": type(err).__name__, "errno": err.errno, "filename": err.filename, "text": str(err)}
            return {"type": None}

        code = in_child(build, tmp_path / "result.json")
        assert code == 0, f"the cache build died with signal {-code}" if code < 0 else code
        got = json.loads((tmp_path / "result.json").read_text())
        cache = cache_paths(data.root, "train", 256, 128)[0]
        assert got["type"] == "DiskSpaceError" and got["errno"] == errno.ENOSPC and got["filename"] == str(cache)
        assert "No space left on device" in got["text"] and "--root" in got["text"]
        assert cache_files(fs) == [] and read_cache_index(data.root, "train", 256, 128) is None


# ---------------------------------------------------------------- a file size limit (ulimit -f): always runs
def test_prepare_past_the_file_size_limit_names_the_cache_and_leaves_none(tmp_path):
    # the JPEGs (a few kB each) fit under 200 kB, the 256x128 train cache (~5 MB) does not
    result = hhcl("prepare", "synthetic", "--root", str(tmp_path), "--ids", "12", "--cams", "3", *BIG,
                  "--no-progress", fsize=200_000)
    text = one_line(result.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"cannot write {tmp_path / 'synthetic' / 'cache' / 'train_256x128.npy'}: File too large" in text
    assert cache_files(tmp_path) == []


def test_a_run_whose_cache_passes_the_file_size_limit_ends_with_its_message(images, tmp_path):
    root = copy_dataset(images, tmp_path / "data")
    result = hhcl(*train_args(root, tmp_path / "runs", "data.height=64", "data.width=64"), fsize=200_000)
    assert_run_recorded_disk_error(tmp_path / "runs" / "r", result, root / "synthetic" / "cache" / "train_64x64.npy")
    assert "File too large" in result.stderr
    assert cache_files(root) == []


# ---------------------------------------------------------------- the free-space check itself (in-process)
def fake_free(monkeypatch, free: int) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=free))


def test_a_cache_is_checked_against_the_free_space_before_a_byte_is_written(images, tmp_path, monkeypatch):
    data = build_dataset("synthetic", copy_dataset(images, tmp_path))
    pixels = len(data.train) * 3 * 64 * 64
    fake_free(monkeypatch, pixels)  # the pixels alone, without the header, the index or the margin: too little
    with pytest.raises(OSError) as err:
        build_cache(data.root, "train", data.train, 64, 64, progress=False, workers=0)
    cache = cache_paths(data.root, "train", 64, 64)[0]
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(cache)
    assert "the train image cache at 64x64 would take" in str(err.value) and "is free on that disk" in str(err.value)
    assert cache_files(tmp_path) == []
    fake_free(monkeypatch, pixels + (2 << 20))  # header + index (a few kB) + the 1 MB margin now fit
    assert build_cache(data.root, "train", data.train, 64, 64, progress=False, workers=0) == []
    array = np.load(cache)
    assert os.path.getsize(cache) == pixels + 128  # the .npy header of a uint8 [N, 3, 64, 64] array
    assert os.stat(cache).st_blocks * 512 >= pixels  # every block allocated: no holes
    for row in (0, len(data.train) - 1):
        assert np.array_equal(array[row], load_image(data.train[row].path, 64, 64))
    from hhcl.data.store import require_cache_space

    fake_free(monkeypatch, 0)  # a complete cache needs no space, also for fewer samples (--skip-corrupt's)
    assert require_cache_space(data.root, {"train": data.train[1:]}, 64, 64) == 0


def test_reserve_writes_zeros_where_fallocate_is_unsupported_and_keeps_what_is_there(tmp_path, monkeypatch):
    from hhcl.diskspace import reserve

    monkeypatch.setattr(os, "posix_fallocate", no_fallocate)
    path = tmp_path / "f"
    path.write_bytes(b"head")
    reserve(path, 3_000_000)
    assert path.stat().st_size == 3_000_000 and path.stat().st_blocks * 512 >= 3_000_000
    with open(path, "rb") as handle:
        assert handle.read(4) == b"head" and set(handle.read()) == {0}


def test_a_checkpoint_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch):
    from hhcl.run.checkpoint import Checkpointer
    from hhcl.run.layout import RunLayout

    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 256)).sum().backward()
    optimizer.step()  # the two Adam moments exist: the state is about twice the weights
    layout = RunLayout(tmp_path / "r")
    keeper = Checkpointer(layout, model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1),
                          torch.amp.GradScaler("cpu", enabled=False), load_config("demo"))
    keeper.save(1, 0, 0.5, 1, is_best=True)
    before = {p.name: p.read_bytes() for p in layout.checkpoints.iterdir()}
    with torch.no_grad():
        model.weight.add_(1.0)
    total = sum(len(b) for b in before.values())
    fake_free(monkeypatch, total)  # the three new files would just fit, the 1 MB margin beside them would not
    with pytest.raises(OSError) as err:
        keeper.save(2, 0, 0.6, 2, is_best=True)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(layout.last_weights)
    assert "the checkpoint (last.safetensors + last.state.pt + best.safetensors) would take" in str(err.value)
    assert {p.name: p.read_bytes() for p in layout.checkpoints.iterdir()} == before  # nothing written, no tmp


# ---------------------------------------------------------------- oversized settings: exit 2 naming the key
def test_dry_run_refuses_an_image_height_beyond_the_bound(images, tmp_path):
    result = CliRunner().invoke(app, [*train_args(images, tmp_path, "data.height=6400000"), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert "data.height = 6400000 is not allowed: must be between 32 and 4096" in one_line(result.output)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("train.seed=99999999999999999999", "train.seed = 99999999999999999999 is not allowed: must be between 0 and 4294967295"),
        ("model.num_features=1000000000", "model.num_features = 1000000000 is not allowed: must be between 0 and 16384"),
    ],
)
def test_a_seed_overflow_or_a_huge_embedding_is_a_config_error(images, tmp_path, setting, expected):
    result = hhcl(*train_args(images, tmp_path / "runs", "data.height=32", "data.width=32", setting))
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])  # was 1: "looks like a bug" / OOM
    assert expected in one_line(result.stderr) and "bug" not in result.stderr
    assert not (tmp_path / "runs").exists()
