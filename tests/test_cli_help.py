"""What ``--help`` and count messages say: argument names, no type beside a flag, whole one-line summaries at 80
columns, "1 epoch" (not "1 epochs"), and wizard messages that say what is allowed."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
import typer
import typer.rich_utils
from rich.console import Console
from typer.core import TyperGroup
from typer.testing import CliRunner

from hhcl import distributed
from hhcl.config import DATASETS, ConfigError
from hhcl.data.sampler import BatchUnfillableError, batch_outlook
from hhcl.reporting import ConsoleReporter
from hhcl.run.events import RunStart
from hhcl_tui.cli import app
from hhcl_tui.wizard import WizardForm

runner = CliRunner()


@pytest.fixture(autouse=True)
def plain_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Help as a plain 80-column terminal gets it, whatever this test process's environment says."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 80)
    monkeypatch.setattr(typer.rich_utils, "FORCE_TERMINAL", False)


def help_of(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def command_paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under ``group``, as argv prefixes (the group itself first)."""
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


ROOT = typer.main.get_command(app)
assert isinstance(ROOT, TyperGroup)


def test_prepare_usage_names_dataset_and_the_help_lists_its_choices() -> None:
    text = help_of("prepare")
    assert "Usage: hhcl prepare [OPTIONS] DATASET" in text and "{dataset}" not in text
    words = " ".join(text.replace("│", " ").split())
    assert "DATASET <str> one of " + ", ".join(DATASETS) in words


def test_arguments_read_as_names_in_usage_and_errors() -> None:
    assert "Usage: hhcl embed [OPTIONS] SOURCE IMAGES_DIR" in help_of("embed")
    assert "Usage: hhcl tensorboard [OPTIONS] RUNS..." in help_of("tensorboard")
    missing = runner.invoke(app, ["prepare"])
    assert missing.exit_code == 2 and "Missing argument 'DATASET'" in missing.output


@pytest.mark.parametrize("path", command_paths(ROOT), ids=lambda p: " ".join(p) or "hhcl")
def test_no_help_shows_a_type_beside_a_flag(path: tuple[str, ...]) -> None:
    text = help_of(*path)
    assert "--help" in text and "<bool>" not in text


def summary_rows(text: str) -> list[str]:
    """The rows of the Commands panel of a group's help, without the borders."""
    panel = text.split("─ Commands ─", 1)[1].split("╰", 1)[0]
    return [line.strip().strip("│").rstrip() for line in panel.splitlines()[1:] if line.strip()]


GROUPS = [(), *((name,) for name, command in ROOT.commands.items() if isinstance(command, TyperGroup))]


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(p) or "hhcl")
def test_each_command_summary_is_one_whole_line_at_80_columns(path: tuple[str, ...]) -> None:
    group = ROOT.commands[path[0]] if path else ROOT
    assert isinstance(group, TyperGroup)
    rows = summary_rows(help_of(*path))
    assert len(rows) == len(group.commands), "a summary is wrapped onto a second line:\n" + "\n".join(rows)
    for row, (name, command) in zip(rows, group.commands.items(), strict=True):
        summary = (command.help or "").split("\n\n")[0]
        assert re.fullmatch(rf" {re.escape(name)} +{re.escape(summary)}", row), (row, summary)


def test_count_words_are_singular_for_one() -> None:
    from hhcl.words import plural

    assert [plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert plural(1, "rank list") == "1 rank list" and plural(2, "rank list") == "2 rank lists"
    assert plural(1, "process", "processes") == "1 process" and plural(2, "process", "processes") == "2 processes"
    assert plural(12838, "image", spec=",") == "12,838 images" and plural(None, "cluster") == "? clusters"


def test_messages_with_a_count_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "yields 3 images (1 cluster) but" in str(BatchUnfillableError(3, 1, 16))
    assert "yields 1 image (1 camera-aware proxy) but" in str(
        BatchUnfillableError(1, 1, 16, ("camera-aware proxy", "camera-aware proxies")))
    text, _ = batch_outlook(40, 2, 1)
    assert text == "a batch of 2 = 2 clusters x 1 image: every clustering of the 40 train images must find at least 2 clusters"
    out = io.StringIO()
    reporter = ConsoleReporter(tmp_path, Console(file=out, force_terminal=False, width=300))
    reporter.on_event(RunStart(t=0.0, run="r", epochs=1, iters=1, n_train=8, n_query=2, n_gallery=1))
    reporter.on_event(RunStart(t=0.0, run="r", epochs=2, iters=3, n_train=8, n_query=2, n_gallery=5))
    reporter.close()
    assert "1 gallery image, 1 epoch x 1 iter" in out.getvalue()
    assert "5 gallery images, 2 epochs x 3 iters" in out.getvalue()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match="start at most 1 process per node"):
        distributed.resolve_device("auto")


# -- the wizard's messages: each field says what it allows, words included ---------------------------------


@pytest.fixture
def form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WizardForm:
    monkeypatch.chdir(tmp_path)
    return WizardForm("market", Path("data"))


def test_wizard_eps_typo_says_auto_is_allowed(form: WizardForm) -> None:
    error = form.set("cluster.eps", "autoo") or ""
    assert error == ("cluster.eps = 'autoo' is not a number or auto: use a number in (0, 1) (a Jaccard distance) "
                     "or auto. Did you mean 'auto'?")
    assert "or auto" in (form.set("cluster.eps", "1.5") or "")
    assert form.set("cluster.eps", "auto") is None and form.valid


def test_wizard_has_the_own_camera_fields_validated_by_the_config(form: WizardForm, tmp_path: Path) -> None:
    assert form.values["model.pretrained"] == "imagenet" and form.values["train.device"] == "auto"
    assert (form.values["data.height"], form.values["data.width"]) == ("256", "128")
    assert "data.height = 250 is not allowed: must be a multiple of 16" in (form.set("data.height", "250") or "")
    assert "must be between 32 and 4096" in (form.set("data.height", "16") or "")
    assert "data.width = 'wide' is not an int" in (form.set("data.width", "wide") or "")
    form.set("data.height", "384")
    form.set("data.width", "192")
    assert "use auto, cpu, cuda or cuda:N" in (form.set("train.device", "cuda:x") or "")
    assert "use auto, cpu, cuda or cuda:N" in (form.set("train.device", "gpu") or "")
    assert form.set("train.device", "cuda:1") is None
    missing = form.set("model.pretrained", "weights/mine.pth") or ""
    assert missing.startswith("model.pretrained = 'weights/mine.pth' is not allowed: weights/mine.pth does not exist")
    assert "use imagenet, none, or the path of a run directory" in missing
    assert "use imagenet, none" in (form.set("model.pretrained", "") or "")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "mine.pth").write_bytes(b"")
    assert form.set("model.pretrained", "weights/mine.pth") is None
    assert form.set("model.pretrained", "none") is None and form.valid
    cfg = form.config
    assert cfg is not None and (cfg.data.height, cfg.data.width, cfg.train.device) == (384, 192, "cuda:1")
