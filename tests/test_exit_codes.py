"""One error type: an error exits with its class's code from every command (2: the user fixes the input; 1: the
work failed), printed as ``error: <message>``, and every error class of hhcl and hhcl_tui is an HhclError of one
kind.

The table provokes, in each command, a usage error (a checkpoint that is no checkpoint, a config error, a bad
argument) and, where the command can meet one, a failure (a corrupt image met on the way, a full disk, an export
that disagrees with PyTorch). Each row asserts the exit code its error class carries, so one class gives one code
in every command; the spy on ``fail`` checks that the error the command met is of that class.
"""

from __future__ import annotations

import errno
import importlib
import inspect
import pkgutil
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data_fixtures import write_image
from helpers.tiny_run import TINY
from typer.testing import CliRunner

import hhcl
import hhcl_tui
from hhcl.config import Config, ConfigError
from hhcl.data import CorruptImageError, DatasetNotFoundError
from hhcl.diskspace import DiskSpaceError, is_disk_full
from hhcl.epoch import StopRequested
from hhcl.errors import EXIT_FAILURE, EXIT_USAGE, ArgumentError, FailureError, HhclError, UsageError
from hhcl.export import EmbedError, ExportError
from hhcl.models import build_model
from hhcl.run.events import read_raw_events
from hhcl.run.labels import LabelsError, save_epoch_labels, save_train_index
from hhcl.run.layout import RunDirError, RunLayout
from hhcl.run.lock import RunLock, RunLockedError
from hhcl.weight_files import CheckpointError, save_weights
from hhcl_tui.cli import app
from hhcl_tui.errors import cli_errors

runner = CliRunner()
BASES = (HhclError, UsageError, FailureError)  # the base and its two kinds, in hhcl/errors.py


# ------------------------------------------------------------------------------------ the classes themselves
def project_exception_classes() -> list[type[BaseException]]:
    """Every exception class defined at the top of a module of hhcl or hhcl_tui, found by importing them all."""
    found: dict[str, type[BaseException]] = {}
    for package in (hhcl, hhcl_tui):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            module = importlib.import_module(info.name)
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


def test_every_project_error_is_an_hhcl_error_of_one_kind() -> None:
    classes = project_exception_classes()
    assert {ConfigError, CheckpointError, CorruptImageError, DiskSpaceError, StopRequested} <= set(classes)
    for cls in classes:
        if cls is StopRequested:  # a stop request, not an error
            assert not issubclass(cls, HhclError)
            continue
        assert issubclass(cls, HhclError), f"{cls.__module__}.{cls.__name__} is not an HhclError"
        assert cls.exit_code in (EXIT_USAGE, EXIT_FAILURE), cls
        assert issubclass(cls, UsageError) == (cls.exit_code == EXIT_USAGE), cls
        if cls not in BASES:
            assert issubclass(cls, UsageError | FailureError), f"{cls.__name__} is of neither kind"
            doc = " ".join((cls.__doc__ or "").lower().split())
            assert ("usage error" if cls.exit_code == EXIT_USAGE else "failure") in doc, f"{cls.__name__}: say its kind"


def test_a_project_error_is_still_its_builtin_error() -> None:
    assert isinstance(ConfigError("x"), ValueError) and isinstance(RunLockedError("x"), RuntimeError)
    assert isinstance(DatasetNotFoundError("x"), FileNotFoundError)
    full = DiskSpaceError(errno.ENOSPC, "no room", "/x/y.npy")
    assert isinstance(full, OSError) and full.errno == errno.ENOSPC and str(full) == "cannot write /x/y.npy: no room"
    assert CorruptImageError(["a.jpg"]).paths == ["a.jpg"] and CorruptImageError.exit_code == EXIT_FAILURE


def registered_commands() -> Iterator[tuple[str, Callable]]:
    """(name, function) of every command of the app, sub-apps (``presets``) included."""
    yield from ((info.name or "", info.callback) for info in app.registered_commands)
    for group in app.registered_groups:
        yield from ((f"{group.name} {info.name}", info.callback) for info in group.typer_instance.registered_commands)


def test_every_command_maps_errors_with_the_one_decorator() -> None:
    wrapper = cli_errors(print).__code__
    commands = dict(registered_commands())
    assert {"prepare", "train", "eval", "export", "embed", "search", "clusters", "monitor", "tensorboard", "wizard",
            "demo", "presets show", "presets list"} <= commands.keys()
    for name, callback in commands.items():
        assert callback.__code__ is wrapper, f"hhcl {name} is not wrapped in @cli_errors"


# ------------------------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class World:
    """The files the table's commands are pointed at (built once for the module)."""

    junk: Path  # a .safetensors file that is no checkpoint
    junk_onnx: Path  # an .onnx file that is no model
    model: Path  # a run directory holding a small resnet18 at 64x32 (dataset synthetic)
    images: Path  # a folder of good images
    broken_images: Path  # good images and one that is not an image
    query: Path  # one good image
    broken_root: Path  # a data root with the synthetic dataset, one train and one query image garbage, no cache
    crops: Path  # a folder dataset (two cameras) with one truncated image
    sheets_run: Path  # a run with kept labels whose images include a garbage one
    bad_config_run: Path  # a run with kept labels whose config.toml has an unknown key
    locked_run: Path  # a run directory (config + event log) whose lock this test process holds


def _garbage(path: Path) -> Path:
    """``path`` overwritten (or created) with bytes that no image or model reader accepts."""
    path.write_bytes(b"not an image at all")
    return path


def _labelled_run(run: Path, images: list[Path], config: str) -> Path:
    """A run directory with ``config`` and the kept labels of one epoch over ``images`` (all in one cluster)."""
    layout = RunLayout(run)
    layout.root.mkdir(parents=True)
    layout.config.write_text(config)
    save_train_index(layout, [str(p) for p in images], [0] * len(images), [i % 2 for i in range(len(images))])
    save_epoch_labels(layout, 0, np.zeros(len(images), np.int64))
    return run


@pytest.fixture(scope="module")
def world(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("exit-codes")
    junk, junk_onnx = _garbage(base / "junk.safetensors"), _garbage(base / "junk.onnx")

    torch.manual_seed(0)
    cfg = Config()
    cfg.model.arch, cfg.model.pooling = "resnet18", "gem"
    cfg.data.height, cfg.data.width, cfg.data.dataset = 64, 32, "synthetic"
    model = base / "run"
    save_weights(build_model("resnet18", "gem", "none").eval(), model / "checkpoints" / "best.safetensors",
                 {"config": cfg.to_toml(), "format": "hhcl"})

    images = base / "images"
    good = [write_image(images / f"cam{i % 2}" / f"{i}.png", seed=i, size=(32, 64)) for i in range(4)]
    broken_images = Path(shutil.copytree(images, base / "broken-images"))
    _garbage(broken_images / "cam1" / "broken.png")

    broken_root = base / "data"
    shutil.copytree(synth_root / "synthetic", broken_root / "synthetic", ignore=shutil.ignore_patterns("cache"))
    people = broken_root / "synthetic" / "SyntheticPeople"
    for split in ("bounding_box_train", "query"):
        _garbage(sorted((people / split).iterdir())[-1])  # the last: a real identity (junk, -1_*, sorts first)

    crops = base / "crops"
    for cam in ("cam1", "cam2"):
        for i in range(3):
            write_image(crops / cam / f"{cam}_{i}.jpg", seed=10 * int(cam[-1]) + i, size=(32, 64))
    truncated = crops / "cam2" / "cam2_1.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])

    sheets_run = _labelled_run(base / "sheets-run", [*good, _garbage(base / "garbage.png")], Config().to_toml())
    bad_config_run = _labelled_run(base / "bad-config-run", good, "[optim]\nlrr = 1\n")

    locked_run = base / "locked-run"
    locked_run.mkdir()
    (locked_run / "config.toml").write_text(Config().to_toml())
    (locked_run / "events.jsonl").write_text("")
    lock = RunLock(RunLayout(locked_run).lock).acquire()
    try:
        yield World(junk, junk_onnx, model, images, broken_images, good[0], broken_root, crops, sheets_run, bad_config_run,
                    locked_run)
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------- the table
Argv = Callable[[World, Path], list[str]]
Patch = Callable[[pytest.MonkeyPatch, Path], None]


@dataclass(frozen=True)
class Case:
    """A command line, the error class it must meet, a phrase of its message, and a fault to inject (if any)."""

    id: str
    argv: Argv
    error: type[BaseException]  # an HhclError class, UsageError for a command's own argument check, OSError: disk full
    text: str
    patch: Patch | None = None


def _tiny_train(w: World, tmp: Path, *sets: str) -> list[str]:
    args = ["train", "--preset", "demo", "--root", str(w.broken_root), "--runs-dir", str(tmp / "runs"), "--name", "r"]
    return args + [a for s in (*TINY, "model.bn_group=8", *sets) for a in ("--set", s)]


def _disk_full(target: str, name: str) -> Patch:
    """Make ``target`` (module:function) raise a full disk while writing ``name`` under the test's folder."""
    module, function = target.split(":")

    def patch(mp: pytest.MonkeyPatch, tmp: Path) -> None:
        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / name))

        mp.setattr(importlib.import_module(module), function, full)

    return patch


def _disk_space_refused(target: str) -> Patch:
    """Make ``target`` (module:function) refuse a write up front, as require_free does."""
    module, function = target.split(":")

    def patch(mp: pytest.MonkeyPatch, tmp: Path) -> None:
        def refuse(*args: object, **kwargs: object) -> None:
            raise DiskSpaceError(errno.ENOSPC, "the cache would take 9 GB but only 1 GB is free", str(tmp / "c.npy"))

        mp.setattr(importlib.import_module(module), function, refuse)

    return patch


def _parity_fails(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    mp.setattr(importlib.import_module("hhcl.export"), "_worst_cosine", lambda got, expected: 0.5)


CASES = [
    # --- usage errors (exit 2)
    Case("prepare-missing-src", lambda w, t: ["prepare", "market1501", "--src", str(t / "nope.zip"), "--root", str(t)],
         DatasetNotFoundError, "nope.zip does not exist"),
    Case("prepare-bad-argument", lambda w, t: ["prepare", "synthetic", "--root", str(t), "--camera-bias", "2"],
         ArgumentError, "--camera-bias must be in [0, 1]"),
    Case("train-config", lambda w, t: ["train", "--preset", "demo", "--set", "optim.lrr=1", "--dry-run"],
         ConfigError, "optim.lrr"),
    Case("train-checkpoint", lambda w, t: _tiny_train(w, t, f"model.pretrained={w.junk}"),
         CheckpointError, "junk.safetensors"),
    Case("train-locked", lambda w, t: ["train", "--resume", str(w.locked_run)], RunLockedError, "locked-run"),
    Case("eval-checkpoint", lambda w, t: ["eval", str(w.junk)], CheckpointError, "junk.safetensors"),
    Case("eval-config", lambda w, t: ["eval", str(w.junk), "--device", "nope"], ConfigError, "is not a device"),
    Case("export-checkpoint", lambda w, t: ["export", str(w.junk), "--format", "onnx", "--out", str(t / "m.onnx")],
         CheckpointError, "junk.safetensors"),
    Case("embed-checkpoint", lambda w, t: ["embed", str(w.junk), str(w.images), "--out", str(t / "e.npy")],
         CheckpointError, "junk.safetensors"),
    Case("embed-exported-file", lambda w, t: ["embed", str(w.junk_onnx), str(w.images), "--out", str(t / "e.npy")],
         CheckpointError, "cannot load the exported ONNX model"),
    Case("embed-config", lambda w, t: ["embed", str(w.junk), str(w.images), "--out", str(t / "e.npy"), "--device",
                                       "nope"], ConfigError, "is not a device"),
    Case("embed-argument", lambda w, t: ["embed", str(w.model), str(t / "none"), "--out", str(t / "e.npy")],
         EmbedError, "does not exist or is not a folder"),
    Case("search-checkpoint", lambda w, t: ["search", str(w.junk), "--gallery", str(w.images), "--query", str(w.query),
                                            "--out", str(t / "out")], CheckpointError, "junk.safetensors"),
    Case("search-config", lambda w, t: ["search", str(w.junk), "--gallery", str(w.images), "--query", str(w.query),
                                        "--out", str(t / "out"), "--device", "nope"], ConfigError, "is not a device"),
    Case("clusters-labels", lambda w, t: ["clusters", str(t), "--out", str(t / "sheets")],
         LabelsError, "is not a run directory"),
    Case("clusters-config", lambda w, t: ["clusters", str(w.bad_config_run), "--out", str(t / "sheets")],
         ConfigError, "optim.lrr"),
    Case("monitor-argument", lambda w, t: ["monitor", str(t / "nope"), "--no-wait"], UsageError, "does not exist"),
    Case("tensorboard-run-dir", lambda w, t: ["tensorboard", str(t)], RunDirError, "is not a run directory"),
    Case("tensorboard-locked", lambda w, t: ["tensorboard", str(w.locked_run)], RunLockedError,
         "to export a snapshot of a live run, give --out DIR"),
    Case("wizard-config", lambda w, t: ["wizard", "--preset", "nope", "--out", str(t / "x.toml")],
         ConfigError, "unknown preset 'nope'"),
    Case("demo-argument", lambda w, t: ["demo", "--threads", "0", "--root", str(t), "--runs-dir", str(t)],
         ArgumentError, "--threads must be >= 1"),
    Case("demo-config", lambda w, t: ["demo", "--seed", "99999999999", "--root", str(t), "--runs-dir", str(t)],
         ConfigError, "train.seed"),
    Case("presets-show-config", lambda w, t: ["presets", "show", "nope"], ConfigError, "unknown preset 'nope'"),
    # --- failures (exit 1)
    Case("prepare-corrupt-image", lambda w, t: ["prepare", "folder", "--src", str(w.crops), "--root", str(t),
                                                "--height", "16", "--width", "8", "--no-progress"],
         CorruptImageError, "cam2_1.jpg"),
    Case("prepare-disk-space", lambda w, t: ["prepare", "synthetic", "--root", str(t), "--no-progress"],
         DiskSpaceError, "c.npy", _disk_space_refused("hhcl.data:prepare_synthetic")),
    Case("prepare-disk-full", lambda w, t: ["prepare", "synthetic", "--root", str(t), "--no-progress"],
         OSError, "full.jpg", _disk_full("hhcl.data:prepare_synthetic", "full.jpg")),
    Case("train-corrupt-image", lambda w, t: _tiny_train(w, t, "data.cache=true"), CorruptImageError, "corrupt image"),
    Case("eval-corrupt-image", lambda w, t: ["eval", str(w.model), "--root", str(w.broken_root), "--device", "cpu"],
         CorruptImageError, "corrupt image"),
    Case("export-parity", lambda w, t: ["export", str(w.model), "--format", "safetensors", "--out",
                                        str(t / "m.safetensors")], ExportError, "disagrees with PyTorch", _parity_fails),
    Case("embed-corrupt-image", lambda w, t: ["embed", str(w.model), str(w.broken_images), "--out", str(t / "e.npy"),
                                              "--device", "cpu"], CorruptImageError, "broken.png"),
    Case("search-corrupt-image", lambda w, t: ["search", str(w.model), "--gallery", str(w.broken_images), "--query",
                                               str(w.query), "--out", str(t / "out"), "--device", "cpu"],
         CorruptImageError, "broken.png"),
    Case("clusters-corrupt-image", lambda w, t: ["clusters", str(w.sheets_run), "--out", str(t / "sheets")],
         CorruptImageError, "garbage.png"),
    Case("tensorboard-disk-full", lambda w, t: ["tensorboard", str(w.locked_run), "--out", str(t / "tb")],
         OSError, "cannot write the TensorBoard scalars", _disk_full("hhcl.tensorboard:write_tensorboard", "tb/x")),
    Case("demo-disk-full", lambda w, t: ["demo", "--root", str(t), "--runs-dir", str(t)],
         OSError, "full.jpg", _disk_full("hhcl.demo:prepare_synthetic", "full.jpg")),
]


def code_of(error: type[BaseException]) -> int:
    """The exit code every command must give ``error``: an HhclError's own; a full disk (OSError) is a failure."""
    return error.exit_code if issubclass(error, HhclError) else EXIT_FAILURE


@pytest.fixture
def met(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """The exception being handled at each call of ``fail`` (None outside an ``except``), from every module."""
    seen: list[BaseException | None] = []
    for name, module in list(sys.modules.items()):
        real = getattr(module, "fail", None) if name.startswith("hhcl_tui") else None
        if real is not None and getattr(real, "__module__", "") == "hhcl_tui.common":

            def spy(message: str, code: int = EXIT_USAGE, real: Callable = real) -> object:
                seen.append(sys.exc_info()[1])
                return real(message, code)

            monkeypatch.setattr(module, "fail", spy)
    return seen


def _recorded_kind(run: Path) -> str | None:
    """The error class a training run recorded in its event log, if it wrote one."""
    events = read_raw_events(run / "events.jsonl") if (run / "events.jsonl").is_file() else []
    return next((e["kind"] for e in events if e["type"] == "error"), None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_an_error_exits_with_its_class_code_in_every_command(
    case: Case, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, met: list
) -> None:
    if case.patch is not None:
        case.patch(monkeypatch, tmp_path)
    result = runner.invoke(app, case.argv(world, tmp_path))
    text = " ".join(result.output.split())
    assert result.exit_code == code_of(case.error), (case.error.__name__, result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output and "error: " in result.output, result.output[-2000:]
    assert case.text in text, text[-2000:]
    handled = [e for e in met if e is not None]
    if case.error is UsageError:  # a command's own argument check: no exception behind it
        assert not handled, handled
    elif not issubclass(case.error, HhclError):  # a full disk, as the OSError the write raised or reworded
        assert handled and is_disk_full(handled[-1]), handled
    elif handled:
        assert isinstance(handled[-1], case.error), (type(handled[-1]), case.error)
    else:  # a training run ends with its FitResult: its event log names the class
        assert _recorded_kind(tmp_path / "runs" / "r") == case.error.__name__


def test_the_table_covers_every_command_and_shares_classes_between_them() -> None:
    commands: dict[type[BaseException], set[str]] = {}
    for case in CASES:
        commands.setdefault(case.error, set()).add(case.id.split("-")[0])
    covered = set().union(*commands.values())
    assert {"prepare", "train", "eval", "export", "embed", "search", "clusters", "monitor", "tensorboard", "wizard",
            "demo", "presets"} <= covered
    for error in (CheckpointError, ConfigError, CorruptImageError, RunLockedError, OSError):
        assert len(commands[error]) >= 2, f"{error.__name__} is met in one command only"
