"""Two-process gloo DDP training equals one process with ghost BN over the per-rank slice (reference 5.3-5.4)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from hhcl.config import load_config
from hhcl.engine import Trainer
from hhcl.events import read_events

OVERRIDES = (
    "data.height=64",
    "data.width=32",
    "data.batch_size=16",
    "data.num_instances=4",
    "cluster.k1=8",
    "cluster.k2=3",
    "cluster.eps=0.7",
    "cluster.min_samples=3",
    "train.iters=3",
    "train.epochs=2",
    "train.eval_every=2",
    "train.device=cpu",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, run_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    cfg = load_config("demo", [f"data.root={root}", *OVERRIDES, "model.bn_group=0"])
    trainer = Trainer(cfg, run_dir, preset="demo")
    result = trainer.fit()
    torch.save({"status": result.status, "state": trainer.model.state_dict()}, Path(out) / f"rank{rank}.pt")
    import torch.distributed as tdist

    tdist.destroy_process_group()


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from hhcl.data import prepare_synthetic

    root = tmp_path_factory.mktemp("ddpdata")
    prepare_synthetic(root, ids=12, cams=3, seed=3, height=64, width=32, progress=False)
    return root


def test_two_process_gloo_matches_single_process_ghost_bn(synth_root, tmp_path):
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(synth_root), str(run_dir), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["status"] == r1["status"] == "ok"
    for key, value in r0["state"].items():  # DDP keeps the ranks identical (buffers broadcast from rank 0)
        assert torch.equal(value, r1["state"][key]), key

    # one process whose BN groups are the per-rank slices (8 of 16) sees the same statistics and gradients
    cfg = load_config("demo", [f"data.root={synth_root}", *OVERRIDES, "model.bn_group=8"])
    single = Trainer(cfg, tmp_path / "single", preset="demo")
    assert single.fit().status == "ok"
    for key, value in single.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, r0["state"][key], atol=2e-4, rtol=1e-3), key
        else:
            assert torch.equal(value, r0["state"][key]), key

    events = read_events(run_dir)  # only rank 0 writes the log
    assert events[0]["world_size"] == 2
    assert sum(e["type"] == "run_start" for e in events) == 1
    assert events[-1]["type"] == "run_end" and events[-1]["status"] == "ok"
