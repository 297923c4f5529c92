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

_BITMAP_BYTES = 32 * 2**20  # one dense [rows, n] bool block for set membership
PairValue = Callable[[Tensor, Tensor], Tensor]  # (rows, cols) -> per-pair value (distance for the weights)


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
    fwd = (rows * n + rank).flatten()
    sorted_fwd, order = fwd.sort()
    pos, hit = lookup(sorted_fwd, (rank * n + rows).flatten())
    back = torch.where(hit, order[pos] % c, c).view(n, c)  # where i sits in j's list
    t = torch.arange(c, device=rank.device)
    return (t < l_full) & (back < l_full), (t < l_half) & (back < l_half)


def expanded_sets(rank: Tensor, l_full: int, l_half: int) -> tuple[Tensor, Tensor]:
    """(row, col) pairs of the expanded sets E(i), sorted by (row, col), unique.

    E(i) = R(i, l_full) plus R(c, l_half) for every c in R(i, l_full) with |R(c, l_half) & R(i, l_full)| > 2/3
    |R(c, l_half)| (always against the original R(i, l_full)). Set membership uses a dense [rows, n] bitmap
    per block of rows, which also yields each E(i) sorted and unique.
    """
    n = rank.shape[0]
    m_full, m_half = reciprocal_masks(rank, l_full, l_half)
    half_len = m_half.sum(dim=1)
    step = max(1, _BITMAP_BYTES // n)
    bitmap = torch.zeros(min(step, n) * n, dtype=torch.bool, device=rank.device)
    keys = []
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        ii, tt = m_full[r0:r1].nonzero(as_tuple=True)
        cc = rank[r0 + ii, tt]
        base = ii * n
        bitmap[base + cc] = True
        half = rank[cc, :l_half]
        ok = m_half[cc, :l_half]
        count = (bitmap[base[:, None] + half] & ok).sum(dim=1)
        sel = 3 * count > 2 * half_len[cc]  # == count > 2/3 * |R(c)| for every size < 60, no float rounding
        bitmap[(base[sel, None] + half[sel])[ok[sel]]] = True
        found = bitmap[: (r1 - r0) * n].nonzero().flatten()
        bitmap[found] = False
        keys.append(found + r0 * n)
    flat = torch.cat(keys)
    return flat // n, flat % n


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


def query_expansion(v: Csr, rank: Tensor, k2: int) -> Csr:
    """V_qe[i] = mean of the rows V[rank[i, :k2]] (fp32, summed in rank order as the reference's np.mean)."""
    n = v.n
    k2 = min(k2, rank.shape[1])
    if k2 == 1:
        return v
    src = rank[:, :k2].flatten()  # source row of each (i, t), in (i, t) order
    counts = v.rowptr[src + 1] - v.rowptr[src]
    owner = torch.repeat_interleave(torch.arange(len(src), device=src.device), counts)
    starts = v.rowptr[src] - (counts.cumsum(0) - counts)
    pos = torch.arange(len(owner), device=src.device) + starts[owner]
    keys = (owner // k2) * n + v.col[pos]
    keys, order = keys.sort(stable=True)  # stable: equal keys stay in t order, so sums run as the reference's
    uniq, inv = torch.unique_consecutive(keys, return_inverse=True)
    val = torch.zeros(len(uniq), device=v.val.device).index_add_(0, inv, v.val[pos[order]])
    rows = uniq // n
    rowptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    rowptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return Csr(rowptr=rowptr, col=uniq % n, val=val / k2, n=n)


def encode(rank: Tensor, pair_value: PairValue, *, l_full: int, l_half: int, k2: int, softmax: bool) -> Csr:
    """The reference's V_qe from the neighbour lists rank [n, c] (c >= l_full) and a pair distance."""
    rows, cols = expanded_sets(rank, l_full, l_half)
    v = weight_rows(rows, cols, pair_value(rows, cols), rank.shape[0], softmax=softmax)
    return query_expansion(v, rank, k2)


def pair_lookup(index: Tensor, values: Tensor, compute: PairValue) -> PairValue:
    """Per-pair value from the kNN lists (either direction) where known, else from compute(rows, cols)."""
    n = index.shape[0]
    rows = torch.arange(n, device=index.device)[:, None].expand_as(index)
    keys, order = (rows * n + index).flatten().sort()
    flat = values.flatten()[order]

    def value(r: Tensor, c: Tensor) -> Tensor:
        pos, hit = lookup(keys, r * n + c)
        out = flat[pos]
        miss = (~hit).nonzero().flatten()
        if len(miss):
            pos_t, hit_t = lookup(keys, c[miss] * n + r[miss])
            out[miss] = flat[pos_t]
            miss = miss[~hit_t]
            out[miss] = compute(r[miss], c[miss])
        return out

    return value
