"""Min-overlap m(i, j) = sum_k min(V_ik, V_jk) of sparse rows, the core of the k-reciprocal Jaccard distance.

`overlap_dense` gives whole rows (small N, re-ranking); `overlap_pairs` finds only the pairs with m >= t using
an exact, symmetric prefix filter. P_i is row i's heaviest prefix and s_i < t / 2 the mass of its other entries.
Every term of m(i, j) outside P_i & P_j is at most the entry of i outside P_i or the entry of j outside P_j, so
m(i, j) <= sum over P_i & P_j of min(V_ik, V_jk) + s_i + s_j: a pair with m >= t shares a column of both prefixes
(the sum over them must be > t - s_i - s_j > 0), and only pairs found in the prefix column lists whose prefix sum
reaches t - s_i - s_j are candidates. The few candidates are verified with the full sum, added in ascending column
order as the reference does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from hhcl.cluster.encoding import Csr, expand_segments, pair_keys
from hhcl.cluster.parallel import map_blocks, scratch_bytes, scratch_rows

_TRIPLES = 4_000_000  # (i, k, j) terms expanded at once
_PREFIX = 0.4  # prefix = heaviest entries until what is left weighs < _PREFIX * t (< 1/2: exact; see overlap_pairs)


_PREFIX_ROWS = 1024  # rows per block of the prefix pass
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


def _prefixes(v: Csr, alpha_t: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Each row's heaviest prefix P_i: the entries of the row from the heaviest on while the entry and the lighter
    ones after it still weigh >= alpha_t (the order among equal weights does not matter). Returns the prefix
    entries in CSR order as (row, col, val) and s_i, the mass outside P_i (float64), row blocks on the workers."""
    n, dev = v.n, v.val.device
    counts = v.rowptr[1:] - v.rowptr[:-1]

    def block(_: list[Tensor], r0: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r1 = min(n, r0 + _PREFIX_ROWS)
        e0, e1 = int(v.rowptr[r0]), int(v.rowptr[r1])
        cnt = counts[r0:r1]
        lrow = torch.repeat_interleave(torch.arange(r1 - r0, device=dev), cnt)
        val = v.val[e0:e1]
        # by row, heaviest first: the bits of a float >= 0 order like its value (an int64 key sorts by radix)
        o = torch.sort(lrow * 2**31 + (2**31 - 1 - val.view(torch.int32).to(torch.int64))).indices
        val_s = val[o].double()
        before = val_s.cumsum(0) - val_s  # sorted by row first: each row keeps its range of positions
        start = before[(v.rowptr[r0:r1] - e0).clamp_max(max(e1 - e0 - 1, 0))] if e1 > e0 else before
        row_s = lrow[o]
        total = torch.zeros(r1 - r0, dtype=torch.float64, device=dev).index_add_(0, row_s, val_s)
        left = total[row_s] - (before - start[row_s])  # mass of this entry and the lighter ones after it
        keep = torch.zeros(e1 - e0, dtype=torch.bool, device=dev)
        keep[o] = left >= alpha_t - 1e-5
        at = keep.nonzero().flatten()
        p_row = lrow[at]
        outside = total - torch.zeros(r1 - r0, dtype=torch.float64, device=dev).index_add_(0, p_row, val[at].double())
        return p_row + r0, v.col[e0:e1][at], val[at], outside

    parts = map_blocks(range(0, n, _PREFIX_ROWS), block, dev)
    return tuple(torch.cat([p[x] for p in parts]) for x in range(4))  # type: ignore[return-value]


def overlap_pairs(v: Csr, t: float) -> tuple[Tensor, Tensor, Tensor]:
    """All pairs i < j with m(i, j) >= t (t > 0): (i, j, m), m summed exactly as the reference does."""
    n, dev = v.n, v.val.device
    p_row, p_col, p_val, outside = _prefixes(v, _PREFIX * t)
    # a candidate's sum over P_i & P_j must reach t - s_i - s_j: per term, (t - s_i) - s_j (slack for fp32 sums)
    need_i = (t - 1e-5 - outside).to(torch.float32)
    s_j = outside.to(torch.float32)
    # prefix column lists (CSC), and for each prefix entry (in CSR order) where its column's later rows start
    csc = pair_keys(p_col, p_row, n).sort().indices
    prow, pval = p_row[csc].to(_I32), p_val[csc]
    place = torch.empty_like(csc)
    place[csc] = torch.arange(len(csc), device=dev)  # each prefix entry's place in the column lists
    pcolptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    pcolptr[1:] = torch.bincount(p_col, minlength=n).cumsum(0)
    p_lo = place + 1
    p_count = pcolptr[p_col + 1] - p_lo  # the prefix entries (j > i, k) after (i, k) in column k
    p_rowptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    p_rowptr[1:] = torch.bincount(p_row, minlength=n).cumsum(0)
    per_row = torch.zeros(n, dtype=torch.int64, device=dev).index_add_(0, p_row, p_count)
    max_rows = scratch_rows(n)
    counts = v.rowptr[1:] - v.rowptr[:-1]
    col32, rowptr32, counts32 = v.col.to(_I32), v.rowptr.to(_I32), counts.to(_I32)
    p_need = need_i[p_row]

    def block(bufs: list[Tensor], rows: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        buf, dense = bufs  # [rows, n] blocks: probe sums and row i, zeros again after
        r0, r1 = rows
        w = n - r0
        # probe: sum over P_i & P_j of min(V_ik, V_jk) for every j > i sharing a prefix column with i
        q0, q1 = int(p_rowptr[r0]), int(p_rowptr[r1])
        owner, pos = expand_segments(p_lo[q0:q1], p_count[q0:q1])
        base = ((p_row[q0:q1] - r0) * w - r0).to(_I32)
        jj = prow.index_select(0, pos)
        tgt = base.index_select(0, owner) + jj
        buf.index_add_(0, tgt, torch.minimum(p_val[q0:q1].index_select(0, owner), pval.index_select(0, pos)))
        hit = buf.index_select(0, tgt) >= p_need[q0:q1].index_select(0, owner) - s_j.index_select(0, jj)
        buf.index_fill_(0, tgt.long(), 0.0)
        tgt = torch.unique(tgt[hit]).long()  # each candidate pair once, sorted
        il = torch.div(tgt, w, rounding_mode="floor")
        i, j = il + r0, tgt - il * w + r0
        # verify: full sum over row j's columns (ascending) against row i held densely
        e0, e1 = int(v.rowptr[r0]), int(v.rowptr[r1])
        lrow = torch.repeat_interleave(torch.arange(r1 - r0, device=dev), counts[r0:r1])
        flat_i = lrow * n + v.col[e0:e1]
        dense.index_copy_(0, flat_i, v.val[e0:e1])
        c_owner, c_pos = expand_segments(rowptr32.index_select(0, j.to(_I32)), counts32.index_select(0, j.to(_I32)))
        at = (il * n).to(_I32).index_select(0, c_owner) + col32.index_select(0, c_pos)
        terms = torch.minimum(dense.index_select(0, at), v.val.index_select(0, c_pos))
        m = torch.zeros(len(i), device=dev).index_add_(0, c_owner, terms)
        dense.index_fill_(0, flat_i, 0.0)
        keep = m >= t
        return i[keep], j[keep], m[keep]

    spec = [(torch.float32, True), (torch.float32, True)]
    parts = map_blocks(list(_blocks(per_row, n, max_rows)), block, dev, spec, scratch_bytes(n))
    out_i, out_j, out_m = ([p[x] for p in parts] for x in range(3))
    if not out_i:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty, torch.zeros(0, device=dev)
    return torch.cat(out_i), torch.cat(out_j), torch.cat(out_m)
