"""Where pretrained ImageNet weights come from: torchvision's V1 files (downloaded into TORCH_HOME) or a local file."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.models as tvm

# The IBN-Net ImageNet checkpoint HHCL used (IBN-Net README, Google Drive), then the later GitHub release.
IBN_FILES = ("resnet50_ibn_a.pth.tar", "resnet50_ibn_a-d9d0bb7b.pth")
IBN_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
# Older torchvision file names of the same IMAGENET1K_V1 weights (the reference's resnet50-19c8e357.pth).
_LEGACY = {
    "resnet18": "resnet18-5c106cde.pth",
    "resnet34": "resnet34-333f7ec4.pth",
    "resnet50": "resnet50-19c8e357.pth",
    "resnet101": "resnet101-5d3b4d8f.pth",
}


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights that are neither on disk nor downloadable; the message says what to fetch and where."""


def hub_checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torchvision's download cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_url(arch: str) -> str:
    enum = {
        "resnet18": tvm.ResNet18_Weights,
        "resnet34": tvm.ResNet34_Weights,
        "resnet50": tvm.ResNet50_Weights,
        "resnet101": tvm.ResNet101_Weights,
    }[arch]
    return enum.IMAGENET1K_V1.url


def imagenet_weights_file(arch: str) -> Path:
    """The local ImageNet weight file for ``arch``, downloading torchvision's IMAGENET1K_V1 file if needed."""
    folder = hub_checkpoints_dir()
    if arch == "resnet50_ibn_a":
        for name in IBN_FILES:
            if (folder / name).is_file():
                return folder / name
        raise WeightsNotFoundError(
            f"ImageNet weights for resnet50_ibn_a not found. Download {IBN_FILES[0]} (the IBN-Net README's "
            f"Google Drive link, the file HHCL used) or {IBN_FILES[1]} ({IBN_URL}) and put it in {folder}/ "
            "(that is $TORCH_HOME/hub/checkpoints/), or pass model.pretrained=/path/to/the/file."
        )
    url = _torchvision_url(arch)
    target = folder / url.rsplit("/", 1)[1]
    for candidate in (target, folder / _LEGACY[arch]):
        if candidate.is_file():
            return candidate
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as err:  # URLError, socket errors, disk errors: all mean "not available offline"
        raise WeightsNotFoundError(
            f"ImageNet weights for {arch} could not be downloaded ({type(err).__name__}: {err}). Download "
            f"{target.name} (or the older {_LEGACY[arch]}) from {url} and put it at {target} "
            "(that is $TORCH_HOME/hub/checkpoints/), or pass model.pretrained=/path/to/the/file."
        ) from None
    return target
