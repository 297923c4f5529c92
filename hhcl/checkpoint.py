"""Atomic save/load of model weights: our safetensors checkpoints and the HHCL authors' ``.pth.tar`` files.

Weights are written as safetensors (no pickle) through a temporary file and ``os.replace``, so a crash never
leaves a half-written file. ``.pth``/``.pth.tar`` files (the authors' checkpoints, ImageNet backbones) are read
with ``torch.load(weights_only=True)``: tensors and plain data only, never arbitrary objects.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from hhcl.run.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from hhcl.config import Config
    from hhcl.models import ReIDNet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".tar")
CHECKPOINT_NAMES = ("best.safetensors", "last.safetensors")
# torchvision / IBN-Net backbone names -> positions in the reference's ``base`` Sequential.
_BACKBONE_TO_BASE = {
    "conv1": "base.0",
    "bn1": "base.1",
    "layer1": "base.4",
    "layer2": "base.5",
    "layer3": "base.6",
    "layer4": "base.7",
}
# The authors' checkpoints store best_mAP as a numpy float64 (pickled by numpy 1.x or 2.x).
_NUMPY_SAFE = [
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    np.dtype,
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the problem."""


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys loaded, missing from the file, unexpected, and shape mismatches."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        parts = [f"loaded {len(self.loaded)}/{total} tensors from {self.path}"]
        if self.missing:
            parts.append(f"missing from the file: {_names(self.missing)}")
        if self.unexpected:
            parts.append(f"not in the model: {_names(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{k} (file {list(a)} vs model {list(b)})" for k, a, b in self.mismatched[:8])
            parts.append(f"shape mismatches: {shown}{' ...' if len(self.mismatched) > 8 else ''}")
        return "; ".join(parts)


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


def _names(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def save_weights(model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Save ``model.state_dict()`` as safetensors with string ``metadata`` in the header, atomically."""
    from safetensors.torch import save

    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; convert these keys' values: {bad}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=dict(metadata)))


def _torch_load(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(_NUMPY_SAFE):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        lines = [
            ln.strip() for ln in str(err).split("WeightsUnpickler error:")[-1].splitlines() if ln.strip()
        ]
        unsafe = [ln for ln in lines if "GLOBAL" in ln or "global" in ln or "allowlisted" in ln]
        text = (unsafe or lines or [type(err).__name__])[0]
        if unsafe:
            hint = (
                "it holds Python objects beyond tensors and plain data, which are not unpickled for safety; "
                "re-save just its state_dict, or convert it with a trusted torch.load"
            )
        else:
            hint = "it is truncated, corrupt, or not a PyTorch file; download or copy it again"
        raise CheckpointError(f"cannot read checkpoint '{path}': {hint} ({text})") from None


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a weight file, keys normalised to our model's names.

    Accepts safetensors, a bare state dict, or ``{"state_dict": ...}`` (the authors' format, whose other
    entries such as epoch/best_mAP become metadata). Strips ``module.`` prefixes and maps torchvision/IBN-Net
    backbone names (conv1, bn1, layer1..4) to ``base.N``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (or is not a file)")
    metadata: dict[str, Any] = {}
    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                raw: Any = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"cannot read checkpoint '{path}': not a valid safetensors file (truncated or corrupt?): {err}"
            ) from None
    else:
        raw = _torch_load(path)
        if isinstance(raw, Mapping) and "state_dict" in raw:
            metadata = {
                k: v.item() if isinstance(v, np.generic) else v
                for k, v in raw.items()
                if k != "state_dict" and isinstance(v, int | float | str | np.generic)
            }
            raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"checkpoint '{path}' holds no state dict (found {type(raw).__name__})")
    bad = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint '{path}': state dict entries that are not tensors: {_names(bad)}")
    return _normalise_keys(raw), metadata


def _normalise_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {re.sub(r"^(module\.)+", "", k): v for k, v in state.items()}
    if any(k.startswith("base.") for k in out):
        return out
    mapped = {}
    for key, value in out.items():
        head, _, rest = key.partition(".")
        mapped[f"{_BACKBONE_TO_BASE[head]}.{rest}" if head in _BACKBONE_TO_BASE else key] = value
    return mapped


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = False) -> LoadReport:
    """Load a weight file into ``model`` and report missing/unexpected/mismatched keys by name.

    Reads ``.safetensors``, ``.pth`` and the authors' ``.pth.tar`` (``{"state_dict": {"module.<name>": ...}}``).
    Non-strict (the reference's ``copy_state_dict``) skips what does not fit; ``strict`` raises
    :class:`CheckpointError` unless every key maps and every shape matches. A backbone's ``fc.*`` is ignored.
    """
    state, metadata = read_state_dict(path)
    return _apply_state(model, state, metadata, str(path), strict=strict)


def load_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = False, source: str = "state dict"
) -> LoadReport:
    """:func:`load_weights` for an in-memory state dict (``module.`` prefixes and backbone names are mapped)."""
    return _apply_state(model, _normalise_keys(state), {}, source, strict=strict)


def _apply_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], metadata: dict[str, Any], path: str, *, strict: bool
) -> LoadReport:
    own = model.state_dict()
    report = LoadReport(path=path, metadata=metadata)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            (report.ignored if key.startswith("fc.") else report.unexpected).append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in state]
    report.loaded = list(usable)
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model: {report}")
    if not usable:
        raise CheckpointError(f"checkpoint '{path}' has no tensor that fits this model: {report}")
    model.load_state_dict(usable, strict=False)
    return report


def _infer_architecture(state: Mapping[str, torch.Tensor], path: Path) -> tuple[str, str, int]:
    """(arch, pooling, num_features) of an authors'-format state dict, from its keys and shapes."""
    if "base.0.weight" not in state:
        raise CheckpointError(
            f"checkpoint '{path}' is not an hhcl/HHCL re-ID model: no 'base.0.weight' key "
            f"(first keys: {_names(list(state), 4)})"
        )
    blocks = len({k.split(".")[2] for k in state if k.startswith("base.6.")})
    bottleneck = any(k.startswith("base.4.0.conv3.") for k in state)
    if any(".bn1.IN." in k for k in state):
        arch = "resnet50_ibn_a"
    else:
        by_shape = {
            (True, 6): "resnet50",
            (True, 23): "resnet101",
            (False, 2): "resnet18",
            (False, 6): "resnet34",
        }
        if (bottleneck, blocks) not in by_shape:
            raise CheckpointError(f"checkpoint '{path}': unknown backbone ({blocks} blocks in layer3)")
        arch = by_shape[(bottleneck, blocks)]
    pooling = "gem" if "gap.p" in state else "avg"
    num_features = int(state["feat.weight"].shape[0]) if "feat.weight" in state else 0
    return arch, pooling, num_features


def find_checkpoint(run_or_checkpoint: str | os.PathLike[str]) -> Path:
    """The weight file of a run directory (``checkpoints/best.safetensors``, else ``last``) or the file itself."""
    path = Path(run_or_checkpoint).expanduser()
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            for candidate in (path / "checkpoints" / name, path / name):
                if candidate.is_file():
                    return candidate
        raise CheckpointError(
            f"run directory '{path}' has no checkpoint: expected {path / 'checkpoints' / 'best.safetensors'} "
            "or last.safetensors (the run may not have reached its first evaluation yet)"
        )
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist: give a run directory or a checkpoint file")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise CheckpointError(
            f"'{path}' is not a checkpoint: use a run directory, a .safetensors file or an authors' .pth.tar"
        )
    return path


def _config_from(metadata: Mapping[str, Any], checkpoint: Path) -> Config | None:
    from hhcl.config import ConfigError, from_dict

    text = metadata.get("config")
    source = f"{checkpoint} (embedded config)"
    if not isinstance(text, str):
        run_config = checkpoint.parent.parent / "config.toml"
        if checkpoint.parent.name != "checkpoints" or not run_config.is_file():
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

    Our checkpoints carry their config in the safetensors header (else ``<run>/config.toml`` is used); for the
    authors' ``.pth.tar`` the architecture and pooling are inferred from the keys, at 256x128.
    """
    from hhcl.models import build_model

    checkpoint = find_checkpoint(run_or_checkpoint)
    state, metadata = read_state_dict(checkpoint)
    config = _config_from(metadata, checkpoint)
    if config is not None:
        m = config.model
        arch, pooling, num_features, dropout = m.arch, m.pooling, m.num_features, m.dropout
        height, width = config.data.height, config.data.width
    else:
        arch, pooling, num_features = _infer_architecture(state, checkpoint)
        dropout, height, width = 0.0, int(metadata.get("height", 256)), int(metadata.get("width", 128))
    model = build_model(arch, pooling, "none", num_features=num_features, dropout=dropout)
    _apply_state(model, state, metadata, str(checkpoint), strict=True)
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
