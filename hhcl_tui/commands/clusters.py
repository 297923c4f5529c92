"""``hhcl clusters``: contact sheets of a run's pseudo labels (what the clustering put together), per epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hhcl.words import plural
from hhcl_tui.common import console, fail
from hhcl_tui.errors import cli_errors


@cli_errors
def clusters(
    run: Annotated[Path, typer.Argument(help="run directory (runs/<name>)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the contact sheets")],
    epoch: Annotated[int | None, typer.Option(help="epoch to draw, as the log numbers them [default: the latest kept]")] = None,
    top: Annotated[int, typer.Option("--clusters", help="largest clusters to draw")] = 24,
    per_cluster: Annotated[int, typer.Option(help="images sampled per cluster")] = 12,
    root: Annotated[Path | None, typer.Option(help="data root holding the train images [default: the run's data.root]")] = None,
) -> None:
    """Draw one epoch's pseudo-label clusters as contact sheets.

    From the original images: one row per cluster, largest first, plus the outliers and a histogram of cluster
    sizes.
    """
    from hhcl.cluster_sheets import draw_run_clusters

    if epoch is not None and epoch < 1:
        raise fail(f"--epoch {epoch}: epochs are numbered from 1, as the log shows them")
    if top < 1 or per_cluster < 1:
        raise fail("--clusters and --per-cluster must be 1 or more")
    shown, report, quality = draw_run_clusters(
        run, out, epoch=None if epoch is None else epoch - 1, root=root, clusters=top, per_cluster=per_cluster
    )
    console.print(
        f"epoch {shown + 1}: {plural(report.n_clusters, 'cluster')}, {plural(report.n_outliers, 'outlier')}; "
        f"drew the {report.shown_clusters} largest into {out}/"
    )
    if quality is not None:
        pr = "  ".join(f"{k} {v:.3f}" for k, v in (("precision", quality.precision), ("recall", quality.recall)) if v is not None)
        console.print(f"against the train identities (never used in training): ARI {quality.ari:.3f}  NMI {quality.nmi:.3f}  {pr}")
    for path in report.files:
        console.print(f"  {path}")
