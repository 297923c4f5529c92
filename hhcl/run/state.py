"""Training state beside the weights (optimizer, scheduler, RNG, position, memory), loadable without pickle.

Saved with ``torch.save`` of plain containers and tensors only and read back with ``weights_only=True``, so a
state file cannot execute code. ``pair`` names the weights file written with it; ``config`` is the TOML the
run was training with, so a resume can tell a hand-edited ``config.toml`` from the one it checkpointed.
"""

from __future__ import annotations

import random
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hhcl.atomic import torch_bytes
from hhcl.errors import UsageError


class StateError(UsageError, RuntimeError):
    """A training state file that cannot be used; the message names the file and what to do. A usage error, as a
    damaged checkpoint is."""


@dataclass
class TrainingState:
    """Where a run stands: the next epoch/iteration to run and everything needed to continue it exactly."""

    epoch: int
    iter: int
    best_mAP: float
    best_epoch: int
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, Any]
    pair: str
    config: str
    memory: dict[str, torch.Tensor] | None = None  # mid-epoch only: the memory bank as it was
    labels: torch.Tensor | None = None  # mid-epoch only: this epoch's pseudo labels
    aug_gen: torch.Tensor | None = None  # mid-epoch only: the augmentation generator's state
    cluster_eps: float | None = None  # cluster.eps = auto: the eps chosen at the first clustering, kept for the run


def state_bytes(state: TrainingState) -> bytes:
    return torch_bytes(asdict(state))


def load_state(path: str | Path) -> TrainingState:
    """Read a state file; a damaged or foreign file is a :class:`StateError` naming it."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StateError(f"training state '{path}' cannot be read: it is truncated, corrupt or not a state file ({detail})") from None
    names = {f.name for f in fields(TrainingState)}
    required = {f.name for f in fields(TrainingState) if f.default is MISSING}
    if not isinstance(raw, dict) or not {"epoch", "iter", "optimizer"} <= raw.keys():
        raise StateError(f"'{path}' is not an hhcl training state file.")
    missing = sorted(required - raw.keys())
    if missing:
        raise StateError(
            f"training state '{path}' lacks {', '.join(missing)}: it was written by an older hhcl that did not "
            "bind the state to its weights, so it cannot be verified. Start a new run."
        )
    return TrainingState(**{k: v for k, v in raw.items() if k in names})


def capture_rng() -> dict[str, Any]:
    """Every global RNG's state (torch, CUDA, numpy, Python) as tensors and ints."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` took."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
