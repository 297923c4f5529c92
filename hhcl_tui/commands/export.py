"""``hhcl export`` and ``hhcl embed``: deployable embedders with a parity check, and folder embedding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hhcl_tui.common import console, fail
from hhcl_tui.errors import cli_errors


@cli_errors
def export(
    source: Annotated[
        Path, typer.Argument(help="run directory (runs/<name>) or checkpoint (.safetensors, .pth.tar)")
    ],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx, torchscript or safetensors")],
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write, e.g. model.onnx")],
) -> None:
    """Export an embedder to ONNX, TorchScript or safetensors.

    RGB [0,1] NCHW in, L2-normalised embeddings out; checked against PyTorch.
    """
    from hhcl.export import FORMATS, MIN_COSINE
    from hhcl.export import export as run_export

    if format not in FORMATS:
        raise fail(f"--format {format!r} is not allowed: use one of {', '.join(FORMATS)}.")
    with console.status(f"exporting {source} to {format} ..."):
        report = run_export(source, format, out)
    meta = report.metadata
    console.print(
        f"[green]wrote[/] {report.path} ({format}; {meta['arch']}/{meta['pooling']}, input "
        f"{meta['input_height']}x{meta['input_width']}, {meta['feature_dim']}-d)\n"
        f"parity vs PyTorch: worst cosine {report.worst_cosine:.6f} (>= {MIN_COSINE})",
        highlight=False,
    )


@cli_errors
def embed(
    source: Annotated[
        Path, typer.Argument(help="run directory, checkpoint, or exported .onnx/TorchScript file")
    ],
    images_dir: Annotated[Path, typer.Argument(help="folder of images (searched recursively)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="embeddings file to write (.npy)")],
    batch_size: Annotated[int, typer.Option(help="images per batch")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Embed every image under IMAGES_DIR into FILE.npy.

    In sorted path order, with the file list in FILE.txt (one name per line; %, tab and line breaks in a name
    percent-encoded).
    """
    from hhcl.export import embed as run_embed

    if batch_size < 1:
        raise fail(f"--batch-size {batch_size} is not allowed: use 1 or more.")
    columns = (TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("embed", total=None)
        result = run_embed(
            source,
            images_dir,
            out,
            batch_size=batch_size,
            device=device,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"[green]wrote[/] {result.out} ({result.shape[0]} x {result.shape[1]} float32) "
        f"and {result.list_file}",
        highlight=False,
    )
