"""The ``hhcl`` command line (Typer + Rich). Each command parses arguments and calls one engine function."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.syntax import Syntax
from rich.table import Table

from hhcl.config import load_config, preset_description, preset_names
from hhcl_tui.common import console, data_root, err_console, fail, resolve_config  # noqa: F401 - re-exported

app = typer.Typer(
    name="hhcl",
    help="Unsupervised person re-ID with Hard-sample Guided Hybrid Contrast Learning (HHCL): one GPU, minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
presets_app = typer.Typer(help="List and show the shipped presets (the paper's settings).", no_args_is_help=True)
app.add_typer(presets_app, name="presets")

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
            cfg.cluster.eps if cfg.cluster.eps == "auto" else f"{cfg.cluster.eps:g}",
            f"{cfg.train.epochs} x {cfg.train.iters}",
        )
    console.print(table)


@presets_app.command("show")
def presets_show(name: Annotated[str, typer.Argument(help="preset name, e.g. market")]) -> None:
    """Print a preset's full TOML."""
    cfg = resolve_config(name, [])
    console.print(f"[bold]{name}[/]: {preset_description(name)}")
    console.print(Syntax(cfg.to_toml(), "toml", theme="ansi_dark", background_color="default"))


# Commands register after the app exists (they import the shared helpers); order = `hhcl --help` order.
from hhcl_tui.commands import clusters as clusters_cmd  # noqa: E402
from hhcl_tui.commands import eval as eval_cmd  # noqa: E402
from hhcl_tui.commands import export as export_cmd  # noqa: E402
from hhcl_tui.commands import monitor as monitor_cmd  # noqa: E402
from hhcl_tui.commands import prepare as prepare_cmd  # noqa: E402
from hhcl_tui.commands import search as search_cmd  # noqa: E402
from hhcl_tui.commands import tensorboard as tensorboard_cmd  # noqa: E402
from hhcl_tui.commands import train as train_cmd  # noqa: E402
from hhcl_tui.commands import wizard as wizard_cmd  # noqa: E402

app.command("prepare")(prepare_cmd.prepare)
app.command("train")(train_cmd.train)
app.command("eval")(eval_cmd.eval_cmd)
app.command("export")(export_cmd.export)
app.command("embed")(export_cmd.embed)
app.command("search")(search_cmd.search)
app.command("clusters")(clusters_cmd.clusters)
app.command("monitor")(monitor_cmd.monitor)
app.command("tensorboard")(tensorboard_cmd.tensorboard)
app.command("wizard")(wizard_cmd.wizard)
app.command("demo")(train_cmd.demo)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
