"""Helpers every command shares: the consoles, the error exit, the data root, config resolution."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from hhcl.config import Config, ConfigError, load_config

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a red error line and return the Exit to raise (2 = usage/config error, 1 = failure)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def data_root(root: Path | None) -> Path:
    """--root, else $HHCL_DATA, else ./data."""
    if root is not None:
        return root
    return Path(os.environ.get("HHCL_DATA", "data"))


def resolve_config(preset: str, overrides: list[str] | None, root: Path | None = None) -> Config:
    """Load a preset or TOML with overrides; config errors exit 2 with the message."""
    sets = list(overrides or [])
    if root is not None or "HHCL_DATA" in os.environ:
        if not any(s.split("=", 1)[0].strip() == "data.root" for s in sets):
            sets.insert(0, f"data.root={data_root(root)}")
    try:
        return load_config(preset, sets)
    except ConfigError as err:
        raise fail(str(err)) from None
