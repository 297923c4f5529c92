"""Approximate kNN (cluster.knn_backend = ivf | hnsw): on clustered features their lists and labels agree with the
exact search's; searching every IVF cell is exact to the last tie; the parameter rules by hand; auto's switch; and
the repairs (rows short of candidates, a row that missed itself)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

pytest.importorskip("faiss")

knn_module = importlib.import_module("hhcl.cluster.knn")  # the package exports a function of that name
from hhcl.cluster import pseudo_labels  # noqa: E402
from hhcl.cluster.approx import ApproxParams, chosen  # noqa: E402
from hhcl.cluster.knn import _complete, _norms, neighbours  # noqa: E402
from hhcl.config import ConfigError, load_config  # noqa: E402


def clustered(n_ids: int = 80, per: int = 25, dim: int = 48, noise: float = 0.35, outliers: float = 0.2,
              seed: int = 0) -> torch.Tensor:
    """Identities of ``per`` images around a centre, plus a share of unrelated images, L2-normalised, shuffled."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    x = centres.repeat_interleave(per, dim=0) + noise * torch.randn(n_ids * per, dim, generator=g)
    extra = torch.randn(int(outliers * n_ids * per), dim, generator=g)
    x = torch.cat([x, extra])
    return F.normalize(x[torch.randperm(len(x), generator=g)], dim=1)


@pytest.mark.parametrize("backend", ["ivf", "hnsw"])
def test_lists_and_labels_agree_with_exact_on_clustered_features(backend: str) -> None:
    x = clustered()
    exact = neighbours(x, 20, backend="torch")
    approx = neighbours(x, 20, backend=backend)
    same = (exact.index == approx.index).all(dim=1).float().mean().item()
    assert same >= 0.95, f"{backend}: only {same:.3f} of the kNN lists are identical"  # measured 0.976 / 0.995
    assert torch.equal(approx.index[:, 0], torch.arange(len(x)))  # every row first in its own list
    a = pseudo_labels(x, k1=20, k2=6, eps=0.6, min_samples=4, knn_backend="torch").labels
    b = pseudo_labels(x, k1=20, k2=6, eps=0.6, min_samples=4, knn_backend=backend).labels
    assert int(a.max()) >= 40  # the case has clusters to agree on
    assert adjusted_rand_score(a.numpy(), b.numpy()) >= 0.99


def test_ivf_probing_every_cell_is_the_exact_search() -> None:
    """Every cell searched: the same lists to the last tie, so the same labels (the distances may differ in their
    last bits, faiss's arithmetic; the Jaccard weights never use them)."""
    x = clustered(n_ids=30, per=12, seed=1)
    full = ApproxParams(nlist=8, nprobe=8)
    assert torch.equal(neighbours(x, 16, backend="ivf", approx=full).index, neighbours(x, 16, backend="torch").index)
    a = pseudo_labels(x, k1=16, k2=4, eps=0.6, min_samples=3, knn_backend="torch").labels
    b = pseudo_labels(x, k1=16, k2=4, eps=0.6, min_samples=3, knn_backend="ivf", knn_params=full).labels
    assert torch.equal(a, b) and int(a.max()) >= 10


def test_a_row_short_of_candidates_is_searched_exactly() -> None:
    """A search that found fewer than kf for a row (its probed cells held too few points): -1 columns. That row
    gets the exact search's candidates; the others keep theirs."""
    x = F.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    yy = _norms(x)
    key, idx = (yy[None, :] - 2 * x @ x.T).topk(6, dim=1, largest=False)
    short_key, short_idx = key.clone(), idx.clone()
    short_key[2, 4:], short_idx[2, 4:] = float("inf"), -1
    short_idx[5] = idx[5].flip(0)  # a marker: an untouched row keeps even a wrong order
    fixed_key, fixed_idx = _complete(x, short_key, short_idx, yy)
    assert torch.equal(fixed_idx[2], idx[2]) and torch.allclose(fixed_key[2], key[2], atol=1e-6)
    assert torch.equal(fixed_idx[5], idx[5].flip(0))


def test_a_row_that_missed_itself_gets_itself_first() -> None:
    x = F.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(3)), dim=1)
    yy = _norms(x)
    full = (yy[None, :] - 2 * x @ x.T)  # keys of every pair
    key, idx = full.sort(dim=1)
    key, idx = key[:, :3].clone(), idx[:, :3].clone()
    key[0], idx[0] = full[0, [1, 2, 3]], torch.tensor([1, 2, 3])  # row 0's search missed row 0
    key[0], order = key[0].sort()
    idx[0] = idx[0][order]
    fixed_key, fixed_idx = _complete(x, key, idx, yy)
    assert int(fixed_idx[0, 0]) == 0 and fixed_key[0, 0] == pytest.approx(-float(yy[0]))
    assert torch.equal(fixed_idx[1:], idx[1:])  # the others untouched
    assert (fixed_key[0, 1:] >= fixed_key[0, 0]).all()


def test_parameter_rules_by_hand() -> None:
    # Market's 12,936 images, k1 30 + 8 fetched: 4 sqrt(N) = 455 cells, capped at N / 39 = 331; 331 / 32 -> 11 < 16
    assert chosen(ApproxParams(), 12936, 38) == ApproxParams(nlist=331, nprobe=16, ef_search=128)
    # 200,000: 4 sqrt(N) = 1789 cells; 1789 / 32 -> 56 probed
    assert chosen(ApproxParams(), 200_000, 38) == ApproxParams(nlist=1789, nprobe=56, ef_search=128)
    assert chosen(ApproxParams(), 50, 38) == ApproxParams(nlist=1, nprobe=1, ef_search=128)  # 50 // 39
    assert chosen(ApproxParams(nlist=100, nprobe=500, ef_search=10), 10_000, 38) == ApproxParams(100, 100, 38)


def test_auto_is_exact_below_its_size_and_ivf_from_it(monkeypatch: pytest.MonkeyPatch) -> None:
    x = clustered(n_ids=20, per=10, seed=4)
    assert knn_module.resolve_backend("auto", x.device, len(x)) == "torch"
    monkeypatch.setattr(knn_module, "AUTO_APPROX_FROM", len(x))  # the switch, once a size is measured
    assert knn_module.resolve_backend("auto", x.device, len(x)) == "ivf"
    params = ApproxParams(nlist=16, nprobe=2)
    auto, ivf = neighbours(x, 10, backend="auto", approx=params), neighbours(x, 10, backend="ivf", approx=params)
    assert torch.equal(auto.index, ivf.index)


def test_the_config_names_the_backends_and_bounds_their_settings() -> None:
    cfg = load_config("market", ["cluster.knn_backend=hnsw", "cluster.knn_ef_search=256"])
    assert (cfg.cluster.knn_backend, cfg.cluster.knn_ef_search) == ("hnsw", 256)
    with pytest.raises(ConfigError, match="cluster.knn_backend = 'annoy' is not allowed: use one of auto, torch, "
                                          "faiss, ivf, hnsw"):
        load_config("market", ["cluster.knn_backend=annoy"])
    with pytest.raises(ConfigError, match="cluster.knn_nprobe = -1 is not allowed: must be between 0 and"):
        load_config("market", ["cluster.knn_nprobe=-1"])
