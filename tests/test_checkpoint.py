"""Checkpoints: the authors' .pth.tar format, our safetensors, hhcl.models.load_model, atomic writes, clear errors."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hhcl.weight_files as checkpoint_module
from hhcl.config import Config
from hhcl.models import build_model, load_model
from hhcl.weight_files import CheckpointError, load_state_dict, load_weights, save_weights

KEYS_JSON = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hhcl-checkpoint-keys.json"


def _trained(arch: str = "resnet18", pooling: str = "avg", num_features: int = 0, seed: int = 0) -> nn.Module:
    """A model whose running statistics and GeM p are not at their initial values."""
    torch.manual_seed(seed)
    model = build_model(arch, pooling, "none", num_features=num_features).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 64, 32))
        if pooling == "gem":
            model.gap.p.fill_(2.5)
    return model.eval()


def _authors_file(model: nn.Module, path: Path) -> Path:
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 12, "best_mAP": np.float64(0.53)}, path)
    return path


X = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(
    ("key", "arch", "pooling"),
    [("resnet50/avg", "resnet50", "avg"), ("resnet_ibn50a/gem", "resnet50_ibn_a", "gem")],
)
def test_authors_keys_all_map_with_matching_shapes(key: str, arch: str, pooling: str) -> None:
    if not KEYS_JSON.is_file():
        pytest.skip(f"{KEYS_JSON} not found")
    shapes = json.loads(KEYS_JSON.read_text())["models"][key]
    state = {f"module.{k}": torch.full(s, 0.5) for k, s in shapes.items()}
    model = build_model(arch, pooling, "none")
    report = load_state_dict(model, state, strict=True, source=key)
    assert report.ok and len(report.loaded) == len(shapes) and not report.ignored
    assert torch.equal(model.base[7][2].bn3.running_var, torch.full((2048,), 0.5))
    assert torch.equal(model.feat_bn.weight, torch.full((2048,), 0.5))


def test_authors_pth_tar_reproduces_embeddings(tmp_path: Path) -> None:
    source = _trained("resnet18", "gem", num_features=32)
    path = _authors_file(source, tmp_path / "model_best.pth.tar")
    fresh = build_model("resnet18", "gem", "none", num_features=32, bn_group=2)
    report = load_weights(fresh, path, strict=True)
    assert report.ok and report.metadata == {"epoch": 12, "best_mAP": 0.53}
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(X), source(X), rtol=0, atol=0)
    model, info = load_model(path)
    assert (info.arch, info.pooling, info.num_features, info.height, info.width) == (
        "resnet18",
        "gem",
        32,
        256,
        128,
    )
    assert info.config is None and not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X), rtol=0, atol=0)


def test_arch_inferred_from_authors_keys(tmp_path: Path) -> None:
    with torch.device("meta"):
        r34 = build_model("resnet34", "avg", "none")
    # weights are irrelevant for inference of the architecture: keys/shapes are what count
    state = {f"module.{k}": torch.zeros(v.shape) for k, v in r34.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1, "best_mAP": 0.0}, tmp_path / "checkpoint.pth.tar")
    _, info = load_model(tmp_path / "checkpoint.pth.tar")
    assert (info.arch, info.pooling) == ("resnet34", "avg")


def test_non_strict_load_reports_keys_by_name(tmp_path: Path) -> None:
    source = _trained("resnet18", "avg", num_features=16)
    path = _authors_file(source, tmp_path / "a.pth.tar")
    target = build_model("resnet18", "gem", "none", num_features=8)
    report = load_weights(target, path)
    assert "gap.p" in report.missing
    assert ("feat.weight", (16, 512), (8, 512)) in report.mismatched
    assert "feat.weight" in str(report) and "gap.p" in str(report)
    with pytest.raises(CheckpointError, match=r"a\.pth\.tar.*does not fit.*gap\.p"):
        load_weights(target, path, strict=True)


def _run_dir(tmp_path: Path, model: nn.Module, name: str = "best.safetensors") -> Path:
    cfg = Config()
    cfg.model.arch, cfg.model.pooling, cfg.model.num_features = "resnet18", "gem", 0
    cfg.data.height, cfg.data.width = 64, 32
    run = tmp_path / "run"
    save_weights(
        model,
        run / "checkpoints" / name,
        {"config": cfg.to_toml(), "epoch": "12", "mAP": "0.5", "format": "hhcl"},
    )
    return run


@pytest.mark.parametrize("name", ["best.safetensors", "last.safetensors"])
def test_our_run_dir_round_trip(tmp_path: Path, name: str) -> None:
    source = _trained("resnet18", "gem")
    run = _run_dir(tmp_path, source, name)
    assert [p.name for p in (run / "checkpoints").iterdir()] == [name]  # no temporary file left behind
    model, info = load_model(run)
    assert (info.arch, info.pooling, info.height, info.width) == ("resnet18", "gem", 64, 32)
    assert info.config is not None and info.config.data.height == 64
    assert info.metadata["epoch"] == "12" and info.source.endswith(name)
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X), rtol=0, atol=0)


def test_run_config_toml_used_when_header_has_none(tmp_path: Path) -> None:
    source = _trained("resnet18", "gem")
    run = _run_dir(tmp_path, source, "last.safetensors")
    save_weights(source, run / "checkpoints" / "last.safetensors", {"epoch": "1"})  # no config in the header
    cfg = Config()
    cfg.model.arch, cfg.model.pooling, cfg.data.height, cfg.data.width = "resnet18", "gem", 96, 48
    (run / "config.toml").write_text(cfg.to_toml())
    model, info = load_model(run)
    assert (info.arch, info.pooling, info.height, info.width) == ("resnet18", "gem", 96, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X), rtol=0, atol=0)


def test_weight_file_io_imports_nothing_from_models() -> None:
    """hhcl/weight_files.py reads and writes weight files only; building models is hhcl.models' business."""
    source = Path(checkpoint_module.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):  # every import, TYPE_CHECKING blocks and function bodies included
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.update([node.module or "", *(f"{node.module}.{a.name}" for a in node.names)])
    assert "hhcl.atomic" in imported  # written atomically
    assert not [m for m in imported if m == "hhcl.run" or m.startswith("hhcl.run.")]  # the run layer is above it
    assert not [m for m in imported if m == "hhcl.models" or m.startswith("hhcl.models.")]


def test_save_weights_rejects_non_string_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="epoch"):
        save_weights(nn.Linear(2, 2), tmp_path / "w.safetensors", {"epoch": 3})  # type: ignore[dict-item]


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("true",))


def test_corrupt_and_incompatible_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, _trained("resnet18", "gem"))
    good = run / "checkpoints" / "best.safetensors"
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.safetensors.*not a valid safetensors"):
        load_model(truncated)
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pth\.tar.*corrupt"):
        load_model(garbage)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="not unpickled for safety"):
        load_model(evil)
    with pytest.raises(CheckpointError, match="into a resnet34|does not fit"):
        load_weights(build_model("resnet34", "gem", "none"), good, strict=True)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        load_model(tmp_path / "empty_run")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no 'base.0.weight'"):
        torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
        load_model(tmp_path / "other.pth")
