"""Training state beside the weights (optimizer, scheduler, RNG, position, memory), loadable without pickle.

Saved with ``torch.save`` of plain containers and tensors only, and read back with ``weights_only=True``,
so a state file cannot execute code. Written atomically (temporary file, then rename).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from hhcl.run.atomic import atomic_torch_save


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
    memory: dict[str, torch.Tensor] | None = None  # mid-epoch only: the memory bank as it was
    labels: torch.Tensor | None = None  # mid-epoch only: this epoch's pseudo labels
    aug_gen: torch.Tensor | None = None  # mid-epoch only: the augmentation generator's state


def save_state(state: TrainingState, path: str | Path) -> None:
    atomic_torch_save(asdict(state), Path(path))


def load_state(path: str | Path) -> TrainingState:
    """Read a state file; a damaged or foreign file is an error naming it."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise RuntimeError(f"training state '{path}' cannot be read ({err}); resume from a run whose checkpoint is intact.") from None
    names = {f.name for f in fields(TrainingState)}
    if not isinstance(raw, dict) or not {"epoch", "iter", "optimizer"} <= raw.keys():
        raise RuntimeError(f"'{path}' is not an hhcl training state file.")
    return TrainingState(**{k: v for k, v in raw.items() if k in names})
