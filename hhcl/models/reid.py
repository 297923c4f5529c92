"""The re-ID embedding network of the reference (section 2): backbone -> pooling -> [Linear] -> BN neck -> L2."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from hhcl.models.backbones import BACKBONES
from hhcl.models.ghost_bn import convert_ghost_bn
from hhcl.models.pooling import build_pooling
from hhcl.models.weights import WeightsNotFoundError, imagenet_weights_file
from hhcl.weight_files import CheckpointError, load_weights


class ReIDNet(nn.Module):
    """Embedding network with the reference's module names (``base.N``, ``gap``, ``feat``, ``feat_bn``).

    ``forward`` takes a normalised float batch ``[B, 3, H, W]`` and returns L2-normalised embeddings
    ``[B, feature_dim]`` in train and eval mode (reference 2.4); dropout (train mode only) comes after.
    ``out_planes`` is the backbone's channels out of layer4 (its table entry's ``feature_dim``).
    """

    def __init__(
        self, backbone: nn.Module, pooling: nn.Module, num_features: int = 0, dropout: float = 0.0, *, out_planes: int
    ) -> None:
        super().__init__()
        b = backbone
        self.base = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3, b.layer4)
        self.gap = pooling
        if num_features > 0:
            self.feat = nn.Linear(out_planes, num_features)
            init.kaiming_normal_(self.feat.weight, mode="fan_out")
            init.constant_(self.feat.bias, 0)
        self.feature_dim = num_features if num_features > 0 else out_planes
        self.feat_bn = nn.BatchNorm1d(self.feature_dim)
        init.constant_(self.feat_bn.weight, 1)
        init.constant_(self.feat_bn.bias, 0)
        self.feat_bn.bias.requires_grad_(False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gap(self.base(x)).flatten(1)
        if hasattr(self, "feat"):
            x = self.feat(x)
        x = F.normalize(self.feat_bn(x))
        if self.drop is not None and self.training:
            x = self.drop(x)
        return x

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Every parameter with ``requires_grad`` (the frozen ``feat_bn.bias`` is left out), in module order."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, list[nn.Parameter]]]:
        """The reference's optimiser groups: one group per trainable parameter (Adam lr/wd set on the optimiser)."""
        return [{"params": [p]} for p in self.trainable_parameters()]

    def reset_params(self) -> None:
        """The reference's init for ``pretrained=False``: Kaiming-normal convs, BN 1/0, Linear N(0, 0.001)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.InstanceNorm2d) and m.affine:
                init.constant_(m.weight, 1)
                init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    init.constant_(m.bias, 0)


def _load_pretrained(model: ReIDNet, path: str) -> None:
    """Load a backbone (or whole-model) weight file; every backbone tensor must be present and fit.

    Only ``num_batches_tracked`` may be missing: files saved before PyTorch 0.4.1 (torchvision's
    resnet50-19c8e357.pth, IBN-Net's resnet50_ibn_a.pth.tar) have none, and it only counts batches.
    """
    loaded = load_weights(model, path)
    missing = [k for k in loaded.missing if k.startswith("base.") and not k.endswith(".num_batches_tracked")]
    report = replace(loaded, missing=missing)  # the neck is not in a backbone file: name only what matters
    if not report.ok:
        raise CheckpointError(f"pretrained weights '{path}' do not fit this backbone: {report}")


def build_model(
    arch: str,
    pooling: str = "avg",
    pretrained: str = "none",
    num_features: int = 0,
    dropout: float = 0.0,
    bn_group: int = 0,
    gem_p: float = 3.0,
    gem_learnable: bool = True,
) -> ReIDNet:
    """The reference's re-ID net: ``arch`` backbone (an entry of ``BACKBONES``: last stride 1 for depth >= 50),
    pooling, BN neck.

    ``pretrained``: "imagenet" (torchvision IMAGENET1K_V1, or the local IBN-Net file), "none" (reference init),
    or a path to .pth/.pth.tar/.safetensors. ``bn_group`` > 0 turns every BatchNorm into ghost BN of that size.
    """
    spec = BACKBONES.get(arch)
    if spec is None:
        raise ValueError(f"model.arch = {arch!r} is not allowed: use one of {', '.join(BACKBONES)}")
    source = None
    if pretrained == "imagenet":
        source = str(imagenet_weights_file(arch))
    elif pretrained != "none":
        if not Path(pretrained).expanduser().is_file():
            raise WeightsNotFoundError(
                f"model.pretrained = '{pretrained}': no such file. Give an existing .pth, .pth.tar or "
                ".safetensors file, or use imagenet or none."
            )
        source = str(Path(pretrained).expanduser())
    model = ReIDNet(
        spec.backbone(),
        build_pooling(pooling, gem_p=gem_p, gem_learnable=gem_learnable),
        num_features,
        dropout,
        out_planes=spec.feature_dim,
    )
    if source is None:
        model.reset_params()
    else:
        _load_pretrained(model, source)
    convert_ghost_bn(model, bn_group)
    return model
