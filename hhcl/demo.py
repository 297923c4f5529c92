"""The demo: synthetic people, the ``demo`` preset on the CPU, and mAP before and after training.

The demo's numbers are exactly reproducible only under the same numeric conditions: CPU floating-point sums
(convolution and matmul kernels) depend on the thread count and on the instruction set the kernels pick, and a
difference in the last bit sends a 420-step training from random initialisation down another path. So the demo
pins its thread count (:data:`DEMO_THREADS`) and reports the conditions it ran under beside its numbers.
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from hhcl.config import load_config
from hhcl.data import build_dataset, open_split, prepare_synthetic
from hhcl.distributed import resolve_device
from hhcl.engine import Trainer
from hhcl.epoch import seed_everything
from hhcl.evaluate import evaluate
from hhcl.models import build_model
from hhcl.reporting import ConsoleReporter
from hhcl.run.layout import default_run_name
from hhcl.words import plural

DEMO_IDS = 120  # identities generated (half train, half test)
DEMO_CAMS = 4
#: the published figures' CPU thread count (the demo pins it: the training's path depends on it)
DEMO_THREADS = 2


@dataclass
class DemoResult:
    status: str
    exit_code: int
    message: str
    run_dir: Path
    untrained: dict[str, float]
    trained: dict[str, float]
    seconds: float
    numerics: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready numbers (fractions in [0, 1]) with the conditions they were measured under."""
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out


def numeric_environment(device: torch.device) -> dict[str, Any]:
    """What the demo's numbers depend on besides the code and the seed: device, threads, CPU kernels, versions."""
    import faiss
    import numpy
    import PIL

    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "machine": platform.machine(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "faiss": faiss.__version__,
    }


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` intra-op CPU threads, then restore the previous count."""
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _row(metrics: dict) -> dict[str, float]:
    return {"mAP": float(metrics["mAP"]), **{f"R{r}": float(v) for r, v in metrics["ranks"].items()}}


def run_demo(
    root: Path,
    runs_dir: Path,
    *,
    console: Console | None = None,
    overrides: tuple[str, ...] = (),
    threads: int = DEMO_THREADS,
    ids: int = DEMO_IDS,
) -> DemoResult:
    """Prepare the synthetic data if needed, train the demo preset, print untrained vs trained metrics.

    ``overrides`` are ``--set`` style (``train.device=cpu`` is the default; the figures are for the CPU).
    """
    console = console or Console()
    with pinned_threads(threads):
        return _run(root, runs_dir, console, overrides, ids)


def _run(root: Path, runs_dir: Path, console: Console, overrides: tuple[str, ...], ids: int) -> DemoResult:
    t0 = time.time()
    cfg = load_config("demo", [f"data.root={root}", "train.device=cpu", *overrides])
    console.print(f"synthetic people in {Path(root) / 'synthetic'} (generated on first use) ...")
    prepare_synthetic(root, ids=ids, cams=DEMO_CAMS, seed=cfg.train.seed, height=cfg.data.height, width=cfg.data.width)
    dataset = build_dataset("synthetic", root)

    device = resolve_device(cfg.train.device)
    numerics = {**numeric_environment(device), "seed": cfg.train.seed}  # the data's and the training's
    console.print(
        f"numerics: {numerics['device']}, {numerics['threads']} threads, {numerics['cpu_capability']} kernels, "
        f"torch {numerics['torch']} (the figures in the README were measured under the conditions printed there)"
    )
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

    table = Table(title=f"hhcl demo: {len(dataset.train)} train / {len(query)} query / "
                        f"{plural(len(gallery), 'gallery synthetic image')}")
    table.add_column("model")
    for col in ("mAP", "R1", "R5", "R10"):
        table.add_column(col, justify="right")
    for label, row in (("untrained (same init)", before), (f"HHCL, {plural(cfg.train.epochs, 'epoch')}", after)):
        table.add_row(label, *(f"{100 * row[c]:.1f}" if c in row else "-" for c in ("mAP", "R1", "R5", "R10")))
    console.print(table)
    seconds = time.time() - t0
    console.print(f"{result.status} in {seconds:.0f} s; run directory: [bold]{run_dir}[/] "
                  f"(hhcl monitor {run_dir} | hhcl eval {run_dir})")
    return DemoResult(result.status, result.exit_code, result.message, run_dir, before, after, seconds, numerics)
