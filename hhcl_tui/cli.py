"""The ``hhcl`` command line (Typer + Rich). Each command parses arguments and calls one engine function."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.syntax import Syntax
from rich.table import Table

from hhcl.config import (
    CLUSTER_PARAMS,
    DEFAULT,
    Config,
    all_keys,
    key_info,
    load_config,
    preset_description,
    preset_names,
)
from hhcl_tui.common import console, data_root, err_console, fail, resolve_config  # noqa: F401 - re-exported
from hhcl_tui.errors import cli_errors
from hhcl_tui.helptext import HelpCommand, HelpGroup

app = typer.Typer(
    name="hhcl",
    help="Unsupervised person re-ID with Hard-sample Guided Hybrid Contrast Learning (HHCL): one GPU, minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=HelpGroup,
)
presets_app = typer.Typer(
    help="List and show the shipped presets (the paper's settings).", no_args_is_help=True, cls=HelpGroup
)
app.add_typer(presets_app, name="presets")

@presets_app.command("list", cls=HelpCommand)
@cli_errors
def presets_list() -> None:
    """List the shipped presets.

    A table of each one's dataset, backbone, pooling, clustering (its method and main setting) and schedule.
    """
    table = Table(title="hhcl presets", header_style="bold cyan")
    names = preset_names()
    table.add_column("name", no_wrap=True, min_width=max(map(len, names)))  # the one column never cut short
    for col in ("dataset", "backbone", "pooling", "clustering", "epochs x iters"):
        table.add_column(col, no_wrap=True)
    for name in names:
        cfg = load_config(name)
        table.add_row(
            name,
            cfg.data.dataset,
            cfg.model.arch,
            cfg.model.pooling,
            _clustering(cfg),
            f"{cfg.train.epochs} x {cfg.train.iters}",
        )
    console.print(table)


def _clustering(cfg: Config) -> str:
    """The clustering method and the setting that decides how much it clusters, e.g. ``dbscan eps 0.45``."""
    param = CLUSTER_PARAMS[cfg.cluster.method][0]
    value = cfg.get(param.key)
    return f"{cfg.cluster.method} {param.name} {value if isinstance(value, str) else f'{value:g}'}"


@presets_app.command("show", cls=HelpCommand)
@cli_errors
def presets_show(name: Annotated[str, typer.Argument(help="preset name, e.g. market")]) -> None:
    """Print a preset's full TOML."""
    cfg = resolve_config(name, [])
    console.print(f"[bold]{name}[/]: {preset_description(name)}")
    console.print(Syntax(cfg.to_toml(), "toml", theme="ansi_dark", background_color="default"))


@presets_app.command("keys", cls=HelpCommand)
@cli_errors
def presets_keys() -> None:
    """List every config key: its default, range or choices, and meaning.

    Also whether ``hhcl train --resume`` may change it. Any key can be set with ``--set section.key=value``
    or in a TOML file.
    """
    table = Table(title="hhcl config keys", header_style="bold cyan")
    table.add_column("key", no_wrap=True)
    for col in ("default", "allows", "resume", "meaning"):
        table.add_column(col)
    for dotted in all_keys():
        info = key_info(dotted)
        allows = ", ".join(info.choices) if info.choices else (f"{info.bounds[0]} to {info.bounds[1]}" if info.bounds else "")
        table.add_row(dotted, str(DEFAULT.get(dotted)), allows, "yes" if info.resumable else "", info.help)
    console.print(table)


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

app.command("prepare", cls=HelpCommand)(prepare_cmd.prepare)
app.command("train", cls=HelpCommand)(train_cmd.train)
app.command("eval", cls=HelpCommand)(eval_cmd.eval_cmd)
app.command("export", cls=HelpCommand)(export_cmd.export)
app.command("embed", cls=HelpCommand)(export_cmd.embed)
app.command("search", cls=HelpCommand)(search_cmd.search)
app.command("clusters", cls=HelpCommand)(clusters_cmd.clusters)
app.command("monitor", cls=HelpCommand)(monitor_cmd.monitor)
app.command("tensorboard", cls=HelpCommand)(tensorboard_cmd.tensorboard)
app.command("wizard", cls=HelpCommand)(wizard_cmd.wizard)
app.command("demo", cls=HelpCommand)(train_cmd.demo)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
