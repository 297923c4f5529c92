"""The whole recipe as a user runs it: the ``market`` preset end to end on Market-sized synthetic people, timed
per stage from the run's own ``events.jsonl`` (so the figures are the ones the engine reports).

    # GPU, Market scale (12,936 train / 3,368 query / 15,913 gallery at 256x128), one option at a time:
    python benchmarks/bench_recipe.py --epochs 2 --iters 50 --json recipe-fp32.json
    python benchmarks/bench_recipe.py --epochs 2 --iters 50 --set train.amp=bf16 --json recipe-bf16.json
    # CPU, a few minutes: 5 % of the people, resnet18 at 64x32
    python benchmarks/bench_recipe.py --scale 0.05 --epochs 2 --iters 4 \\
        --set model.arch=resnet18 --set data.height=64 --set data.width=32 --set data.batch_size=64

The data are procedural people (hhcl.data.synthetic) laid out as Market-1501 with its split sizes times
``--scale`` (751 train ids; 750 test ids with one query per camera for 4-5 cameras each; 2,793 distractors),
written once under ``--data`` and prepared (decoded, resized, cached) like the real dataset. The model starts
from random weights unless ``--set model.pretrained=PATH`` (no download here). Reported: seconds per stage per
epoch (extract, kNN, Jaccard, DBSCAN, memory init, iterations, evaluation, checkpoint), images/s of the
iterations against the bare model step (forward + backward + Adam of the same model, batch and image size on
one resident batch), peak host RSS and peak device memory, and the projected time of the full recipe
(``train.epochs`` x ``train.iters`` of the preset: 60 x 200 with an evaluation every 10 epochs). Opt-in: not
part of ``make test`` or ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from hhcl.config import Config, load_config
from hhcl.data.augment import TrainAugment, scaled_pad
from hhcl.data.prepare import prepare_dataset
from hhcl.data.synthetic import make_cameras, make_identities, render
from hhcl.distributed import resolve_device
from hhcl.engine import Trainer
from hhcl.models import build_model
from hhcl.reporting import ConsoleReporter
from hhcl.run.events import read_raw_events

#: Market-1501's published sizes (the parser's counts: junk images are not counted, distractors are)
MARKET = {"train": 12936, "query": 3368, "gallery": 15913, "train_ids": 751, "test_ids": 750, "distractors": 2793}
CAMS = 6
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
TOP = "Market-1501-v15.09.15"


def spread(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one (the first ones get the extra)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def market_plan(scale: float, seed: int) -> tuple[list[tuple[str, int, int, int]], int]:
    """(split, pid, 1-based camera, identity row) of every image, and the number of identities to draw.

    Train ids 1..T see 2-6 cameras; test ids T+1..T+Q give one query in each of 4-5 distinct cameras and their
    gallery images in any camera; distractors (pid 0) are people of neither split.
    """
    n = {k: max(2, round(v * scale)) for k, v in MARKET.items()}
    if n["query"] > CAMS * n["test_ids"]:
        raise ValueError(f"--scale {scale}: {n['query']} queries do not fit one per camera of {n['test_ids']} ids")
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int, int, int]] = []
    t_ids, q_ids = n["train_ids"], n["test_ids"]
    for i, count in enumerate(spread(n["train"], t_ids)):
        seen = rng.choice(CAMS, int(rng.integers(2, CAMS + 1)), replace=False) + 1
        rows += [("train", i + 1, int(c), i) for c in rng.choice(seen, count)]
    gallery = spread(n["gallery"] - n["distractors"], q_ids)
    for j, (q, g) in enumerate(zip(spread(n["query"], q_ids), gallery, strict=True)):
        pid, who = t_ids + 1 + j, t_ids + j
        rows += [("query", pid, int(c), who) for c in rng.choice(CAMS, q, replace=False) + 1]
        rows += [("gallery", pid, int(c), who) for c in rng.integers(1, CAMS + 1, g)]
    n_strangers = max(1, n["distractors"] // 4)
    first = t_ids + q_ids
    rows += [("gallery", 0, int(rng.integers(1, CAMS + 1)), first + k % n_strangers) for k in range(n["distractors"])]
    return rows, first + n_strangers


def make_data(root: Path, scale: float, seed: int, height: int, width: int) -> dict[str, int]:
    """Write the Market-shaped people under ``root/market1501`` (once per scale and seed) and cache them at
    ``height`` x ``width``; returns the split sizes the dataset parser found."""
    base = root / "market1501"
    stamp = base / "bench-recipe.json"
    plan_id = {"scale": scale, "seed": seed, "version": 1}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == plan_id):
        rows, n_people = market_plan(scale, seed)
        rng = np.random.default_rng(seed + 1)
        ids, cams = make_identities(rng, n_people), make_cameras(rng, CAMS)
        top = base / TOP
        for folder in FOLDERS.values():
            (top / folder).mkdir(parents=True, exist_ok=True)
            for old in (top / folder).glob("*.jpg"):
                old.unlink()
        for s in range(0, len(rows), 256):
            chunk = rows[s : s + 256]
            who = np.array([r[3] for r in chunk])
            cam = np.array([r[2] - 1 for r in chunk])
            for k, ((split, pid, c, _), img) in enumerate(zip(chunk, render(ids, cams, who, cam, rng), strict=True)):
                name = f"{pid:04d}_c{c}s1_{s + k:06d}_00.jpg"
                Image.fromarray(np.ascontiguousarray(img)).save(top / FOLDERS[split] / name, quality=95)
        stamp.write_text(json.dumps(plan_id))
    report = prepare_dataset("market1501", None, root, height=height, width=width, progress=False)
    return dict(report.counts)


def _prepare_child(root: str, scale: float, seed: int, height: int, width: int, out: Any) -> None:
    out.put(make_data(Path(root), scale, seed, height, width))


def prepare_apart(root: Path, scale: float, seed: int, height: int, width: int) -> dict[str, int]:
    """make_data in a child process, so this process's peak RSS is the training's, not the data generation's."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_prepare_child, args=(str(root), scale, seed, height, width, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"preparing the synthetic Market data under {root} failed (exit code {child.exitcode})")
    return queue.get()


# -- what the events say ------------------------------------------------------------------------------------


@dataclass
class EpochTimes:
    """Seconds of one epoch's stages, read from its events (None: the stage did not run in this epoch)."""

    epoch: int
    extract: float | None = None
    knn: float | None = None
    jaccard: float | None = None
    dbscan: float | None = None
    cluster: float | None = None  # the whole clustering stage (the three above and what surrounds them)
    memory: float | None = None
    iterations: float | None = None
    iters: int = 0
    evaluation: float | None = None
    checkpoint: float | None = None
    total: float | None = None
    steady_images_per_s: float | None = None
    clusters: int | None = None


def _stage_end(events: list[dict], epoch: int, stage: str) -> dict | None:
    done = [e for e in events if e["type"] == "progress" and e.get("epoch") == epoch and e.get("stage") == stage
            and e.get("done") == e.get("total")]
    return done[-1] if done else None


def _stage_start(events: list[dict], epoch: int, stage: str) -> dict | None:
    for e in events:
        if e["type"] == "progress" and e.get("epoch") == epoch and e.get("stage") == stage and e.get("done") == 0:
            return e
    return None


def epoch_times(events: list[dict], batch_size: int) -> list[EpochTimes]:
    """Per-epoch stage times from a run's raw events (progress, cluster, step, eval, checkpoint and their ``t``)."""
    out = []
    epochs = sorted({e["epoch"] for e in events if e["type"] == "epoch_start"})
    for epoch in epochs:
        times = EpochTimes(epoch)
        start = next(e for e in events if e["type"] == "epoch_start" and e["epoch"] == epoch)
        if (x := _stage_end(events, epoch, "extract_train")) is not None:
            times.extract = x["seconds"]
        cluster = [e for e in events if e["type"] == "cluster" and e.get("epoch") == epoch]
        if cluster:
            sec = cluster[-1].get("seconds", {})
            times.knn, times.jaccard, times.dbscan = sec.get("knn"), sec.get("jaccard"), sec.get("dbscan")
            times.clusters = cluster[-1].get("n_clusters")
        if (c := _stage_end(events, epoch, "cluster")) is not None:
            times.cluster = c["seconds"]
        memory = _stage_end(events, epoch, "memory")
        if memory is not None:
            times.memory = memory["seconds"]
        steps = [e for e in events if e["type"] == "step" and e.get("epoch") == epoch]
        if steps and memory is not None:
            times.iterations = steps[-1]["t"] - memory["t"]
            times.iters = steps[-1]["iter"] + 1
            # steady pace: the step windows after the first (which holds the first iteration's warm-up)
            windows = [(b["iter"] - a["iter"], b["images_per_s"]) for a, b in zip(steps, steps[1:], strict=False)]
            images = sum(k * batch_size for k, _ in windows)
            seconds = sum(k * batch_size / ips for k, ips in windows if ips)
            times.steady_images_per_s = images / seconds if seconds else None
        query = _stage_start(events, epoch, "extract_query")
        evals = [e for e in events if e["type"] == "eval" and e.get("epoch") == epoch]
        if query is not None and evals:
            times.evaluation = evals[-1]["t"] - query["t"]
        ckpts = [e for e in events if e["type"] == "checkpoint" and e.get("epoch") == epoch + 1 and e.get("iter") == 0]
        before = evals[-1]["t"] if evals else (steps[-1]["t"] if steps else None)
        if ckpts and before is not None:
            times.checkpoint = ckpts[-1]["t"] - before
            times.total = ckpts[-1]["t"] - start["t"]
        out.append(times)
    return out


# -- the bare model step --------------------------------------------------------------------------------------


def bare_step_images_per_s(cfg: Config, device: torch.device, iters: int, warmup: int = 2) -> float:
    """images/s of forward + backward + Adam step of the configured model on one resident augmented batch."""
    m = cfg.model
    model = build_model(m.arch, m.pooling, "none", num_features=m.num_features, dropout=m.dropout,
                        bn_group=m.bn_group).to(device)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if cfg.train.compile else model
    opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    h, w, b = cfg.data.height, cfg.data.width, cfg.data.batch_size
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, device=device, generator=gen)
    x = TrainAugment(h, w, pad=scaled_pad(h))(images, gen).contiguous(memory_format=fmt)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.amp)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext():
            f = net(x)
        loss = f.float().square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return b * iters / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the report -----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Everything the bench prints and writes to --json."""

    command: str
    device: str
    threads: int
    overrides: list[str]
    counts: dict[str, int]
    status: str
    message: str
    epochs: list[EpochTimes] = field(default_factory=list)
    steady_images_per_s: float | None = None
    bare_images_per_s: float | None = None
    peak_rss_gib: float | None = None
    peak_device_gib: float | None = None
    projection: dict[str, float] = field(default_factory=dict)
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)


def project(times: list[EpochTimes], batch: int, steady: float | None, epochs: int, iters: int,
            eval_every: int) -> dict[str, float]:
    """The full schedule's time from the last measured epoch's set-up (warm), the steady iteration pace and
    the measured evaluation: set-up x epochs + iterations x epochs x iters + evaluations x epochs/eval_every."""
    warm = times[-1]
    setup = sum(v or 0.0 for v in (warm.extract, warm.cluster, warm.memory, warm.checkpoint))
    per_iter = batch / steady if steady else None
    evaluation = next((t.evaluation for t in reversed(times) if t.evaluation is not None), None)
    out: dict[str, float] = {"setup_per_epoch": setup, "epochs": epochs, "iters": iters}
    if per_iter is None or evaluation is None:
        return out
    n_evals = epochs // eval_every + (epochs % eval_every != 0)
    out |= {
        "setup_total": setup * epochs,
        "seconds_per_iter": per_iter,
        "iterations_total": per_iter * epochs * iters,
        "evaluation": evaluation,
        "evaluations_total": evaluation * n_evals,
    }
    out["total"] = out["setup_total"] + out["iterations_total"] + out["evaluations_total"]
    return out


def _fmt(v: float | None) -> str:
    return "--" if v is None else f"{v:.2f}"


def print_report(r: Report) -> None:
    """The stage table per epoch, the throughput ratio, the peaks and the projection."""
    print(f"\n{r.command}\ndevice {r.device}, {r.threads} threads; run {r.status}"
          + (f": {r.message}" if r.message else ""))
    print(f"data: {r.counts.get('train', 0):,} train / {r.counts.get('query', 0):,} query / "
          f"{r.counts.get('gallery', 0):,} gallery images; overrides: {' '.join(r.overrides) or '(none)'}")
    cols = ("extract", "knn", "jaccard", "dbscan", "cluster", "memory", "iterations", "evaluation", "checkpoint",
            "total")
    print(f"{'epoch':>5} " + " ".join(f"{c:>10}" for c in cols) + f" {'iters':>5} {'clusters':>8}")
    for t in r.epochs:
        row = " ".join(f"{_fmt(getattr(t, c)):>10}" for c in cols)
        print(f"{t.epoch + 1:>5} {row} {t.iters:>5} {t.clusters if t.clusters is not None else '--':>8}")
    print("(seconds; cluster = kNN + Jaccard + DBSCAN and what surrounds them; evaluation = query + gallery"
          " extraction + metrics)")
    if r.steady_images_per_s and r.bare_images_per_s:
        print(f"iterations {r.steady_images_per_s:.1f} images/s (steady), bare model step {r.bare_images_per_s:.1f}"
              f" images/s: ratio {r.steady_images_per_s / r.bare_images_per_s:.3f}")
    print(f"peak host RSS {_fmt(r.peak_rss_gib)} GiB; peak device memory "
          + (f"{r.peak_device_gib:.2f} GiB" if r.peak_device_gib is not None else "-- (not on CUDA)"))
    p = r.projection
    if "total" in p:
        print(f"projected {p['epochs']:.0f} x {p['iters']:.0f} recipe: set-up {p['setup_per_epoch']:.1f} s x "
              f"{p['epochs']:.0f} = {p['setup_total'] / 60:.1f} min, iterations {p['seconds_per_iter']:.3f} s x "
              f"{p['epochs'] * p['iters']:,.0f} = {p['iterations_total'] / 60:.1f} min, evaluations "
              f"{p['evaluations_total'] / 60:.1f} min: total {p['total'] / 60:.1f} min")
    else:
        print("no projection: the run measured no steady iteration pace or no evaluation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="market")
    ap.add_argument("--epochs", type=int, default=2, help="epochs to run (the projection uses the preset's)")
    ap.add_argument("--iters", type=int, default=20, help="iterations per epoch to run")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of Market's ids and images")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. train.amp=bf16 (repeatable)")
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hhcl-bench-recipe",
                    help="where the synthetic Market data are written (reused)")
    ap.add_argument("--runs", type=Path, default=None, help="run directories (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bare-iters", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not 0 < args.scale <= 1:
        ap.error(f"--scale must be in (0, 1], got {args.scale}")
    recipe = load_config(args.preset, args.overrides)
    data = args.data / f"scale{args.scale:g}-seed{args.seed}"
    pretrained = [] if any(o.startswith("model.pretrained=") for o in args.overrides) else ["model.pretrained=none"]
    overrides = [f"data.root={data}", *pretrained, *args.overrides, f"train.epochs={args.epochs}",
                 f"train.iters={args.iters}", f"train.eval_every={args.epochs}"]
    cfg = load_config(args.preset, overrides)
    loadavg_before = list(os.getloadavg())
    t0 = time.perf_counter()
    counts = prepare_apart(data, args.scale, args.seed, cfg.data.height, cfg.data.width)
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {counts}", flush=True)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = args.runs or Path(tempfile.mkdtemp(prefix="hhcl-bench-recipe-runs-"))
    run_dir = runs / time.strftime("recipe-%Y%m%d-%H%M%S")
    reporter = ConsoleReporter(run_dir, Console(stderr=True, soft_wrap=True))
    result = Trainer(cfg, run_dir, preset=args.preset, hooks=[reporter]).fit()
    peak_device = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    times = epoch_times(read_raw_events(run_dir), cfg.data.batch_size)
    paces = [(t.iters - 1, t.steady_images_per_s) for t in times if t.steady_images_per_s]
    steady = sum(k for k, _ in paces) / sum(k / v for k, v in paces) if paces else None
    bare = bare_step_images_per_s(cfg, device, args.bare_iters) if result.status == "ok" else None
    report = Report(
        command="python benchmarks/bench_recipe.py " + " ".join(sys.argv[1:]),
        device=str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        threads=torch.get_num_threads(),
        overrides=overrides,
        counts=counts,
        status=result.status,
        message=result.message,
        epochs=times,
        steady_images_per_s=steady,
        bare_images_per_s=bare,
        peak_rss_gib=peak_rss,
        peak_device_gib=peak_device,
        projection=project(times, cfg.data.batch_size, steady, recipe.train.epochs, recipe.train.iters,
                           recipe.train.eval_every) if times else {},
        loadavg_before=loadavg_before,
        loadavg_after=list(os.getloadavg()),
    )
    print_report(report)
    print(f"load average before {loadavg_before[0]:.2f}, after {report.loadavg_after[0]:.2f}; run: {run_dir}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    if result.status != "ok":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
