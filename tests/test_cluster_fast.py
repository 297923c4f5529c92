"""The clustering engine's fast paths against naive implementations: float64 re-ranking of tie chains only, the
cuts the encoding passes to the kNN, the symmetric prefix filter of overlap_pairs, worker-thread blocks and the
one-pass finiteness check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import naive_cluster as naive  # noqa: E402

from hhcl.cluster import encoding, jaccard, knn, overlap, parallel, pseudo_labels  # noqa: E402
from hhcl.cluster.encoding import Csr  # noqa: E402
from hhcl.cluster.jaccard import jaccard_pairs, order_cuts  # noqa: E402
from hhcl.cluster.knn import check_features, neighbours, sparse_threads  # noqa: E402
from hhcl.cluster.overlap import overlap_dense, overlap_pairs  # noqa: E402
from hhcl.cluster.parallel import block_workers  # noqa: E402

knn_module = sys.modules["hhcl.cluster.knn"]


def _ties(seed: int = 0, n: int = 90, dim: int = 12) -> torch.Tensor:
    """Hand-built exact and near ties: exact copies of rows, mirror points (x + d e_a and x + d e_b are equally far
    from x, exactly, in any precision) and copies nudged by one ulp in one coordinate (a fp32 tie, not a float64
    one), around a few centres so that ties land inside, across and at the end of the kNN lists."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(n // 6, dim, generator=g), dim=1)
    rows = []
    for c in base:
        rows.append(c)
        for a, b in ((0, 1), (2, 3)):
            for axis in (a, b):
                e = torch.zeros(dim)
                e[axis] = 0.125  # a power of two: c +- e is exact in fp32
                rows.append(c + e)
        rows.append(c.clone())  # an exact copy: distance 0, ties broken by index
    x = torch.stack(rows)
    nudged = x[:: 3].clone()
    nudged[:, 5] = torch.nextafter(nudged[:, 5], torch.full_like(nudged[:, 5], 2.0))
    x = torch.cat([x, nudged, x[1::4] + 1e-3 * torch.randn(len(x[1::4]), dim, generator=g)])
    return x[torch.randperm(len(x), generator=g)].contiguous()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_tie_chains_give_the_exact_order(seed: int, backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    x = _ties(seed)
    for k in (1, 5, 16, 30, len(x)):
        want = naive.exact_rank(x, k)  # float64 distance of the differences, then index, for every row
        dist, idx = knn(x, k, backend=backend)
        assert np.array_equal(idx.numpy(), want), k
        exact = ((x[:, None, :].double() - x[idx].double()) ** 2).sum(-1)
        assert torch.allclose(dist.double(), exact, atol=1e-6)
        assert bool((dist[:, 1:] >= dist[:, :-1]).all())


@pytest.mark.parametrize("seed", [0, 3])
def test_cuts_keep_the_sets_the_encoding_reads(seed: int) -> None:
    x = _ties(seed)
    k1, k2 = 20, 4
    want = naive.exact_rank(x, k1)
    cuts = order_cuts(k1, k2, len(x))
    assert cuts == [1, 2, 3, 4, 11, 20]
    nb = neighbours(x, k1, cuts=cuts)
    got = nb.index.numpy()
    for p in cuts:
        assert all(set(a[:p]) == set(b[:p]) for a, b in zip(got, want, strict=True)), p
    assert np.array_equal(got[:, :k2], want[:, :k2])
    full = neighbours(x, k1)
    # the same pair values travel with the same pairs, whatever the order inside a span
    for i in range(len(x)):
        a = dict(zip(nb.index[i].tolist(), nb.dot[i].tolist(), strict=True))
        b = dict(zip(full.index[i].tolist(), full.dot[i].tolist(), strict=True))
        assert a == b
    with sparse_threads(x.device):
        fast = jaccard_pairs(x, nb, k1=k1, k2=k2, eps=0.6)
        ref = jaccard_pairs(x, full, k1=k1, k2=k2, eps=0.6)
    key_f, key_r = fast[0] * len(x) + fast[1], ref[0] * len(x) + ref[1]
    of, orf = key_f.argsort(), key_r.argsort()
    assert torch.equal(key_f[of], key_r[orf]) and torch.equal(fast[2][of], ref[2][orf])


def test_pseudo_labels_on_ties_match_the_reference() -> None:
    x = _ties(4)
    rank = naive.exact_rank(x, 20)
    ref = np.maximum(naive.jaccard_reference(x, rank, 20, 4), 0)
    for eps in (0.3, 0.5, 0.7):
        while np.abs(ref - np.float32(eps)).min() < 1e-5:
            eps += 3e-5
        got = pseudo_labels(x, k1=20, k2=4, eps=eps, knn_backend="torch")
        assert np.array_equal(got.labels.numpy(), naive.cluster_reference(ref, eps)), eps


def _random_rows(n: int, seed: int, dup: int = 0) -> Csr:
    """Sparse rows that sum to 1: a few heavy entries or many even ones, with some exact duplicate rows."""
    g = torch.Generator().manual_seed(seed)
    rows, cols, vals = [], [], []
    for i in range(n):
        width = int(torch.randint(1, 25, (1,), generator=g))
        near = (i + torch.randint(-8, 9, (width,), generator=g)).clamp(0, n - 1).unique()
        w = torch.rand(len(near), generator=g) ** (1 + 3 * (i % 3))
        rows.append(torch.full((len(near),), i))
        cols.append(near)
        vals.append((w / w.sum()).float())
    for i in range(dup):
        rows[i + 1], cols[i + 1], vals[i + 1] = torch.full_like(rows[i], i + 1), cols[i], vals[i]
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    rowptr = torch.zeros(n + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(row, minlength=n).cumsum(0)
    return Csr(rowptr=rowptr, col=col, val=val, n=n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_pairs_match_the_dense_overlap(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    v = _random_rows(150, seed, dup=5)
    m = overlap_dense(v, 0, v.n)  # every m(i, j), summed as the reference does
    iu = torch.triu_indices(v.n, v.n, 1)
    for small in (False, True):
        if small:  # many blocks, each with few terms
            monkeypatch.setattr(parallel, "SCRATCH_BYTES", 4 * v.n * 7)
            monkeypatch.setattr(overlap, "_TRIPLES", 50)
        for t in (0.05, 0.3, 0.5, 0.71, 0.9, 0.999):
            want = m[iu[0], iu[1]] >= t
            i, j, got = overlap_pairs(v, t)
            order = (i * v.n + j).argsort()
            i, j, got = i[order], j[order], got[order]
            assert torch.equal(i, iu[0][want]) and torch.equal(j, iu[1][want]), t
            assert torch.equal(got, m[i, j]), t  # bit-identical sums


def test_worker_blocks_and_wide_keys_give_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    x = naive.clustered_features(400, 24, dup=0.1, seed=5)
    nb = neighbours(x, 30)
    with sparse_threads(x.device):
        want = jaccard_pairs(x, nb, k1=30, k2=6, eps=0.6)
    monkeypatch.setattr(parallel, "SCRATCH_BYTES", 4 * 400 * 9)  # many blocks in every stage
    monkeypatch.setattr(overlap, "_TRIPLES", 3000)
    monkeypatch.setattr(overlap, "_PREFIX_ROWS", 13)
    monkeypatch.setattr(encoding, "_QE_ROWS", 11)
    monkeypatch.setattr(jaccard, "_PAIRS", 7)
    for workers, key32 in ((1, encoding.KEY32_MAX), (2, encoding.KEY32_MAX), (2, 0)):
        monkeypatch.setattr(encoding, "KEY32_MAX", key32)  # 0: int64 keys, as for N > 46,340
        with sparse_threads(x.device), block_workers(workers):
            got = jaccard_pairs(x, nb, k1=30, k2=6, eps=0.6)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), (workers, key32)
    assert torch.get_num_threads() == 2  # restored


def test_finite_check() -> None:
    x = naive.clustered_features(20, 8, seed=1)
    for bad in (float("inf"), -float("inf"), float("nan")):
        y = x.clone()
        y[7, 2] = bad
        with pytest.raises(ValueError, match=r"NaN or Inf in 1 row\(s\) \(first: \[7\]\)"):
            check_features(y)
    huge = x.clone()
    huge[3] = 3e38  # finite entries whose row sum overflows: accepted
    assert torch.equal(check_features(huge), huge)
    half = x.half()
    half[4, 1] = float("nan")
    with pytest.raises(ValueError, match="first: \\[4\\]"):
        check_features(half)


def test_norms_are_the_plain_row_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    x = naive.clustered_features(300, 40, seed=2) * 3.0
    monkeypatch.setattr(knn_module, "_NORM_BYTES", 4 * 40 * 7)  # slices of 7 rows
    assert torch.equal(knn_module._norms(x), (x * x).sum(dim=1))


def test_pooled_scratch_comes_back_zeroed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "_pool", {})
    monkeypatch.setattr(parallel, "SCRATCH_BYTES", 4 * 300 * 13)
    x = naive.clustered_features(300, 16, dup=0.1, seed=6)
    first = pseudo_labels(x, eps=0.6).labels
    zeroed = [b for (_, _, z), bufs in parallel._pool.items() if z for b in bufs]
    assert zeroed and all(int(b.count_nonzero()) == 0 for b in zeroed)
    assert torch.equal(pseudo_labels(x, eps=0.6).labels, first)  # the second call reuses them

    def boom(bufs: list[torch.Tensor], b: int) -> None:
        bufs[0].fill_(1)
        raise RuntimeError("boom")

    before = sum(len(v) for v in parallel._pool.values())
    with pytest.raises(RuntimeError, match="boom"):
        parallel.map_blocks([0, 1], boom, x.device, [(torch.int32, True)], parallel.SCRATCH_BYTES)
    assert sum(len(v) for v in parallel._pool.values()) == before - 1  # the dirty buffer was dropped


def test_threads_during_pseudo_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short ops run on one thread, the torch kNN matmul on all of them, and the count is restored after."""
    seen = []
    real = knn_module.ieee_fp32

    def spy(device: torch.device):  # entered around the matmul, inside matmul_threads
        seen.append(torch.get_num_threads())
        return real(device)

    monkeypatch.setattr(knn_module, "ieee_fp32", spy)
    x = naive.clustered_features(200, 16, seed=7)
    torch.set_num_threads(2)
    res = pseudo_labels(x, eps=0.6, knn_backend="torch")
    assert seen == [2] and torch.get_num_threads() == 2
    assert torch.equal(pseudo_labels(x, eps=0.6, knn_backend="torch").labels, res.labels)
    assert seen == [2, 2]
    faiss = pytest.importorskip("faiss")
    real_knn, threads = faiss.knn, []

    def knn_spy(*args, **kwargs):  # faiss's OpenMP is the process's: it must get the threads back too
        threads.append(faiss.omp_get_max_threads())
        return real_knn(*args, **kwargs)

    monkeypatch.setattr(faiss, "knn", knn_spy)
    assert torch.equal(pseudo_labels(x, eps=0.6, knn_backend="faiss").labels, res.labels)
    assert threads == [2] and torch.get_num_threads() == 2


@pytest.mark.parametrize(("n", "block", "dup"), [(300, 64, 0.0), (333, 50, 0.2), (200, 190, 0.1), (129, 64, 0.3)])
def test_symmetric_knn_gives_the_exact_lists(n: int, block: int, dup: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU torch search computes each Gram block once for both sides; the lists are those of a full search
    and of the float64 reference (blocks of every size, a last block merged into the one before it, ties)."""
    monkeypatch.setattr(knn_module, "_SYM_BLOCK", block)
    x = naive.clustered_features(n, 24, dup=dup, seed=n)
    yy = knn_module._norms(x)
    kf = 38
    sym = knn_module._symmetric_candidates(x, kf, yy)
    full = knn_module._torch_candidates(x, kf, torch.arange(n), yy)
    assert torch.allclose(sym[0], full[0], atol=1e-6)  # the same kf smallest keys (ties may swap indices)
    want = naive.exact_rank(x, 30)
    assert np.array_equal(neighbours(x, 30, backend="torch").index.numpy(), want)
    order = torch.sort(x[:, 0]).indices  # rows far from their own block's: loose bounds, still exact
    assert np.array_equal(neighbours(x[order], 30, backend="torch").index.numpy(), naive.exact_rank(x[order], 30))
    with sparse_threads(x.device):  # blocks on the worker threads: the same lists
        assert np.array_equal(neighbours(x, 30, backend="torch").index.numpy(), want)
