"""Benchmark the clustering engine (kNN -> k-reciprocal Jaccard -> DBSCAN) against a bare faiss exact search (the
floor) and against the dense reference-style baseline.

    .venv/bin/python benchmarks/bench_cluster.py --n 12936 --dim 2048
    .venv/bin/python benchmarks/bench_cluster.py --n 32621 --eps 0.7 --no-naive --rounds 1
    .venv/bin/python benchmarks/bench_cluster.py --n 5000 --dim 2048 --no-naive --infomap

Variants, each in its own subprocess (so that its peak RSS is its own), on the same synthetic clustered unit
features (clusters of ~16, 10 % pure-noise points), float32, built identically in every subprocess:

- bare:  faiss.IndexFlatL2(D); .add(x); .search(x, k1 + 1)  -- the exact kNN the reference runs, nothing else
- fast:  hhcl.cluster.pseudo_labels(x, k1, k2, eps)         -- the whole clustering
- naive: faiss kNN + dense N x N Jaccard with Python loops + sklearn DBSCAN (benchmarks/naive_cluster.py)
- infomap (with --infomap): hhcl.cluster.infomap_cluster.infomap_labels(x, k, min_sim, min_size), the
  cluster.method = infomap clustering (cluster-contrast's), timed per stage (kNN, links, InfoMap) beside DBSCAN's

bare and fast (and infomap) run --rounds times, alternating (bare, fast, infomap, bare, ...) so that a change in
the machine's load hits each; each subprocess makes one untimed warm-up call, then --repeat timed calls. Reported: the median
of all timed calls of a variant, and "whole clustering / bare faiss search" = median(fast) / median(bare).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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
from hhcl.cluster.infomap_cluster import infomap_labels  # noqa: E402
from hhcl.cluster.knn import timed  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bare_search(x: np.ndarray, k: int) -> None:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    index.search(x, k)


def _run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process: seconds of every timed call, peak RSS and where the labels were saved."""
    device = torch.device(args.device)
    x = naive.clustered_features(args.n, args.dim, noise=args.noise, seed=args.seed).to(device)
    base = _peak_mb()
    out: dict = {"variant": args.variant, "base_rss_mb": base, "calls": []}
    if args.variant == "bare":
        xn = np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
        for call in range(1 + args.repeat):
            t = time.perf_counter()
            _bare_search(xn, args.k1 + 1)
            if call:
                out["calls"].append({"total": time.perf_counter() - t})
    elif args.variant == "fast":
        for call in range(1 + args.repeat):
            res, sec = timed(
                lambda: pseudo_labels(x, k1=args.k1, k2=args.k2, eps=args.eps, knn_backend=args.backend), device
            )
            if call:
                out["calls"].append({"total": sec, **res.seconds})
        out["clusters"], out["outliers"] = res.n_clusters, res.n_outliers
        np.save(args.labels, res.labels.cpu().numpy())
    elif args.variant == "infomap":
        for call in range(1 + args.repeat):
            res, sec = timed(
                lambda: infomap_labels(x, k=args.infomap_k, min_sim=args.min_sim, min_size=args.min_size), device
            )
            if call:
                out["calls"].append({"total": sec, **res.seconds})
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
        out["calls"].append({"total": t3 - t0, "knn": t1 - t0, "jaccard": t2 - t1, "dbscan": t3 - t2})
        out["clusters"], out["outliers"] = int(labels.max()) + 1, int((labels < 0).sum())
        np.save(args.labels, labels)
    out["peak_rss_mb"] = _peak_mb()
    return out


def _spawn(args: argparse.Namespace, variant: str, labels: str) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--labels", labels]
    for key in ("n", "dim", "noise", "seed", "k1", "k2", "eps", "backend", "device", "threads", "repeat", "infomap_k",
                "min_sim", "min_size"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], key: str) -> float | None:
    values = [c[key] for r in runs for c in r["calls"] if key in c]
    return statistics.median(values) if values else None


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
    p.add_argument("--rounds", type=int, default=3, help="subprocesses per variant (bare, fast, infomap alternate)")
    p.add_argument("--repeat", type=int, default=2, help="timed calls per subprocess, after one warm-up call")
    p.add_argument("--no-naive", action="store_true", help="skip the dense baseline (needs ~12 GB at N=32621)")
    p.add_argument("--infomap", action="store_true", help="also time cluster.method = infomap on the same features")
    p.add_argument("--infomap-k", type=int, default=15, help="InfoMap's neighbours (cluster-contrast's --k1 15)")
    p.add_argument("--min-sim", type=float, default=0.5, help="InfoMap's similarity threshold (their --eps 0.5)")
    p.add_argument("--min-size", type=int, default=5, help="InfoMap's smallest kept cluster (their --k2 4, + 1)")
    p.add_argument("--variant", choices=["bare", "fast", "naive", "infomap"], help=argparse.SUPPRESS)
    p.add_argument("--labels", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.variant:
        print(json.dumps(_run_variant(args)))
        return

    load0 = os.getloadavg()
    timed_variants = ("bare", "fast", "infomap") if args.infomap else ("bare", "fast")
    runs: dict[str, list[dict]] = {v: [] for v in timed_variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in timed_variants:
                runs[v].append(_spawn(args, v, f"{tmp}/{v}{r}.npy"))
        stable = {
            v: all(np.array_equal(np.load(f"{tmp}/{v}0.npy"), np.load(f"{tmp}/{v}{r}.npy")) for r in range(args.rounds))
            for v in timed_variants[1:]
        }
        same = None
        if not args.no_naive:
            runs["naive"] = [_spawn(args, "naive", f"{tmp}/naive.npy")]
            same = int((np.load(f"{tmp}/fast0.npy") != np.load(f"{tmp}/naive.npy")).sum())
    load1 = os.getloadavg()

    print(f"N={args.n} D={args.dim} k1={args.k1} k2={args.k2} eps={args.eps} device={args.device} "
          f"threads={args.threads} backend={args.backend}; {args.rounds} rounds x {args.repeat} timed calls "
          f"(after a warm-up call) per variant, medians")
    print(f"load average (1, 5, 15 min): start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(f"{'stage':<10}{'fast s':>10}{'naive s':>10}{'naive/fast':>12}")
    for stage in ("knn", "jaccard", "dbscan", "total"):
        f_s, n_s = _median(runs["fast"], stage), _median(runs.get("naive", []), stage)
        print(f"{stage:<10}{f_s:>10.3f}{'' if n_s is None else f'{n_s:.3f}':>10}"
              f"{'' if n_s is None else f'{n_s / f_s:.1f}x':>12}")
    bare, fast = _median(runs["bare"], "total"), _median(runs["fast"], "total")
    calls = {v: " ".join(f"{c['total']:.2f}" for r in runs[v] for c in r["calls"]) for v in timed_variants}
    print(f"bare faiss search (IndexFlatL2 add + search, k={args.k1 + 1}): {bare:.3f} s  [calls: {calls['bare']}]")
    print(f"whole clustering (pseudo_labels): {fast:.3f} s  [calls: {calls['fast']}]")
    print(f"whole clustering / bare faiss search = {fast / bare:.2f} x")
    if args.infomap:
        print(f"infomap (k={args.infomap_k} min_sim={args.min_sim} min_size={args.min_size}), medians:")
        for stage in ("knn", "links", "infomap", "total"):
            print(f"  {stage:<10}{_median(runs['infomap'], stage):>10.3f} s")
        print(f"  [calls: {calls['infomap']}]; infomap / DBSCAN whole clustering = "
              f"{_median(runs['infomap'], 'total') / fast:.2f} x")
    for v, rs in runs.items():
        r = rs[-1]
        print(f"peak RSS {v:<6}: {max(x['peak_rss_mb'] for x in rs):8.0f} MB (after features: {r['base_rss_mb']:.0f} MB)"
              + (f"; clusters {r['clusters']}, outliers {r['outliers']}" if "clusters" in r else ""))
    for v, same_labels in stable.items():
        print(f"labels identical across the {v} rounds: {same_labels}")
    if same is not None:
        print(f"labels fast vs naive: {'identical' if same == 0 else f'{same} differ'}")


if __name__ == "__main__":
    main()
