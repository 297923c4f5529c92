"""Tiny on-disk dataset fixtures for the data tests: real JPEG/BMP files with hand-chosen names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (8, 16), fmt: str | None = None) -> Path:
    """A small random RGB image (width, height) = ``size`` at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


MARKET_FILES = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg",
        "0002_c3s1_000551_01.jpg",
        "0007_c2s1_000001_01.jpg",
        "0007_c6s2_000101_02.jpg",
        "0011_c5s1_000020_01.jpg",
    ],
    "query": ["0007_c1s1_000201_00.jpg", "0011_c2s1_000301_00.jpg", "-1_c1s1_000001_00.jpg"],
    "bounding_box_test": [
        "0007_c3s1_000401_01.jpg",
        "0011_c4s1_000501_02.jpg",
        "0000_c1s1_000601_01.jpg",
        "-1_c2s1_000701_03.jpg",
        "0011_c2s2_000801_01.jpg",
    ],
}


def make_market(top: Path, files: dict[str, list[str]] | None = None) -> Path:
    """A Market-style tree (bounding_box_train, query, bounding_box_test) with the given file names."""
    for i, (folder, names) in enumerate((files or MARKET_FILES).items()):
        (top / folder).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            write_image(top / folder / name, seed=100 * i + j)
    return top
