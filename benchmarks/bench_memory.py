"""Memory-bank update time per iteration: hhcl.memory (vectorised) vs a per-sample loop like the reference.

The baseline follows the reference ``cm.py`` backward passes: a Python loop over samples (CM), or per
cluster a dict of instance lists, one 1xD.Dx1 product per instance copied to the host with
``.cpu().numpy()``, ``np.argmin`` and row-by-row updates (CMhard, CMhybrid, CMhybrid_v2).

    .venv/bin/python benchmarks/bench_memory.py [--batch 256 --dim 2048 --clusters 1000 --instances 16]

Camera-aware rows (O2CAP, and CMhybrid with ``memory.camera_aware``): loss + input gradient + memory update per
iteration of ``hhcl.camera_memory`` against the per-sample loop written from the authors' ``o2cap.py``
(``tests/helpers/o2cap_loop.py``, the test oracle; plus ``tests/helpers/memory_loop.py`` for the hybrid part), on
a batch of ``--camera-batch`` images = proxies x ``--camera-instances`` as O2CAP's sampler emits them.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hhcl.camera_memory import CameraAwareHybrid, CameraMemory, camera_proxies
from hhcl.memory import MODES, HybridMemory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test oracles are the naive baselines
from helpers.memory_loop import LoopMemory  # noqa: E402
from helpers.o2cap_loop import LoopO2CAP  # noqa: E402

CAMERA_MODES = ("O2CAP", "camera_aware")


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
    ap.add_argument("--camera-modes", nargs="*", default=list(CAMERA_MODES), choices=CAMERA_MODES)
    ap.add_argument("--cameras", type=int, default=6, help="cameras of the camera-aware rows' train set")
    ap.add_argument("--camera-batch", type=int, default=32, help="O2CAP's batch size")
    ap.add_argument("--camera-instances", type=int, default=4, help="images per proxy in a camera-aware batch")
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
    if args.camera_modes:
        bench_camera(args, device)


def bench_camera(args: argparse.Namespace, device: torch.device) -> None:
    """Loss + backward + update per iteration: hhcl.camera_memory vs the authors'-code loop oracles."""
    gen = torch.Generator().manual_seed(1)
    n_img = args.clusters * args.cameras  # every cluster seen by a random subset of the cameras
    labels = torch.arange(args.clusters).repeat_interleave(args.cameras)
    cams = torch.randint(args.cameras, (n_img,), generator=gen)
    feats = F.normalize(torch.randn(n_img, args.dim, generator=gen), dim=1)
    proxy = camera_proxies(labels, cams).of_image
    n_proxy = int(proxy.max()) + 1
    k = args.camera_instances
    batches = []
    for _ in range(4):  # camera_batch / k proxies x k images (with repeats when a proxy has fewer)
        chosen = torch.randperm(n_proxy, generator=gen)[: args.camera_batch // k]
        idx = torch.cat([torch.nonzero(proxy == p).flatten()[torch.randint(int((proxy == p).sum()), (k,),
                                                                           generator=gen)] for p in chosen])
        batches.append((idx, F.normalize(torch.randn(len(idx), args.dim, generator=gen), dim=1)))
    print(
        f"\ncamera-aware loss + backward + update, batch {args.camera_batch} ({args.camera_batch // k} proxies x {k}), "
        f"dim {args.dim}, {args.clusters} clusters, {args.cameras} cameras, {n_proxy} proxies, bg_knn 50, pos_k 3, "
        f"device {device}, median of {args.iters} iters"
    )
    print(f"{'mode':<12} {'loop ms':>9} {'vectorised ms':>14} {'speed-up':>9} {'max |diff|':>11}")
    kw = {"temp": 0.07, "momentum": 0.2, "bg_knn": 50, "pos_k": 3, "balance_w": 0.15}
    dev_batches = [(labels[i].to(device), cams[i].to(device), f.to(device)) for i, f in batches]
    for mode in args.camera_modes:
        mem = CameraMemory.from_features(feats, labels, cams, **kw)
        loop = LoopO2CAP(feats, labels, cams, **kw)
        hloop = None
        if mode == "camera_aware":
            hybrid = HybridMemory.from_features(feats, labels, mode="CMhybrid", temp=0.07, momentum=0.2)
            hloop = LoopMemory(hybrid.features, mode="CMhybrid", num_clusters=args.clusters, temp=0.07, momentum=0.2)
            mem = CameraAwareHybrid(hybrid, mem)
        mem = mem.to(device)

        def fast(i: int, mem=mem) -> None:
            y, c, f = dev_batches[i % 4]
            x = f.clone().requires_grad_()
            mem(x, y, c).backward()
            mem.update(f, y, c)

        def naive(i: int, loop=loop, hloop=hloop) -> None:
            idx, f = batches[i % 4]
            x = f.clone().requires_grad_()
            loss = loop.loss(x, idx, cams[idx])[0] + (hloop.loss(x, labels[idx]) if hloop else 0)
            loss.backward()
            loop.update(f, idx)
            if hloop:
                hloop.update(f, labels[idx])

        fast(0)
        naive(0)
        rows = mem.proxies.features if mode == "camera_aware" else mem.features
        diff = (rows.cpu() - loop.global_memory).abs().max().item()
        vec_ms = _time(fast, args.iters, args.warmup, device)
        loop_ms = _time(naive, max(5, args.iters // 4), 1, torch.device("cpu"))
        print(f"{mode:<12} {loop_ms:>9.2f} {vec_ms:>14.3f} {loop_ms / vec_ms:>8.1f}x {diff:>11.1e}")


if __name__ == "__main__":
    main()
