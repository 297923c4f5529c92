"""Shared test fixtures: a small CPU budget, and the path of the real VIPeR images when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VIPER_DIR = SHARED / "data" / "viper"


@pytest.fixture
def viper_dir() -> Path:
    """The VIPeR folder from ../shared (skips the test when it is absent)."""
    if not (VIPER_DIR / "VIPeR" / "cam_a").is_dir():
        pytest.skip(f"real VIPeR images not found at {VIPER_DIR}")
    return VIPER_DIR


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic dataset (12 ids x 3 cameras, cached at 64x32), shared by the training tests."""
    from hhcl.data import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic-data")
    prepare_synthetic(root, ids=12, cams=3, seed=3, height=64, width=32, progress=False)
    return root
