"""Ghost BN: the vectorised GhostBatchNorm2d against the naive per-chunk loop (BN per chunk + cat).

Times forward+backward in train mode; checks the two agree. Example:
    .venv/bin/python benchmarks/bench_ghost_bn.py --batch 256 --group 64 --channels 256 --height 64 --width 32
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from hhcl.models import convert_ghost_bn


def naive(bn: nn.BatchNorm2d, x: torch.Tensor, group: int) -> torch.Tensor:
    """What DataParallel does: ordinary BN per chunk, running stats from chunk 0, outputs concatenated."""
    chunks = x.split(group)
    outs = [bn(chunks[0])]
    outs += [F.batch_norm(c, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for c in chunks[1:]]
    return torch.cat(outs)


def timed(fn, x: torch.Tensor, repeats: int) -> float:
    def step() -> None:
        xi = x.detach().requires_grad_(True)
        fn(xi).square().mean().backward()

    step()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.channels, args.height, args.width, device=device)
    bn = nn.BatchNorm2d(args.channels).to(device)
    ghost = convert_ghost_bn(nn.Sequential(copy.deepcopy(bn)), args.group)[0]
    err = (ghost(x) - naive(copy.deepcopy(bn), x, args.group)).abs().max().item()
    rows = []
    for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xf = x.to(memory_format=fmt)
        t_naive = timed(lambda t: naive(bn, t, args.group), xf, args.repeats)
        t_fast = timed(ghost, xf, args.repeats)
        t_plain = timed(bn, xf, args.repeats)
        rows.append((fmt_name, t_naive, t_fast, t_plain))
    print(f"ghost BN  x={list(x.shape)} group={args.group} device={device}  max |fast - naive| = {err:.2e}")
    print(f"{'layout':<14}{'naive loop ms':>15}{'vectorised ms':>15}{'speed-up':>10}{'plain BN ms':>13}")
    for name, t_naive, t_fast, t_plain in rows:
        print(f"{name:<14}{t_naive:>15.2f}{t_fast:>15.2f}{t_naive / t_fast:>9.2f}x{t_plain:>13.2f}")


if __name__ == "__main__":
    main()
