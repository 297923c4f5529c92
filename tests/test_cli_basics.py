"""The CLI's foundation commands, run in-process through Typer's runner."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from hhcl_tui.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "presets" in result.output


def test_presets_list_shows_all_six():
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 0
    for name in ("demo", "duke", "duke-ibn", "market", "market-ibn", "msmt17"):
        assert re.search(rf"\b{re.escape(name)}\b", result.output), name
    assert "0.45" in result.output and "60 x 300" in result.output


def test_presets_list_shows_each_presets_clustering_by_its_own_setting(monkeypatch):
    from hhcl_tui.common import console

    monkeypatch.setattr(console, "_width", 160)  # a wide terminal: no cell cut short (undone: back to None)
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 2}
    assert "infomap min_sim 0.5" in rows["cc-infomap-market"] and "eps" not in rows["cc-infomap-market"]
    assert "dbscan eps 0.45" in rows["market"] and "dbscan eps auto" in rows["folder-cpu"]


def test_presets_show_prints_toml():
    result = runner.invoke(app, ["presets", "show", "duke"])
    assert result.exit_code == 0
    assert 'dataset = "dukemtmcreid"' in result.output and "eps = 0.6" in result.output


def test_presets_show_unknown_exits_2():
    result = runner.invoke(app, ["presets", "show", "nope"])
    assert result.exit_code == 2
