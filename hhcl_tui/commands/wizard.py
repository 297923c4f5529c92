"""``hhcl wizard [--out FILE]``: build a config in a Textual form, save it, and optionally start training."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from hhcl_tui.common import console, data_root
from hhcl_tui.errors import cli_errors


@cli_errors
def wizard(
    out: Annotated[Path, typer.Option("--out", "-o", help="TOML file to write")] = Path("hhcl.toml"),
    preset: Annotated[str, typer.Option("--preset", "-p", help="preset to start from (hhcl presets list)")] = "market",
    root: Annotated[Path | None, typer.Option(help="data root to look for prepared datasets [default: $HHCL_DATA or ./data]")] = None,
) -> None:
    """Build a config in a form, save it as TOML, train it.

    Pick a preset; edit the dataset, backbone, pretrained weights, image size, eps, batch, epochs, device, GPUs
    and AMP with live validation.
    """
    from hhcl_tui.wizard import run_wizard

    argv = run_wizard(out=out, data_root=data_root(root), preset=preset)
    if argv is None:
        raise typer.Exit(0)
    console.print(f"running: hhcl {' '.join(argv)}", highlight=False)
    sys.stdout.flush()
    # Replace this process so `hhcl train` sees its own argv (it forwards it to torchrun and --tui).
    os.execv(sys.executable, [sys.executable, "-m", "hhcl", *argv])
