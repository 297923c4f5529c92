"""Rebuild the model a run directory or checkpoint describes (ours, or the HHCL authors' ``.pth.tar``).

Our checkpoints carry their config in the safetensors header (else the run's ``config.toml`` is used); for an
authors' checkpoint the architecture and pooling are inferred from its keys and shapes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hhcl.config import Config, ConfigError, from_dict
from hhcl.models.backbones import arch_of, signature
from hhcl.models.reid import ReIDNet, build_model
from hhcl.run.layout import CHECKPOINTS, RunLayout, find_checkpoint
from hhcl.weight_files import CheckpointError, load_state_dict, read_state_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class ModelInfo:
    """How a loaded model was built and where it came from."""

    arch: str
    pooling: str
    height: int
    width: int
    num_features: int
    source: str
    config: Config | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def infer_architecture(state: Mapping[str, torch.Tensor], path: Path) -> tuple[str, str, int]:
    """(arch, pooling, num_features) of an authors'-format state dict, from its keys and shapes."""
    if "base.0.weight" not in state:
        first = ", ".join(list(state)[:4])
        raise CheckpointError(
            f"checkpoint '{path}' is not an hhcl/HHCL re-ID model: no 'base.0.weight' key (first keys: {first})"
        )
    arch = arch_of(state)
    if arch is None:
        block, layers = signature(state)
        raise CheckpointError(
            f"checkpoint '{path}': unknown backbone ({block} blocks, {'/'.join(map(str, layers))} per stage)"
        )
    pooling = "gem" if "gap.p" in state else "avg"
    num_features = int(state["feat.weight"].shape[0]) if "feat.weight" in state else 0
    return arch, pooling, num_features


def config_from(metadata: Mapping[str, Any], checkpoint: Path) -> Config | None:
    """The config in the checkpoint's header, else its run's config file, else None (an authors' file)."""
    text = metadata.get("config")
    source = f"{checkpoint} (embedded config)"
    if not isinstance(text, str):
        run_config = RunLayout(checkpoint.parent.parent).config
        if checkpoint.parent.name != CHECKPOINTS or not run_config.is_file():
            return None
        text, source = run_config.read_text(encoding="utf-8"), str(run_config)
    try:
        return from_dict(tomllib.loads(text), source=source)
    except (tomllib.TOMLDecodeError, ConfigError) as err:
        raise CheckpointError(f"checkpoint '{checkpoint}': its config cannot be read: {err}") from None


def load_model(
    run_or_checkpoint: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[ReIDNet, ModelInfo]:
    """Build the model a run directory or checkpoint describes, load its weights strictly, eval mode on ``device``.

    Authors' ``.pth.tar`` files are taken at 256x128 (their training size) unless their metadata says otherwise.
    """
    checkpoint = find_checkpoint(run_or_checkpoint)
    state, metadata = read_state_dict(checkpoint)
    config = config_from(metadata, checkpoint)
    if config is not None:
        m = config.model
        arch, pooling, num_features, dropout = m.arch, m.pooling, m.num_features, m.dropout
        height, width = config.data.height, config.data.width
    else:
        arch, pooling, num_features = infer_architecture(state, checkpoint)
        dropout, height, width = 0.0, int(metadata.get("height", 256)), int(metadata.get("width", 128))
    model = build_model(arch, pooling, "none", num_features=num_features, dropout=dropout)
    load_state_dict(model, state, strict=True, source=str(checkpoint))
    model.eval().to(device)
    info = ModelInfo(
        arch=arch,
        pooling=pooling,
        height=height,
        width=width,
        num_features=num_features,
        source=str(checkpoint),
        config=config,
        metadata={k: str(v) for k, v in metadata.items()},
    )
    return model, info
