"""The memory table (hhcl/memories.py) and the Memory protocol (hhcl/memory.py): every entry, with and without
``memory.camera_aware`` where allowed, builds, trains a step (loss, gradient, parts, update), trains with its sampler
and round-trips its state dict into a shape-only build (a resume); the table builds the same tensors as the memory
classes built directly, as the epoch set-up did before the table; and hand-computed losses on a two-cluster case."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hhcl.camera_memory import CameraAwareHybrid, CameraMemory
from hhcl.config import MemoryConfig
from hhcl.memories import MEMORIES, MemoryInputs, build_memory, needs_camids
from hhcl.memory import HybridMemory

D, K = 8, 4  # feature size, data.num_instances
#: every (mode, camera_aware) the config allows
CASES = [(mode, False) for mode in MEMORIES] + [(mode, True) for mode, spec in MEMORIES.items() if not spec.needs_camids]
#: settings away from every default, so that a key wired to the wrong argument changes the result
SETTINGS = {"temp": 0.07, "momentum": 0.2, "hard_weight": 0.3, "smooth": 0.1, "loss_form": "paper",
            "intra_weight": 0.5, "offline_weight": 0.7, "online_weight": 1.3, "bg_knn": 3, "pos_k": 2, "balance_w": 0.2}


def _config(mode: str, camera_aware: bool, **kw: object) -> MemoryConfig:
    return replace(MemoryConfig(), mode=mode, camera_aware=camera_aware, **{**SETTINGS, **kw})


def _train_set() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """36 images of 5 clusters (+ 4 outliers) over 3 cameras, in shuffled store order."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 8 + [1] * 8 + [2] * 6 + [3] * 6 + [4] * 4 + [-1] * 4)
    cams = torch.arange(len(labels)) % 3
    perm = torch.randperm(len(labels), generator=gen)
    return F.normalize(torch.randn(len(labels), D, generator=gen), dim=1), labels[perm], cams[perm]


def _inputs(cfg: MemoryConfig, feats, labels, cams, *, shaped: bool = False) -> MemoryInputs:
    """What the epoch set-up passes: camera ids only when the setting takes them, features None on resume."""
    return MemoryInputs(
        labels, None if shaped else feats, D, cams if needs_camids(cfg) else None, cfg, K,
        None if shaped else torch.Generator().manual_seed(5),
    )


def _batch(labels: torch.Tensor, cams: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two random members of each of clusters 0-3 (at most K of a cluster: CMhybrid_v2's slots) and new features."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=gen)[:2]]
                     for c in range(4)])
    return F.normalize(torch.randn(len(idx), D, generator=gen), dim=1), labels[idx], cams[idx]


def _old_way(cfg: MemoryConfig, feats, labels, cams):
    """The memory as hhcl.epoch built it before the table: the classes' own constructors, keyword by keyword."""
    cam_kw = {k: getattr(cfg, k) for k in ("temp", "momentum", "intra_weight", "offline_weight", "online_weight",
                                           "bg_knn", "pos_k", "balance_w")}
    if cfg.mode == "O2CAP":
        return CameraMemory.from_features(feats, labels, cams, **cam_kw)
    hybrid = HybridMemory.from_features(
        feats, labels, mode=cfg.mode, temp=cfg.temp, momentum=cfg.momentum, hard_weight=cfg.hard_weight,
        smooth=cfg.smooth, num_instances=K, loss_form=cfg.loss_form, generator=torch.Generator().manual_seed(5),
    )
    return CameraAwareHybrid(hybrid, CameraMemory.from_features(feats, labels, cams, **cam_kw)) if cfg.camera_aware else hybrid


@pytest.mark.parametrize(("mode", "camera_aware"), CASES)
def test_every_entry_trains_a_step_and_resumes_from_its_state_dict(mode, camera_aware):
    cfg = _config(mode, camera_aware)
    feats, labels, cams = _train_set()
    memory = build_memory(_inputs(cfg, feats, labels, cams))
    f, y, c = _batch(labels, cams, seed=1)
    c = c if needs_camids(cfg) else None
    x = f.clone().requires_grad_()
    loss = memory(x, y, c)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss) and x.grad is not None and x.grad.abs().sum() > 0
    assert memory.last_parts and all(math.isfinite(v) for v in memory.last_parts.values())
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    memory.update(f, y, c)
    after = memory.state_dict()
    assert list(after) == list(before) and any(not torch.equal(after[k], before[k]) for k in after)
    resumed = build_memory(_inputs(cfg, feats, labels, cams, shaped=True))
    resumed.load_state_dict(after)
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in after.items())
    f2, y2, c2 = _batch(labels, cams, seed=2)
    c2 = c2 if needs_camids(cfg) else None
    assert torch.equal(resumed(f2, y2, c2), memory(f2, y2, c2))


@pytest.mark.parametrize(("mode", "camera_aware"), CASES)
def test_each_entry_samples_batches_of_clustered_images(mode, camera_aware):
    _, labels, cams = _train_set()
    sampler = MEMORIES[mode].sampler(labels, cams, num_instances=2, batch_size=8, generator=torch.Generator().manual_seed(0))
    batch = next(iter(sampler))
    assert batch.shape == (8,) and (labels[batch] >= 0).all()


@pytest.mark.parametrize(("mode", "camera_aware"), CASES)
def test_the_table_builds_what_the_classes_build(mode, camera_aware):
    """Same state dict (keys, order, values: the checkpoints stay loadable), same losses and updates, bit for bit."""
    cfg = _config(mode, camera_aware)
    feats, labels, cams = _train_set()
    table, old = build_memory(_inputs(cfg, feats, labels, cams)), _old_way(cfg, feats, labels, cams)
    assert type(table) is type(old)
    for seed in (1, 2):
        new_state, old_state = table.state_dict(), old.state_dict()
        assert list(new_state) == list(old_state)
        assert all(torch.equal(new_state[k], old_state[k]) for k in new_state)
        f, y, c = _batch(labels, cams, seed)
        c = c if needs_camids(cfg) else None
        assert torch.equal(table(f, y, c), old(f, y, c)) and table.last_parts == old.last_parts
        table.update(f, y, c)
        old.update(f, y, c)


#: loss / CE of the two-cluster case below (reference loss form, hard_weight 0.5): CMhybrid's 0.5 + 0.25 halves
FACTOR = {"CM": 1.0, "CMhard": 1.0, "CMhybrid": 0.75, "CMhybrid_v2": 1.0, "O2CAP": 1.0}


@pytest.mark.parametrize(("mode", "camera_aware"), CASES)
def test_a_hand_computed_loss(mode, camera_aware):
    """Clusters {e0} (camera 0) and {e1} (camera 1); one sample f = (0.6, 0.8) of cluster 0 at temp 0.05 has logits
    (12, 16) against every row kind (centroids, halves, slots, proxies), so each CE term is log(1 + e^4). O2CAP with
    only its offline term: the cluster's one proxy against the other, the same CE; camera_aware adds it."""
    cfg = _config(mode, camera_aware, temp=0.05, hard_weight=0.5, smooth=0.0, loss_form="reference",
                  intra_weight=0.0, offline_weight=1.0, online_weight=0.0)
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels, cams = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1])
    inputs = MemoryInputs(labels, feats, 2, cams if needs_camids(cfg) else None, cfg, 1, torch.Generator())
    memory = build_memory(inputs)
    c = torch.tensor([0]) if needs_camids(cfg) else None
    loss = memory(torch.tensor([[0.6, 0.8]]), torch.tensor([0]), c)
    ce = math.log(1 + math.exp(4.0))
    assert loss.item() == pytest.approx(ce * (FACTOR[mode] + camera_aware), rel=1e-6)


@pytest.mark.parametrize("mode", [m for m in MEMORIES if m != "CMhybrid_v2"])
def test_a_hand_computed_update(mode):
    """One sample f of cluster 0 and momentum m: the cluster's row(s) become normalise(m * e0 + (1 - m) * f)."""
    cfg = _config(mode, False, momentum=0.2)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels, cams = torch.tensor([0, 1]), torch.tensor([0, 1])
    memory = build_memory(MemoryInputs(labels, feats, 2, cams if needs_camids(cfg) else None, cfg, 1))
    memory.update(torch.tensor([[0.6, 0.8]]), torch.tensor([0]), torch.tensor([0]) if needs_camids(cfg) else None)
    row = torch.tensor([0.2 + 0.8 * 0.6, 0.8 * 0.8])
    want = row / row.norm()
    rows = memory.features
    assert torch.allclose(rows[0], want) and torch.equal(rows[1], torch.tensor([0.0, 1.0]))
    if mode == "CMhybrid":  # the mean half's row 2 blends the batch mean, here the sample itself
        assert torch.allclose(rows[2], want)
