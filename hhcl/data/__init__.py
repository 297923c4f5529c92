"""Data: dataset parsers, ``prepare``, synthetic people, the camera-aware PK sampler and on-device augmentation.

Files on disk -> ``build_dataset`` (sample lists) -> ``open_split`` (uint8 cache gathered on the device) ->
``PKSampler`` (batch indices) -> ``TrainAugment`` (augmented, normalised batch).
"""

from __future__ import annotations

from hhcl.data.archive import UnsafeArchiveError, safe_extract
from hhcl.data.augment import IMAGENET_MEAN, IMAGENET_STD, TrainAugment, normalize
from hhcl.data.datasets import (
    REGISTRY,
    DatasetFormatError,
    DatasetNotFoundError,
    ReIDDataset,
    Sample,
    build_dataset,
)
from hhcl.data.prepare import PrepareReport, prepare_dataset, prepare_synthetic
from hhcl.data.sampler import PKSampler, rank_slice
from hhcl.data.store import CorruptImageError, ImageStore, load_image, open_split

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGISTRY",
    "CorruptImageError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageStore",
    "PKSampler",
    "PrepareReport",
    "ReIDDataset",
    "Sample",
    "TrainAugment",
    "UnsafeArchiveError",
    "build_dataset",
    "load_image",
    "normalize",
    "open_split",
    "prepare_dataset",
    "prepare_synthetic",
    "rank_slice",
    "safe_extract",
]
