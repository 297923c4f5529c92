"""The cost of a crash-consistent checkpoint: ``Checkpointer.save`` (weights + state as one unit: temporary
files fsynced, a commit record, renames) against a plain save (``save_file`` + ``torch.save``, no fsync, not
atomic), for the paper model (ResNet-50, Adam state) once per epoch. Example:
    .venv/bin/python benchmarks/bench_checkpoint.py --arch resnet50 --repeats 5 --dir /tmp/ckpt-bench
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from hhcl.config import load_config
from hhcl.models import build_model
from hhcl.run.checkpoint import Checkpointer
from hhcl.run.layout import RunLayout
from hhcl.run.state import TrainingState, capture_rng, state_bytes


def build(arch: str):
    model = build_model(arch, "avg", "none")
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3.5e-4, weight_decay=5e-4)
    for p in model.trainable_parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # Adam's exp_avg / exp_avg_sq exist, as after the first iteration
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.1)
    return model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False)


def plain(folder: Path, model, optimizer, scheduler, scaler) -> None:
    """What a simple trainer does: two files written in place, one after the other."""
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "last.safetensors"))
    state = TrainingState(1, 0, 0.0, -1, optimizer.state_dict(), scheduler.state_dict(), scaler.state_dict(),
                          capture_rng(), "x", "")
    (folder / "last.state.pt").write_bytes(state_bytes(state))


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    model, optimizer, scheduler, scaler = build(args.arch)
    cfg = load_config("market")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        layout = RunLayout(root / "run")
        layout.checkpoints.mkdir(parents=True)
        (root / "plain").mkdir()
        ckpt = Checkpointer(layout, model, optimizer, scheduler, scaler, cfg)
        safe = median_seconds(lambda: ckpt.save(1, 0, 0.5, 0), args.repeats)
        naive = median_seconds(lambda: plain(root / "plain", model, optimizer, scheduler, scaler), args.repeats)
        size = sum(p.stat().st_size for p in layout.checkpoints.iterdir()) / 2**20
    print(f"{args.arch}: checkpoint of {size:.0f} MB (weights + Adam state), median of {args.repeats}")
    print(f"  plain save (not atomic, no fsync): {naive:.3f} s")
    print(f"  Checkpointer.save (one unit, fsynced): {safe:.3f} s  ({safe / naive:.2f}x the plain save)")


if __name__ == "__main__":
    main()
