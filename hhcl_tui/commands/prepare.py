"""``hhcl prepare DATASET``: extract/link a dataset into the data root, verify it and build its image cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hhcl.config import DATASETS
from hhcl_tui.common import console, data_root, err_console, fail
from hhcl_tui.errors import cli_errors

NOTES_SHOWN = 20  # notes printed one per line; the rest are counted


def _camera_table(report: Any) -> Table:
    """The cameras a folder dataset found: name -> id, and images per split."""
    splits = [s for s in ("train", "query", "gallery") if report.counts.get(s)]
    table = Table(title="cameras found (name -> id)", header_style="bold cyan")
    table.add_column("group")
    table.add_column("camera")
    for col in ("id", *splits):
        table.add_column(col, justify="right")
    for cam in report.cameras:
        counts = [f"{cam.images[s]:,}" if s in cam.images else "" for s in splits]
        table.add_row(cam.group, Text(cam.name), str(cam.camid), *counts)
    return table


@cli_errors
def prepare(
    dataset: Annotated[str, typer.Argument(help=f"one of {', '.join(DATASETS)}")],
    src: Annotated[Path | None, typer.Option(help="the dataset's archive (.zip/.tar[.gz]) or folder")] = None,
    root: Annotated[Path | None, typer.Option(help="data root (default: $HHCL_DATA or ./data)")] = None,
    height: Annotated[
        int | None, typer.Option(help="cache image height (default: 256; synthetic: 128)")
    ] = None,
    width: Annotated[int | None, typer.Option(help="cache image width (default: 128; synthetic: 64)")] = None,
    skip_corrupt: Annotated[bool, typer.Option(help="leave corrupt images out instead of failing")] = False,
    copy: Annotated[bool, typer.Option(help="copy a --src folder instead of linking it")] = False,
    cam_pattern: Annotated[
        str | None,
        typer.Option(
            help="folder: regex searched in each file name; its group 'cam' (else group 1) is the camera, in place "
            "of the camera sub-folder (flat Market names keep their c<N>)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="synthetic: generator seed; viper: id split seed")] = 0,
    ids: Annotated[int, typer.Option(help="synthetic: number of identities (half train, half test)")] = 100,
    cams: Annotated[int, typer.Option(help="synthetic: number of cameras (1-9)")] = 4,
    camera_bias: Annotated[
        float,
        typer.Option(
            help="synthetic: 0-1, how strongly each camera's colour cast and background differ "
            "(0 = the default data; 1 = a camera's crops look more alike than one person's across cameras)"
        ),
    ] = 0.0,
    site: Annotated[
        int | None,
        typer.Option(help="synthetic: seed of the cameras alone (the demo's is 1); default: drawn from --seed"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
) -> None:
    """Prepare a dataset under ROOT/DATASET for training.

    Safe extraction, layout and count checks, decoding, uint8 cache.
    """
    from hhcl.data import REGISTRY, prepare_dataset, prepare_synthetic
    from hhcl.diskspace import disk_error, is_disk_full

    if dataset not in REGISTRY:
        raise fail(f"unknown dataset '{dataset}': use one of {', '.join(REGISTRY)}")
    root = data_root(root)
    try:
        if dataset == "synthetic":
            report = prepare_synthetic(
                root,
                ids=ids,
                cams=cams,
                seed=seed,
                camera_bias=camera_bias,
                site=site,
                height=height or 128,
                width=width or 64,
                progress=progress,
            )
        else:
            options = {"cam_pattern": cam_pattern} if cam_pattern else {}
            if dataset == "viper":
                options["seed"] = seed
            report = prepare_dataset(
                dataset,
                src,
                root,
                height=height or 256,
                width=width or 128,
                skip_corrupt=skip_corrupt,
                progress=progress,
                copy=copy,
                options=options,
            )
    except OSError as err:  # a full disk or file size limit: the fix names --root (nothing half-written stays)
        if not is_disk_full(err):
            raise
        raise disk_error(err, err.filename or root, "free space on it, or use another data root (--root)") from None
    for warning in report.warnings:  # plain text: a path may hold "[x]", which is not markup
        err_console.print(Text.assemble(("warning:", "yellow"), " ", warning))
    for note in report.notes[:NOTES_SHOWN]:  # links a folder dataset left out (loops, duplicates)
        err_console.print(Text.assemble(("note:", "cyan"), " ", note))
    if len(report.notes) > NOTES_SHOWN:
        err_console.print(f"note: ... and {len(report.notes) - NOTES_SHOWN:,} more left out", highlight=False)
    table = Table(title=Text(f"{dataset} in {report.top}"), header_style="bold cyan")
    for col in ("split", "images", "identities", "cameras", "published"):
        table.add_column(col, justify="right")
    for split, n in report.counts.items():
        ids = report.ids.get(split)
        table.add_row(
            split,
            f"{n:,}",
            "unlabelled" if ids is None else f"{ids:,}",
            f"{report.cams.get(split, 0):,}",
            f"{report.published[split]:,}" if report.published else "-",
        )
    console.print(table)
    if report.cameras:
        console.print(_camera_table(report))
    console.print(
        f"cache: {', '.join(str(p) for p in report.caches)}  ({report.seconds:.1f} s)",
        highlight=False,
        markup=False,
    )
