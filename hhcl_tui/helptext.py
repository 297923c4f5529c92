"""How ``hhcl --help`` and each command's help read, for every command at once (the Typer classes cli.py uses).

Typer's Rich help writes a required argument as ``{dataset}`` in the usage line, prints a type, ``<bool>``,
beside every flag, ``--help`` included, though a flag takes no value, and keeps a docstring's line breaks, so a
paragraph is cut where the source line ended. Here an argument reads as the classic upper-case name
(``hhcl prepare [OPTIONS] DATASET``, ``[NAME]`` when optional) in the usage line, the arguments panel and its
errors, a flag shows no type, and each paragraph of a command's help is one line that the terminal wraps.
A command's first paragraph is its one-line summary in ``hhcl --help``: keep it short enough for 80 columns.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


def _unwrap(text: str) -> str:
    """``text`` with each paragraph's line breaks made spaces (a ``\\b`` paragraph, click's verbatim mark, kept)."""
    return "\n\n".join(p if p.startswith("\b") else p.replace("\n", " ") for p in text.split("\n\n"))


def _tidy(param: object) -> None:
    """Name an argument by its upper-case name and give a flag an empty type (unless either sets its own)."""
    if isinstance(param, TyperArgument) and param.metavar is None and param.name:
        param.metavar = param.name.upper()
    elif isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
        param.metavar = ""


class HelpCommand(TyperCommand):
    """A command whose help names its arguments ``DATASET`` (not ``{dataset}``), shows no type for a flag and
    lets the terminal wrap its paragraphs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = _unwrap(self.help)
        for param in self.params:
            _tidy(param)

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        """``--help``, without a type."""
        option = super().get_help_option(ctx)
        _tidy(option)
        return option

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        """``[OPTIONS]``, then each argument as ``NAME``, ``[NAME]`` when optional, ``NAME...`` when repeated."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.display_name_raw + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class HelpGroup(TyperGroup):
    """A command group (``hhcl``, ``hhcl presets``) whose ``--help`` shows no type."""

    def get_help_option(self, ctx: typer.Context) -> TyperOption | None:
        """``--help``, without a type."""
        option = super().get_help_option(ctx)
        _tidy(option)
        return option
