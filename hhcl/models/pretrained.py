"""What ``model.pretrained`` names, resolved to one weight file before a run directory is created.

``none`` (the reference's random init), ``imagenet`` (torchvision's or IBN-Net's file, downloaded into TORCH_HOME
when missing), an ImageNet backbone file (.pth, .pth.tar), or a re-ID model to adapt to new cameras: one of our
run directories (its best weights, else its last), one of our checkpoint files (``.safetensors``, or a
``last.state.pt``: the weights saved with it), an ``hhcl export --format safetensors`` file, or the authors'
released ``.pth.tar``. A re-ID model must have the configured ``model.arch``, ``model.pooling`` and
``model.num_features``; its backbone, pooling and feature head (``feat``, ``feat_bn``) load, a classifier never
does, and the memory is always built afresh from the new data's clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hhcl.models.loading import config_from, infer_architecture
from hhcl.models.weights import WeightsNotFoundError, imagenet_weights_file
from hhcl.run.layout import find_checkpoint
from hhcl.weight_files import CheckpointError, read_state_dict

STATE_SUFFIX = ".state.pt"  # our checkpoint's training state; its weights are the .safetensors beside it


@dataclass(frozen=True)
class Pretrained:
    """A resolved ``model.pretrained``: the weight file (None: random init), its kind and a line for the run log."""

    setting: str
    path: Path | None
    kind: str  # "none" | "imagenet" | "backbone" | "re-id model"
    note: str

    @property
    def weights(self) -> str:
        """What :func:`hhcl.models.build_model` takes as ``pretrained``: ``none`` or the file."""
        return "none" if self.path is None else str(self.path)


def _weight_file(setting: str) -> Path:
    """The weight file a path setting names: a run directory's checkpoint, a state file's weights, or the file."""
    path = Path(setting).expanduser()
    if path.is_dir():
        return find_checkpoint(path)
    if path.name.endswith(STATE_SUFFIX):
        weights = path.with_name(path.name[: -len(STATE_SUFFIX)] + ".safetensors")
        if not weights.is_file():
            raise CheckpointError(
                f"model.pretrained = '{setting}' is a training state; its weights {weights} are missing: "
                "give the run directory or a .safetensors file"
            )
        return weights
    if not path.is_file():
        raise WeightsNotFoundError(
            f"model.pretrained = '{setting}': no such file or run directory ({path.absolute()}). Give a run "
            "directory, a .safetensors, .pth or .pth.tar file, or use imagenet or none."
        )
    return path


def _mismatch(path: Path, key: str, found: object, configured: object) -> CheckpointError:
    return CheckpointError(
        f"model.pretrained '{path}' has {key} = {found}, this run has {key} = {configured}: set --set "
        f"{key}={found}, or start from a model with {key} = {configured}"
    )


def resolve_pretrained(setting: str, *, arch: str, pooling: str, num_features: int) -> Pretrained:
    """Resolve ``model.pretrained`` for a ``arch``/``pooling``/``num_features`` model: find (or download) the file
    and check that it fits, raising WeightsNotFoundError or CheckpointError naming the file and the fix."""
    if setting == "none":
        return Pretrained(setting, None, "none", "model.pretrained = none: random initialisation (the reference's)")
    if setting == "imagenet":
        path = imagenet_weights_file(arch)
        return Pretrained(setting, path, "imagenet", f"model.pretrained = imagenet: {arch} ImageNet weights {path}")
    path = _weight_file(setting)
    state, metadata = read_state_dict(path)
    config = config_from(metadata, path)
    if config is not None:
        found = (config.model.arch, config.model.pooling, config.model.num_features)
    else:
        found = infer_architecture(state, path)
    if found[0] != arch:
        raise _mismatch(path, "model.arch", found[0], arch)
    if "feat_bn.weight" not in state:  # an ImageNet backbone: the pooling and neck are the new model's own
        return Pretrained(setting, path, "backbone", f"model.pretrained = {setting}: {arch} backbone weights {path}")
    if found[1] != pooling:
        raise _mismatch(path, "model.pooling", found[1], pooling)
    if found[2] != num_features:
        raise _mismatch(path, "model.num_features", found[2], num_features)
    origin = []
    if config is not None:
        origin.append(f"trained on {config.data.dataset}")
    for key, label in (("run", "run"), ("epoch", "epoch"), ("mAP", "mAP"), ("best_mAP", "best mAP")):
        if key in metadata:
            if "mAP" in key and _as_float(metadata[key]) <= 0.0:  # a run that was never evaluated stores 0
                origin.append(f"{label} not measured")
            else:
                origin.append(f"{label} {metadata[key]}")
    detail = f" ({', '.join(origin)})" if origin else ""
    return Pretrained(
        setting,
        path,
        "re-id model",
        f"model.pretrained = {setting}: the {arch} re-ID model {path.absolute()}{detail}; its backbone and feature "
        "head are loaded, the memory is built from this data's clusters",
    )


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")
