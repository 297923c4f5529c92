"""Memory-bank update time per iteration: hhcl.memory (vectorised) vs a per-sample loop like the reference.

The baseline follows the reference ``cm.py`` backward passes: a Python loop over samples (CM), or per
cluster a dict of instance lists, one 1xD.Dx1 product per instance copied to the host with
``.cpu().numpy()``, ``np.argmin`` and row-by-row updates (CMhard, CMhybrid, CMhybrid_v2).

    .venv/bin/python benchmarks/bench_memory.py [--batch 256 --dim 2048 --clusters 1000 --instances 16]
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from hhcl.memory import MODES, HybridMemory


@torch.no_grad()
def loop_update(M: torch.Tensor, f: torch.Tensor, y: torch.Tensor, mode: str, C: int, m: float) -> None:
    """In-place reference-style update of the memory rows ``M``."""
    if mode == "CM":
        for x, c in zip(f, y, strict=True):
            M[c] = m * M[c] + (1.0 - m) * x
            M[c] /= M[c].norm()
        return
    groups: dict[int, list[torch.Tensor]] = collections.defaultdict(list)
    for x, c in zip(f, y.tolist(), strict=True):
        groups[c].append(x)
    for c, xs in groups.items():
        if mode in ("CMhard", "CMhybrid"):
            sims = [x.unsqueeze(0).mm(M[c].unsqueeze(0).t())[0][0].cpu().numpy() for x in xs]
            j = int(np.argmin(np.array(sims)))
            M[c] = M[c] * m + (1 - m) * xs[j]
            M[c] /= M[c].norm()
        if mode == "CMhybrid_v2":
            M[[c + C * k for k in range(1, len(xs) + 1)]] = f[y == c]
        if mode in ("CMhybrid", "CMhybrid_v2"):
            row = c + C if mode == "CMhybrid" else c
            M[row] = M[row] * m + (1 - m) * torch.stack(xs).mean(0)
            M[row] /= M[row].norm()


def _time(fn: Callable[[int], None], iters: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds per call (robust to other processes sharing the CPU)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for i in range(warmup):
        fn(i)
    times = []
    for i in range(iters):
        sync()
        t0 = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=16, help="images per cluster in a batch (PK sampler)")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = ap.parse_args()
    if args.batch % args.instances:
        ap.error(f"--batch {args.batch} must be a multiple of --instances {args.instances}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False

    gen = torch.Generator().manual_seed(0)
    C, P, B = args.clusters, args.instances, args.batch
    batches = []
    for _ in range(4):  # B / P clusters x P images, contiguous blocks as the PK sampler emits them
        ids = torch.randperm(C, generator=gen)[: B // P].repeat_interleave(P)
        feats = F.normalize(torch.randn(B, args.dim, generator=gen), dim=1)
        batches.append((feats.to(device), ids.to(device)))
    centroids = torch.randn(C, args.dim, generator=gen).to(device)

    print(
        f"memory update, batch {B} ({B // P} clusters x {P}), dim {args.dim}, {C} clusters, device {device}, "
        f"threads {torch.get_num_threads()}, median of {args.iters} iters"
    )
    print(f"{'mode':<12} {'loop ms':>9} {'vectorised ms':>14} {'speed-up':>9} {'max |diff|':>11}")
    for mode in args.modes:
        inst = None
        if mode == "CMhybrid_v2":
            inst = torch.randn(P, C, args.dim, generator=gen).to(device)
        mem = HybridMemory(centroids, mode=mode, num_instances=P, instance_features=inst)
        M = mem.features.clone()
        f0, y0 = batches[0]  # agreement after one update from the same memory
        loop_update(M, f0, y0, mode, C, mem.momentum)
        mem.update(f0, y0)
        diff = (M - mem.features).abs().max().item()
        vec_ms = _time(lambda i, mem=mem: mem.update(*batches[i % 4]), args.iters, args.warmup, device)
        loop_ms = _time(
            lambda i, M=M, mode=mode: loop_update(M, *batches[i % 4], mode, C, 0.1),
            args.iters,
            args.warmup,
            device,
        )
        print(f"{mode:<12} {loop_ms:>9.2f} {vec_ms:>14.3f} {loop_ms / vec_ms:>8.1f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()
