"""The ``hhcl`` command line (Typer + Rich). Each command parses arguments and calls one engine function."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from hhcl.config import Config, ConfigError, load_config, preset_description, preset_names

app = typer.Typer(
    name="hhcl",
    help="Unsupervised person re-ID with Hard-sample Guided Hybrid Contrast Learning (HHCL): one GPU, minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
presets_app = typer.Typer(help="List and show the shipped presets (the paper's settings).", no_args_is_help=True)
app.add_typer(presets_app, name="presets")

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


@presets_app.command("list")
def presets_list() -> None:
    """Table of the shipped presets: dataset, backbone, pooling, eps, schedule."""
    table = Table(title="hhcl presets", header_style="bold cyan")
    for col in ("name", "dataset", "backbone", "pooling", "eps", "epochs x iters"):
        table.add_column(col, no_wrap=True)
    for name in preset_names():
        cfg = load_config(name)
        table.add_row(
            name,
            cfg.data.dataset,
            cfg.model.arch,
            cfg.model.pooling,
            f"{cfg.cluster.eps:g}",
            f"{cfg.train.epochs} x {cfg.train.iters}",
        )
    console.print(table)


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="preset name, e.g. market")]) -> None:
    """Print a preset's full TOML."""
    cfg = resolve_config(name, [])
    console.print(f"[bold]{name}[/]: {preset_description(name)}")
    console.print(Syntax(cfg.to_toml(), "toml", theme="ansi_dark", background_color="default"))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
