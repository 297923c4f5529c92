"""Reference-exact re-ID ranking metrics (reference 4.2-4.3, 6.3): sklearn-AP mAP and first-match CMC.

The reference sorts every row and calls ``sklearn.metrics.average_precision_score`` per query. Here no row is
sorted. A query's AP only needs, for each of its positives p, A_p = #valid gallery items with d <= d_p and
B_p = #positives with d <= d_p: AP = mean_p B_p / A_p, which is sklearn's step AP with tied scores forming
one threshold. B_p and the same-pid/same-camera items (excluded from "valid") come from the query's few
same-pid gallery items. The counts over the whole row come from one pass per chunk: a per-row histogram on
a monotone bin index (exact below a threshold's bin), plus exact comparisons for the few items that share a
bin with a threshold. CMC takes the first positive in (distance, gallery index) order, i.e. a stable sort:
identical to the reference whenever distances are distinct; for ties the reference's unstable argsort has
no defined order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hhcl.errors import UsageError

TOPK = 100  # CMC length, as the reference's cmc(topk=100)
NBINS = 4096  # histogram bins per row between min(0, chunk minimum) and the query's farthest positive
CHUNK_ELEMS = 1 << 22  # distance entries per query chunk (the bin indices take 8 bytes each)
_FIX_ELEMS = 1 << 21  # (selected item x threshold) comparisons per exact-fix block


class NoTrueMatchError(UsageError, ValueError):
    """No query has a true match in the gallery (a gallery item of its identity from another camera), so nothing
    can be scored; the query/gallery identities or camera ids are wrong. A usage error: the data is the fix."""


def as_tensor(x: Any, *, device: torch.device | None = None, name: str = "array") -> Tensor:
    """A numpy array, list or tensor as a tensor (numpy without a copy when contiguous)."""
    if isinstance(x, Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a numpy array, a tensor or a sequence of numbers ({err})") from None
    return t if device is None else t.to(device)


def _labels(x: Any, n: int | None, name: str, device: torch.device) -> Tensor:
    t = as_tensor(x, device=device, name=name)
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must be a 1-D integer array, got {t.dtype} of shape {tuple(t.shape)}")
    if n is not None and len(t) != n:
        raise ValueError(f"{name} has {len(t)} entries but the distance matrix needs {n}")
    return t.long()


def _distances(x: Any) -> Tensor:
    d = as_tensor(x, name="distmat")
    if d.dim() != 2:
        raise ValueError(f"distmat must be 2-D [num_query, num_gallery], got shape {tuple(d.shape)}")
    if d.dtype == torch.bool or d.is_complex():
        raise ValueError(f"distmat must hold real distances, got {d.dtype}")
    if not d.dtype.is_floating_point:
        return d.double()  # exact for integers up to 2**53
    return d if d.dtype in (torch.float32, torch.float64) else d.float()  # half -> float32 keeps order and ties


@dataclass(frozen=True)
class _Gallery:
    """Gallery labels grouped by pid, so a query finds its same-pid items without scanning the gallery."""

    pids: Tensor
    camids: Tensor
    order: Tensor  # gallery indices sorted by pid (stable: ascending index within a pid)
    uniq: Tensor  # distinct pids, ascending
    start: Tensor  # offset of each distinct pid in ``order``
    count: Tensor

    @classmethod
    def build(cls, pids: Tensor, camids: Tensor) -> _Gallery:
        order = torch.sort(pids, stable=True).indices
        uniq, count = torch.unique_consecutive(pids[order], return_counts=True)
        start = torch.cumsum(count, 0) - count
        return cls(pids, camids, order, uniq, start, count)

    def same_pid(self, q_pids: Tensor) -> tuple[Tensor, Tensor]:
        """[C, P] gallery indices with each query's pid (ascending; padded with 0) and the [C, P] mask."""
        if len(self.uniq) == 0:
            z = q_pids.new_zeros(len(q_pids), 0)
            return z, z.bool()
        pos = torch.searchsorted(self.uniq, q_pids).clamp(max=len(self.uniq) - 1)
        found = self.uniq[pos] == q_pids
        n = torch.where(found, self.count[pos], 0)
        width = int(n.max()) if len(n) else 0
        col = torch.arange(width, device=q_pids.device)
        mask = col[None, :] < n[:, None]
        idx = (self.start[pos][:, None] + col[None, :]).clamp(max=max(len(self.order) - 1, 0))
        return torch.where(mask, self.order[idx], 0), mask


def _bins(x: Tensor, origin: Tensor | None, scale: Tensor, nbins: int) -> Tensor:
    """Monotone bin index floor((x - origin) * scale) capped at nbins: items and thresholds use the same ops."""
    y = x * scale if origin is None else (x - origin).mul_(scale)
    return y.clamp_(max=nbins).long()


def _chunk_stats(
    dist: Tensor, q_pids: Tensor, q_cams: Tensor, gal: _Gallery, nbins: int = NBINS
) -> tuple[Tensor, Tensor, Tensor]:
    """Per query of a [C, G] chunk: (AP float64, first valid-match position long, has-a-positive bool)."""
    c, g = dist.shape
    dev = dist.device
    lo = dist.min() if dist.numel() else dist.new_zeros(())  # one bin origin for the chunk
    if not bool(torch.isfinite(lo)):
        raise ValueError("distmat has NaN or -inf values: distances must be real numbers (+inf ranks last)")
    same, has = gal.same_pid(q_pids)  # [C, P]
    sd = dist.gather(1, same)
    junk = has & (gal.camids[same] == q_cams[:, None])  # same pid, same camera: not in the ranking at all
    pos = has & ~junk
    n_pos = pos.sum(1)
    valid = n_pos > 0
    k = int(n_pos.max()) if c and same.shape[1] else 0
    if k == 0:
        return dist.new_zeros(c, dtype=torch.float64), n_pos.new_full((c,), -1), valid

    # thresholds: each query's positive distances, ascending (ties keep ascending gallery index)
    t, o = torch.sort(torch.where(pos, sd, torch.inf), dim=1, stable=True)
    t, t_idx = t[:, :k].contiguous(), same.gather(1, o[:, :k])
    tvalid = torch.arange(k, device=dev)[None, :] < n_pos[:, None]
    t0, g_star = t[:, :1].contiguous(), t_idx[:, 0]  # the first positive in (distance, index) order
    tj = torch.sort(torch.where(junk, sd, torch.inf), dim=1).values

    # monotone bins over [min(0, chunk min), farthest positive]; count(d <= t) = #(bin < bin(t)) + exact fix in bin(t)
    t_hi = t.gather(1, (n_pos - 1).clamp(min=0)[:, None])
    span = torch.where(valid[:, None], t_hi - lo.clamp(max=0), 0)
    scale = torch.full_like(span, float(nbins - 1)) / span  # items beyond the last positive: bin nbins
    scale = torch.where(torch.isfinite(scale) & (span > 0), scale, 0.0)
    origin = None if bool(lo >= 0) else lo  # distances >= 0 (the usual case) need no shift: one pass less
    b = _bins(dist, origin, scale, nbins)  # [C, G]
    tb = _bins(torch.where(tvalid, t, lo), origin, scale, nbins)
    tb = torch.where(tvalid, tb, nbins + 1)  # a spare column that no item's bin reaches
    hist = torch.zeros(c, nbins + 2, dtype=torch.int32, device=dev)
    hist.scatter_add_(1, b, torch.ones((), dtype=torch.int32, device=dev).expand(c, g))
    below = (torch.cumsum(hist, 1, dtype=torch.int32) - hist).gather(1, tb).long()  # items in lower bins
    lut = torch.zeros(c, nbins + 2, dtype=torch.bool, device=dev).scatter_(1, tb, True)
    rows, cols = lut.gather(1, b).nonzero(as_tuple=True)  # the items sharing a bin with a threshold
    le = torch.zeros(c, k, dtype=torch.long, device=dev)
    lt0 = torch.zeros(c, dtype=torch.long, device=dev)
    step = max(1, _FIX_ELEMS // k)
    for s in range(0, len(rows), step):
        r, cc = rows[s : s + step], cols[s : s + step]
        dv, bv = dist[r, cc][:, None], b[r, cc][:, None]
        in_bin = bv == tb[r]
        le.index_add_(0, r, (in_bin & (dv <= t[r])).long())
        lt0.index_add_(0, r, (in_bin[:, :1] & (dv < t0[r])).long().squeeze(1))
    le += below
    lt0 += below[:, 0]

    # the query's own same-pid items below each threshold: positives and junk (sorted rows, searchsorted)
    n_pos_le = torch.searchsorted(t, t, right=True)
    n_junk_le = torch.searchsorted(tj, t, right=True)
    ratio = n_pos_le.double() / (le - n_junk_le).clamp(min=1).double()
    ap = torch.where(tvalid, ratio, 0.0).sum(1) / n_pos.clamp(min=1).double()

    # CMC: valid items before the first positive in (distance, gallery index) order
    eq0 = has & (sd == t0)
    first = lt0 - torch.searchsorted(tj, t0).squeeze(1)
    tied = valid & ((le[:, 0] - lt0) > eq0.sum(1))  # other-pid items tie with the first positive
    if bool(tied.any()):
        tr = tied.nonzero().squeeze(1)
        ahead = (dist[tr] == t0[tr]) & (torch.arange(g, device=dev)[None, :] < g_star[tr, None])
        # same-pid ties ahead of it are junk (g_star is the first positive): not valid
        first[tr] += ahead.sum(1) - (eq0[tr] & (same[tr] < g_star[tr, None])).sum(1)
    first = torch.where(valid, first, -1)
    return ap, first, valid


class RankAccumulator:
    """Collects per-query AP and first-match positions chunk by chunk (no full Q x G matrix needed)."""

    def __init__(self, g_pids: Any, g_camids: Any, *, device: torch.device | str | None = None) -> None:
        dev = torch.device(device) if device is not None else None
        gp = _labels(g_pids, None, "g_pids", dev or torch.device("cpu"))
        self.gallery = _Gallery.build(gp, _labels(g_camids, len(gp), "g_camids", gp.device))
        self.num_gallery = len(gp)
        self._ap: list[Tensor] = []
        self._first: list[Tensor] = []
        self._valid: list[Tensor] = []

    def add(self, dist: Tensor, q_pids: Any, q_camids: Any) -> None:
        """Add a [C, G] chunk of query rows with their pids and camera ids."""
        if dist.dim() != 2 or dist.shape[1] != self.num_gallery:
            raise ValueError(
                f"distance chunk has shape {tuple(dist.shape)} but the gallery has {self.num_gallery} items"
            )
        dev = self.gallery.pids.device
        qp = _labels(q_pids, dist.shape[0], "q_pids", dev)
        qc = _labels(q_camids, dist.shape[0], "q_camids", dev)
        ap, first, valid = _chunk_stats(dist.to(dev), qp, qc, self.gallery)
        self._ap.append(ap)
        self._first.append(first)
        self._valid.append(valid)

    def result(self, ranks: Sequence[int] = (1, 5, 10)) -> dict[str, Any]:
        """{"mAP", "cmc" (cumulative, length max(100, max(ranks))), "ranks" {r: CMC@r}, "num_valid_queries"}."""
        topk = max([TOPK, *ranks])
        if any(int(r) < 1 for r in ranks):
            raise ValueError(f"ranks must be positive (1 = top-1), got {tuple(ranks)}")
        valid = torch.cat(self._valid) if self._valid else torch.zeros(0, dtype=torch.bool)
        n_valid = int(valid.sum())
        if n_valid == 0:
            raise NoTrueMatchError(
                f"no query has a valid positive among {self.num_gallery} gallery items (a gallery item with the "
                "same pid from another camera): check the query/gallery pids and camera ids"
            )
        ap = torch.cat(self._ap)[valid].cpu().numpy()
        first = torch.cat(self._first)[valid].cpu().numpy()
        hist = np.bincount(first[first < topk], minlength=topk).astype(np.float64)
        cmc = np.cumsum(hist) / n_valid
        return {
            "mAP": float(np.mean(ap)),
            "cmc": cmc,
            "ranks": {int(r): float(cmc[int(r) - 1]) for r in ranks},
            "num_valid_queries": n_valid,
        }


def rank_metrics(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    chunk: int | None = None,
) -> dict[str, Any]:
    """mAP (sklearn AP per query) and CMC (first match, topk 100) of a [Q, G] distance matrix, as the reference.

    Gallery items with the query's pid and camera are excluded; queries without a valid positive are skipped
    (ValueError when none has one). Numpy or torch on any device; ``chunk`` query rows at a time.
    """
    d = _distances(distmat)
    q, g = d.shape
    acc = RankAccumulator(g_pids, g_camids, device=d.device)
    if acc.num_gallery != g:
        raise ValueError(f"g_pids has {acc.num_gallery} entries but distmat has {g} gallery columns")
    qp = _labels(q_pids, q, "q_pids", d.device)
    qc = _labels(q_camids, q, "q_camids", d.device)
    step = chunk if chunk is not None else max(1, CHUNK_ELEMS // max(g, 1))
    if step < 1:
        raise ValueError(f"chunk must be a positive number of query rows, got {chunk}")
    for s in range(0, q, step):
        acc.add(d[s : s + step], qp[s : s + step], qc[s : s + step])
    return acc.result(ranks)


def chance_metrics(
    q_pids: Any,
    g_pids: Any,
    q_camids: Any,
    g_camids: Any,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    draws: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """What a random ranking scores under :func:`rank_metrics`' protocol, so a measured mAP can be read against it.

    Exact expectations: a query with ``R`` true matches among ``N`` ranked gallery items (its same-pid,
    same-camera items left out) has E[AP] = H_N / N + (R - 1)(N - H_N) / (N (N - 1)) (H_N the N-th harmonic number:
    each true match's own precision term averages H_N / N, each pair's (N - H_N) / (N (N - 1))), and
    E[CMC@k] = 1 - C(N - R, k) / C(N, k). ``mAP_sd`` is the spread of a random ranking's mAP (the standard deviation
    over ``draws`` rankings of random distances, seeded): how far above ``mAP`` a model must be to beat chance.
    """
    gp = as_tensor(g_pids, name="g_pids").long().cpu()
    gc = _labels(g_camids, len(gp), "g_camids", torch.device("cpu"))
    qp = as_tensor(q_pids, name="q_pids").long().cpu()
    qc = _labels(q_camids, len(qp), "q_camids", torch.device("cpu"))
    # per query: gallery items of its pid (R + junk) and of its pid and camera (junk), by sorted-key lookups
    n_same = _count_matches(gp, qp)
    n_junk = _count_matches(gp * (int(max(gc.max(), qc.max())) + 1) + gc, qp * (int(max(gc.max(), qc.max())) + 1) + qc)
    n = (len(gp) - n_junk).double()
    r = (n_same - n_junk).double()
    keep = r > 0  # as rank_metrics: a query without a true match is not scored
    if not bool(keep.any()):
        raise NoTrueMatchError("no query has a true match in the gallery (same pid, another camera): chance is undefined")
    n, r = n[keep], r[keep]
    harmonic = torch.cumsum(1.0 / torch.arange(1, int(n.max()) + 1, dtype=torch.float64), 0)
    h = harmonic[n.long() - 1]
    ap = h / n + torch.where(n > 1, (r - 1) * (n - h) / (n * (n - 1)).clamp(min=1), 0.0)
    out_ranks = {}
    for k in ranks:
        miss = torch.ones_like(n)
        for i in range(int(k)):  # P(no true match in the top k) = prod_i (N - R - i) / (N - i)
            miss = miss * ((n - r - i).clamp(min=0) / (n - i).clamp(min=1))
        out_ranks[int(k)] = float((1 - miss).mean())
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for _ in range(draws):
        acc = RankAccumulator(gp, gc)
        step = max(1, CHUNK_ELEMS // max(len(gp), 1))
        for s in range(0, len(qp), step):
            rows = torch.rand(min(step, len(qp) - s), len(gp), generator=gen)
            acc.add(rows, qp[s : s + step], qc[s : s + step])
        maps.append(acc.result(ranks)["mAP"])
    return {"mAP": float(ap.mean()), "ranks": out_ranks, "mAP_sd": float(np.std(maps, ddof=1)) if draws > 1 else 0.0}


def _count_matches(keys: Tensor, queries: Tensor) -> Tensor:
    """For each query key, how many entries of ``keys`` equal it (sorted-keys lookups, no loop over samples)."""
    uniq, count = torch.unique(keys, return_counts=True)
    pos = torch.searchsorted(uniq, queries).clamp(max=max(len(uniq) - 1, 0))
    return torch.where(uniq[pos] == queries, count[pos], 0) if len(uniq) else torch.zeros_like(queries)
