"""Training-iteration benchmark: time split (data, forward, backward+step, memory update) and the ratio of
the bare model step (forward + backward + Adam on a resident batch) to a full HHCL iteration.

    python benchmarks/bench_train.py                                   # CPU: resnet18 at 128x64, batch 64
    python benchmarks/bench_train.py --arch resnet50 --height 256 --width 128 --batch 256 --amp bf16   # GPU

The full iteration is what the trainer runs: PK sampler -> gather uint8 from a resident cache -> device
augmentation -> model (ghost BN) -> hybrid-memory loss -> backward -> Adam -> memory update.
Goal: bare / full >= 0.9 (the pipeline around the model costs under 10 %).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from hhcl.data.augment import TrainAugment
from hhcl.data.sampler import PKSampler
from hhcl.memory import HybridMemory
from hhcl.models import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--instances", type=int, default=16)
    ap.add_argument("--bn-group", type=int, default=0)
    ap.add_argument("--images", type=int, default=4096, help="size of the resident uint8 cache")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gen = torch.Generator().manual_seed(0)

    n = args.images
    cache = torch.randint(0, 256, (n, 3, args.height, args.width), dtype=torch.uint8, generator=gen).to(device)
    n_clusters = n // 16
    labels = torch.arange(n) % n_clusters
    camids = torch.randint(0, 6, (n,), generator=gen)
    sampler = iter(PKSampler(labels, camids, num_instances=args.instances, batch_size=args.batch, generator=gen))
    augment = TrainAugment(args.height, args.width)
    aug_gen = torch.Generator(device=device).manual_seed(0)
    model = build_model(args.arch, "avg", "none", bn_group=args.bn_group).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3.5e-4, weight_decay=5e-4)
    centroids = torch.nn.functional.normalize(torch.randn(n_clusters, model.feature_dim, generator=gen), dim=1)
    memory = HybridMemory(centroids, mode="CMhybrid").to(device)
    labels_dev = labels.to(device)
    autocast = (
        torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp])
        if args.amp != "off"
        else nullcontext()
    )
    model.train()

    def full_step(split: dict[str, float] | None) -> None:
        t = time.perf_counter()
        idx = next(sampler)
        x = augment(cache[idx.to(device)], aug_gen).contiguous(memory_format=memory_format)
        y = labels_dev[idx.to(device)]
        if split is not None:
            sync(device)
            split["data"] += time.perf_counter() - t
            t = time.perf_counter()
        with autocast:
            f = model(x)
        if split is not None:
            sync(device)
            split["forward"] += time.perf_counter() - t
            t = time.perf_counter()
        loss = memory(f.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if split is not None:
            sync(device)
            split["loss+backward+step"] += time.perf_counter() - t
            t = time.perf_counter()
        memory.update(f.detach().float(), y)
        if split is not None:
            sync(device)
            split["memory update"] += time.perf_counter() - t

    x_fixed = augment(cache[: args.batch], aug_gen).contiguous(memory_format=memory_format)

    def bare_step() -> None:
        with autocast:
            f = model(x_fixed)
        loss = f.float().square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn, iters: int) -> float:
        for _ in range(args.warmup):
            fn()
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        return (time.perf_counter() - t) / iters

    bare = timed(bare_step, args.iters)
    full = timed(lambda: full_step(None), args.iters)
    split = dict.fromkeys(("data", "forward", "loss+backward+step", "memory update"), 0.0)
    for _ in range(args.iters):
        full_step(split)

    print(f"{args.arch} {args.height}x{args.width} batch {args.batch} on {device} (amp {args.amp}, "
          f"{torch.get_num_threads()} threads)")
    print(f"{'stage':<22}{'ms/iter':>10}")
    for k, v in split.items():
        print(f"{k:<22}{1000 * v / args.iters:>10.1f}")
    print(f"{'full iteration':<22}{1000 * full:>10.1f}   {args.batch / full:8.1f} images/s")
    print(f"{'bare model step':<22}{1000 * bare:>10.1f}   {args.batch / bare:8.1f} images/s")
    print(f"ratio bare/full = {bare / full:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
