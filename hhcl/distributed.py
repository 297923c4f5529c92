"""torchrun helpers: the one device resolver, process-group setup from the environment, rank-ordered gathers,
rank-0 checks.

Every helper is a no-op (or the identity) when no process group is initialised, so single-process code
calls them unconditionally. Collectives follow the reference-equivalent DDP recipe (reference doc 5.3):
features and labels are all-gathered in rank order, which rebuilds the global batch in DataParallel order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from hhcl.config import ConfigError
from hhcl.words import plural

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its global rank, the world size, its rank on the node and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def _env_int(key: str, default: int) -> int:
    raw = os.environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {key}={raw!r} is not an integer: launch with torchrun"
        ) from None
    if value < 0:
        raise ValueError(f"environment variable {key}={raw!r} must be >= 0: launch with torchrun")
    return value


def _named(key: str, value: str) -> str:
    """How an error names the setting: ``--device cuda:5`` for a command-line flag, else ``train.device = 'x'``."""
    return f"{key} {value}" if key.startswith("--") else f"{key} = {value!r}"


def _cuda(index: int, text: str, key: str, *, local: bool) -> torch.device:
    """``cuda:<index>`` when this machine has that GPU, else a ConfigError saying which ones it has.

    ``local``: the index is this process's local rank (``auto``/``cuda``), not one the user wrote.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"{_named(key, text)}: no CUDA device is visible; use auto or cpu")
    if index >= count:
        have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        found = f"this machine has {plural(count, 'CUDA device')} ({have})"
        if local:
            raise ConfigError(
                f"{_named(key, text)}: this process's LOCAL_RANK is {index} but {found}; "
                f"start at most {plural(count, 'process', 'processes')} per node (torchrun --nproc-per-node {count})"
            )
        raise ConfigError(f"{_named(key, text)}: {found}; use auto, cpu or {have}")
    return torch.device("cuda", index)


def resolve_device(
    spec: str | torch.device, local_rank: int | None = None, *, key: str = "train.device"
) -> torch.device:
    """The device a setting names, checked against this machine; no side effects (no process group, no set_device).

    ``auto``: this process's GPU (``cuda:<local rank>``) when CUDA is available, else the CPU; ``cuda``: that GPU;
    ``cuda:N``: GPU N if it exists; ``cpu``; ``mps`` when available. ``local_rank`` defaults to ``$LOCAL_RANK``
    (0 outside torchrun). Anything else raises :class:`hhcl.config.ConfigError` naming ``key`` and the value.
    """
    text = str(spec)
    if text == "cpu" or (isinstance(spec, torch.device) and spec.type == "cpu"):
        return torch.device("cpu")
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{_named(key, text)}: MPS is not available on this machine; use auto or cpu")
        return torch.device("mps")
    rank = _env_int("LOCAL_RANK", 0) if local_rank is None else local_rank
    if text == "auto":
        return _cuda(rank, text, key, local=True) if torch.cuda.is_available() else torch.device("cpu")
    if text == "cuda":
        return _cuda(rank, text, key, local=True)
    match = re.fullmatch(r"cuda:(\d+)", text)
    if match is None:
        raise ConfigError(f"{_named(key, text)} is not a device: use auto, cpu, cuda, cuda:N or mps")
    return _cuda(int(match.group(1)), text, key, local=False)


def init_distributed(
    device: str | torch.device = "auto", *, backend: str | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Join the torchrun process group (env://) when WORLD_SIZE > 1; idempotent; identity info otherwise.

    The default backend serves CPU tensors with gloo and, when CUDA is present, CUDA tensors with NCCL.
    """
    rank, world, local = (_env_int(k, d) for k, d in zip(_ENV_KEYS, (0, 1, 0), strict=True))
    if rank >= world:
        raise ValueError(f"RANK={rank} is not below WORLD_SIZE={world}: launch with torchrun")
    dev = resolve_device(device, local)
    if world > 1 and not is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} is unset: launch with torchrun")
        if backend is None:
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(
            backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    if is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, and always without a process group (only rank 0 writes logs and checkpoints)."""
    return get_rank() == 0


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 in rank order; every rank must pass the same shape."""
    world = get_world_size()
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts, dim=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (a collective: every rank must call it at the same point)."""
    if get_world_size() == 1:
        return flag
    return bool(all_gather_cat(torch.tensor([float(flag)], device=device)).max().item() > 0)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s copy and return it (identity without a group)."""
    if get_world_size() > 1:
        dist.broadcast(tensor, src=src)
    return tensor


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if one is initialised."""
    if is_initialized():
        dist.destroy_process_group()
