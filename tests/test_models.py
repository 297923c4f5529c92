"""Models: shapes, normalisation, last stride, pooling, BN neck, ghost BN against per-chunk BN, weights."""

from __future__ import annotations

import copy
import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hhcl.models import (
    IBN,
    GeneralizedMeanPoolingP,
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    WeightsNotFoundError,
    build_model,
    convert_ghost_bn,
    resnet50_ibn_a,
)
from hhcl.weight_files import CheckpointError

KEYS_JSON = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hhcl-checkpoint-keys.json"


@pytest.fixture(scope="module")
def small() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", "avg", "none")


def _images(n: int = 4, h: int = 64, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("key", "arch", "pooling"),
    [("resnet50/avg", "resnet50", "avg"), ("resnet_ibn50a/gem", "resnet50_ibn_a", "gem")],
)
def test_state_dict_matches_authors_keys(key: str, arch: str, pooling: str) -> None:
    if not KEYS_JSON.is_file():
        pytest.skip(f"{KEYS_JSON} not found")
    expected = json.loads(KEYS_JSON.read_text())["models"][key]
    with torch.device("meta"):
        model = build_model(arch, pooling, "none")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same keys, same registration order
    assert ours == expected


@pytest.mark.parametrize(
    ("arch", "fmap"),
    [("resnet50", (16, 8)), ("resnet50_ibn_a", (16, 8)), ("resnet101", (16, 8)), ("resnet18", (8, 4))],
)
def test_last_stride_one_for_deep_nets(arch: str, fmap: tuple[int, int]) -> None:
    with torch.device("meta"):
        model = build_model(arch, "avg", "none")
        out = model.base(torch.empty(1, 3, 256, 128))
    assert tuple(out.shape[2:]) == fmap
    assert model.feature_dim == out.shape[1]


def test_embedding_shapes_and_l2_norm_train_and_eval(small: nn.Module) -> None:
    x = _images()
    for mode in (True, False):
        small.train(mode)
        out = small(x)
        assert out.shape == (4, 512)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    model = build_model("resnet18", "gem", "none", num_features=16).eval()
    assert model.feature_dim == 16 and model(x).shape == (4, 16)


def test_forward_is_pool_bn_normalise_by_hand(small: nn.Module) -> None:
    small.eval()
    x = _images(2)
    fmap = small.base(x)
    bn = small.feat_bn
    pooled = fmap.mean(dim=(2, 3))
    by_hand = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(small(x), by_hand / by_hand.norm(dim=1, keepdim=True))


def test_bn_neck_bias_frozen_and_optimiser_set(small: nn.Module) -> None:
    assert small.feat_bn.bias.requires_grad is False
    trainable = small.trainable_parameters()
    assert all(p is not small.feat_bn.bias for p in trainable)
    assert len(trainable) == len(list(small.parameters())) - 1
    groups = small.param_groups()
    assert len(groups) == len(trainable) and all(len(g["params"]) == 1 for g in groups)
    gem = build_model("resnet18", "gem", "none")
    assert any(p is gem.gap.p for p in gem.trainable_parameters())


def test_gem_by_hand_and_fixed_p() -> None:
    x = torch.tensor([[[[1.0, 2.0], [0.0, -3.0]]]])  # clamp -> 1, 2, 1e-6, 1e-6
    expected = ((1 + 8 + 2e-18) / 4) ** (1 / 3)
    torch.testing.assert_close(GeneralizedMeanPoolingP()(x).flatten(), torch.tensor([expected]))
    fixed = GeneralizedMeanPoolingP(p=2.0, learnable=False)
    assert list(fixed.parameters()) == [] and list(fixed.state_dict()) == ["p"]
    torch.testing.assert_close(fixed(x).flatten(), torch.tensor([((1 + 4 + 2e-12) / 4) ** 0.5]))


def test_dropout_only_in_train_mode() -> None:
    model = build_model("resnet18", "avg", "none", dropout=0.5).eval()
    x = _images(2)
    torch.testing.assert_close(model(x).norm(dim=1), torch.ones(2))
    assert model.drop is not None and model.drop.p == 0.5


# ----------------------------------------------------------------------------------------- ghost BN


def _per_chunk(bn: nn.Module, x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, nn.Module]:
    """Reference: ordinary BN over each chunk; running stats from chunk 0 only (a DataParallel replica 0)."""
    replica0 = copy.deepcopy(bn)
    outs = []
    for i, chunk in enumerate(x.split(sizes)):
        if i == 0:
            outs.append(replica0(chunk))
        else:
            outs.append(F.batch_norm(chunk, None, None, bn.weight, bn.bias, True, 0.0, bn.eps))
    return torch.cat(outs), replica0


@pytest.mark.parametrize(
    ("shape", "sizes"),
    [((12, 5, 3, 2), [4, 4, 4]), ((10, 5, 3, 2), [4, 4, 2]), ((12, 6), [3, 3, 3, 3]), ((8, 6), [3, 3, 2])],
)
def test_ghost_bn_equals_bn_per_chunk(shape: tuple[int, ...], sizes: list[int]) -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(shape[1]) if len(shape) == 4 else nn.BatchNorm1d(shape[1])
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(*shape) * 3 + 1
    expected, replica0 = _per_chunk(bn, x, sizes)
    ghost = convert_ghost_bn(nn.Sequential(copy.deepcopy(bn)), sizes[0])[0]
    assert isinstance(ghost, GhostBatchNorm2d | GhostBatchNorm1d)
    xg = x.clone().requires_grad_(True)
    out = ghost(xg)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ghost.running_mean, replica0.running_mean)
    torch.testing.assert_close(ghost.running_var, replica0.running_var)
    assert int(ghost.num_batches_tracked) == 1
    # gradients equal those of the per-chunk computation
    xr = x.clone().requires_grad_(True)
    _per_chunk(bn, xr, sizes)[0].pow(2).mul(torch.arange(x.numel()).view_as(x) % 7).sum().backward()
    out.pow(2).mul(torch.arange(x.numel()).view_as(x) % 7).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-5)
    # eval mode: running statistics, exactly like BatchNorm
    ghost.eval()
    replica0.eval()
    torch.testing.assert_close(ghost(x), replica0(x))


def test_ghost_bn_one_sample_tail_group_fails_like_bn() -> None:
    ghost = convert_ghost_bn(nn.Sequential(nn.BatchNorm1d(4)), 3)[0]
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ghost(torch.randn(7, 4))


def test_ghost_bn_channels_last_and_autocast() -> None:
    torch.manual_seed(0)
    bn = convert_ghost_bn(nn.Sequential(nn.BatchNorm2d(8)), 4)[0]
    x = torch.randn(8, 8, 5, 3)
    ref = bn(x)
    cl = bn(x.to(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bn(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.05, atol=0.05)


def test_ghost_bn_whole_model_equals_chunked_forward(small: nn.Module) -> None:
    plain = copy.deepcopy(small).train()
    ghost = convert_ghost_bn(copy.deepcopy(small), 4).train()
    assert list(ghost.state_dict()) == list(plain.state_dict())
    assert ghost.feat_bn.bias.requires_grad is False
    x = _images(8)
    expected0 = plain(x[:4])
    second = copy.deepcopy(small).train()(x[4:])
    out = ghost(x)
    # a deep net amplifies float rounding where group variances are tiny: compare as embeddings
    assert F.cosine_similarity(out, torch.cat([expected0, second])).min() > 0.99999
    for (name, a), b in zip(ghost.named_buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    convert_ghost_bn(ghost, 0)
    assert type(ghost.feat_bn) is nn.BatchNorm1d and not hasattr(ghost.feat_bn, "group")


def test_model_channels_last_matches(small: nn.Module) -> None:
    small.eval()
    x = _images(2)
    ref = small(x)
    cl_model = copy.deepcopy(small).to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl_model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)


def test_autocast_bf16_forward_train_and_eval() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", "gem", "none", bn_group=4)
    x = _images(8)
    for mode in (True, False):
        ref = copy.deepcopy(model).train(mode)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = copy.deepcopy(model).train(mode)(x)
        assert torch.isfinite(low).all()
        assert F.cosine_similarity(low.float(), ref).min() > 0.98


def test_build_model_with_bn_group_and_bad_values() -> None:
    model = build_model("resnet18", "avg", "none", bn_group=64)
    assert isinstance(model.base[1], GhostBatchNorm2d) and model.base[1].group == 64
    assert isinstance(model.feat_bn, GhostBatchNorm1d)
    with pytest.raises(ValueError, match="model.arch"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="model.pooling"):
        build_model("resnet18", "max")


# ----------------------------------------------------------------------------------------- weights


def test_offline_imagenet_error_names_file_and_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(WeightsNotFoundError) as err:
        build_model("resnet50", "avg", "imagenet")
    message = str(err.value)
    for part in (
        "resnet50-0676ba61.pth",
        "resnet50-19c8e357.pth",
        str(folder),
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "model.pretrained=",
    ):
        assert part in message
    with pytest.raises(WeightsNotFoundError, match=r"resnet50_ibn_a\.pth\.tar") as err:
        build_model("resnet50_ibn_a", "gem", "imagenet")
    assert str(folder) in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        build_model("resnet18", "avg", str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("filename", ["resnet18-f37072fd.pth", "resnet18-5c106cde.pth"])
def test_imagenet_weights_from_torch_home(
    filename: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    tv = torchvision.models.resnet18()
    torch.save(tv.state_dict(), folder / filename)
    model = build_model("resnet18", "avg", "imagenet")
    assert torch.equal(model.base[0].weight, tv.conv1.weight)
    assert torch.equal(model.base[7][1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(model.feat_bn.weight, torch.ones(512))  # the neck keeps its own init


def test_ibn_imagenet_file_in_ibn_net_format(tmp_path: Path) -> None:
    """``resnet50_ibn_a.pth.tar``: {'state_dict': {'module.conv1.weight', ..., 'module.fc.*'}} loads strictly."""
    torch.manual_seed(4)
    net = resnet50_ibn_a()
    path = tmp_path / "resnet50_ibn_a.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 100}, path)
    model = build_model("resnet50_ibn_a", "gem", str(path))
    assert torch.equal(model.base[4][0].bn1.IN.weight, net.layer1[0].bn1.IN.weight)
    assert torch.equal(model.base[6][5].bn1.BN.running_mean, net.layer3[5].bn1.BN.running_mean)
    with pytest.raises(CheckpointError, match="do not fit this backbone"):
        build_model("resnet50", "avg", str(path))


def test_ibn_splits_channels_instance_then_batch_norm() -> None:
    torch.manual_seed(0)
    ibn = IBN(6).train()
    assert (ibn.half, ibn.IN.num_features, ibn.BN.num_features) == (3, 3, 3)
    assert ibn.IN.track_running_stats is False and ibn.IN.affine
    nn.init.uniform_(ibn.IN.weight, 0.5, 1.5)
    x = torch.randn(4, 6, 5, 3) * 2 + 1
    first = F.instance_norm(x[:, :3], weight=ibn.IN.weight, bias=ibn.IN.bias, eps=1e-5)
    rest = F.batch_norm(x[:, 3:], None, None, ibn.BN.weight, ibn.BN.bias, True, 0.0, 1e-5)
    torch.testing.assert_close(ibn(x), torch.cat([first, rest], dim=1))
    ibn.eval()  # instance statistics stay per-instance in eval mode
    torch.testing.assert_close(ibn(x)[:, :3], first)
