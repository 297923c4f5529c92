"""``hhcl search``: rank a folder of your own crops for query images; rank-list PNGs and results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from hhcl.words import plural
from hhcl_tui.common import console, fail
from hhcl_tui.errors import cli_errors


def _table(result: Any) -> Table:
    title = f"{result.query}" + ("  (its own gallery entry left out)" if result.excluded_self else "")
    table = Table(title=Text(title), header_style="bold cyan", title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("distance", justify="right")
    table.add_column("gallery image")
    for m in result.matches:
        table.add_row(str(m.rank), f"{m.distance:.4f}", Text(m.relpath))
    return table


@cli_errors
def search(
    source: Annotated[Path, typer.Argument(help="run directory (runs/<name>) or checkpoint (.safetensors, .pth.tar)")],
    gallery: Annotated[Path, typer.Option(help="folder of gallery images (searched recursively)")],
    query: Annotated[
        list[Path], typer.Option("--query", "-q", help="query image, or a folder of them (repeat for more)")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the rank-list PNGs and results.json")],
    top: Annotated[int, typer.Option(help="gallery images per query")] = 10,
    batch_size: Annotated[int, typer.Option(help="images per batch when embedding")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Find each query's nearest gallery images.

    The gallery's embeddings are cached beside it.
    """
    from hhcl.search import search as run_search

    if top < 1:
        raise fail(f"--top {top} is not allowed: use 1 or more gallery images per query.")
    if batch_size < 1:
        raise fail(f"--batch-size {batch_size} is not allowed: use 1 or more.")
    columns = (TextColumn("embedding gallery"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("embed", total=None)
        report = run_search(
            source,
            gallery,
            query,
            out_dir=out,
            top=top,
            batch_size=batch_size,
            device=device,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    for note in report.notes:
        console.print(Text(f"note: {note}"), style="yellow")
    for result in report.results:
        console.print(_table(result))
    console.print(
        Text(
            f"gallery {report.gallery}: {plural(report.gallery_size, 'image')} ({report.embedded} embedded, "
            f"{report.reused} reused from the cache, {report.removed} removed); cache {report.cache_file}"
        ),
        style="dim",
    )
    console.print(Text(f"wrote {plural(len(report.results), 'rank list')} and {report.results_file}"))
