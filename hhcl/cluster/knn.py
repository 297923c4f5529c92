"""k-nearest neighbours by squared Euclidean distance: exact (fp32 matmuls + top-k in torch, or faiss), or from an
approximate candidate search (faiss IVF-Flat or HNSW, ``hhcl.cluster.approx``) for large N.

torch on the CPU computes each block of the Gram matrix once for both its rows and its columns (half the flops
of a full search, `_symmetric_candidates`); on CUDA it is a chunked full matmul + top-k.
Order is canonical: near-ties (within float noise) are re-ranked by the float64 distance of the differences
and then by index, so duplicates sort by index and the lists do not depend on the backend or chunking. With
`cuts` (the clustering) only the ties that decide a set the k-reciprocal encoding reads are re-ranked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from hhcl.cluster.approx import APPROX_BACKENDS, ApproxParams, hnsw_candidates, ivf_candidates
from hhcl.cluster.parallel import block_workers, map_blocks, outer_threads

T = TypeVar("T")
BACKENDS = ("auto", "torch", "faiss", *APPROX_BACKENDS)
#: ``auto`` searches exactly below this many rows and with IVF from it; None = always exactly. It is to be the size
#: where IVF's time drops under a tenth of the exact search's with label ARI >= 0.99 against it
#: (benchmarks/bench_scale.py); the first measurement (12,000 x 2048, benchmarks/RESULTS.md "At scale") gave ARI
#: 0.93 with the default IVF settings, so until a setting is shown to agree, auto stays exact at every size
AUTO_APPROX_FROM: int | None = None
_CHUNK_BYTES = 96 * 2**20  # one [rows, N] float32 block of the distance matrix
_PAD = 8  # extra columns fetched so ties at the k-th position can be seen
_SPARSE_THREADS = 1
_TOL = 2e-5  # relative gap under which two fp32 distances are treated as a possible tie
_NORM_BYTES = 2**20  # row slices of the norms and of the float64 re-ranking
_SYM_BLOCK = 1024  # rows per block of the symmetric kNN: one [1024, 1024] float32 block of the Gram matrix, 4 MB


@dataclass(frozen=True)
class Neighbours:
    """k nearest neighbours of every row of F among the rows of F (itself included), ascending."""

    dist: Tensor  # [N, k] float32 squared Euclidean distance
    index: Tensor  # [N, k] int64
    dot: Tensor  # [N, k] float32 inner product <f_i, f_j> from the fp32 matmul


@contextlib.contextmanager
def ieee_fp32(device: torch.device) -> Iterator[None]:
    """Run fp32 CUDA matmuls without TF32 (the reference ran on pre-Ampere GPUs, so in plain fp32)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = old


@contextlib.contextmanager
def sparse_threads(device: torch.device) -> Iterator[None]:
    """Run many short ops (the sparse stages, the kNN's bookkeeping) on one CPU thread each, blocks of them on
    `parallel` worker threads: with OpenMP inside every op, a shared 2-core machine made them 5-15x slower (a
    descheduled thread stalls every barrier; see benchmarks/RESULTS.md)."""
    if device.type != "cpu" or torch.get_num_threads() <= _SPARSE_THREADS:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(_SPARSE_THREADS)
    try:
        with block_workers(old):
            yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def matmul_threads(device: torch.device) -> Iterator[None]:
    """Inside `sparse_threads`: the intra-op threads it took away, back for a large matmul."""
    count = outer_threads()
    if device.type != "cpu" or count is None or count == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def check_features(features: Tensor, name: str = "features") -> Tensor:
    """Validate an [N, D] float feature matrix (finite, N >= 1) and return it as contiguous float32."""
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a 2-D [N, D] tensor, got {shape}")
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"{name} is empty (shape {tuple(features.shape)}): nothing to cluster")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {features.dtype}")
    # a NaN or Inf makes its row's sum non-finite: one read of the features, no [N, D] temporary; only when a sum
    # is not finite (that, or an overflow) are the entries themselves checked
    if not bool(torch.isfinite(features.detach().sum(dim=1)).all()):
        bad = ~torch.isfinite(features).all(dim=1)
        if bool(bad.any()):
            rows = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"{name} contain NaN or Inf in {int(bad.sum())} row(s) (first: {rows}); "
                "the model produced non-finite embeddings, check the checkpoint / learning rate"
            )
    return features.detach().to(torch.float32).contiguous()


def resolve_backend(backend: str, device: torch.device, n: int | None = None) -> str:
    """The search ``backend`` names for ``n`` rows. 'auto' -> torch (on the CPU its symmetric search does half a full
    search's flops, faster than faiss's full one: benchmarks/RESULTS.md, "Clustering"; on CUDA a chunked matmul),
    ivf from :data:`AUTO_APPROX_FROM` rows when that is set and faiss is installed. torch and faiss give the same
    lists, so the same labels; ivf and hnsw are approximate."""
    if backend not in BACKENDS:
        raise ValueError(f"cluster.knn_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        large = AUTO_APPROX_FROM is not None and n is not None and n >= AUTO_APPROX_FROM
        return "ivf" if large and _has_faiss() else "torch"
    if backend != "torch" and not _has_faiss():
        raise ValueError(
            f"cluster.knn_backend = '{backend}' needs faiss, which is not importable; install faiss-cpu / faiss-gpu "
            "or set cluster.knn_backend = 'torch'"
        )
    return backend


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def knn(
    features: Tensor, k: int, *, backend: str = "auto", approx: ApproxParams | None = None
) -> tuple[Tensor, Tensor]:
    """kNN of the rows among themselves (exact unless ``backend`` is ivf or hnsw, or auto at large N): (squared
    distances, indices), each [N, min(k, N)]."""
    nb = neighbours(check_features(features), k, backend=backend, approx=approx)
    return nb.dist, nb.index


def neighbours(
    x: Tensor, k: int, *, backend: str = "auto", cuts: Iterable[int] | None = None, approx: ApproxParams | None = None
) -> Neighbours:
    """kNN of checked float32 rows x, with the fp32 inner products kept for the Jaccard weights: exact, or (ivf,
    hnsw) the nearest among an approximate search's candidates, each row's own index always among them.

    cuts: the list lengths p whose neighbour sets must be exact (the first p columns hold the p nearest). None:
    the whole order is exact (ties by index). With cuts, near-ties inside a span between two cuts may stay in
    fp32 order: the k-reciprocal encoding only reads the sets at its slice lengths and the order of the first k2
    columns, so it passes exactly those (`jaccard.order_cuts`). The k nearest as a set are always exact.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = x.shape[0]
    k = min(k, n)
    kf = min(n, k + _PAD)
    cuts = None if cuts is None else sorted({p for p in cuts if 0 < p < k} | {k})
    with sparse_threads(x.device):  # short ops on one thread; the torch matmul gets the threads back, faiss has its own
        yy = _norms(x)
        chosen = resolve_backend(backend, x.device, n)
        if chosen in APPROX_BACKENDS:
            with matmul_threads(x.device):  # faiss's OpenMP is torch's: its threads back
                search = ivf_candidates if chosen == "ivf" else hnsw_candidates
                key, idx = search(x, kf, yy, approx or ApproxParams())
            key, idx = _complete(x, key, idx, yy)
        elif chosen == "faiss":
            key, idx = _faiss_candidates(x, kf, yy)
        elif x.device.type == "cpu" and n > _SYM_BLOCK:
            key, idx = _symmetric_candidates(x, kf, yy)
        else:
            key, idx = _torch_candidates(x, kf, torch.arange(n, device=x.device), yy)
        return _canonical(x, key, idx, k, yy, cuts)


def _norms(x: Tensor) -> Tensor:
    """||x_i||^2 as (x * x).sum(dim=1); on the CPU in row slices (the same per-row sums) with no [N, D] temporary:
    a fresh 100 MB tensor costs more in page faults than the multiply."""
    if x.device.type != "cpu":
        return (x * x).sum(dim=1)
    out = torch.empty(x.shape[0], dtype=x.dtype)
    step = max(1, _NORM_BYTES // (4 * x.shape[1]))
    tmp = x.new_empty(min(step, x.shape[0]), x.shape[1])
    for r in range(0, x.shape[0], step):
        rows = x[r : r + step]
        torch.mul(rows, rows, out=tmp[: len(rows)])
        torch.sum(tmp[: len(rows)], dim=1, out=out[r : r + step])
    return out


def _torch_candidates(x: Tensor, kf: int, rows: Tensor, yy: Tensor) -> tuple[Tensor, Tensor]:
    """Top-kf of ||y||^2 - 2<x, y> (the row-constant ||x||^2 does not change the order) for the given rows."""
    n = x.shape[0]
    step = max(1, min(len(rows), _CHUNK_BYTES // (4 * n)))
    keys, idxs = [], []
    with matmul_threads(x.device), ieee_fp32(x.device):
        for r in range(0, len(rows), step):
            block = torch.addmm(yy, x[rows[r : r + step]], x.T, beta=1.0, alpha=-2.0)
            v, i = block.topk(kf, dim=1, largest=False, sorted=True)
            keys.append(v)
            idxs.append(i)
    return torch.cat(keys), torch.cat(idxs)


def _symmetric_candidates(x: Tensor, kf: int, yy: Tensor) -> tuple[Tensor, Tensor]:
    """Top-kf of ||y||^2 - 2<x, y> for every row (CPU), each block of the Gram matrix computed once for both sides.

    Blocks of _SYM_BLOCK rows. A diagonal block gives each of its rows its kf nearest within the block, so tau_i,
    the largest of them, bounds the row's final kf-th key from above. Each off-diagonal block x_I x_J^T (I < J) is
    then read both ways: keys of rows I against columns J, and (the same products) of rows J against columns I;
    only entries <= the row's tau are kept. Blocks go by their distance J - I; after distances 1, 2, 4, 8, ...
    each row keeps its kf smallest so far, whose largest is its new, tighter tau. Half the flops of a full
    search, exact in fp32 like it (ties at the kf-th place are `_canonical`'s). The blocks of one stretch of
    distances are independent: they run on the `parallel` workers, each matmul single-threaded (no OpenMP
    barriers, which a shared machine stalls).
    """
    n = x.shape[0]
    starts = list(range(0, n, _SYM_BLOCK))
    if len(starts) > 1 and n - starts[-1] < kf:  # every block has at least kf columns
        starts.pop()
    bounds = list(zip(starts, starts[1:] + [n], strict=True))
    span = torch.arange(kf, device=x.device)

    def diagonal(_: list[Tensor], rows: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        a, b = rows
        v, i = torch.addmm(yy[a:b], x[a:b], x[a:b].T, beta=1.0, alpha=-2.0).topk(kf, dim=1, largest=False)
        return v.flatten(), (i + a).flatten(), torch.arange(a, b, device=x.device).repeat_interleave(kf)

    def off_diagonal(_: list[Tensor], pair: tuple[tuple[int, int], tuple[int, int]]) -> tuple[Tensor, ...]:
        (a, b), (c, d) = pair
        block = torch.addmm(yy[c:d], x[a:b], x[c:d].T, beta=1.0, alpha=-2.0)  # rows a:b, columns c:d
        # read the other way, block[i, j] + yy_i - yy_j is row j's key for column i: one pass keeps both
        # (for rows j, a threshold that covers every i of the block, refined on what was kept)
        wide = tau[c:d] + (yy[c:d] - yy[a:b].min()) + 1e-6 * float(yy[c:d].max().clamp_min(1.0))
        at = ((block <= tau[a:b, None]) | (block <= wide[None, :])).view(-1).nonzero().view(-1)
        r = torch.div(at, d - c, rounding_mode="floor") + a
        q = at - (r - a) * (d - c) + c
        key_i = block.view(-1).index_select(0, at)  # row r, column q
        key_j = (key_i + yy.index_select(0, r)) - yy.index_select(0, q)  # row q, column r
        own, other = key_i <= tau.index_select(0, r), key_j <= tau.index_select(0, q)
        return key_i[own], q[own], r[own], key_j[other], r[other], q[other]

    def best(parts: list[tuple[Tensor, ...]]) -> tuple[Tensor, Tensor]:
        """Each row's kf smallest keys among (key, column, row) triples: [n, kf] keys and columns, ascending."""
        key, col, row = (torch.cat([p[x] for p in parts for x in range(s, len(p), 3)]) for s in range(3))
        bits = key.view(torch.int32)
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # a float's bits, negatives flipped, order like its value
        order = torch.sort(row * 2**32 + (bits.to(torch.int64) + 2**31)).indices
        start = torch.zeros(n, dtype=torch.int64, device=x.device)
        start[1:] = torch.bincount(row, minlength=n).cumsum(0)[:-1]
        take = order[start[:, None] + span]
        return key[take], col[take]

    parts = map_blocks(bounds, diagonal, x.device)
    tau = torch.cat([p[0].view(-1, kf)[:, -1] for p in parts])
    done = 0
    while done < len(bounds) - 1:  # distances 1, 2, 3-4, 5-8, ...: tighter bounds after each stretch
        top = min(max(1, 2 * done), len(bounds) - 1)
        pairs = [(u, v) for t in range(done + 1, top + 1) for u, v in zip(bounds, bounds[t:], strict=False)]
        parts += map_blocks(pairs, off_diagonal, x.device)
        key, col = best(parts)
        tau = key[:, -1].contiguous()
        parts = [(key.flatten(), col.flatten(), torch.arange(n, device=x.device).repeat_interleave(kf))]
        done = top
    return best(parts)


def _faiss_candidates(x: Tensor, kf: int, yy: Tensor) -> tuple[Tensor, Tensor]:
    """faiss exact L2 search (GPU when the features are on CUDA and faiss-gpu is present), as ||y||^2 - 2<x,y>."""
    import faiss

    xn = x.cpu().numpy()
    if x.device.type == "cuda" and hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        d, i = faiss.knn_gpu(res, xn, xn, kf, metric=faiss.METRIC_L2)
    else:
        with matmul_threads(x.device):  # faiss's OpenMP is torch's (one libgomp in the process): its threads back
            d, i = faiss.knn(xn, xn, kf, metric=faiss.METRIC_L2)
    key = torch.from_numpy(d).to(x.device) - yy[:, None]
    return key, torch.from_numpy(i).to(x.device)


def _complete(x: Tensor, key: Tensor, idx: Tensor, yy: Tensor) -> tuple[Tensor, Tensor]:
    """An approximate search's candidates made whole: rows with fewer than kf found are searched exactly, and a
    row whose own index was missed gets it in place of its farthest candidate (every exact list starts with its
    row, which the k-reciprocal sets rely on), re-sorted."""
    short = (idx < 0).any(dim=1).nonzero().flatten()
    if len(short):
        key[short], idx[short] = _torch_candidates(x, key.shape[1], short, yy)
    rows = torch.arange(x.shape[0], device=x.device)
    missing = ~(idx == rows[:, None]).any(dim=1)
    if bool(missing.any()):
        key[missing, -1], idx[missing, -1] = -yy[missing], rows[missing]
        key, order = key.sort(dim=1, stable=True)
        idx = idx.gather(1, order)
    return key, idx


def _canonical(x: Tensor, key: Tensor, idx: Tensor, k: int, yy: Tensor, cuts: list[int] | None = None) -> Neighbours:
    """First k columns in exact order (or exact sets at the given cuts, see `neighbours`).

    A tie chain is a run of columns whose successive fp32 keys lie within tol of each other. fp32 noise (well
    under tol / 2) can only permute the members of a chain, never move one past a gap wider than tol, so sorting
    every candidate of a row by its float64 distance gives the fp32 order with each chain sorted in place. Only the
    members of the chains that matter get a float64 distance (a few per row with a near-tie, instead of all
    candidates of those rows): all chains with a column among the first k, or with cuts the chains that straddle
    a cut. They are ordered by it and then by index, each chain keeping its place. Their distances are the
    float64 ones; every other distance is the fp32 key + ||x||^2.
    """
    n = x.shape[0]
    tol = _TOL * float(yy.max().clamp_min(1.0))
    while True:
        lim = min(k + 1, key.shape[1])
        tie = (key[:, 1:] - key[:, :-1]) <= tol  # tie[:, c]: columns c and c + 1 may be in either order
        near = tie[:, : lim - 1].any(dim=1)
        more = near & (key[:, -1] - key[:, k - 1] <= tol) if key.shape[1] < n else near & False
        if not bool(more.any()):  # a tie group may run past the fetched columns: fetch more for those rows
            break
        kf = min(n, 2 * key.shape[1])
        sub = more.nonzero().flatten()
        k2, i2 = _torch_candidates(x, kf, sub, yy)
        key = torch.cat([key, key.new_full((n, kf - key.shape[1]), float("inf"))], dim=1)
        idx = torch.cat([idx, idx.new_zeros((n, kf - idx.shape[1]))], dim=1)
        key[sub], idx[sub] = k2, i2
    perm = torch.arange(k, device=x.device).expand(n, k).clone()
    dist = key[:, :k] + yy[:, None]
    if cuts is not None:  # only rows where a chain straddles a cut
        near = torch.zeros_like(near)
        for p in cuts:
            if p < key.shape[1]:
                near |= tie[:, p - 1]
    sub = near.nonzero().flatten()
    if len(sub):
        t, cand = tie[sub], idx[sub]
        chain = torch.cat([t.new_zeros(len(sub), 1, dtype=torch.int64), (~t).long().cumsum(1)], dim=1)
        member = torch.zeros_like(cand, dtype=torch.bool)
        member[:, 1:] |= t
        member[:, :-1] |= t
        if cuts is None:
            member &= chain <= chain[:, k - 1 : k]  # chains with a column among the first k
        else:
            straddle = torch.zeros_like(member)
            for p in cuts:
                if p < key.shape[1]:
                    straddle |= (chain == chain[:, p - 1 : p]) & t[:, p - 1 : p]
            member &= straddle
        r, c = member.nonzero(as_tuple=True)
        # sort key inside a chain: the float64 distance for members, the column (fp32 order) for the others
        exact = torch.arange(cand.shape[1], dtype=torch.float64, device=x.device).expand(cand.shape).clone()
        exact[r, c] = _exact_sq_dist(x, sub[r], cand[r, c])
        order = torch.sort(cand, dim=1, stable=True).indices  # index order first, then distance, then chain
        order = order.gather(1, torch.sort(exact.gather(1, order), dim=1, stable=True).indices)
        order = order.gather(1, torch.sort(chain.gather(1, order), dim=1, stable=True).indices)[:, :k]
        perm[sub] = order
        fp32 = key[sub].gather(1, order) + yy[sub, None]
        dist[sub] = torch.where(member.gather(1, order), exact.gather(1, order).to(torch.float32), fp32)
    index = idx.gather(1, perm)
    dot = (yy[index] - key.gather(1, perm)) * 0.5
    return Neighbours(dist=dist.clamp_min(0.0), index=index, dot=dot)


def _exact_sq_dist(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """float64 sum of squared differences ||x_i - x_j||^2 for the pairs (rows[p], cols[p])."""
    out = torch.empty(len(rows), dtype=torch.float64, device=x.device)
    step = max(1, _NORM_BYTES // (8 * x.shape[1]))  # small slices: the float64 temporaries stay in cache
    for s in range(0, len(rows), step):
        out[s : s + step] = (x[rows[s : s + step]].double() - x[cols[s : s + step]].double()).pow(2).sum(dim=-1)
    return out


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Call fn() and return (result, seconds), synchronising CUDA so the time is the device's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t
