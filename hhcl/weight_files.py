"""Weight files in and out: our safetensors checkpoints, the HHCL authors' ``.pth.tar`` files, ImageNet backbones.

Weights are written as safetensors (no pickle) through a temporary file and ``os.replace``, so a crash never
leaves a half-written file. ``.pth``/``.pth.tar`` files (the authors' checkpoints, torchvision's and IBN-Net's
ImageNet files) are read with ``torch.load(weights_only=True)``: tensors and plain data only, never arbitrary
objects. This module knows weight files, not models: building a model from a run is :mod:`hhcl.models.loading`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from hhcl.atomic import atomic_write_bytes
from hhcl.errors import UsageError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".tar")
IGNORED_PREFIXES = ("fc.", "classifier.")  # an ImageNet head, a supervised model's classifier: never loaded
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


class CheckpointError(UsageError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file and the problem.
    A usage error: the user gave the wrong file (missing, damaged, another model's)."""


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


def _names(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def weights_bytes(model: nn.Module, metadata: Mapping[str, str]) -> bytes:
    """``model.state_dict()`` as safetensors bytes with string ``metadata`` in the header."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; convert these keys' values: {bad}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return safetensors_bytes(tensors, metadata=dict(metadata))


def save_weights(model: nn.Module, path: str | os.PathLike[str], metadata: Mapping[str, str]) -> None:
    """Save ``model.state_dict()`` as safetensors with string ``metadata`` in the header, atomically."""
    atomic_write_bytes(path, weights_bytes(model, metadata))


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

    Accepts safetensors, a bare state dict (torchvision's ImageNet files), or ``{"state_dict": ...}``, nested
    or not (the authors' and IBN-Net's training checkpoints: their other plain entries such as epoch, arch,
    best_mAP become metadata; an optimizer state is dropped). Strips ``module.`` prefixes (repeated ones too)
    and maps torchvision/IBN-Net backbone names (conv1, bn1, layer1..4) to ``base.N``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist (or is not a file)")
    metadata: dict[str, Any] = {}
    if path.name.endswith(".safetensors"):
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
        while isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):  # nested: outer wins
            for k, v in raw.items():
                if k != "state_dict" and isinstance(v, int | float | str | np.generic):
                    metadata.setdefault(k, v.item() if isinstance(v, np.generic) else v)
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
    :class:`CheckpointError` unless every key maps and every shape matches. A backbone's ``fc.*`` and a
    ``classifier.*`` are ignored.
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
            (report.ignored if key.startswith(IGNORED_PREFIXES) else report.unexpected).append(key)
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
