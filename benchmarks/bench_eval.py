"""Benchmark: mAP + CMC from a Market-size distance matrix, fast (hhcl.evaluate.rank_metrics) vs the naive
reference (one argsort of the whole matrix, then scikit-learn's average_precision_score per query).

    .venv/bin/python benchmarks/bench_eval.py [--queries 3368] [--gallery 15913] [--threads 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from hhcl.evaluate import rank_metrics
from hhcl.evaluation.metrics import chance_metrics


def market_layout(num_query: int, num_gallery: int, seed: int) -> tuple[np.ndarray, ...]:
    """Market-1501-like labels: 750 ids over 6 cameras, ~17 gallery images per id, 2,798 pid-0 distractors."""
    rng = np.random.default_rng(seed)
    ids, cams = 750, 6
    n_distract = min(2798, num_gallery // 6)
    g_pids = np.concatenate([np.zeros(n_distract, np.int64), rng.integers(1, ids + 1, num_gallery - n_distract)])
    g_cams = rng.integers(0, cams, num_gallery)
    q_pids = rng.integers(1, ids + 1, num_query)
    q_cams = rng.integers(0, cams, num_query)
    return q_pids, g_pids, q_cams, g_cams


def distances(q_pids: np.ndarray, g_pids: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """float32 [Q, G]: uniform noise ('random', the worst case), or positives pulled closer ('trained')."""
    rng = np.random.default_rng(seed + 1)
    d = rng.random((len(q_pids), len(g_pids)), dtype=np.float32)
    if kind == "trained":  # same-id pairs mostly near the top, roughly as a model with mAP ~0.8 ranks them
        same = q_pids[:, None] == g_pids[None, :]
        d[same] = np.where(rng.random(int(same.sum())) < 0.85, d[same] * np.float32(1e-4), d[same])
    return d


def naive_metrics(distmat: np.ndarray, q_pids, g_pids, q_cams, g_cams, topk: int = 100) -> tuple[float, np.ndarray]:
    """The reference's mean_ap + cmc (open-reid ranking.py), with a stable argsort for CMC tie order."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = g_pids[indices] == q_pids[:, None]
    aps, hist, n_valid = [], np.zeros(topk), 0
    for i in range(len(q_pids)):
        valid = (g_pids[indices[i]] != q_pids[i]) | (g_cams[indices[i]] != q_cams[i])
        y_true = matches[i, valid]
        if not y_true.any():
            continue
        y_score = -distmat[i][indices[i]][valid]
        aps.append(average_precision_score(y_true, y_score))
        first = int(np.nonzero(y_true)[0][0])
        if first < topk:
            hist[first] += 1
        n_valid += 1
    return float(np.mean(aps)), np.cumsum(hist) / n_valid


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kinds", default="random,trained", help="comma list of: random, trained")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    labels = market_layout(args.queries, args.gallery, seed=0)
    print(f"mAP+CMC of a {args.queries} x {args.gallery} float32 distance matrix, {args.threads} threads, "
          f"device {args.device}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'distances':<10} {'naive (s)':>10} {'fast (s)':>9} {'1 thread':>9} {'speed-up':>9} {'mAP':>9} "
          f"{'|dmAP|':>9} {'CMC equal':>9}")
    for kind in args.kinds.split(","):
        d = distances(labels[0], labels[1], kind, seed=0)
        dt = torch.from_numpy(d).to(args.device)
        t_fast, fast = timed(lambda dt=dt: rank_metrics(dt, *labels), args.repeat)
        torch.set_num_threads(1)  # under CPU contention one thread avoids OpenMP spinning: a steadier figure
        t_one, _ = timed(lambda dt=dt: rank_metrics(dt, *labels), args.repeat)
        torch.set_num_threads(args.threads)
        row = f"{kind:<10} {{naive}} {t_fast:>9.3f} {t_one:>9.3f} {{ratio}} {fast['mAP']:>9.5f} {{diff}} {{equal}}"
        if args.skip_naive:
            print(row.format(naive=f"{'-':>10}", ratio=f"{'-':>9}", diff=f"{'-':>9}", equal=f"{'-':>9}"))
            continue
        t_naive, (m_naive, cmc_naive) = timed(lambda d=d: naive_metrics(d, *labels), 1)
        equal = bool(np.array_equal(fast["cmc"], cmc_naive))
        print(row.format(naive=f"{t_naive:>10.2f}", ratio=f"{t_naive / min(t_fast, t_one):>8.1f}x",
                         diff=f"{abs(fast['mAP'] - m_naive):>9.1e}", equal=f"{str(equal):>9}"))
    # what `hhcl eval` adds for its chance row: exact expectations plus 8 random rankings for the spread
    t_chance, chance = timed(lambda: chance_metrics(*labels), 1)
    print(f"chance level (chance_metrics, 8 random rankings): {t_chance:.2f} s, mAP {chance['mAP']:.5f} "
          f"+- {chance['mAP_sd']:.5f}")

if __name__ == "__main__":
    main()
