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
