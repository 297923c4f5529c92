"""The demo: synthetic people, the ``demo`` preset on the CPU, and mAP before and after training.

The demo's numbers are exactly reproducible only under the same numeric conditions: CPU floating-point sums
(convolution and matmul kernels) depend on the thread count and on the instruction set the kernels pick, and a
difference in the last bit sends a training from random initialisation down another path. The design keeps
those paths close: 240 people seen by four fixed cameras (the cameras, not the people, decide how hard the data
is), 800 steps whose learning rate drops tenfold after 12 of 20 epochs so the run settles. The demo pins its
thread count (:data:`DEMO_THREADS`), prints the conditions it ran under, and places its figure against the range
measured over CPU kernels x threads x seeds (``benchmarks/demo_figures.py --grid``, :data:`RANGE_FILE`).
"""

from __future__ import annotations

import contextlib
import json
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
from hhcl.errors import ArgumentError
from hhcl.evaluate import evaluate
from hhcl.models import build_model
from hhcl.reporting import ConsoleReporter
from hhcl.run.layout import default_run_name
from hhcl.words import plural

DEMO_IDS = 240  # identities generated (half train, half test)
DEMO_CAMS = 4
#: the seed of the demo's cameras: a seed draws other people seen by the same four cameras (see generate)
DEMO_SITE = 1
#: the grid's median and range (written by benchmarks/demo_figures.py --grid, beside this module)
RANGE_FILE = "demo_range.json"
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
    inside_range: bool | None = None  # the HHCL mAP within the measured range (None: not compared)

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
        raise ArgumentError(f"--threads must be >= 1, got {threads}")
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
    site: int | None = DEMO_SITE,
) -> DemoResult:
    """Prepare the synthetic data if needed, train the demo preset, print untrained vs trained metrics.

    ``overrides`` are ``--set`` style (``train.device=cpu`` is the default; the figures are for the CPU). ``site``
    seeds the cameras (``hhcl.data.synthetic.generate``; None: the data seed draws them too).
    """
    console = console or Console()
    with pinned_threads(threads):
        return _run(root, runs_dir, console, overrides, ids, site)


def _run(
    root: Path, runs_dir: Path, console: Console, overrides: tuple[str, ...], ids: int, site: int | None
) -> DemoResult:
    t0 = time.time()
    cfg = load_config("demo", [f"data.root={root}", "train.device=cpu", *overrides])
    console.print(f"synthetic people in {Path(root) / 'synthetic'} (generated on first use) ...")
    prepare_synthetic(root, ids=ids, cams=DEMO_CAMS, seed=cfg.train.seed, site=site,
                       height=cfg.data.height, width=cfg.data.width)
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
    shipped = not overrides and ids == DEMO_IDS and site == DEMO_SITE
    placed = placement(100 * after["mAP"], numerics, measured_range()) if result.status == "ok" and shipped else None
    if placed is not None:
        console.print(placed[1], highlight=False)
    elif result.status == "ok":
        console.print("not compared with the measured range: that is for the demo as shipped (no --set, 240 ids)")
    return DemoResult(result.status, result.exit_code, result.message, run_dir, before, after, seconds, numerics,
                      None if placed is None else placed[0])


def measured_range() -> dict[str, Any] | None:
    """The grid's median and range of the demo's HHCL mAP (``benchmarks/demo_figures.py --grid``), if shipped."""
    path = Path(__file__).with_name(RANGE_FILE)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def placement(map_pct: float, numerics: dict[str, Any], measured: dict[str, Any] | None) -> tuple[bool | None, str]:
    """Whether ``map_pct`` lies in the measured range, and the line saying so with the conditions that differ."""
    if measured is None:
        return None, "no measured range ships with this copy of hhcl (benchmarks/demo_figures.py --grid writes it)"
    runs = measured["runs"]
    kernels = sorted({r["cpu_capability"] for r in runs})
    threads = sorted({r["threads"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    inside = measured["low"] - 0.05 <= map_pct <= measured["high"] + 0.05  # the range is printed to one decimal
    text = (
        f"HHCL mAP {map_pct:.1f} is {'inside' if inside else 'OUTSIDE'} the measured range {measured['low']:.1f} to "
        f"{measured['high']:.1f} (median {measured['median']:.1f}; {len(runs)} runs: {'/'.join(kernels)} kernels x "
        f"{'/'.join(map(str, threads))} threads x seeds {'/'.join(map(str, seeds))}, torch {measured['torch']}, "
        f"{measured['measured']})"
    )
    differ = []
    if numerics["torch"] != measured["torch"]:
        differ.append(f"torch {numerics['torch']}")
    if numerics["machine"] != measured["machine"]:
        differ.append(f"a {numerics['machine']} CPU")
    if numerics["cpu_capability"] not in kernels:
        differ.append(f"{numerics['cpu_capability']} kernels")
    if numerics["threads"] not in threads:
        differ.append(f"{numerics['threads']} threads")
    if numerics["seed"] not in seeds:
        differ.append(f"seed {numerics['seed']}")
    if differ:
        text += f"; this run differs from those in {', '.join(differ)}, so its figure may differ too"
    return inside, text
