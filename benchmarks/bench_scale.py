"""Clustering at the scale of a camera network: exact vs approximate kNN candidates (issue #26).

    .venv/bin/python benchmarks/bench_scale.py --sizes 12000 50000 100000 200000            # the issue's grid
    .venv/bin/python benchmarks/bench_scale.py --sizes 12000 --backends torch ivf hnsw --loaded

For every N and kNN backend, one fresh subprocess builds the same clustered features (D = 2048 by default:
identities of Market-like sizes, 2 to 40 images, mean about 17, whose centres share a 64-dimensional subspace so
that neighbouring identities are close, plus 20 % images of nobody), runs the whole clustering
(``pseudo_labels``: kNN -> k-reciprocal Jaccard -> DBSCAN, k1 30, k2 6, eps 0.6, min_samples 4) once untimed on a
small slice (warm-up), then once timed, and reports its seconds per stage and its peak RSS (the process's own,
features included). The parent compares each approximate run with the exact one of the same N: label ARI and the
fraction of identical kNN lists (the lists are saved by the child). It then fits each backend's growth exponent
(time ~ N^b, least squares on log-log) and projects N = 1,000,000.

``--loaded`` runs the same with one competing busy process per core (a shared machine's figure).
The GPU command is the same with ``--device cuda`` (faiss-gpu for ivf; hnsw is CPU only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from loaded import busy  # noqa: E402 - benchmarks/loaded.py, beside this script

K1, K2, EPS, MIN_SAMPLES = 30, 6, 0.6, 4
NOISE_SHARE = 0.2
SUBSPACE = 64


def features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """N unit features: identities of 2-40 images (geometric, mean ~17) around centres in a shared subspace, plus
    NOISE_SHARE of the images drawn around no centre; shuffled. Deterministic in (n, dim, seed)."""
    g = torch.Generator().manual_seed(seed)
    n_people = n - int(NOISE_SHARE * n)
    draws = np.clip(np.random.default_rng(seed).geometric(1 / 16, size=n_people), 1, 38) + 2
    ends = np.cumsum(draws)
    count = int(np.searchsorted(ends, n_people)) + 1
    sizes = draws[:count].tolist()
    sizes[-1] -= int(ends[count - 1]) - n_people
    sizes = [s for s in sizes if s > 0]
    basis = torch.randn(SUBSPACE, dim, generator=g) / math.sqrt(SUBSPACE)
    centres = torch.nn.functional.normalize(torch.randn(len(sizes), SUBSPACE, generator=g) @ basis
                                            + 0.5 * torch.randn(len(sizes), dim, generator=g) / math.sqrt(dim), dim=1)
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.empty(n, dim)
    step = 20000
    for s in range(0, n_people, step):  # in slices: no second N x D temporary
        own = owner[s : s + step]
        x[s : s + len(own)] = centres[own] + 0.75 * torch.randn(len(own), dim, generator=g) / math.sqrt(dim)
    for s in range(n_people, n, step):
        m = min(step, n - s)
        x[s : s + m] = torch.randn(m, SUBSPACE, generator=g) @ basis + 0.5 * torch.randn(m, dim, generator=g) / math.sqrt(dim)
    x = torch.nn.functional.normalize(x, dim=1, out=x)
    return x[torch.randperm(n, generator=g)]


def child(n: int, dim: int, backend: str, out: Path, device: str) -> None:
    """One measurement in this process: the clustering's stage seconds, peak RSS, labels and kNN lists saved."""
    from hhcl.cluster import pseudo_labels
    from hhcl.cluster.jaccard import order_cuts
    from hhcl.cluster.knn import neighbours

    x = features(n, dim).to(device)
    pseudo_labels(x[: min(n, 3000)], k1=K1, k2=K2, eps=EPS, min_samples=MIN_SAMPLES, knn_backend=backend)  # warm-up
    res = pseudo_labels(x, k1=K1, k2=K2, eps=EPS, min_samples=MIN_SAMPLES, knn_backend=backend)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nb = neighbours(x, K1, backend=backend, cuts=order_cuts(K1, K2, n))  # the lists the clustering used
    np.save(out.with_suffix(".labels.npy"), res.labels.cpu().numpy())
    np.save(out.with_suffix(".lists.npy"), nb.index.cpu().numpy().astype(np.int32))
    out.write_text(json.dumps({"n": n, "dim": dim, "backend": backend, "seconds": res.seconds,
                               "total": sum(res.seconds.values()), "peak_mb": peak, "clusters": res.n_clusters,
                               "outliers": res.n_outliers}))


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """b of time ~ a N^b by least squares on (log N, log t); None with fewer than two sizes."""
    if len(points) < 2:
        return None
    lx, ly = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(lx, ly, 1)[0])


def project(points: list[tuple[int, float]], n: int) -> float | None:
    """The fitted power law's value at n (from the two largest sizes' fit over all points)."""
    if len(points) < 2:
        return None
    lx, ly = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    b, a = np.polyfit(lx, ly, 1)
    return float(math.exp(a + b * math.log(n)))


def main() -> None:
    from sklearn.metrics import adjusted_rand_score

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[12000, 50000, 100000, 200000])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--backends", nargs="+", default=["torch", "ivf", "hnsw"], help="torch = exact (the reference)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loaded", action="store_true", help="with one competing busy process per core")
    ap.add_argument("--child", nargs=3, metavar=("N", "BACKEND", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.dim, args.child[1], Path(args.child[2]), args.device)
        return
    rows: list[dict] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hhcl-scale-") as tmp, busy(args.loaded):
        for n in args.sizes:
            for backend in args.backends:
                out = Path(tmp) / f"{n}-{backend}.json"
                cmd = [sys.executable, __file__, "--dim", str(args.dim), "--device", args.device,
                       "--child", str(n), backend, str(out)]
                subprocess.run(cmd, check=True)
                row = json.loads(out.read_text())
                if backend != "torch" and "torch" in args.backends:
                    ref = Path(tmp) / f"{n}-torch.json"
                    a = np.load(ref.with_suffix(".labels.npy"))
                    b = np.load(out.with_suffix(".labels.npy"))
                    row["ari"] = float(adjusted_rand_score(a, b))
                    la, lb = np.load(ref.with_suffix(".lists.npy")), np.load(out.with_suffix(".lists.npy"))
                    row["same_lists"] = float((la == lb).all(axis=1).mean())
                rows.append(row)
                print(json.dumps(row), flush=True)
    load = ("loaded (one busy process per core)" if args.loaded else "no competing process started") + (
        f"; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"\n{os.cpu_count()}-core CPU, {load}, D = {args.dim}, k1 {K1}, k2 {K2}, eps {EPS}:\n")
    print("| N | backend | kNN s | Jaccard s | DBSCAN s | total s | vs exact | peak RSS MB | clusters | ARI vs exact "
          "| identical lists |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    exact = {r["n"]: r["total"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        s = r["seconds"]
        speed = f"{exact[r['n']] / r['total']:.1f}x" if r["n"] in exact and r["backend"] != "torch" else ""
        ari = f"{r['ari']:.4f}" if "ari" in r else ""
        same = f"{100 * r['same_lists']:.1f} %" if "same_lists" in r else ""
        print(f"| {r['n']:,} | {r['backend']} | {s['knn']:.1f} | {s['jaccard']:.1f} | {s['dbscan']:.2f} | "
              f"{r['total']:.1f} | {speed} | {r['peak_mb']:.0f} | {r['clusters']:,} | {ari} | {same} |")
    print()
    for backend in args.backends:
        pts = [(r["n"], r["total"]) for r in rows if r["backend"] == backend]
        mem = [(r["n"], r["peak_mb"]) for r in rows if r["backend"] == backend]
        b, t1m, m1m = fit_exponent(pts), project(pts, 1_000_000), project(mem, 1_000_000)
        if b is not None:
            print(f"{backend}: time ~ N^{b:.2f}; projected N = 1,000,000: {t1m / 60:.0f} min, "
                  f"{m1m / 1024:.1f} GB peak RSS")


if __name__ == "__main__":
    main()
