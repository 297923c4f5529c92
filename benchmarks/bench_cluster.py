"""Benchmark the clustering engine (kNN -> k-reciprocal Jaccard -> DBSCAN) against the dense reference-style
baseline, and against the bare exact kNN (the floor).

    .venv/bin/python benchmarks/bench_cluster.py --n 12936 --dim 2048
    .venv/bin/python benchmarks/bench_cluster.py --n 32621 --eps 0.7 --no-naive

Each variant runs in its own subprocess so that its peak RSS is its own. Features are synthetic clustered unit
vectors (clusters of ~16, 10 % pure-noise points), the same in every subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import naive_cluster as naive  # noqa: E402

from hhcl.cluster import pseudo_labels  # noqa: E402
from hhcl.cluster.knn import neighbours, timed  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process: returns seconds per stage, peak RSS and where the labels were saved."""
    device = torch.device(args.device)
    x = naive.clustered_features(args.n, args.dim, noise=args.noise, seed=args.seed).to(device)
    base = _peak_mb()
    out: dict = {"variant": args.variant, "base_rss_mb": base}
    if args.variant in ("knn", "knn_faiss"):
        backend = "faiss" if args.variant == "knn_faiss" else args.backend
        for _ in range(args.repeat):  # the last (warm) call counts, as in every epoch after the first
            _, sec = timed(lambda: neighbours(x, args.k1, backend=backend), device)
        out["seconds"] = {"knn": sec}
    elif args.variant == "fast":
        for _ in range(args.repeat):
            res = pseudo_labels(x, k1=args.k1, k2=args.k2, eps=args.eps, knn_backend=args.backend)
        out["seconds"] = res.seconds
        out["clusters"], out["outliers"] = res.n_clusters, res.n_outliers
        np.save(args.labels, res.labels.cpu().numpy())
    else:
        xc = x.cpu()
        t0 = time.perf_counter()
        rank = naive.faiss_rank(xc, args.k1)
        t1 = time.perf_counter()
        dist = naive.jaccard_reference(xc, rank, args.k1, args.k2)
        t2 = time.perf_counter()
        labels = naive.cluster_reference(dist, args.eps)
        t3 = time.perf_counter()
        out["seconds"] = {"knn": t1 - t0, "jaccard": t2 - t1, "dbscan": t3 - t2}
        out["clusters"], out["outliers"] = int(labels.max()) + 1, int((labels < 0).sum())
        np.save(args.labels, labels)
    out["peak_rss_mb"] = _peak_mb()
    return out


def _spawn(args: argparse.Namespace, variant: str, labels: str) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--labels", labels]
    for key in ("n", "dim", "noise", "seed", "k1", "k2", "eps", "backend", "device", "threads", "repeat"):
        cmd += [f"--{key}", str(getattr(args, key))]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12936)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--noise", type=float, default=0.8, help="within-cluster spread (see naive_cluster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--eps", type=float, default=0.45)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeat", type=int, default=2, help="calls per fast variant; the last (warm) one is timed")
    p.add_argument("--no-naive", action="store_true", help="skip the dense baseline (needs ~12 GB at N=32621)")
    p.add_argument("--faiss", action="store_true", help="also time the bare kNN with the faiss backend")
    p.add_argument("--variant", choices=["knn", "knn_faiss", "fast", "naive"], help=argparse.SUPPRESS)
    p.add_argument("--labels", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.variant:
        print(json.dumps(_run_variant(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        variants = ["knn"] + (["knn_faiss"] if args.faiss else []) + ["fast"] + ([] if args.no_naive else ["naive"])
        runs = {v: _spawn(args, v, f"{tmp}/{v}.npy") for v in variants}
        same = None
        if "naive" in runs:
            a, b = np.load(f"{tmp}/fast.npy"), np.load(f"{tmp}/naive.npy")
            same = int((a != b).sum())
    floor = runs["knn"]["seconds"]["knn"]
    print(f"N={args.n} D={args.dim} k1={args.k1} k2={args.k2} eps={args.eps} device={args.device} "
          f"threads={args.threads} backend={args.backend} (fast: call {args.repeat} of {args.repeat} timed)")
    print(f"{'stage':<10}{'fast s':>10}{'naive s':>10}{'naive/fast':>12}")
    fast, nv = runs["fast"]["seconds"], runs.get("naive", {}).get("seconds", {})
    for stage in ("knn", "jaccard", "dbscan"):
        n_s = nv.get(stage)
        print(f"{stage:<10}{fast[stage]:>10.3f}{n_s if n_s is None else round(n_s, 3)!s:>10}"
              f"{'' if n_s is None else f'{n_s / fast[stage]:.1f}x':>12}")
    tf, tn = sum(fast.values()), sum(nv.values()) if nv else None
    print(f"{'total':<10}{tf:>10.3f}{'' if tn is None else round(tn, 3)!s:>10}"
          f"{'' if tn is None else f'{tn / tf:.1f}x':>12}")
    print(f"bare exact kNN (floor): {floor:.3f} s; whole fast clustering / floor = {tf / floor:.2f}x")
    if "knn_faiss" in runs:
        print(f"bare exact kNN with faiss: {runs['knn_faiss']['seconds']['knn']:.3f} s")
    for v, r in runs.items():
        print(f"peak RSS {v:<6}: {r['peak_rss_mb']:8.0f} MB (after features: {r['base_rss_mb']:.0f} MB)"
              + (f"; clusters {r['clusters']}, outliers {r['outliers']}" if "clusters" in r else ""))
    if same is not None:
        print(f"labels fast vs naive: {'identical' if same == 0 else f'{same} differ'}")


if __name__ == "__main__":
    main()
