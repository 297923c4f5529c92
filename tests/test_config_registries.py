"""The config's lists of allowed values and memory bounds agree with the code that uses them, and the config
module stays torch-free (the CLI reads presets without importing torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hhcl import config
from hhcl.cluster.knn import BACKENDS
from hhcl.config import ConfigError, load_config
from hhcl.data.datasets import REGISTRY
from hhcl.memories import MEMORIES
from hhcl.memory import MODES, HybridMemory
from hhcl.models.backbones import BACKBONES
from hhcl.models.pooling import build_pooling


def test_config_lists_equal_the_registries():
    assert config.DATASETS == tuple(REGISTRY)
    assert config.ARCHS == tuple(BACKBONES)
    assert config.KNN_BACKENDS == BACKENDS


def test_config_memory_modes_equal_the_memory_table():
    """memory.mode's allowed values are the table's keys; the camera ones (camera_aware refused) take camera ids."""
    assert config.MEMORY_MODES == tuple(MEMORIES)
    assert config.CAMERA_MODES == tuple(mode for mode, spec in MEMORIES.items() if spec.needs_camids)
    assert config.HYBRID_MODES == MODES


def test_config_cluster_methods_equal_the_clusterer_table():
    """cluster.method's allowed values are the table's keys, and each method's shown settings are config keys."""
    from hhcl.cluster.methods import CLUSTERERS

    assert config.CLUSTER_METHODS == tuple(CLUSTERERS) == tuple(config.CLUSTER_PARAMS)
    assert all(c.name == name for name, c in CLUSTERERS.items())
    keys = [p.key for params in config.CLUSTER_PARAMS.values() for p in params]
    assert set(keys) <= set(config.all_keys()) and len(set(keys)) == len(keys)
    with pytest.raises(ConfigError, match="cluster.method = 'optics' is not allowed: use one of dbscan, infomap"):
        load_config("market", ["cluster.method=optics"])


def test_every_pooling_builds_and_no_other_does():
    for name in config.POOLINGS:
        out = build_pooling(name)(torch.ones(1, 2, 3, 3))
        assert torch.allclose(out, torch.ones(1, 2, 1, 1))  # any mean of ones is one
    with pytest.raises(ValueError, match="model.pooling = 'max'"):
        build_pooling("max")


@pytest.mark.parametrize("mode", config.HYBRID_MODES)  # CAMERA_MODES: tests/test_camera_memory.py
@pytest.mark.parametrize("loss_form", config.LOSS_FORMS)
def test_every_memory_mode_and_loss_form_is_accepted(mode, loss_form):
    mem = HybridMemory(torch.eye(3, 4), mode=mode, loss_form=loss_form, num_instances=2)
    loss = mem(torch.eye(3, 4), torch.tensor([0, 1, 2]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mode", ["cm", "CMhybrid_v3"])
def test_a_memory_mode_outside_the_config_list_is_refused(mode):
    with pytest.raises(ValueError, match=f"memory.mode = '{mode}' is not allowed"):
        HybridMemory(torch.eye(3, 4), mode=mode)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("momentum", 1.0, "[0, 1)"),  # 1 * row + 0 * sample: the memory would never update
        ("smooth", 1.0, "[0, 1)"),
        ("hard_weight", 1.0 + 1e-9, "[0, 1]"),
        ("temp", 0.0, "> 0"),
    ],
)
def test_config_and_memory_refuse_the_same_boundary_value(key, value, allowed):
    expected = f"memory.{key} = {value!r} is not allowed: must be "
    with pytest.raises(ConfigError) as from_config:
        load_config("market", [f"memory.{key}={value!r}"])
    with pytest.raises(ValueError) as from_memory:
        HybridMemory(torch.eye(3, 4), **{key: value})
    for err in (from_config, from_memory):
        assert expected in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(("key", "value"), [("momentum", 0.0), ("smooth", 0.0), ("hard_weight", 1.0)])
def test_config_and_memory_accept_the_same_boundary_value(key, value):
    assert load_config("market", [f"memory.{key}={value!r}"]).memory.__dict__[key] == value
    HybridMemory(torch.eye(3, 4), **{key: value})


def test_momentum_zero_replaces_a_row_with_the_sample():
    """The direction the bounds rely on: row <- m * row + (1 - m) * sample, normalised (CM, one sample)."""
    mem = HybridMemory(torch.eye(2, 3), mode="CM", momentum=0.0)
    mem.update(torch.tensor([[0.0, 3.0, 4.0]]), torch.tensor([0]))
    assert torch.allclose(mem.features, torch.tensor([[0.0, 0.6, 0.8], [0.0, 1.0, 0.0]]))


def test_config_imports_no_torch():
    code = "import sys, hhcl.config; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
