"""Min-overlap m(i, j) = sum_k min(V_ik, V_jk) of sparse rows, the core of the k-reciprocal Jaccard distance.

`overlap_dense` gives whole rows (small N, re-ranking); `overlap_pairs` finds only the pairs with m >= t using
an exact prefix filter: if the entries of row j outside its heaviest prefix P_j sum to s_j < t, every pair
with m >= t shares a column of P_j, so probing an inverted index of prefixes finds all of them, and a pair whose
sum over P_j is below t - s_j cannot reach t. The few candidates left are verified with the full sum, added in
ascending column order as the reference does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from hhcl.cluster.encoding import Csr, expand_segments

_TRIPLES = 4_000_000  # (i, k, j) terms expanded at once
_BLOCK_BYTES = 48 * 2**20  # one dense [rows, n] float32 accumulation block
_PREFIX = 0.65  # prefix = heaviest entries until what is left weighs < _PREFIX * t (measured sweet spot)


_I32 = torch.int32  # index arrays: index_select / repeat_interleave / index_add are several times faster


def _columns(rows: Tensor, cols: Tensor, vals: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Column lists (CSC) of the given entries: (colptr, row (int32), val, sorted keys col * n + row)."""
    keys, order = (cols * n + rows).sort()
    colptr = torch.zeros(n + 1, dtype=torch.int64, device=rows.device)
    colptr[1:] = torch.bincount(cols, minlength=n).cumsum(0)
    return colptr, rows[order].to(_I32), vals[order], keys


def _blocks(per_row: Tensor, n_rows: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges with at most max_rows rows and (about) _TRIPLES expanded terms each."""
    cum = per_row.cumsum(0).cpu()
    r0 = 0
    while r0 < n_rows:
        base = int(cum[r0 - 1]) if r0 else 0
        r1 = int(torch.searchsorted(cum, base + _TRIPLES, right=True))
        r1 = min(max(r1, r0 + 1), r0 + max_rows, n_rows)
        yield r0, r1
        r0 = r1


def overlap_dense(v: Csr, r0: int, r1: int, c0: int = 0) -> Tensor:
    """m(i, j) for rows i in [r0, r1) and columns j in [c0, n): a dense [r1 - r0, n - c0] float32 block."""
    n, w = v.n, v.n - c0
    colptr, crow, cval, keys = _columns(v.row, v.col, v.val, n)
    out = torch.zeros((r1 - r0) * w, device=v.val.device)
    e0, e1 = int(v.rowptr[r0]), int(v.rowptr[r1])
    k, a = v.col[e0:e1], v.val[e0:e1]
    base = ((v.row[e0:e1] - r0) * w - c0).to(_I32)
    lo = torch.searchsorted(keys, k * n + c0) if c0 else colptr[k]
    counts = colptr[k + 1] - lo
    cum = counts.cumsum(0)
    s = 0
    while s < len(k):  # entries in (row, col) order, so every m(i, j) is summed in ascending column order
        e = min(max(int(torch.searchsorted(cum, (cum[s - 1] if s else 0) + _TRIPLES, right=True)), s + 1), len(k))
        owner, pos = expand_segments(lo[s:e], counts[s:e])
        tgt = base[s:e].index_select(0, owner) + crow.index_select(0, pos)
        out.index_add_(0, tgt, torch.minimum(a[s:e].index_select(0, owner), cval.index_select(0, pos)))
        s = e
    return out.view(r1 - r0, w)


def overlap_pairs(v: Csr, t: float) -> tuple[Tensor, Tensor, Tensor]:
    """All pairs i < j with m(i, j) >= t (t > 0): (i, j, m), m summed exactly as the reference does."""
    n, dev = v.n, v.val.device
    row = v.row
    # heaviest-first order inside each row, and the mass left after each entry
    o = torch.sort(row.double() * 2.0 - v.val.double()).indices  # by row, heaviest first (order only helps)
    val_s = v.val[o].double()
    csx = val_s.cumsum(0) - val_s
    counts = v.rowptr[1:] - v.rowptr[:-1]
    start = csx[v.rowptr[:-1].clamp_max(max(len(csx) - 1, 0))] if len(csx) else csx
    row_s = row[o]
    total = torch.zeros(n, dtype=torch.float64, device=dev).index_add_(0, row_s, val_s)
    left = total[row_s] - (csx - start[row_s])  # mass of this entry and the lighter ones after it
    in_prefix = torch.zeros(len(o), dtype=torch.bool, device=dev)
    in_prefix[o] = left >= _PREFIX * t - 1e-5  # outside mass < t is enough to be exact; less prunes better
    outside = total - torch.zeros(n, dtype=torch.float64, device=dev).index_add_(
        0, row[in_prefix], v.val[in_prefix].double()
    )
    need = (t - outside - 1e-5).to(torch.float32)  # a candidate's sum over P_j must reach this (> 0)
    # prefix column lists, and for every entry (i, k) where the prefix entries (j > i, k) start in them
    csc = torch.sort(v.col * n + row).indices
    flag = in_prefix[csc]
    lo = torch.empty(len(csc), dtype=torch.int64, device=dev)
    lo[csc] = flag.cumsum(0)
    pe = csc[flag]
    prow, pval = row[pe].to(_I32), v.val[pe]
    pcolptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    pcolptr[1:] = torch.bincount(v.col[pe], minlength=n).cumsum(0)
    pcount = pcolptr[v.col + 1] - lo
    per_row = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, row, pcount)
    max_rows = max(1, _BLOCK_BYTES // (4 * n))
    buf = torch.zeros(min(max_rows, n) * n, device=dev)
    dense = torch.zeros(min(max_rows, n) * n, device=dev)
    scratch = torch.empty(min(max_rows, n) * n, dtype=_I32, device=dev)
    col32, rowptr32, counts32 = v.col.to(_I32), v.rowptr.to(_I32), counts.to(_I32)
    out_i, out_j, out_m = [], [], []
    for r0, r1 in _blocks(per_row, n, max_rows):
        w = n - r0
        e0, e1 = int(v.rowptr[r0]), int(v.rowptr[r1])
        owner, pos = expand_segments(lo[e0:e1], pcount[e0:e1])
        base = ((row[e0:e1] - r0) * w - r0).to(_I32)
        jj = prow.index_select(0, pos)
        tgt = base.index_select(0, owner) + jj
        buf.index_add_(0, tgt, torch.minimum(v.val[e0:e1].index_select(0, owner), pval.index_select(0, pos)))
        hit = buf.index_select(0, tgt) >= need.index_select(0, jj)
        buf.index_fill_(0, tgt.long(), 0.0)
        tgt = tgt[hit]
        ids = torch.arange(len(tgt), dtype=_I32, device=dev)
        scratch.index_copy_(0, tgt.long(), ids)  # de-duplicate: one id per pair reads itself back
        tgt = tgt[scratch.index_select(0, tgt) == ids].long()
        il = torch.div(tgt, w, rounding_mode="floor")
        i, j = il + r0, tgt - il * w + r0
        # verify: full sum over row j's columns (ascending) against row i held densely
        flat_i = (row[e0:e1] - r0) * n + v.col[e0:e1]
        dense.index_copy_(0, flat_i, v.val[e0:e1])
        c_owner, c_pos = expand_segments(rowptr32.index_select(0, j.to(_I32)), counts32.index_select(0, j.to(_I32)))
        at = (il * n).to(_I32).index_select(0, c_owner) + col32.index_select(0, c_pos)
        terms = torch.minimum(dense.index_select(0, at), v.val.index_select(0, c_pos))
        m = torch.zeros(len(i), device=dev).index_add_(0, c_owner, terms)
        dense.index_fill_(0, flat_i, 0.0)
        keep = m >= t
        out_i.append(i[keep])
        out_j.append(j[keep])
        out_m.append(m[keep])
    if not out_i:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty, torch.zeros(0, device=dev)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_m)
