"""Re-ID models: ResNet-50 (last stride 1), ResNet-50-IBN-a, avg/GeM pooling, BN neck, ghost BN (reference 2, 5.4),
and rebuilding a run's model from its checkpoint (:func:`load_model`)."""

from __future__ import annotations

from hhcl.models.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_ghost_bn
from hhcl.models.loading import ModelInfo, load_model
from hhcl.models.pooling import GeneralizedMeanPoolingP, build_pooling
from hhcl.models.pretrained import Pretrained, resolve_pretrained
from hhcl.models.reid import ReIDNet, build_model
from hhcl.models.resnet_ibn_a import IBN, ResNetIBN, resnet50_ibn_a
from hhcl.models.weights import WeightsNotFoundError, hub_checkpoints_dir, imagenet_weights_file

__all__ = [
    "IBN",
    "GeneralizedMeanPoolingP",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "ModelInfo",
    "Pretrained",
    "ReIDNet",
    "ResNetIBN",
    "WeightsNotFoundError",
    "build_model",
    "build_pooling",
    "convert_ghost_bn",
    "hub_checkpoints_dir",
    "imagenet_weights_file",
    "load_model",
    "resnet50_ibn_a",
    "resolve_pretrained",
]
