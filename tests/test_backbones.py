"""The backbone table (hhcl/models/backbones.py): every entry builds a re-ID net that runs on a tiny input with its
feature size, whose state dict its key signature recognises; the table builds the same tensors as the backbone
constructors did before the table; each entry's ImageNet files are found under the names torchvision and IBN-Net
publish."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from hhcl.models import ReIDNet, build_model, build_pooling, imagenet_weights_file, resnet50_ibn_a
from hhcl.models.backbones import BACKBONES, arch_of, signature

#: how hhcl built each backbone before the table (its constructor; last stride 1 for the deep ones)
CONSTRUCTORS = {
    "resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50, "resnet101": tvm.resnet101,
    "resnet50_ibn_a": resnet50_ibn_a,
}
DEEP = ("resnet50", "resnet101", "resnet50_ibn_a")
#: the files each entry's ImageNet weights go by, in order of preference (torchvision's IMAGENET1K_V1 and its older
#: name; IBN-Net's Google Drive file and its GitHub release)
FILES = {
    "resnet18": ("resnet18-f37072fd.pth", "resnet18-5c106cde.pth"),
    "resnet34": ("resnet34-b627a593.pth", "resnet34-333f7ec4.pth"),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-5d3b4d8f.pth"),
    "resnet50_ibn_a": ("resnet50_ibn_a.pth.tar", "resnet50_ibn_a-d9d0bb7b.pth"),
}


def test_the_independent_lists_cover_the_table():
    assert set(CONSTRUCTORS) == set(FILES) == set(BACKBONES)


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_every_backbone_builds_runs_and_is_recognised(arch: str) -> None:
    spec = BACKBONES[arch]
    torch.manual_seed(0)
    model = build_model(arch, "avg", "none").eval()
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, fmap = model(x), model.base(x)
    assert out.shape == (2, spec.feature_dim) and model.feature_dim == spec.feature_dim
    assert fmap.shape[-2:] == ((4, 2) if arch in DEEP else (2, 1))  # output stride 16 with last stride 1, else 32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    last = model.base[7][-1]
    assert (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features == spec.feature_dim
    assert tuple(len(model.base[i]) for i in range(4, 8)) == spec.layers
    assert signature(model.state_dict()) == (spec.block, spec.layers)
    assert arch_of(model.state_dict()) == arch

    torch.manual_seed(0)  # the same model as before the table, from the same seed
    backbone = CONSTRUCTORS[arch]()
    if arch in DEEP:
        backbone.layer4[0].conv2.stride = (1, 1)
        backbone.layer4[0].downsample[0].stride = (1, 1)
    old = ReIDNet(backbone, build_pooling("avg"), out_planes=spec.feature_dim)
    old.reset_params()
    ours, theirs = model.state_dict(), old.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_an_unknown_signature_is_no_arch() -> None:
    with torch.device("meta"):
        state = build_model("resnet50", "avg", "none").state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("base.6.5.")}  # layer3 with 5 blocks
    assert signature(state) == ("bottleneck", (3, 4, 5, 3)) and arch_of(state) is None


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_imagenet_files_found_in_order_of_preference(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    preferred, other = FILES[arch]
    (folder / other).touch()
    assert imagenet_weights_file(arch) == folder / other
    (folder / preferred).touch()
    assert imagenet_weights_file(arch) == folder / preferred
