"""InfoMap pseudo labels (cluster.method = infomap) equal cluster-contrast's, transcribed below from
clustercontrast/utils/infomap_cluster.py (alibaba/cluster-contrast-reid @ 57b62e9) line by line, with infomap 2.x's
names for the two calls that were renamed (addLink -> add_link, iterTree -> run().tree)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

faiss = pytest.importorskip("faiss")
infomap = pytest.importorskip("infomap")

from hhcl.cluster.infomap_cluster import (  # noqa: E402
    INFOMAP,
    STEPS,
    InfomapMissingError,
    infomap_labels,
    module_labels,
)
from hhcl.config import CLUSTER_PARAMS, ClusterConfig  # noqa: E402


def cc_infomap(features: torch.Tensor, k: int, min_sim: float, cluster_num: int) -> np.ndarray:
    """Their get_dist_nbr(features, k) + cluster_by_infomap(nbrs, dists, min_sim, cluster_num), as the training
    script calls them (F.normalize first), prints, tqdm and timers left out."""
    features_array = F.normalize(features, dim=1).cpu().numpy()
    # knn_faiss (faiss-cpu: IndexFlatIP) and knns2ordered_nbrs(sort=True)
    feats = features_array.astype("float32")
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    sims, nbrs = index.search(feats, k=k)
    knns = [(np.array(nbr, dtype=np.int32), 1 - np.array(sim, dtype=np.float32)) for nbr, sim in zip(nbrs, sims, strict=True)]
    knns = np.array(knns)
    nbrs = knns[:, 0, :].astype(np.int32)
    dists = knns[:, 1, :]
    nb_idx = np.argsort(dists, axis=1)
    idxs = np.arange(nb_idx.shape[0]).reshape(-1, 1)
    dists = dists[idxs, nb_idx]
    nbrs = nbrs[idxs, nb_idx]
    # get_links
    single, links = [], {}
    for i in range(nbrs.shape[0]):
        count = 0
        for j in range(0, len(nbrs[i])):
            if i == nbrs[i][j]:
                pass
            elif dists[i][j] <= 1 - min_sim:
                count += 1
                links[(i, nbrs[i][j])] = float(1 - dists[i][j])
            else:
                break
        if count == 0:
            single.append(i)
    # cluster_by_infomap
    wrapper = infomap.Infomap("--two-level --directed --silent")
    for (i, j), sim in links.items():
        _ = wrapper.add_link(int(i), int(j), sim)
    label2idx, idx2label = {}, {}
    for node in wrapper.run().tree(states=True):
        if node.moduleIndex() not in label2idx:
            label2idx[node.moduleIndex()] = []
        label2idx[node.moduleIndex()].append(node.physicalId)
    node_count = 0
    for key, v in label2idx.items():
        each_index_list = v[2:] if key == 0 else v[1:]
        node_count += len(each_index_list)
        label2idx[key] = each_index_list
        for each_index in each_index_list:
            idx2label[each_index] = key
    keys_len = len(list(label2idx.keys()))
    for single_node in single:
        idx2label[single_node] = keys_len
        label2idx[keys_len] = [single_node]
        keys_len += 1
        node_count += 1
    assert len(list(idx2label.keys())) == node_count, "idx_len not equal node_count!"
    old_label_container = set()
    for each_label, each_index_list in label2idx.items():
        if len(each_index_list) <= cluster_num:
            for each_index in each_index_list:
                idx2label[each_index] = -1
        else:
            old_label_container.add(each_label)
    old2new = {old_label: new_label for new_label, old_label in enumerate(old_label_container)}
    for each_index, each_label in idx2label.items():
        if each_label == -1:
            continue
        idx2label[each_index] = old2new[each_label]
    arr = np.zeros(len(idx2label)) - 1  # intdict2ndarray
    for key, v in idx2label.items():
        arr[key] = v
    return arr.astype(np.intp)


def people(n_ids: int, sizes: tuple[int, ...], n_noise: int, dim: int, spread: float, seed: int) -> torch.Tensor:
    """Identities of the given sizes (cycled) around random centres, some exact duplicates, and pure-noise points,
    L2-normalised and shuffled."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids, dim, generator=g)
    counts = torch.tensor([sizes[i % len(sizes)] for i in range(n_ids)])
    x = centres.repeat_interleave(counts, dim=0)
    x = x + spread * torch.randn(x.shape, generator=g)
    x = torch.cat([x, x[:3], torch.randn(n_noise, dim, generator=g)])  # 3 duplicates, then noise
    x = x[torch.randperm(len(x), generator=g)]
    return F.normalize(x, dim=1)


CASES = [  # (n_ids, identity sizes, noise points, dim, spread, seed, k, min_sim, cluster_num)
    (6, (5, 2, 8), 4, 16, 0.5, 0, 15, 0.5, 4),  # N = 35: tiny clusters and outliers
    (40, (12, 3, 1, 20, 4), 30, 32, 0.7, 1, 15, 0.5, 4),  # N ~ 400, many small modules dropped
    (120, (9, 2, 16, 5), 100, 64, 0.8, 2, 20, 0.45, 4),  # N ~ 1,100, k > 16 (argsort past insertion sort)
    (30, (6, 1, 3), 10, 16, 0.6, 3, 8, 0.6, 0),  # --k2 0: singletons kept as clusters
    (25, (4, 10), 15, 24, 0.9, 4, 10, 0.3, 2),  # a low threshold: large modules
]


@pytest.mark.parametrize(("n_ids", "sizes", "noise", "dim", "spread", "seed", "k", "min_sim", "cluster_num"), CASES)
def test_labels_equal_cluster_contrast(n_ids, sizes, noise, dim, spread, seed, k, min_sim, cluster_num) -> None:
    x = people(n_ids, sizes, noise, dim, spread, seed)
    want = cc_infomap(x, k, min_sim, cluster_num)
    got = infomap_labels(x, k=k, min_sim=min_sim, min_size=cluster_num + 1)
    assert got.labels.dtype == torch.int64 and got.labels.tolist() == want.tolist()
    assert got.n_clusters == len(set(want.tolist()) - {-1}) and got.n_outliers == int((want == -1).sum())
    if cluster_num:
        assert 0 < got.n_outliers < len(x) and got.n_clusters > 1  # a case with both outliers and clusters
        assert int(got.sizes.min()) > cluster_num


def test_k_above_n_and_no_links_at_all() -> None:
    """faiss pads a kNN list past N with index -1 (similarity -FLT_MAX, never a link); with no link at all InfoMap
    is not run and every image is an outlier."""
    x = people(2, (3,), 0, 8, 0.05, 5)
    assert infomap_labels(x, k=15, min_sim=0.5, min_size=2).labels.tolist() == cc_infomap(x, 15, 0.5, 1).tolist()
    far = torch.eye(5, 8)  # orthogonal: every similarity 0 < min_sim
    none = infomap_labels(far, k=5, min_sim=0.5, min_size=2)
    assert none.labels.tolist() == [-1] * 5 and none.n_clusters == 0


def test_kept_labels_are_numbered_in_python_set_order() -> None:
    """Their enumerate(set(old labels)): modules 3 and 17 kept -> iterated 17, 3 (slots 17 & 7 = 1, then 3), so
    module 17's images are cluster 0 and module 3's cluster 1; everything else is too small."""
    modules = np.repeat(np.arange(20), [1, 1, 1, 6, *[1] * 13, 7, 1, 1])
    leaves = np.arange(len(modules))
    labels = module_labels(len(modules), leaves, modules, np.zeros(0, dtype=np.int64), min_size=5)
    assert labels[modules == 17].tolist() == [0] * 7 and labels[modules == 3].tolist() == [1] * 6
    assert (labels[(modules != 3) & (modules != 17)] == -1).all()


def test_a_singleton_that_is_also_a_link_target_follows_their_dictionary() -> None:
    """Image 2 has no link of its own but is image 0's target: its module (0, with 0 and 1) counts it, its own
    singleton label drops it (min size 2), and module 0 keeps 3 members, so 0 and 1 stay a cluster."""
    leaves, modules, single = np.array([0, 1, 2, 3]), np.array([0, 0, 0, 1]), np.array([2])
    assert module_labels(4, leaves, modules, single, min_size=3).tolist() == [0, 0, -1, -1]
    assert module_labels(4, leaves, modules, single, min_size=4).tolist() == [-1, -1, -1, -1]


def test_steps_seconds_params_and_the_stop_hook() -> None:
    x = people(8, (6,), 4, 16, 0.5, 6)
    seen: list[str] = []
    res = INFOMAP.cluster(x, ClusterConfig(method="infomap", infomap_k=10), after_step=seen.append, carry=None)
    assert seen == list(STEPS[:-1]) and list(res.seconds) == ["knn", "links", "infomap"]
    assert list(res.params) == [p.name for p in CLUSTER_PARAMS["infomap"]] and res.params["k"] == 10
    assert res.carry is None and res.auto == ()

    def stop(name: str) -> None:
        raise KeyboardInterrupt(name)

    with pytest.raises(KeyboardInterrupt, match="kNN"):
        infomap_labels(x, after_step=stop)


def test_a_missing_infomap_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "infomap", None)  # importing it now raises ImportError
    for call in (INFOMAP.require, lambda: infomap_labels(torch.eye(3, 4))):
        with pytest.raises(InfomapMissingError, match=r'pip install "hhcl\[infomap\]"'):
            call()
