"""Camera-aware proxy memory (O2CAP, hhcl/camera_memory.py) against a per-sample loop written from the authors'
code (tests/helpers/o2cap_loop.py): loss, its parts, the input gradient and the memory after an update, on batches
with several cameras, single-member proxies and clusters seen by one camera; camera_aware with each HHCL mode
against the two loop oracles added; a two-process gloo run against one process; config and data refusals."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers.hooks import StopAt
from helpers.memory_loop import LoopMemory
from helpers.o2cap_loop import LoopO2CAP
from helpers.tiny_run import TINY
from safetensors.torch import load_file

from hhcl.camera_memory import CameraAwareHybrid, CameraMemory, camera_proxies
from hhcl.config import HYBRID_MODES, ConfigError, load_config
from hhcl.data.sampler import ProxySampler
from hhcl.engine import Trainer
from hhcl.epoch import camera_ids
from hhcl.memory import HybridMemory
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import read_raw_events as read_events

D = 8


def _train_set(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """48 images, 4 cameras, 7 clusters + outliers: cluster 0 seen by camera 2 only, cluster 1 = a proxy of one
    image (camera 3) beside a larger one, cluster 6 a single image per camera (single-member proxies)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.tensor(
        [0] * 5 + [1] * 6 + [2] * 8 + [3] * 8 + [4] * 8 + [5] * 6 + [6] * 4 + [-1] * 3
    )
    cams = torch.tensor(
        [2] * 5
        + [0, 0, 0, 1, 1, 3]
        + [0, 1, 2, 3, 0, 1, 2, 3]
        + [1, 1, 2, 2, 3, 3, 0, 1]
        + [0, 0, 0, 0, 2, 2, 2, 3]
        + [3, 2, 1, 3, 2, 1]
        + [0, 1, 2, 3]
        + [0, 1, 2]
    )
    perm = torch.randperm(len(labels), generator=gen)  # store order is not cluster order
    feats = F.normalize(torch.randn(len(labels), D, generator=gen), dim=1)
    return feats, labels[perm], cams[perm]


def _batch_indices(labels: torch.Tensor, cams: torch.Tensor, gen: torch.Generator, size: int = 14) -> torch.Tensor:
    """Clustered images in random order with repeats; always holding the one-camera cluster and a one-image proxy."""
    clustered = torch.nonzero(labels >= 0).flatten()
    pick = clustered[torch.randint(len(clustered), (size - 2,), generator=gen)]
    one_cam = torch.nonzero(labels == 0).flatten()[:1]
    single = torch.nonzero((labels == 1) & (cams == 3)).flatten()
    idx = torch.cat([pick, one_cam, single])
    return idx[torch.randperm(len(idx), generator=gen)]


def _compare(mem: CameraMemory, loop: LoopO2CAP, labels, cams, steps: int = 3, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    assert torch.allclose(mem.features, loop.global_memory, atol=1e-6)
    for _ in range(steps):
        idx = _batch_indices(labels, cams, gen)
        f = F.normalize(torch.randn(len(idx), D, generator=gen), dim=1)
        fa, fb = f.clone().requires_grad_(), f.clone().requires_grad_()
        loss = mem(fa, labels[idx], cams[idx])
        loss.backward()
        want, parts = loop.loss(fb, idx, cams[idx])
        want.backward()
        assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)
        assert mem.last_parts == pytest.approx(parts, rel=1e-5, abs=1e-5)
        assert torch.allclose(fa.grad, fb.grad, atol=1e-5)
        mem.update(f, labels[idx], cams[idx])
        loop.update(f, idx)
        assert torch.allclose(mem.features, loop.global_memory, atol=1e-5)


@pytest.mark.parametrize(
    ("weights", "bg_knn", "pos_k"),
    [
        ((0.0, 1.0, 1.0), 4, 3),  # the authors' train.py: offline + online
        ((1.0, 1.0, 1.0), 4, 3),  # with the intra-camera loss
        ((0.5, 0.0, 2.0), 6, 5),  # pos_k beyond the 4 cameras: the best non-positives fill the target
        ((0.0, 1.0, 0.0), 40, 3),  # bg_knn beyond the proxy count: every proxy is a candidate
    ],
)
def test_o2cap_equals_the_authors_loop(weights, bg_knn, pos_k):
    feats, labels, cams = _train_set()
    intra, offline, online = weights
    kw = {"temp": 0.07, "momentum": 0.2, "bg_knn": bg_knn, "pos_k": pos_k, "balance_w": 0.15}
    mem = CameraMemory.from_features(
        feats, labels, cams, intra_weight=intra, offline_weight=offline, online_weight=online, **kw
    )
    loop = LoopO2CAP(feats, labels, cams, intra=intra, offline=offline, online=online, **kw)
    assert mem.num_proxies == 22
    _compare(mem, loop, labels, cams)


def test_online_loss_with_fewer_proxies_than_its_candidates_equals_the_loop():
    """Named difference 2: below bg_knn + pos_k proxies every proxy is selected (theirs fails to broadcast)."""
    feats, labels, cams = _train_set(3)
    kw = {"bg_knn": 30, "pos_k": 2, "balance_w": 0.3, "intra_weight": 0.0, "offline_weight": 0.0}
    mem = CameraMemory.from_features(feats, labels, cams, **kw)
    loop = LoopO2CAP(feats, labels, cams, intra=0.0, offline=0.0, bg_knn=30, pos_k=2, balance_w=0.3)
    _compare(mem, loop, labels, cams, seed=5)


def test_proxies_are_numbered_as_the_authors_train_py():
    feats, labels, cams = _train_set()
    proxies = camera_proxies(labels, cams)
    loop = LoopO2CAP(feats, labels, cams)
    assert torch.equal(proxies.of_image, loop.all_proxy_label)
    assert proxies.cluster.tolist()[:4] == [0, 1, 1, 1]  # cluster 0: camera 2 only; cluster 1: cameras 0, 1, 3
    assert proxies.camera.tolist()[:4] == [2, 0, 1, 3]


def test_a_camera_without_clustered_images_is_skipped():
    """Named difference 3: camera 4 holds only outliers; theirs would take argmax of an empty set."""
    feats, labels, cams = _train_set(2)
    cams = cams.clone()
    cams[labels == -1] = 4
    mem = CameraMemory.from_features(feats, labels, cams, bg_knn=5, pos_k=3)
    loop = LoopO2CAP(feats, labels, cams, bg_knn=5, pos_k=3)
    assert mem.num_cameras == 5 and mem.cameras_with_proxies == 4
    _compare(mem, loop, labels, cams, seed=9)


@pytest.mark.parametrize("mode", HYBRID_MODES)
def test_camera_aware_hhcl_equals_hybrid_loop_plus_o2cap_loop(mode):
    feats, labels, cams = _train_set(4)
    kw = {"temp": 0.05, "momentum": 0.1}
    cam_kw = {"bg_knn": 5, "pos_k": 2, "balance_w": 0.15}
    hybrid = HybridMemory.from_features(
        feats, labels, mode=mode, num_instances=8, generator=torch.Generator().manual_seed(0), **kw
    )
    mem = CameraAwareHybrid(hybrid, CameraMemory.from_features(feats, labels, cams, intra_weight=1.0, **kw, **cam_kw))
    hloop = LoopMemory(hybrid.features, mode=mode, num_clusters=hybrid.num_clusters, num_instances=8, **kw)
    cloop = LoopO2CAP(feats, labels, cams, intra=1.0, **kw, **cam_kw)
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        idx = _batch_indices(labels, cams, gen, size=8)  # at most 8 members of a cluster: CMhybrid_v2 slots
        f = F.normalize(torch.randn(len(idx), D, generator=gen), dim=1)
        fa, fb = f.clone().requires_grad_(), f.clone().requires_grad_()
        loss = mem(fa, labels[idx], cams[idx])
        loss.backward()
        want = hloop.loss(fb, labels[idx]) + cloop.loss(fb, idx, cams[idx])[0]
        want.backward()
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)
        assert torch.allclose(fa.grad, fb.grad, atol=1e-5)
        assert {"loss_intra", "loss_offline", "loss_online"} <= set(mem.last_parts)
        mem.update(f, labels[idx], cams[idx])
        hloop.update(f, labels[idx])
        cloop.update(f, idx)
        assert torch.allclose(mem.hybrid.features, hloop.M, atol=1e-5)
        assert torch.allclose(mem.proxies.features, cloop.global_memory, atol=1e-5)


def test_state_dict_round_trips_into_a_shaped_memory():
    feats, labels, cams = _train_set()
    mem = CameraMemory.from_features(feats, labels, cams, bg_knn=4)
    f = F.normalize(torch.randn(6, D), dim=1)
    idx = torch.nonzero(labels >= 0).flatten()[:6]
    mem.update(f, labels[idx], cams[idx])
    fresh = CameraMemory.shaped(labels, cams, D, bg_knn=4)
    fresh.load_state_dict(mem.state_dict())
    assert torch.equal(fresh.features, mem.features)
    assert torch.equal(fresh(f, labels[idx], cams[idx]), mem(f, labels[idx], cams[idx]))


def test_a_pair_without_proxy_is_refused():
    feats, labels, cams = _train_set()
    mem = CameraMemory.from_features(feats, labels, cams)
    with pytest.raises(ValueError, match="has no proxy"):
        mem(feats[:1], torch.tensor([0]), torch.tensor([1]))  # cluster 0 was only seen by camera 2


def test_proxy_sampler_draws_k_images_of_every_proxy_per_pass():
    """The authors' ClassUniformlySampler over proxies: k distinct images when a proxy has k, else repeats."""
    _, labels, cams = _train_set()
    sampler = ProxySampler(labels, cams, num_instances=4, batch_size=8, generator=torch.Generator().manual_seed(0))
    proxy = camera_proxies(labels, cams).of_image
    block = sampler.sample_pass().view(-1, 4)
    assert len(block) == 22
    owners = proxy[block]
    assert (owners == owners[:, :1]).all() and sorted(owners[:, 0].tolist()) == list(range(22))
    sizes = torch.bincount(proxy[proxy >= 0])
    for row, p in zip(block, owners[:, 0].tolist(), strict=True):
        if sizes[p] >= 4:
            assert len(set(row.tolist())) == 4
    assert len(next(iter(sampler))) == 8


def test_config_refuses_bad_camera_keys_by_name():
    for override, key in [
        ("memory.bg_knn=0", "memory.bg_knn"),
        ("memory.pos_k=0", "memory.pos_k"),
        ("memory.balance_w=1.5", "memory.balance_w"),
        ("memory.intra_weight=-1.0", "memory.intra_weight"),
        ("memory.camera_aware=true", "memory.camera_aware"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_config("o2cap-market", [override])
    with pytest.raises(ConfigError, match="memory.online_weight"):
        load_config("o2cap-market", ["memory.offline_weight=0.0", "memory.online_weight=0.0"])


def test_camera_modes_refuse_a_train_set_with_one_camera():
    one = torch.zeros(10, dtype=torch.long)
    for preset, extra, key in [("o2cap-market", [], "memory.mode = O2CAP"), ("market", ["memory.camera_aware=true"],
                               "memory.camera_aware = true")]:
        cfg = load_config(preset, ["data.dataset=folder", *extra])
        with pytest.raises(ConfigError, match=key) as err:
            camera_ids(cfg, one, torch.device("cpu"))
        assert "--cam-pattern" in str(err.value)
    assert camera_ids(load_config("market"), one, torch.device("cpu")) is None  # HHCL needs no cameras


# ---------------------------------------------------------------- tiny end-to-end runs
O2CAP_TINY = ("memory.mode=O2CAP", "memory.temp=0.07", "memory.momentum=0.2", "memory.bg_knn=5", "model.bn_group=0",
              "optim.warmup_epochs=3")  # the resume lands mid warm-up


def _fit(root: Path, run_dir: Path, *extra: str, **kw):
    cfg = load_config("demo", [f"data.root={root}", *TINY, "train.eval_every=1", *extra])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    return Trainer(cfg, run_dir, preset="demo", **kw).fit()


def test_o2cap_trains_and_a_mid_epoch_resume_equals_the_uninterrupted_run(synth_root, tmp_path):
    assert _fit(synth_root, tmp_path / "a", *O2CAP_TINY).status == "ok"
    steps = [e for e in read_events(tmp_path / "a") if e["type"] == "step"]
    assert steps and set(steps[0]["parts"]) == {"loss_offline", "loss_online"}
    stopped = _fit(synth_root, tmp_path / "b", *O2CAP_TINY, hooks=[StopAt(1, 0)])
    assert stopped.status == "interrupted"
    assert Trainer(resume_config(tmp_path / "b"), tmp_path / "b", resume=True).fit().status == "ok"
    a, b = (load_file(d / "checkpoints" / "last.safetensors") for d in (tmp_path / "a", tmp_path / "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "O2CAP resume diverged"


def test_camera_aware_hhcl_trains_with_both_memories(synth_root, tmp_path):
    extra = ("memory.camera_aware=true", "memory.bg_knn=5", "model.bn_group=8", "train.epochs=1")
    assert _fit(synth_root, tmp_path / "c", *extra).status == "ok"
    steps = [e for e in read_events(tmp_path / "c") if e["type"] == "step"]
    assert {"loss_hard", "loss_mean", "loss_offline", "loss_online"} == set(steps[0]["parts"])


# ---------------------------------------------------------------- two processes (gloo) vs one process
WORLD, STEPS = 2, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int) -> dict[str, torch.Tensor]:
    feats, labels, cams = _train_set()
    mem = CameraMemory.from_features(feats, labels, cams, intra_weight=1.0, bg_knn=4)
    gen = torch.Generator().manual_seed(11)
    losses, grads = [], []
    for _ in range(STEPS):
        idx = _batch_indices(labels, cams, gen, size=16)
        f = F.normalize(torch.randn(len(idx), D, generator=gen), dim=1)
        per = len(idx) // world
        part = slice(rank * per, (rank + 1) * per)
        local = f[part].clone().requires_grad_()
        loss = mem(local, labels[idx][part], cams[idx][part])
        loss.backward()
        losses.append(loss.detach())
        grads.append(local.grad)
        mem.update(local.detach(), labels[idx][part], cams[idx][part])
    return {"memory": mem.features.clone(), "loss": torch.stack(losses), "grad": torch.cat(grads)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    torch.save(_run(rank, world), Path(out) / f"rank{rank}.pt")
    tdist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = _run(0, 1)
    for r in ranks:  # every rank holds the single-process memory
        assert torch.allclose(r["memory"], single["memory"], atol=1e-6)
    # DDP averages the ranks' gradients and the engine logs the ranks' mean loss: both equal one process's
    assert torch.allclose(sum(r["loss"] for r in ranks) / WORLD, single["loss"], atol=1e-5)
    per_step = [torch.cat([r["grad"].view(STEPS, -1, D)[s] for r in ranks]) / WORLD for s in range(STEPS)]
    assert torch.allclose(torch.cat(per_step), single["grad"], atol=1e-6)
