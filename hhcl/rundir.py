"""Run directories: ``<runs_dir>/<name>/{config.toml, events.jsonl, log.txt, checkpoints/}``."""

from __future__ import annotations

import time
from pathlib import Path

from hhcl.config import Config

CONFIG_FILE = "config.toml"
CHECKPOINTS = "checkpoints"


def default_run_name(cfg: Config, preset: str | None = None) -> str:
    """``<preset or dataset>-<arch>-<YYYYmmdd-HHMMSS>``: sortable and says what ran."""
    stem = preset if preset and not preset.endswith(".toml") else cfg.data.dataset
    stem = Path(stem).stem
    return f"{stem}-{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"


def plan_run_dir(runs_dir: str | Path, name: str) -> Path:
    """The directory a new run would use; an existing non-empty one is refused (use --resume)."""
    path = Path(runs_dir) / name
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"run directory '{path}' already exists: pick another --name, or continue it with --resume {path}"
        )
    return path
