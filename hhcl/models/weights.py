"""Where pretrained ImageNet weights come from: torchvision's V1 files (downloaded into TORCH_HOME) or a local file,
as each backbone's entry of :data:`hhcl.models.backbones.BACKBONES` says."""

from __future__ import annotations

from pathlib import Path

import torch

from hhcl.errors import UsageError
from hhcl.models.backbones import BACKBONES, LocalWeights, TorchvisionWeights


class WeightsNotFoundError(UsageError, FileNotFoundError):
    """Pretrained weights that are neither on disk nor downloadable; the message says what to fetch and where. A
    usage error."""


def hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torchvision's download cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_weights_file(arch: str) -> Path:
    """The local ImageNet weight file for ``arch``, downloading torchvision's IMAGENET1K_V1 file if needed."""
    source, folder = BACKBONES[arch].weights, hub_checkpoints_dir()
    if isinstance(source, LocalWeights):
        return _local_file(arch, source, folder)
    return _torchvision_file(arch, source, folder)


def _local_file(arch: str, source: LocalWeights, folder: Path) -> Path:
    """The first of the source's files in ``folder``; none there: an error saying where to get one."""
    for name in source.files:
        if (folder / name).is_file():
            return folder / name
    raise WeightsNotFoundError(
        f"ImageNet weights for {arch} not found. {source.how} and put it in {folder}/ "
        "(that is $TORCH_HOME/hub/checkpoints/), or pass model.pretrained=/path/to/the/file."
    )


def _torchvision_file(arch: str, source: TorchvisionWeights, folder: Path) -> Path:
    """torchvision's file (or its legacy name) in ``folder``, else downloaded there; offline: an error saying how."""
    url = source.url
    target = folder / url.rsplit("/", 1)[1]
    for candidate in (target, folder / source.legacy):
        if candidate.is_file():
            return candidate
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:  # URLError, socket errors, disk errors: all mean "not available offline"
        raise WeightsNotFoundError(
            f"ImageNet weights for {arch} could not be downloaded ({type(err).__name__}: {err}). Download "
            f"{target.name} (or the older {source.legacy}) from {url} and put it at {target} "
            "(that is $TORCH_HOME/hub/checkpoints/), or pass model.pretrained=/path/to/the/file."
        ) from None
    return target
