"""The demo: synthetic people, the ``demo`` preset on the CPU, and mAP before and after training."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hhcl.config import load_config
from hhcl.data import DatasetNotFoundError, build_dataset, open_split, prepare_synthetic
from hhcl.distributed import resolve_device
from hhcl.engine import Trainer
from hhcl.epoch import seed_everything
from hhcl.evaluate import evaluate
from hhcl.models import build_model
from hhcl.reporting import ConsoleReporter
from hhcl.run.layout import default_run_name

DEMO_IDS = 120  # identities generated (half train, half test)
DEMO_CAMS = 4


@dataclass
class DemoResult:
    status: str
    exit_code: int
    message: str
    run_dir: Path
    untrained: dict[str, float]
    trained: dict[str, float]
    seconds: float


def _row(metrics: dict) -> dict[str, float]:
    return {"mAP": float(metrics["mAP"]), **{f"R{r}": float(v) for r, v in metrics["ranks"].items()}}


def run_demo(root: Path, runs_dir: Path, *, console: Console | None = None, overrides: tuple[str, ...] = ()) -> DemoResult:
    """Prepare the synthetic data if needed, train the demo preset, print untrained vs trained metrics."""
    console = console or Console()
    t0 = time.time()
    cfg = load_config("demo", [f"data.root={root}", *overrides])
    try:
        dataset = build_dataset("synthetic", root)
    except DatasetNotFoundError:
        console.print(f"generating synthetic people in {Path(root) / 'synthetic'} ...")
        prepare_synthetic(root, ids=DEMO_IDS, cams=DEMO_CAMS, seed=cfg.train.seed, height=cfg.data.height, width=cfg.data.width)
        dataset = build_dataset("synthetic", root)

    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)  # the same initialisation the trainer starts from
    m = cfg.model
    model = build_model(m.arch, m.pooling, m.pretrained, num_features=m.num_features, dropout=m.dropout, bn_group=m.bn_group)
    model = model.to(device)
    size = {"height": cfg.data.height, "width": cfg.data.width, "device": device}
    query, gallery = open_split(dataset, "query", **size), open_split(dataset, "gallery", **size)
    before = _row(evaluate(model, query, gallery, batch_size=cfg.data.batch_size))
    console.print(f"untrained model: mAP {100 * before['mAP']:.1f}  R1 {100 * before['R1']:.1f}")

    run_dir = Path(runs_dir) / default_run_name(cfg.data.dataset, cfg.model.arch, "demo")
    result = Trainer(cfg, run_dir, preset="demo", hooks=[ConsoleReporter(run_dir, console)]).fit()
    after = {"mAP": result.best_mAP}
    if result.last_eval is not None:
        after = {"mAP": result.last_eval["mAP"], **{f"R{r}": float(v) for r, v in result.last_eval["ranks"].items()}}

    table = Table(title=f"hhcl demo: {len(dataset.train)} train / {len(query)} query / {len(gallery)} gallery synthetic images")
    table.add_column("model")
    for col in ("mAP", "R1", "R5", "R10"):
        table.add_column(col, justify="right")
    for label, row in (("untrained (same init)", before), (f"HHCL, {cfg.train.epochs} epochs", after)):
        table.add_row(label, *(f"{100 * row[c]:.1f}" if c in row else "-" for c in ("mAP", "R1", "R5", "R10")))
    console.print(table)
    seconds = time.time() - t0
    console.print(f"{result.status} in {seconds:.0f} s; run directory: [bold]{run_dir}[/] "
                  f"(hhcl monitor {run_dir} | hhcl eval {run_dir})")
    return DemoResult(result.status, result.exit_code, result.message, run_dir, before, after, seconds)
