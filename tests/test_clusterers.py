"""The clusterer table: every entry keeps the protocol (its steps name its seconds, its params are the config's),
DBSCAN's entry is pseudo_labels exactly, and cluster.method = infomap trains with every memory mode, resumes
exactly, and words its errors with its own settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.hooks import StopAt
from helpers.tiny_run import TINY
from safetensors.torch import load_file

from hhcl.cluster import pseudo_labels
from hhcl.cluster.clusterer import step_key
from hhcl.cluster.methods import CLUSTERERS
from hhcl.config import CLUSTER_PARAMS, MEMORY_MODES, ClusterConfig, all_keys, load_config
from hhcl.engine import Trainer
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import read_raw_events

pytest.importorskip("infomap")

#: InfoMap settings under which the tiny synthetic set (12 ids x 3 cameras, an untrained ResNet-18) gives clusters
INFOMAP_TINY = ("cluster.method=infomap", "cluster.infomap_k=6", "cluster.infomap_min_size=3")
#: each memory mode's own settings for a seconds-long run (O2CAP: as tests/test_camera_memory.py runs it)
MODE_TINY = {"O2CAP": ("memory.temp=0.07", "memory.momentum=0.2", "memory.bg_knn=5", "model.bn_group=0")}


def features(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 24, generator=g).repeat_interleave(6, dim=0)
    return F.normalize(x + 0.4 * torch.randn(x.shape, generator=g), dim=1)


@pytest.mark.parametrize("name", list(CLUSTERERS))
def test_each_clusterer_times_its_steps_and_reports_the_configs_params(name: str) -> None:
    clusterer = CLUSTERERS[name]
    assert clusterer.name == name and clusterer.steps
    seen: list[str] = []
    res = clusterer.cluster(features(), ClusterConfig(method=name, k1=8, k2=3), after_step=seen.append, carry=None)
    assert list(res.seconds) == [step_key(s) for s in clusterer.steps]
    assert [s for s in seen if s in clusterer.steps] == list(clusterer.steps[:-1])
    assert list(res.params) == [p.name for p in CLUSTER_PARAMS[name]]
    assert {p.key for p in CLUSTER_PARAMS[name]} <= set(all_keys())
    assert res.labels.shape == (60,) and res.n_clusters >= 2
    assert res.n_clusters + res.n_outliers <= 60 and int(res.sizes.sum()) + res.n_outliers == 60


def test_the_dbscan_entry_is_pseudo_labels_and_carries_the_auto_eps() -> None:
    x = features(1)
    cfg = ClusterConfig(k1=8, k2=3, eps=0.5, min_samples=3)
    want = pseudo_labels(x, k1=8, k2=3, eps=0.5, min_samples=3)
    got = CLUSTERERS["dbscan"].cluster(x, cfg, after_step=lambda name: None, carry=0.9)  # a fixed eps ignores it
    assert torch.equal(got.labels, want.labels) and got.params == {"eps": 0.5} and got.carry is None
    auto = ClusterConfig(k1=8, k2=3, eps="auto", min_samples=3)
    first = CLUSTERERS["dbscan"].cluster(x, auto, after_step=lambda name: None, carry=None)
    assert first.auto == ("eps",) and first.carry == first.params["eps"]
    again = CLUSTERERS["dbscan"].cluster(x, auto, after_step=lambda name: None, carry=0.5)  # the run's first eps
    assert torch.equal(again.labels, want.labels) and again.params == {"eps": 0.5}


def test_errors_speak_of_each_methods_own_setting() -> None:
    dbscan, infomap = CLUSTERERS["dbscan"], CLUSTERERS["infomap"]
    cfg = ClusterConfig(eps="auto", infomap_min_sim=0.05)
    assert dbscan.setting(cfg, 0.4321) == "cluster.eps=auto (chose 0.4321)"
    assert dbscan.loosen(cfg, 0.4321).changes == {"cluster.eps": 0.53}
    assert infomap.setting(cfg, None) == "cluster.infomap_min_sim=0.05, cluster.infomap_k=15"
    assert infomap.loosen(cfg, None) == ("a lower similarity threshold", {"cluster.infomap_min_sim": 0.0})
    assert "eps" not in infomap.advice(cfg) and "cluster.infomap_min_size (5)" in infomap.advice(cfg)


def _fit(root: Path, run_dir: Path, *extra: str, **kw):
    cfg = load_config("demo", [f"data.root={root}", *TINY, "model.bn_group=8", "train.eval_every=9", *extra])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    return Trainer(cfg, run_dir, preset="demo", **kw).fit()


@pytest.mark.parametrize("mode", MEMORY_MODES)
def test_infomap_trains_with_every_memory_mode(synth_root: Path, tmp_path: Path, mode: str) -> None:
    extra = (*INFOMAP_TINY, f"memory.mode={mode}", *MODE_TINY.get(mode, ()), "cluster.eps=auto", "train.epochs=1",
             "train.iters=1")
    result = _fit(synth_root, tmp_path / mode, *extra)
    assert result.status == "ok", result.message
    events = read_raw_events(tmp_path / mode)
    (cluster,) = [e for e in events if e["type"] == "cluster"]
    assert cluster["method"] == "infomap" and cluster["params"] == {"min_sim": 0.5, "k": 6, "min_size": 3}
    assert "eps" not in cluster and list(cluster["seconds"]) == ["extract", "knn", "links", "infomap"]
    assert cluster["n_clusters"] >= 4  # the batch of 16 = 4 clusters x 4
    progress = [e for e in events if e["type"] == "progress" and e["stage"] == "cluster"]
    assert [e["done"] for e in progress] == [0, 1, 2, 3] and all(e["steps"] == ["kNN", "links", "InfoMap"]
                                                                  for e in progress)
    assert any(e["type"] == "step" for e in events)


def test_an_infomap_run_resumed_mid_epoch_equals_the_uninterrupted_one(synth_root: Path, tmp_path: Path) -> None:
    assert _fit(synth_root, tmp_path / "a", *INFOMAP_TINY, "train.iters=2").status == "ok"
    stopped = _fit(synth_root, tmp_path / "b", *INFOMAP_TINY, "train.iters=2", hooks=[StopAt(1, 0)])
    assert stopped.status == "interrupted"
    assert Trainer(resume_config(tmp_path / "b"), tmp_path / "b", resume=True).fit().status == "ok"
    a, b = (load_file(d / "checkpoints" / "last.safetensors") for d in (tmp_path / "a", tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "InfoMap resume diverged"


def test_no_infomap_clusters_and_an_unfillable_batch_name_its_settings(synth_root: Path, tmp_path: Path) -> None:
    none = _fit(synth_root, tmp_path / "none", *INFOMAP_TINY, "cluster.infomap_min_size=1000")
    assert none.status == "error" and "found no clusters" in none.message
    assert "cluster.infomap_min_sim=0.5, cluster.infomap_k=6" in none.message and "eps" not in none.message
    assert "a new run with a lower similarity threshold" in none.message
    assert "cluster.infomap_min_sim=0.4" in none.message
    few = _fit(synth_root, tmp_path / "few", *INFOMAP_TINY, "data.batch_size=512", "data.num_instances=16",
               "model.bn_group=0", "train.epochs=1")
    assert few.status == "error" and "lower data.batch_size" in few.message
    assert "clustering with cluster.infomap_min_sim=0.5" in few.message and "eps" not in few.message
