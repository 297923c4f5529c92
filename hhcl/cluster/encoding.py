"""Sparse k-reciprocal encoding: reciprocal sets, their expansion, the weight rows V and query expansion.

Everything is vectorised over points (sorted keys + searchsorted instead of per-point Python sets), and the
N x N matrices of the reference are CSR rows with tens of non-zeros each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hhcl.cluster.parallel import map_blocks, scratch_bytes, scratch_rows

KEY32_MAX = 2**31 - 1  # pair keys i * n + j up to this are int32
_QE_ROWS = 512  # rows per block of the query expansion
_IN_R = 1 << 16  # flag: j is in R(i, l_full)
PairValue = Callable[[Tensor, Tensor, Tensor], Tensor]  # (rows, cols, column in rank or -1) -> pair distance


@dataclass(frozen=True)
class Csr:
    """Rows of a sparse [n, n] matrix: entries sorted by (row, col)."""

    rowptr: Tensor  # [n+1] int64
    col: Tensor  # [nnz] int64
    val: Tensor  # [nnz] float32
    n: int

    @property
    def row(self) -> Tensor:
        """Row index of every entry."""
        counts = self.rowptr[1:] - self.rowptr[:-1]
        return torch.repeat_interleave(torch.arange(self.n, device=self.col.device), counts)


def half_size(k1: int) -> int:
    """The reference's half set size: round-half-even(k1/2) (np.around), e.g. 15 for k1 = 30, 10 for 20."""
    return int(np.around(k1 / 2))


def pair_keys(i: Tensor, j: Tensor, n: int) -> Tensor:
    """i * n + j, as int32 when every key fits (N <= 46,340): int32 keys sort (radix) and search faster."""
    key = i * n + j
    return key.to(torch.int32) if n * n <= KEY32_MAX else key


def lookup(sorted_keys: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
    """Position of each query in sorted_keys and whether it is there."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries), torch.zeros_like(queries, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, queries).clamp_max(sorted_keys.numel() - 1)
    return pos, sorted_keys[pos] == queries


def reciprocal_masks(rank: Tensor, l_full: int, l_half: int) -> tuple[Tensor, Tensor]:
    """Masks over rank [n, c]: j = rank[i, t] is in R(i) for the slice length l (i in rank[j, :l], t < l)."""
    n, c = rank.shape
    rows = torch.arange(n, device=rank.device)[:, None]
    # (i, t) and its mirror entry (j, t') share the key min * n + max: sorted, mirrors are neighbours
    key = pair_keys(torch.minimum(rows, rank), torch.maximum(rows, rank), n).flatten()
    sorted_key, order = key.sort()
    p = (sorted_key[1:] == sorted_key[:-1]).nonzero().flatten()  # each key occurs at most twice
    a, b = order[p], order[p + 1]
    t = torch.arange(c, device=rank.device)
    back = torch.full((n * c,), c, dtype=torch.int64, device=rank.device)  # where i sits in j's list
    back[a], back[b] = b % c, a % c
    back = torch.where(rank == rows, t, back.view(n, c))  # i in its own list: there
    return (t < l_full) & (back < l_full), (t < l_half) & (back < l_half)


def expanded_sets(rank: Tensor, l_full: int, l_half: int) -> tuple[Tensor, Tensor, Tensor]:
    """(row, col) pairs of the expanded sets E(i), sorted by (row, col), unique, and the column of col in
    rank[row] (-1 when it is not there).

    E(i) = R(i, l_full) plus R(c, l_half) for every c in R(i, l_full) with |R(c, l_half) & R(i, l_full)| > 2/3
    |R(c, l_half)| (always against the original R(i, l_full)). Membership and de-duplication use dense
    [rows, n] int32 scratch blocks, touched only where written.
    """
    n, c = rank.shape
    dev, i32 = rank.device, torch.int32
    m_full, m_half = reciprocal_masks(rank, l_full, l_half)
    half_len = m_half.sum(dim=1).to(i32)
    rank_half = rank[:, :l_half].to(i32).contiguous()
    ok_half = m_half[:, :l_half].contiguous()
    step = scratch_rows(n)
    cols = torch.arange(1, c + 1, dtype=i32, device=dev)

    def block(bufs: list[Tensor], r0: int) -> tuple[Tensor, Tensor]:
        code = bufs[0]  # a [rows, n] block: t + 1 of j in rank[i] (+ _IN_R), zeros again after
        r1 = min(n, r0 + step)
        lists = rank[r0:r1].to(i32)
        knn_keys = (torch.arange(r1 - r0, device=dev)[:, None] * n + rank[r0:r1]).flatten()
        code.index_copy_(0, knn_keys, cols.repeat(r1 - r0))
        ii, tt = m_full[r0:r1].nonzero(as_tuple=True)
        cc = lists[ii, tt]
        base = ii.to(i32) * n
        r_keys = base + cc
        code.index_add_(0, r_keys, torch.full_like(r_keys, _IN_R))  # r_keys are unique
        half = rank_half.index_select(0, cc)
        ok = ok_half.index_select(0, cc)
        h_keys = base[:, None] + half
        inside = code.index_select(0, h_keys.flatten()).view_as(h_keys) >= _IN_R
        sel = 3 * (inside & ok).sum(dim=1) > 2 * half_len.index_select(0, cc)  # == count > 2/3 |R(c)|, < 60
        new = h_keys[sel][(ok & ~inside)[sel]]  # the members not in R(i) already: a few, possibly repeated
        found = torch.unique(torch.cat([r_keys, new]))  # sorted
        kpos = (code.index_select(0, found) & (_IN_R - 1)) - 1
        code.index_fill_(0, knn_keys, 0)
        row = torch.div(found, n, rounding_mode="floor")
        return row.long() + r0, (found - row * n).long(), kpos.long()

    parts = map_blocks(range(0, n, step), block, dev, [(i32, True)], scratch_bytes(n))
    return tuple(torch.cat([p[x] for p in parts]) for x in range(3))  # type: ignore[return-value]


def weight_rows(rows: Tensor, cols: Tensor, value: Tensor, n: int, *, softmax: bool) -> Csr:
    """V: per row, softmax(-value) over its set (clustering) or exp(-value)/sum (classic re-ranking)."""
    counts = torch.bincount(rows, minlength=n)
    rowptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    rowptr[1:] = counts.cumsum(0)
    x = -value.to(torch.float32)
    if softmax:
        mx = torch.full((n,), -float("inf"), device=x.device).scatter_reduce(0, rows, x, "amax")
        x = x - mx[rows]
    e = torch.exp(x)
    total = torch.zeros(n, device=x.device).index_add_(0, rows, e)
    return Csr(rowptr=rowptr, col=cols, val=e / total[rows], n=n)


def expand_segments(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """For segments [starts, starts + counts): (owner segment, position) of every element, in order (int32)."""
    counts = counts.to(torch.int32)
    owner = torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32, device=counts.device), counts)
    shift = (starts - (counts.cumsum(0) - counts)).to(torch.int32)
    return owner, torch.arange(len(owner), dtype=torch.int32, device=counts.device) + shift.index_select(0, owner)


def query_expansion(v: Csr, rank: Tensor, k2: int) -> Csr:
    """V_qe[i] = mean of the rows V[rank[i, :k2]] (fp32, summed in rank order as the reference's np.mean)."""
    n, i32 = v.n, torch.int32
    k2 = min(k2, rank.shape[1])
    if k2 == 1:
        return v
    step = max(1, min(n, _QE_ROWS, KEY32_MAX // n))  # local keys i * n + col stay int32
    col32, counts = v.col.to(i32), v.rowptr[1:] - v.rowptr[:-1]

    def block(_: list[Tensor], r0: int) -> tuple[Tensor, Tensor, Tensor]:
        src = rank[r0 : r0 + step, :k2].flatten()  # source row of each (i, t), in (i, t) order
        owner, pos = expand_segments(v.rowptr[src], counts[src])
        key = torch.div(owner, k2, rounding_mode="floor") * n + col32.index_select(0, pos)
        uniq, slot = torch.unique(key, return_inverse=True)  # sorted
        # index_add in (i, t) order: each sum runs over t as the reference's row-wise mean does
        total = torch.zeros(len(uniq), device=v.val.device)
        val = total.index_add_(0, slot, v.val.index_select(0, pos)) / k2
        row = torch.div(uniq, n, rounding_mode="floor")
        return (uniq - row * n).long(), val, torch.bincount(row, minlength=len(src) // k2)

    parts = map_blocks(range(0, n, step), block, v.col.device)
    rowptr = torch.zeros(n + 1, dtype=torch.int64, device=v.col.device)
    rowptr[1:] = torch.cat([p[2] for p in parts]).cumsum(0)
    return Csr(rowptr=rowptr, col=torch.cat([p[0] for p in parts]), val=torch.cat([p[1] for p in parts]), n=n)


def encode(rank: Tensor, pair_value: PairValue, *, l_full: int, l_half: int, k2: int, softmax: bool) -> Csr:
    """The reference's V_qe from the neighbour lists rank [n, c] (c >= l_full) and a pair distance."""
    rows, cols, kpos = expanded_sets(rank, l_full, l_half)
    v = weight_rows(rows, cols, pair_value(rows, cols, kpos), rank.shape[0], softmax=softmax)
    return query_expansion(v, rank, k2)


def pair_lookup(index: Tensor, values: Tensor, compute: Callable[[Tensor, Tensor], Tensor]) -> PairValue:
    """Symmetric per-pair value from the kNN lists where known (forward via kpos, else the reverse list),
    computed by compute(rows, cols) for the pairs in neither list."""
    n = index.shape[0]
    keys, order = pair_keys(torch.arange(n, device=index.device)[:, None], index, n).flatten().sort()
    flat = values.flatten()[order]

    def value(r: Tensor, c: Tensor, kpos: Tensor) -> Tensor:
        out = values[r, kpos.clamp_min(0)]
        miss = (kpos < 0).nonzero().flatten()
        if len(miss):
            pos_t, hit_t = lookup(keys, pair_keys(c[miss], r[miss], n))
            out[miss] = flat[pos_t]
            miss = miss[~hit_t]
            out[miss] = compute(r[miss], c[miss])
        return out

    return value
