"""Benchmark: training batches/s at 256x128, batch 256: uint8 cache + device augmentation (hhcl.data) vs the
reference's pipeline (PIL decode + bicubic resize + torchvision transforms + RandomErasing in a DataLoader).

Both draw their indices from the same camera-aware PK sampler over the train pids. Data: a prepared dataset
(``--root DATA --dataset market1501``) or, by default, synthetic people generated in a temporary folder
(128x64 JPEGs like Market's, so both paths upsample).

    .venv/bin/python benchmarks/bench_data.py [--root DATA --dataset NAME] [--batches 20] [--workers 4]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hhcl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PKSampler,
    TrainAugment,
    build_dataset,
    open_split,
    prepare_synthetic,
)


class ReferenceErasing:
    """The reference's RandomErasing (p 0.5, area 0.02-0.4, uniform aspect 0.3-3.33, ImageNet-mean fill)."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) >= 0.5:
            return img
        for _ in range(100):
            target = random.uniform(0.02, 0.4) * img.shape[1] * img.shape[2]
            aspect = random.uniform(0.3, 1 / 0.3)
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < img.shape[2] and h < img.shape[1]:
                x1, y1 = random.randint(0, img.shape[1] - h), random.randint(0, img.shape[2] - w)
                for c, v in enumerate(IMAGENET_MEAN):
                    img[c, x1 : x1 + h, y1 : y1 + w] = v
                return img
        return img


class PILDataset(Dataset):
    """The reference's Preprocessor: open with PIL, convert to RGB, apply the train transform."""

    def __init__(self, paths: list[str], height: int, width: int):
        self.paths = paths
        self.transform = T.Compose(
            [
                T.Resize((height, width), interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(p=0.5),
                T.Pad(10),
                T.RandomCrop((height, width)),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                ReferenceErasing(),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(Image.open(self.paths[i]).convert("RGB"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_fast(store, sampler, aug, device, n: int) -> float:
    gen = torch.Generator(device=device).manual_seed(0)
    for _ in range(2):  # warm-up
        aug(store.gather(next(sampler)), gen)
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        out = aug(store.gather(next(sampler)), gen)
    sync(device)
    assert out.shape[0] == sampler.batch_size
    return n / (time.perf_counter() - start)


def bench_baseline(paths, sampler, args, device, n: int) -> float:
    batches = [next(sampler).tolist() for _ in range(n + 1)]
    loader = DataLoader(
        PILDataset(paths, args.height, args.width),
        batch_sampler=batches,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    it = iter(loader)
    next(it).to(device)  # warm-up: workers started, first batch
    sync(device)
    start = time.perf_counter()
    for images in it:
        images = images.to(device, non_blocking=True)
    sync(device)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="data root with a prepared dataset (default: temp synthetic)"
    )
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-instances", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the fast path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            prepare_synthetic(
                root, ids=200, cams=6, seed=0, height=args.height, width=args.width, progress=False
            )
        ds = build_dataset(args.dataset, root)
        t0 = time.perf_counter()
        store = open_split(ds, "train", height=args.height, width=args.width, device=device, progress=False)
        open_s = time.perf_counter() - t0
        labels, cams = store.pids, store.camids
        gen = torch.Generator(device=labels.device).manual_seed(0)
        make = lambda: PKSampler(  # noqa: E731
            labels, cams, num_instances=args.num_instances, batch_size=args.batch_size, generator=gen
        )
        fast = bench_fast(store, make(), TrainAugment(args.height, args.width), device, args.batches)
        base = bench_baseline([s.path for s in ds.train], make(), args, device, args.batches)
    ips = args.batch_size
    print(
        f"data pipeline, {args.dataset} train ({len(ds.train)} images), {args.height}x{args.width}, "
        f"batch {args.batch_size}, device {device}, {args.batches} batches, torch threads {torch.get_num_threads()}"
    )
    print(f"{'path':<48}{'batches/s':>12}{'images/s':>12}")
    print(f"{'cache + device augment (hhcl.data)':<48}{fast:>12.2f}{fast * ips:>12.0f}")
    print(f"{f'PIL + torchvision, DataLoader({args.workers} workers)':<48}{base:>12.2f}{base * ips:>12.0f}")
    print(
        f"speed-up: {fast / base:.1f}x   (opening the cached split: {open_s:.2f} s, resident={store._resident is not None})"
    )


if __name__ == "__main__":
    main()
