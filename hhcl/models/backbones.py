"""The backbone table: every ``model.arch``, how to build it, where its ImageNet weights come from, how a state dict
shows it, and its feature size.

``BACKBONES`` maps an arch to a :class:`BackboneSpec` (torchreid's model-factory style: a plain dict). A backbone is
ResNet-like: ``conv1, bn1, relu, maxpool, layer1..layer4`` (the re-ID net takes those, reference 2.1).
``build_model`` (reid.py), ``imagenet_weights_file`` (weights.py) and ``infer_architecture`` (loading.py) read it;
``hhcl.config.ARCHS`` lists the same keys (tests/test_config_registries.py keeps the two equal).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from hhcl.models.resnet_ibn_a import resnet50_ibn_a

__all__ = ["BACKBONES", "BackboneSpec", "LocalWeights", "TorchvisionWeights", "arch_of", "signature"]

#: IBN-Net's own release of the ResNet-50-IBN-a ImageNet weights (the file HHCL used came from its Google Drive)
IBN_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"


@dataclass(frozen=True)
class TorchvisionWeights:
    """torchvision's IMAGENET1K_V1 file, downloaded into TORCH_HOME when missing, or found there under ``legacy``,
    the older file name of the same weights (the reference's ``resnet50-19c8e357.pth``)."""

    enum: type[WeightsEnum]
    legacy: str

    @property
    def url(self) -> str:
        return self.enum.IMAGENET1K_V1.url


@dataclass(frozen=True)
class LocalWeights:
    """A file nothing downloads: the first of ``files`` found in TORCH_HOME; ``how`` tells where to get them."""

    files: tuple[str, ...]
    how: str


@dataclass(frozen=True)
class BackboneSpec:
    """One ResNet-like backbone. ``block`` and ``layers`` are its key signature: how a re-ID state dict shows it."""

    build: Callable[[], nn.Module]  # random-init ImageNet classifier (conv1 .. layer4, fc)
    block: str  # "basic", "bottleneck" or "ibn_a" (bottleneck whose bn1 is IBN in layer1-3)
    layers: tuple[int, int, int, int]  # residual blocks in layer1..layer4
    feature_dim: int  # channels out of layer4: the embedding size without model.num_features
    weights: TorchvisionWeights | LocalWeights  # model.pretrained = imagenet
    last_stride_one: bool  # layer4 keeps the resolution (the reference's deep nets, section 2.1)

    def backbone(self) -> nn.Module:
        """A fresh backbone, with layer4's stride set to 1 where the spec says so (bottleneck: conv2 strides)."""
        net = self.build()
        if self.last_stride_one:
            net.layer4[0].conv2.stride = (1, 1)
            net.layer4[0].downsample[0].stride = (1, 1)
        return net


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(
        tvm.resnet18, "basic", (2, 2, 2, 2), 512, TorchvisionWeights(tvm.ResNet18_Weights, "resnet18-5c106cde.pth"),
        last_stride_one=False,
    ),
    "resnet34": BackboneSpec(
        tvm.resnet34, "basic", (3, 4, 6, 3), 512, TorchvisionWeights(tvm.ResNet34_Weights, "resnet34-333f7ec4.pth"),
        last_stride_one=False,
    ),
    "resnet50": BackboneSpec(
        tvm.resnet50, "bottleneck", (3, 4, 6, 3), 2048,
        TorchvisionWeights(tvm.ResNet50_Weights, "resnet50-19c8e357.pth"), last_stride_one=True,
    ),
    "resnet101": BackboneSpec(
        tvm.resnet101, "bottleneck", (3, 4, 23, 3), 2048,
        TorchvisionWeights(tvm.ResNet101_Weights, "resnet101-5d3b4d8f.pth"), last_stride_one=True,
    ),
    "resnet50_ibn_a": BackboneSpec(
        resnet50_ibn_a, "ibn_a", (3, 4, 6, 3), 2048,
        LocalWeights(
            ("resnet50_ibn_a.pth.tar", "resnet50_ibn_a-d9d0bb7b.pth"),
            "Download resnet50_ibn_a.pth.tar (the IBN-Net README's Google Drive link, the file HHCL used) or "
            f"resnet50_ibn_a-d9d0bb7b.pth ({IBN_URL})",
        ),
        last_stride_one=True,
    ),
}


def signature(state: Mapping[str, Tensor]) -> tuple[str, tuple[int, ...]]:
    """(block kind, blocks per stage) of a re-ID state dict (``base.4`` .. ``base.7`` are layer1..layer4)."""
    if any(".bn1.IN." in k for k in state):
        block = "ibn_a"
    else:
        block = "bottleneck" if any(k.startswith("base.4.0.conv3.") for k in state) else "basic"
    layers = tuple(len({k.split(".")[2] for k in state if k.startswith(f"base.{i}.")}) for i in range(4, 8))
    return block, layers


def arch_of(state: Mapping[str, Tensor]) -> str | None:
    """The arch whose key signature a re-ID state dict has, or None when no table entry has it."""
    found = signature(state)
    return next((name for name, spec in BACKBONES.items() if (spec.block, spec.layers) == found), None)
