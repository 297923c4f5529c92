"""``build_model(..., pretrained=<file>)`` on weight files laid out as the ones in the wild.

- torchvision's legacy ``resnet50-19c8e357.pth`` / ``resnet18-5c106cde.pth``: a bare state dict in PyTorch's
  pre-zip format, torchvision names, ``fc.*``, and no ``num_batches_tracked`` (the files predate it);
- IBN-Net's ``resnet50_ibn_a.pth.tar``: a training checkpoint ``{epoch, arch, state_dict, best_prec1,
  optimizer}`` whose state dict has ``module.`` prefixes and no ``num_batches_tracked``;
- nested ``{"state_dict": {"state_dict": ...}}`` with repeated ``module.`` prefixes.

Each file is built here from a freshly built backbone's key names and shapes, with values no init produces, and the
loaded model is compared tensor by tensor through the position of each backbone stage in ``ReIDNet.base``.
Unsafe pickles and truncated files are refused with a CheckpointError naming the file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from hhcl.models import build_model, resnet50_ibn_a
from hhcl.weight_files import CheckpointError

# ReIDNet.base = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4): the stage positions
STAGE = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def _file_state(net: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The backbone's key names and shapes, minus ``num_batches_tracked`` (the layout of files saved before
    PyTorch 0.4.1), with values no init produces and no two tensors share: tensor i holds 1000 (i + 1) + 0..996."""
    shapes = net.state_dict()
    cycle = torch.arange(997, dtype=torch.float32)
    out = OrderedDict()
    for i, key in enumerate(k for k in shapes if not k.endswith("num_batches_tracked")):
        n = shapes[key].numel()
        out[key] = (cycle + 1000 * (i + 1)).repeat(n // 997 + 1)[:n].view(shapes[key].shape)
    return out


def _meta(builder: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):  # names and shapes only: no time spent on initialisation
        return builder()


def _model_tensor(model: nn.Module, backbone_key: str) -> torch.Tensor:
    """The model's tensor for a torchvision/IBN-Net backbone name, found by walking the modules."""
    stage, *rest = backbone_key.split(".")
    owner: nn.Module = model.base[STAGE[stage]]
    for part in rest[:-1]:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    return getattr(owner, rest[-1])


def _assert_loaded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    for key, value in backbone.items():
        assert torch.equal(_model_tensor(model, key), value), key
    n_base = sum(1 for k in model.state_dict() if k.startswith("base.") and not k.endswith("num_batches_tracked"))
    assert len(backbone) == n_base  # every backbone tensor came from the file


def _save_legacy(obj: object, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)  # the pre-1.6 format those files are in
    return path


def test_torchvision_legacy_resnet50_file(tmp_path: Path) -> None:
    state = _file_state(_meta(torchvision.models.resnet50))
    assert "fc.weight" in state and "bn1.running_mean" in state and "layer1.0.conv1.weight" in state
    path = _save_legacy(state, tmp_path / "resnet50-19c8e357.pth")
    model = build_model("resnet50", "avg", str(path))
    _assert_loaded(model, state)
    assert torch.equal(model.feat_bn.weight, torch.ones(2048))  # the neck keeps its own init


def test_ibn_net_training_checkpoint(tmp_path: Path) -> None:
    net = _meta(resnet50_ibn_a)
    state = _file_state(net)
    assert "layer1.0.bn1.IN.weight" in state and "layer3.5.bn1.BN.running_var" in state
    params = [nn.Parameter(torch.zeros(state[k].shape)) for k in ("conv1.weight", "bn1.weight", "bn1.bias")]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for p in sgd.param_groups[0]["params"]:
        sgd.state[p]["momentum_buffer"] = torch.ones_like(p)
    checkpoint = {
        "epoch": 100,
        "arch": "resnet50_ibn_a",
        "state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
        "best_prec1": 77.46,
        "optimizer": sgd.state_dict(),
    }
    path = _save_legacy(checkpoint, tmp_path / "resnet50_ibn_a.pth.tar")
    model = build_model("resnet50_ibn_a", "gem", str(path))
    _assert_loaded(model, state)


def test_nested_state_dict_with_repeated_module_prefixes(tmp_path: Path) -> None:
    state = _file_state(_meta(torchvision.models.resnet18))
    inner = {f"module.module.{k}": v for k, v in state.items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {"state_dict": inner, "epoch": 3}, "epoch": 5}, path)
    _assert_loaded(build_model("resnet18", "avg", str(path)), state)


@pytest.fixture
def resnet18_state() -> OrderedDict[str, torch.Tensor]:
    return _file_state(_meta(torchvision.models.resnet18))


def test_resnet18_legacy_file_loads(tmp_path: Path, resnet18_state: OrderedDict[str, torch.Tensor]) -> None:
    path = _save_legacy(resnet18_state, tmp_path / "resnet18-5c106cde.pth")
    _assert_loaded(build_model("resnet18", "avg", str(path)), resnet18_state)


def test_missing_backbone_tensor_is_named(tmp_path: Path, resnet18_state: OrderedDict[str, torch.Tensor]) -> None:
    del resnet18_state["layer2.0.bn1.running_var"]
    path = _save_legacy(resnet18_state, tmp_path / "resnet18-5c106cde.pth")
    with pytest.raises(CheckpointError, match=r"resnet18-5c106cde\.pth.*missing from the file: base\.5\.0\.bn1\.running_var$"):
        build_model("resnet18", "avg", str(path))


def test_wrong_shape_is_named(tmp_path: Path, resnet18_state: OrderedDict[str, torch.Tensor]) -> None:
    resnet18_state["layer3.1.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    path = _save_legacy(resnet18_state, tmp_path / "resnet18-5c106cde.pth")
    with pytest.raises(CheckpointError, match=r"resnet18-5c106cde\.pth.*base\.6\.1\.conv2\.weight \(file \[256, 256, 1, 1\]"):
        build_model("resnet18", "avg", str(path))


def test_unexpected_backbone_tensor_is_named(tmp_path: Path, resnet18_state: OrderedDict[str, torch.Tensor]) -> None:
    resnet18_state["layer4.2.conv1.weight"] = torch.zeros(512, 512, 3, 3)  # a block resnet18 does not have
    path = _save_legacy(resnet18_state, tmp_path / "resnet18-5c106cde.pth")
    with pytest.raises(CheckpointError, match=r"not in the model: base\.7\.2\.conv1\.weight"):
        build_model("resnet18", "avg", str(path))


class _Shell:
    """Unpickling this runs a shell command (what a malicious .pth can do to a plain torch.load)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


@pytest.mark.parametrize("wrapped", [False, True])
def test_pickle_with_code_is_refused_not_run(tmp_path: Path, wrapped: bool) -> None:
    marker = tmp_path / "pwned"
    payload = _Shell(f"touch {marker}")
    path = tmp_path / "resnet18-5c106cde.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7)}, "x": payload} if wrapped else payload, path)
    with pytest.raises(CheckpointError, match=r"resnet18-5c106cde\.pth.*not unpickled for safety"):
        build_model("resnet18", "avg", str(path))
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_refused_naming_it(
    tmp_path: Path, resnet18_state: OrderedDict[str, torch.Tensor], legacy: bool
) -> None:
    good = tmp_path / "good.pth"
    torch.save(resnet18_state, good, _use_new_zipfile_serialization=not legacy)
    path = tmp_path / "resnet18-5c106cde.pth"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"resnet18-5c106cde\.pth.*truncated, corrupt"):
        build_model("resnet18", "avg", str(path))


def test_garbage_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "resnet50_ibn_a.pth.tar"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match=r"resnet50_ibn_a\.pth\.tar.*truncated, corrupt"):
        build_model("resnet50_ibn_a", "avg", str(path))
