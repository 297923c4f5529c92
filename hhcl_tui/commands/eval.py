"""``hhcl eval``: mAP / CMC of a run or checkpoint on a prepared dataset, re-ranking, JSON, rank-list PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hhcl.words import plural
from hhcl_tui.common import console, data_root, fail
from hhcl_tui.errors import cli_errors

_ORIGIN = {
    "run": "the run's data.root",
    "override": "--root",
    "default": "no data.root recorded: $HHCL_DATA or ./data",
}


def _table(report: Any) -> Table:
    table = Table(
        title=Text(
            f"{report.dataset}: {report.num_query} query x {report.num_gallery} gallery  ({report.arch})\n"
            f"data: {report.data_root}/{report.dataset}  ({_ORIGIN[report.data_root_from]})"
        ),
        header_style="bold cyan",
    )
    table.add_column("ranking")
    for col in ("mAP", "R1", "R5", "R10"):
        table.add_column(col, justify="right")
    for label, m in report.rows():
        table.add_row(label, *(f"{100 * v:.1f}" for v in (m["mAP"], m["ranks"][1], m["ranks"][5], m["ranks"][10])))
    if report.chance is not None:
        c = report.chance
        table.add_row(Text("a random ranking (chance)", style="dim"),
                      *(Text(f"{100 * v:.1f}", style="dim") for v in (c["mAP"], c["ranks"][1], c["ranks"][5], c["ranks"][10])))
    return table


def chance_verdict(report: Any) -> str | None:
    """A line saying the model ranks no better than chance, when its mAP is within 3 sd of a random ranking's."""
    if report.chance is None or report.beats_chance():
        return None
    c = report.chance
    return (f"mAP {100 * report.metrics['mAP']:.1f} is not more than 3 standard deviations above a random "
            f"ranking's ({100 * c['mAP']:.1f} +- {100 * c['mAP_sd']:.1f}): this model tells these people apart no "
            "better than chance (an untrained model, or one trained on too little).")


@cli_errors
def eval_cmd(
    source: Annotated[Path, typer.Argument(help="run directory (runs/<name>) or checkpoint (.safetensors, .pth.tar)")],
    dataset: Annotated[str | None, typer.Option(help="dataset name (default: the run's data.dataset)")] = None,
    root: Annotated[Path | None, typer.Option(help="data root (default: the run's data.root; for a checkpoint without one, $HHCL_DATA or ./data)")] = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="also report k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")] = False,
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="average with flipped images (default: eval.flip)")] = None,
    amp: Annotated[str | None, typer.Option(help="off, bf16 or fp16 autocast for the features (default: train.amp)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the numbers to this JSON file")] = None,
    ranklist: Annotated[int, typer.Option(help="draw rank lists with the top K gallery images (needs --out)")] = 0,
    out: Annotated[Path | None, typer.Option(help="folder for the rank-list PNGs")] = None,
    num_queries: Annotated[int, typer.Option(help="how many queries get a rank list")] = 20,
    batch_size: Annotated[int, typer.Option(help="images per batch for feature extraction")] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
) -> None:
    """Evaluate a model on a dataset's query/gallery split.

    mAP, R1, R5, R10 (the reference's protocol).
    """
    from hhcl.atomic import atomic_write_bytes
    from hhcl.evaluate import evaluate_checkpoint

    if batch_size < 1:
        raise fail(f"--batch-size {batch_size} is not allowed: use 1 or more.")
    if ranklist < 0 or num_queries < 1:
        raise fail("--ranklist K and --num-queries N must be positive.")
    if ranklist and out is None:
        raise fail("--ranklist K needs --out DIR: the folder to write the rank-list PNGs to.")
    with console.status(f"evaluating {source} ..."):
        report = evaluate_checkpoint(
            source,
            root=root,
            default_root=data_root(None),
            dataset=dataset,
            rerank=rerank,
            flip=flip,
            amp=amp,
            batch_size=batch_size,
            device=device,
            ranklist=ranklist,
            out_dir=out,
            num_ranklists=num_queries,
        )
    console.print(_table(report))
    verdict = chance_verdict(report)
    if verdict:
        console.print(verdict, style="yellow", highlight=False, markup=False)
    secs = report.seconds
    console.print(
        f"features {secs['features']:.1f} s, metrics {secs['metrics']:.2f} s"
        + (f", re-ranking {secs['rerank']:.1f} s" if "rerank" in secs else ""),
        style="dim",
    )
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(json_out, (json.dumps(report.to_json(), indent=2) + "\n").encode())
        console.print(f"wrote {json_out}")
    if report.ranklists:
        console.print(f"wrote {plural(len(report.ranklists), 'rank list')} (top {ranklist}) to {out}")
