"""ResNet-50-IBN-a with the module and parameter names of XingangPan/IBN-Net's ``resnet50_ibn_a``.

Names match that implementation (conv1, bn1, layer1..4, fc; ``Bottleneck_IBN`` whose ``bn1`` is an
:class:`IBN` with children ``IN`` and ``BN``), so ``resnet50_ibn_a.pth.tar`` and the HHCL authors' IBN
checkpoints load with strict key matching. IBN replaces bn1 in every block of layer1-3; layer4 is plain.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class IBN(nn.Module):
    """Instance norm on the first ``int(planes * ratio)`` channels, batch norm on the rest."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first), self.BN(rest)), dim=1)


class Bottleneck_IBN(nn.Module):  # noqa: N801 - name kept from the reference implementation
    """ResNet bottleneck (stride on conv2) whose bn1 is IBN when ``ibn == 'a'``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        ibn: str | None = None,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1: nn.Module = IBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ResNetIBN(nn.Module):
    """ResNet with IBN-a blocks; ``layers`` blocks per stage, ``ibn_cfg`` per stage ('a' or None)."""

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        ibn_cfg: tuple[str | None, ...] = ("a", "a", "a", None),
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, ibn_cfg[0])
        self.layer2 = self._make_layer(128, layers[1], 2, ibn_cfg[1])
        self.layer3 = self._make_layer(256, layers[2], 2, ibn_cfg[2])
        self.layer4 = self._make_layer(512, layers[3], 2, ibn_cfg[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck_IBN.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, planes: int, blocks: int, stride: int, ibn: str | None) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck_IBN.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * Bottleneck_IBN.expansion, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * Bottleneck_IBN.expansion),
            )
        # As IBN-Net: never IBN at planes 512 (layer4), whatever ibn_cfg says.
        block_ibn = None if planes == 512 else ibn
        layers = [Bottleneck_IBN(self.inplanes, planes, block_ibn, stride, downsample)]
        self.inplanes = planes * Bottleneck_IBN.expansion
        layers += [Bottleneck_IBN(self.inplanes, planes, block_ibn, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_ibn_a() -> ResNetIBN:
    """ResNet-50-IBN-a (random init; load weights with :func:`hhcl.weight_files.load_weights`)."""
    return ResNetIBN((3, 4, 6, 3), ("a", "a", "a", None))
