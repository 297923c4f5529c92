"""DBSCAN on a sparse symmetric eps-graph, with scikit-learn's exact labels (metric='precomputed')."""

from __future__ import annotations

import torch
from torch import Tensor


def _components(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Smallest node index of each node's connected component (min-label propagation + pointer jumping)."""
    lab = torch.arange(n, device=src.device)
    while len(src):
        m = torch.minimum(lab[src], lab[dst])
        new = lab.scatter_reduce(0, src, m, "amin").scatter_reduce(0, lab[src], m, "amin")
        while True:
            jump = new[new]
            if torch.equal(jump, new):
                break
            new = jump
        if torch.equal(new, lab):
            break
        lab = new
    return lab


def dbscan_graph(n: int, i: Tensor, j: Tensor, *, min_samples: int) -> Tensor:
    """Labels [n] (-1 = noise) for the neighbour pairs i < j (each point is its own neighbour too).

    As sklearn: core = at least min_samples neighbours counting itself; clusters are numbered by their
    smallest core index; a border point joins the adjacent cluster with the smallest number.
    """
    dev = i.device
    deg = 1 + torch.bincount(i, minlength=n) + torch.bincount(j, minlength=n)
    core = deg >= min_samples
    cc = core[i] & core[j]
    root = _components(n, torch.cat([i[cc], j[cc]]), torch.cat([j[cc], i[cc]]))
    roots = torch.unique(root[core])  # sorted: the smallest core index of each cluster
    cid = torch.searchsorted(roots, root)
    labels = torch.full((n,), -1, dtype=torch.int64, device=dev)
    labels[core] = cid[core]
    b = torch.cat([j[core[i] & ~core[j]], i[core[j] & ~core[i]]])
    c = torch.cat([i[core[i] & ~core[j]], j[core[j] & ~core[i]]])
    if len(b):
        big = torch.full((n,), n, dtype=torch.int64, device=dev)
        border = big.scatter_reduce(0, b, cid[c], "amin")
        labels = torch.where(~core & (border < n), border, labels)
    return labels
