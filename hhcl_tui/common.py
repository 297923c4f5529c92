"""Helpers every command shares: the consoles, the error exit, the data root, config resolution."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text

from hhcl.config import Config, load_config
from hhcl.errors import EXIT_USAGE

# soft_wrap: printed text is never broken at the console width (80 columns when piped), so a path or command
# stays whole on its line and can be pasted or grepped; tables still fit the width.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a red ``error:`` and ``message`` as plain text (never Rich markup: a path may hold ``[x]``), and
    return the Exit to raise (2 = usage/config error, 1 = failure; an HhclError's is its ``exit_code``)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))
    return typer.Exit(code)


def data_root(root: Path | None) -> Path:
    """--root, else $HHCL_DATA, else ./data."""
    if root is not None:
        return root
    return Path(os.environ.get("HHCL_DATA", "data"))


def resolve_config(preset: str, overrides: list[str] | None, root: Path | None = None) -> Config:
    """Load a preset or TOML with overrides (``root``, or $HHCL_DATA, as ``data.root`` unless a --set gives it); a
    bad one is a ConfigError."""
    sets = list(overrides or [])
    if root is not None or "HHCL_DATA" in os.environ:
        if not any(s.split("=", 1)[0].strip() == "data.root" for s in sets):
            sets.insert(0, f"data.root={data_root(root)}")
    return load_config(preset, sets)
