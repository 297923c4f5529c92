"""hhcl.distributed helpers, the device resolver, and a 2-process gloo run whose memories equal one process on
the global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from hhcl import distributed
from hhcl.config import ConfigError
from hhcl.memory import HybridMemory

MODES = ("CM", "CMhard", "CMhybrid", "CMhybrid_v2")
WORLD, B, D, C, ITERS = 2, 32, 16, 10, 3
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Clustering features/labels and ITERS global batches whose clusters straddle the two rank slices."""
    gen = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(60, D, generator=gen), dim=1)
    labels = torch.arange(60) % C
    labels[-4:] = -1
    batches = []
    for _ in range(ITERS):
        y = torch.randperm(C, generator=gen)[:4].repeat_interleave(B // 4)
        y[-2:] = torch.randperm(C, generator=gen)[:2]  # single members (or a 9th occurrence)
        y = y[torch.randperm(B, generator=gen)]
        batches.append((F.normalize(torch.randn(B, D, generator=gen), dim=1), y))
    return feats, labels, batches


def _run(mode: str, feats, labels, batches, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Build the memory, then per batch: local loss + input grad on this rank's contiguous slice, update."""
    mem = HybridMemory.from_features(
        feats, labels, mode=mode, num_instances=10, generator=torch.Generator().manual_seed(7)
    )
    per = B // world
    losses, grads = [], []
    for f, y in batches:
        local = f[rank * per : (rank + 1) * per].clone().requires_grad_()
        loss = mem(local, y[rank * per : (rank + 1) * per])
        loss.backward()
        losses.append(loss.detach())
        grads.append(local.grad)
        mem.update(local.detach(), y[rank * per : (rank + 1) * per])
    return {"memory": mem.features.clone(), "loss": torch.stack(losses), "grad": torch.stack(grads)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu", backend="gloo")
    assert (info.rank, info.world_size, info.is_distributed) == (rank, world, True)
    assert distributed.init_distributed("cpu") == info  # idempotent
    assert distributed.is_main() == (rank == 0)
    got = distributed.all_gather_cat(torch.full((2, 3), float(rank)))
    assert torch.equal(got, torch.tensor([0.0, 1.0]).repeat_interleave(2)[:, None].expand(4, 3))
    assert torch.equal(distributed.broadcast(torch.tensor([rank + 5]), src=1), torch.tensor([6]))
    feats, labels, batches = _data()
    # rank-dependent clustering features: from_features must broadcast rank 0's memory
    noisy = feats + 0.01 * rank * torch.randn(feats.shape, generator=torch.Generator().manual_seed(rank))
    results = {mode: _run(mode, noisy, labels, batches, rank, world) for mode in MODES}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    distributed.barrier()
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_hold_the_single_process_memory(tmp_path):
    mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    feats, labels, batches = _data()
    for mode in MODES:
        single = _run(mode, feats, labels, batches, rank=0, world=1)
        r0, r1 = ranks[0][mode], ranks[1][mode]
        assert torch.equal(r0["memory"], r1["memory"]), mode
        assert torch.equal(r0["memory"], single["memory"]), mode
        # DDP averages gradients over ranks: the mean of the local losses is the global-batch loss
        torch.testing.assert_close((r0["loss"] + r1["loss"]) / 2, single["loss"], atol=1e-5, rtol=1e-5)
        half = B // WORLD
        torch.testing.assert_close(r0["grad"] / WORLD, single["grad"][:, :half], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(r1["grad"] / WORLD, single["grad"][:, half:], atol=1e-6, rtol=1e-5)


def test_helpers_are_identity_without_a_process_group(monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    info = distributed.init_distributed("cpu")
    assert info == distributed.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert not info.is_distributed and distributed.is_main()
    t = torch.arange(6.0).view(2, 3)
    assert distributed.all_gather_cat(t) is t
    assert distributed.broadcast(t) is t
    distributed.barrier()
    distributed.shutdown()


def test_bad_torchrun_environment_is_named(monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="not below WORLD_SIZE"):
        distributed.init_distributed("cpu")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one CUDA device, as far as resolve_device can tell (it only names devices)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_resolve_device_without_cuda(no_cuda, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.resolve_device("auto") == torch.device("cpu")
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    assert distributed.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for spec in ("cuda", "cuda:0", "cuda:5"):
        with pytest.raises(ConfigError) as err:
            distributed.resolve_device(spec)
        assert str(err.value) == f"train.device = '{spec}': no CUDA device is visible; use auto or cpu"
    with pytest.raises(ConfigError, match=r"^--device cuda:5: no CUDA device is visible; use auto or cpu$"):
        distributed.resolve_device("cuda:5", key="--device")
    assert not distributed.is_initialized()  # no process group joined as a side effect


def test_resolve_device_with_one_gpu(one_gpu, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.resolve_device("auto") == torch.device("cuda", 0)
    assert distributed.resolve_device("cuda") == torch.device("cuda", 0)
    assert distributed.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError) as err:
        distributed.resolve_device("cuda:5")
    assert str(err.value) == (
        "train.device = 'cuda:5': this machine has 1 CUDA device (cuda:0); use auto, cpu or cuda:0"
    )
    monkeypatch.setenv("LOCAL_RANK", "1")  # a second torchrun process on a one-GPU node
    with pytest.raises(ConfigError, match=r"'auto': this process's LOCAL_RANK is 1 but this machine has 1 CUDA"):
        distributed.resolve_device("auto")
    assert distributed.resolve_device("auto", local_rank=0) == torch.device("cuda", 0)


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "CPU", "", "tpu:0"])
def test_resolve_device_refuses_what_is_not_a_device(spec):
    with pytest.raises(ConfigError) as err:
        distributed.resolve_device(spec)
    assert str(err.value) == f"train.device = {spec!r} is not a device: use auto, cpu, cuda, cuda:N or mps"


def test_resolve_device_mps_only_when_available(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"'mps': MPS is not available on this machine; use auto or cpu"):
        distributed.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert distributed.resolve_device("mps") == torch.device("mps")


def test_init_distributed_refuses_a_missing_gpu(no_cuda, monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        distributed.init_distributed("cuda:1")
