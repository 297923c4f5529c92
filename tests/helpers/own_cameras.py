"""Synthetic people written as a user's own camera crops: unlabelled ``train/<cam>/`` and, optionally, labelled
``query/<pid>/<cam>/`` and ``gallery/<pid>/<cam>/`` (identity folders), with the truth kept for the checks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from hhcl.data.synthetic import generate

SPLIT = {"bounding_box_train": "train", "query": "query", "bounding_box_test": "gallery"}


def write_crops(dst: Path, *, ids: int = 12, cams: int = 3, seed: int = 3, labelled: bool = True) -> dict[str, list]:
    """Write the crops under ``dst``; returns split -> [(relative path, person name or None, camera name)]."""
    truth: dict[str, list] = {"train": [], "query": [], "gallery": []}
    for folder, name, img in generate(ids, cams, seed):
        pid, cam = (int(g) for g in re.match(r"^(-?\d+)_c(\d+)", name).groups())  # type: ignore[union-attr]
        split = SPLIT[folder]
        if pid == -1 or (split != "train" and not labelled):
            continue
        stem = name.split("_", 2)[2]  # the frame part: no pid, no camera in the file name
        if split == "train":
            rel, person = f"train/cam{cam}/{stem}", None
        else:
            person = f"person{pid}"
            rel = f"{split}/{person}/cam{cam}/{stem}"
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(dst / rel, quality=95)
        truth[split].append((rel, person, f"cam{cam}"))
    return truth
