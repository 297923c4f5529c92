"""Typed run configuration: dataclasses, preset/TOML loading, ``key=value`` overrides, validation.

A config has seven sections (``[data] [model] [cluster] [memory] [optim] [train] [eval]``). Presets are
complete TOML files shipped inside the package; a user TOML may be partial (missing keys take defaults).
Every bad key or value raises :class:`ConfigError`, which names the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhcl.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "presets"

DATASETS = ("market1501", "dukemtmcreid", "msmt17", "viper", "folder", "synthetic")
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50_ibn_a")  # = hhcl.models.backbones.BACKBONES
POOLINGS = ("avg", "gem")
KNN_BACKENDS = ("auto", "torch", "faiss", "ivf", "hnsw")  # = hhcl.cluster.knn.BACKENDS
#: keys that also take the word "auto", each with what it allows: both kinds of bad value (not a number, a number
#: out of range) are refused with it, so a typo of auto is told that auto is allowed too
AUTO_KEYS: dict[str, str] = {"cluster.eps": "a number in (0, 1) (a Jaccard distance) or auto"}
# memory.mode: the keys of hhcl.memories.MEMORIES, here by name so that this module stays torch-free (the three
# tuples equal the table's: tests/test_config_registries.py); a new memory adds its name to MEMORY_MODES
HYBRID_MODES = ("CM", "CMhard", "CMhybrid", "CMhybrid_v2")  # HHCL's, hhcl.memory.HybridMemory
CAMERA_MODES = ("O2CAP",)  # the modes whose memory takes camera ids itself (MemorySpec.needs_camids)
MEMORY_MODES = (*HYBRID_MODES, *CAMERA_MODES)
LOSS_FORMS = ("reference", "paper")
AMP_MODES = ("off", "bf16", "fp16")


class ConfigError(UsageError, ValueError):
    """A bad config key or value; the message names the key, the value and what is allowed. A usage error."""


@dataclass(frozen=True)
class KeyInfo:
    """What is known about one config key besides its type and default, stated once beside its field: what it
    means, an integer's range, the values a choice allows, whether a resume may change it, and its wizard field.

    ``validate`` refuses an integer outside ``bounds`` and a choice outside ``choices`` (each top is far above any
    setting in use yet below what would exhaust a machine or overflow a seed; what depends on the machine, a
    cache against the data root's free disk, is checked by ``hhcl train --dry-run`` and before a cache is written);
    ``hhcl train --resume --set`` accepts only the ``resumable`` keys; the wizard shows the keys with a ``label``.
    """

    help: str
    bounds: tuple[int, int] | None = None  # an integer key's lowest and highest value
    choices: tuple[str, ...] = ()  # a text key's allowed values
    resumable: bool = False  # may change on resume: it changes nothing the run computes
    label: str = ""  # the wizard's label; "" = not on the wizard's form
    hint: str = ""  # the wizard's placeholder: what the field takes ({low} and {high}: the bounds)


def key(
    default: Any,
    help: str,  # noqa: A002 - the word every CLI library uses
    *,
    bounds: tuple[int, int] | None = None,
    choices: tuple[str, ...] = (),
    resumable: bool = False,
    label: str = "",
    hint: str = "",
) -> Any:
    """A config field with its :class:`KeyInfo` (``dataclasses.field`` metadata under ``"hhcl"``)."""
    info = KeyInfo(help, bounds, choices, resumable, label, hint)
    return field(default=default, metadata={"hhcl": info})


@dataclass
class DataConfig:
    """Where the images are and how a batch is drawn from them."""

    dataset: str = key(
        "market1501", "the dataset layout under data.root (hhcl prepare writes it)", choices=DATASETS, label="Dataset"
    )
    root: str = key("data", "the folder holding the prepared datasets", resumable=True)
    height: int = key(
        256, "image height in pixels, a multiple of 16 (a cache holds images x 3 x height x width bytes)",
        bounds=(32, 4096), label="Image height",
        hint="pixels, {low} to {high}, a multiple of 16",
    )
    width: int = key(
        128, "image width in pixels, a multiple of 16 (a cache holds images x 3 x height x width bytes)",
        bounds=(32, 4096), label="Image width",
        hint="pixels, {low} to {high}, a multiple of 16",
    )
    batch_size: int = key(
        256, "the global batch over all processes, a multiple of data.num_instances (the paper's 256)",
        bounds=(2, 16384), label="Batch size", hint="a multiple of instances",
    )
    num_instances: int = key(
        16, "images per (pseudo) identity in a batch (the paper's 16)", bounds=(1, 1024), label="Instances / id",
        hint="images per pseudo identity",
    )
    workers: int = key(
        4, "image-decoding threads for cache builds and uncached gathers, 0 = the calling thread (no pool)",
        bounds=(0, 1024), resumable=True,
    )
    cache: bool = key(True, "decode each split once into a uint8 cache beside the data (hhcl/data/store.py)")


@dataclass
class ModelConfig:
    """The backbone and its re-ID head."""

    arch: str = key("resnet50", "the backbone (hhcl.models.backbones.BACKBONES)", choices=ARCHS, label="Backbone")
    pooling: str = key("avg", "global pooling of the last feature map: avg or gem", choices=POOLINGS, label="Pooling")
    pretrained: str = key(
        "imagenet", "starting weights: imagenet, none, a run directory or a .pth/.pth.tar/.safetensors file",
        label="Pretrained", hint="imagenet, none, or a run directory or weight file",
    )
    num_features: int = key(
        0, "embedding size after pooling, 0 = no embedding layer (the backbone's own feature size)",
        bounds=(0, 16384),
    )
    dropout: float = key(0.0, "dropout before the embedding, in [0, 1)")
    bn_group: int = key(
        64, "images per BN statistics group, 0 = ordinary BN, else a divisor of data.batch_size (the paper's 64)",
        bounds=(0, 16384),
    )


@dataclass(frozen=True)
class ClusterParam:
    """A clustering method's setting as the cluster event, the dashboard and ``hhcl presets list`` name it; its
    wizard label and hint are its key's :class:`KeyInfo`."""

    key: str  # its config key
    name: str  # short, as the cluster event's params and the dashboard name it

    @property
    def label(self) -> str:
        return key_info(self.key).label

    @property
    def hint(self) -> str:
        return key_info(self.key).hint


#: each ``cluster.method`` (the keys of hhcl.cluster.methods.CLUSTERERS, by name so that this module stays
#: torch-free: tests/test_config_registries.py keeps them equal) and its own settings, the one that decides how much
#: it clusters first; a new method adds its entry here and its keys to ClusterConfig
CLUSTER_PARAMS: dict[str, tuple[ClusterParam, ...]] = {
    "dbscan": (ClusterParam("cluster.eps", "eps"),),
    "infomap": (
        ClusterParam("cluster.infomap_min_sim", "min_sim"),
        ClusterParam("cluster.infomap_k", "k"),
        ClusterParam("cluster.infomap_min_size", "min_size"),
    ),
}
CLUSTER_METHODS = tuple(CLUSTER_PARAMS)


@dataclass
class ClusterConfig:
    """``method`` picks the clusterer (hhcl/cluster/methods.py); DBSCAN reads ``k1`` to ``knn_backend``, InfoMap the
    ``infomap_*`` keys, and each ignores the other's."""

    method: str = key(
        "dbscan", "the clustering method (hhcl/cluster/methods.py)", choices=CLUSTER_METHODS, label="Clustering"
    )
    k1: int = key(30, "neighbours of the k-reciprocal sets (the paper's 30), whose cost grows as k1^2", bounds=(2, 1000))
    k2: int = key(6, "neighbours of the query expansion (the paper's 6), at most cluster.k1", bounds=(1, 1000))
    eps: float | str = key(
        0.6, "DBSCAN's radius, a Jaccard distance in (0, 1), or auto (chosen at the first clustering)",
        label="DBSCAN eps", hint="Jaccard distance in (0, 1), or auto",
    )
    min_samples: int = key(4, "DBSCAN's core-point neighbours (the paper's 4)", bounds=(1, 1000))
    knn_backend: str = key(
        "auto", "the kNN search: torch or faiss (exact), ivf or hnsw (faiss, approximate), auto (exact: torch)",
        choices=KNN_BACKENDS,
    )
    infomap_k: int = key(
        15, "InfoMap's neighbours per image, itself included (cluster-contrast's --k1 15)", bounds=(2, 1000),
        label="InfoMap k", hint="neighbours per image, itself included",
    )
    infomap_min_sim: float = key(
        0.5, "cosine similarity a neighbour needs for an InfoMap link, in [0, 1) (cluster-contrast's --eps 0.5)",
        label="InfoMap min sim", hint="cosine similarity in [0, 1)",
    )
    infomap_min_size: int = key(
        5, "InfoMap's smallest kept cluster, smaller ones are outliers (cluster-contrast's --k2 4: sizes <= 4 dropped)",
        bounds=(1, 1000), label="InfoMap min size", hint="smaller clusters: outliers",
    )
    knn_nlist: int = key(0, "IVF's coarse cells, 0 = 4 sqrt(N) (hhcl/cluster/approx.py)", bounds=(0, 1_000_000))
    knn_nprobe: int = key(0, "IVF's cells searched per image, 0 = max(16, nlist / 32)", bounds=(0, 1_000_000))
    knn_ef_search: int = key(0, "HNSW's search breadth, 0 = max(128, 2 x the candidates)", bounds=(0, 1_000_000))


@dataclass
class MemoryConfig:
    """``momentum`` m updates a memory row as ``m * row + (1 - m) * sample``, so it lies in [0, 1) (1 would
    freeze the memory); ``smooth`` in [0, 1) is a switch, as in the reference: 0 = plain cross-entropy,
    > 0 = top-k label smoothing with its epsilon fixed at 0.1. ``check_memory`` holds these bounds."""

    mode: str = key(
        "CMhybrid", "the memory and its loss (hhcl.memories.MEMORIES)", choices=MEMORY_MODES, label="Memory mode"
    )
    temp: float = key(0.05, "softmax temperature of the memory's logits, > 0 (the paper's 0.05)")
    momentum: float = key(0.1, "memory update m: row = m * row + (1 - m) * sample, in [0, 1) (the paper's 0.1)")
    hard_weight: float = key(0.5, "weight of the hard-sample term against the centroid term, in [0, 1] (0.5)")
    smooth: float = key(0.0, "0 = plain cross-entropy, > 0 = top-k label smoothing with epsilon 0.1 (a switch)")
    loss_form: str = key(
        "reference", "reference = the authors' code, paper = the paper's equations", choices=LOSS_FORMS
    )
    # camera-aware proxies (O2CAP, hhcl/camera_memory.py): mode O2CAP, or an HHCL mode with camera_aware = true
    camera_aware: bool = key(False, "HHCL modes: add O2CAP's camera-aware proxy terms to the hybrid loss")
    intra_weight: float = key(0.0, "intra-camera proxy loss weight (the authors' train.py leaves it off: 0)")
    offline_weight: float = key(1.0, "offline association: the cluster's proxies vs the bg_knn hardest others")
    online_weight: float = key(1.0, "online association: pos_k cross-camera nearest proxies vs bg_knn others")
    bg_knn: int = key(50, "hard negative proxies per sample in both association losses (O2CAP's 50)", bounds=(1, 10000))
    pos_k: int = key(3, "online positive proxies: the top per-camera nearest (O2CAP's 3)", bounds=(1, 1000))
    balance_w: float = key(0.15, "online similarity = balance_w * sample-proxy + (1 - balance_w) * proxy-proxy")


@dataclass
class OptimConfig:
    """Adam with a step decay, optionally after a linear warm-up (O2CAP)."""

    lr: float = key(3.5e-4, "Adam's learning rate, > 0 (the paper's 3.5e-4)")
    weight_decay: float = key(5e-4, "Adam's weight decay, >= 0 (the paper's 5e-4)")
    step_size: int = key(20, "epochs between learning-rate decays (the paper's 20)", bounds=(1, 10000))
    gamma: float = key(0.1, "the learning rate's factor at each decay, in (0, 1]")
    warmup_epochs: int = key(0, "linear warm-up epochs, 0 = none (O2CAP's 10, HHCL none)", bounds=(0, 10000))
    warmup_factor: float = key(0.01, "the warm-up's first learning rate as a fraction of optim.lr, in (0, 1]")


@dataclass
class TrainConfig:
    """The schedule, the device and what a run writes besides its checkpoints."""

    epochs: int = key(
        60, "epochs; a run is extended with --resume --set train.epochs=N", bounds=(1, 10000), resumable=True,
        label="Epochs",
    )
    iters: int = key(200, "iterations per epoch (the paper's 200 to 400)", bounds=(1, 100000), label="Iters / epoch")
    seed: int = key(1, "seed of the data order, augmentation and initialisation (NumPy's range)", bounds=(0, 2**32 - 1))
    eval_every: int = key(10, "epochs between evaluations (the paper's 10)", bounds=(1, 10000), resumable=True)
    device: str = key(
        "auto", "auto, cpu, cuda, cuda:N or mps", resumable=True, label="Device", hint="auto, cpu, cuda or cuda:N"
    )
    amp: str = key("off", "mixed precision: off, bf16 or fp16", choices=AMP_MODES, label="AMP")
    channels_last: bool = key(False, "channels-last memory format for the convolutions (faster on recent GPUs)")
    compile: bool = key(False, "torch.compile the model")
    tf32: bool = key(False, "allow TF32 matrix products on Ampere and later GPUs")
    supervised: bool = key(False, "train on the true identities instead of pseudo labels (an upper bound)")
    tensorboard: bool = key(
        False, 'also write the scalars to <run_dir>/tensorboard/ (pip install "hhcl[tensorboard]")', resumable=True
    )


@dataclass
class EvalConfig:
    """How query and gallery are compared."""

    rerank: bool = key(False, "k-reciprocal re-ranking of the distances before ranking")
    flip: bool = key(False, "average each image's features with its horizontal flip's")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (section -> key -> value), e.g. for the event log."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The config as TOML text that :func:`load_config` reads back to an equal config."""
        return dump_toml(self.to_dict())

    def get(self, dotted: str) -> Any:
        section, key = _split_key(dotted)
        return getattr(getattr(self, section), key)


_SECTION_CLASSES = {
    "data": DataConfig,
    "model": ModelConfig,
    "cluster": ClusterConfig,
    "memory": MemoryConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def all_keys() -> list[str]:
    """Every dotted key, e.g. ``cluster.eps``, in section order."""
    return [f"{s}.{f.name}" for s, cls in _SECTION_CLASSES.items() for f in dataclasses.fields(cls)]


def key_info(dotted: str) -> KeyInfo:
    """The :class:`KeyInfo` of ``section.key`` (a :class:`ConfigError` naming the nearest key when unknown)."""
    section, name = _split_key(dotted)
    return next(f for f in dataclasses.fields(_SECTION_CLASSES[section]) if f.name == name).metadata["hhcl"]


def _key_type(section: str, key: str) -> type:
    cls = _SECTION_CLASSES[section]
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    return {"int": int, "float": float, "float | str": float, "bool": bool, "str": str}[hints[key]]


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _split_key(dotted: str) -> tuple[str, str]:
    keys = all_keys()
    if dotted.count(".") != 1:
        bare = [k for k in keys if k.split(".")[1] == dotted]
        hint = f" Did you mean '{bare[0]}'?" if len(bare) == 1 else _suggest(dotted, keys)
        raise ConfigError(f"unknown config key '{dotted}': keys are written section.key.{hint}")
    section, key = dotted.split(".")
    if section not in _SECTION_CLASSES:
        raise ConfigError(
            f"unknown config section '{section}' in '{dotted}': sections are "
            f"{', '.join(_SECTION_CLASSES)}.{_suggest(section, tuple(_SECTION_CLASSES))}"
        )
    if dotted not in keys:
        raise ConfigError(f"unknown config key '{dotted}'.{_suggest(dotted, keys)}")
    return section, key


def check_key(dotted: str) -> None:
    """Refuse an unknown ``section.key`` as ``--set`` does on a fresh run (naming the nearest known key), so a
    typo reads as a typo wherever keys are checked first (e.g. ``hhcl train --resume``)."""
    _split_key(dotted)


def _coerce(dotted: str, value: Any, *, from_text: bool) -> Any:
    """Convert ``value`` to the declared type of ``dotted``; text values come from ``--set``."""
    section, key = _split_key(dotted)
    if dotted in AUTO_KEYS and isinstance(value, str) and value.strip() == "auto":
        return "auto"
    kind = _key_type(section, key)
    name = kind.__name__
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
        raise ConfigError(f"{dotted} = {value!r} is not a bool: use true or false.")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{dotted} = {value!r} is not an int.")
        if isinstance(value, int):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(
            f"{dotted} = {value!r} is not an int: use a whole number such as {getattr(DEFAULT, section).__dict__[key]}."
        )
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_text and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        if dotted in AUTO_KEYS:
            raise ConfigError(
                f"{dotted} = {value!r} is not a number or auto: use {AUTO_KEYS[dotted]}.{_suggest(str(value), ('auto',))}"
            )
        if isinstance(value, bool):
            raise ConfigError(f"{dotted} = {value!r} is not a number.")
        raise ConfigError(
            f"{dotted} = {value!r} is not a number: use e.g. {getattr(DEFAULT, section).__dict__[key]}."
        )
    if not isinstance(value, str):
        raise ConfigError(f'{dotted} = {value!r} is not a {name}: quote it in TOML, e.g. {key} = "{value}".')
    return value


def _choice(dotted: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{dotted} = {value!r} is not allowed: use one of {', '.join(allowed)}.{_suggest(value, allowed)}"
        )


def _check(ok: bool, dotted: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{dotted} = {value!r} is not allowed: {allowed}.")


def check_memory(
    *, mode: str, temp: float, momentum: float, hard_weight: float, smooth: float, loss_form: str
) -> None:
    """Raise :class:`ConfigError` on a memory setting the memory bank cannot use; ``validate`` and
    ``hhcl.memory.HybridMemory`` both call it, so the two can never disagree."""
    _choice("memory.mode", mode, MEMORY_MODES)
    _check(math.isfinite(temp) and temp > 0, "memory.temp", temp, "must be a finite number > 0")
    _check(
        0.0 <= momentum < 1.0,
        "memory.momentum",
        momentum,
        "must be in [0, 1) (rows update as m * row + (1 - m) * sample; 1 would never update them)",
    )
    _check(0.0 <= hard_weight <= 1.0, "memory.hard_weight", hard_weight, "must be in [0, 1]")
    _check(
        0.0 <= smooth < 1.0,
        "memory.smooth",
        smooth,
        "must be in [0, 1) (0 = off; any value > 0 switches on label smoothing with epsilon 0.1)",
    )
    _choice("memory.loss_form", loss_form, LOSS_FORMS)


def check_camera_memory(
    *, intra_weight: float, offline_weight: float, online_weight: float, bg_knn: int, pos_k: int, balance_w: float
) -> None:
    """Raise :class:`ConfigError` on a camera-aware proxy setting (O2CAP, camera_aware); ``validate`` and
    ``hhcl.camera_memory.CameraMemory`` both call it."""
    for key, w in (("intra_weight", intra_weight), ("offline_weight", offline_weight), ("online_weight", online_weight)):
        _check(math.isfinite(w) and w >= 0, f"memory.{key}", w, "must be a finite number >= 0 (0 = that term off)")
    _check(
        intra_weight + offline_weight + online_weight > 0,
        "memory.online_weight",
        online_weight,
        "must be > 0 when memory.intra_weight and memory.offline_weight are 0 (O2CAP needs one loss term)",
    )
    _check(bg_knn >= 1, "memory.bg_knn", bg_knn, "must be at least 1 (hard negative proxies per sample; O2CAP: 50)")
    _check(pos_k >= 1, "memory.pos_k", pos_k, "must be at least 1 (online positive proxies; O2CAP: 3)")
    _check(0.0 <= balance_w <= 1.0, "memory.balance_w", balance_w, "must be in [0, 1] (O2CAP: 0.15)")


def _check_finite(cfg: Config) -> None:
    """Refuse inf and nan in every float key (``1e400`` reads as inf): Adam and the losses cannot hold them."""
    for section, cls in _SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            value = getattr(getattr(cfg, section), f.name)
            if f.type in ("float", "float | str") and isinstance(value, float) and not math.isfinite(value):
                example = getattr(getattr(DEFAULT, section), f.name)
                raise ConfigError(
                    f"{section}.{f.name} = {value!r} is not allowed: must be a finite number "
                    f"(not inf or nan; values beyond about 1.8e308 read as inf), e.g. {example}."
                )


def _check_choices(cfg: Config) -> None:
    """Refuse a value outside its key's :data:`CHOICES`, naming the allowed ones and the nearest."""
    for dotted, allowed in CHOICES.items():
        _choice(dotted, cfg.get(dotted), allowed)


def _check_bounds(cfg: Config) -> None:
    """Refuse an integer key outside its :data:`INT_BOUNDS` range, naming the range, what it means and an example
    (a seed past 64 bits, a 6400000-pixel image or a 10**9-wide embedding would otherwise fail deep in a run)."""
    for dotted, (low, high, meaning) in INT_BOUNDS.items():
        value = cfg.get(dotted)
        _check(
            low <= value <= high,
            dotted,
            value,
            f"must be between {low} and {high} ({meaning}), e.g. {DEFAULT.get(dotted)}",
        )


def validate(cfg: Config) -> Config:
    """Check every value; raises :class:`ConfigError` on the first bad one. Returns ``cfg``."""
    d, m, c, mem, o, t = cfg.data, cfg.model, cfg.cluster, cfg.memory, cfg.optim, cfg.train
    _check_finite(cfg)
    _check_bounds(cfg)
    _check_choices(cfg)
    _check(d.height % 16 == 0, "data.height", d.height, "must be a multiple of 16")
    _check(d.width % 16 == 0, "data.width", d.width, "must be a multiple of 16")
    _check(
        d.batch_size % d.num_instances == 0,
        "data.batch_size",
        d.batch_size,
        f"must be a multiple of data.num_instances ({d.num_instances}), e.g. {d.num_instances * max(1, d.batch_size // d.num_instances)}",
    )
    if m.pretrained not in ("imagenet", "none"):
        _check(  # a run directory has no suffix (or is a folder): it is checked when the run starts
            m.pretrained.endswith((".pth", ".pth.tar", ".safetensors", ".pt"))
            or not Path(m.pretrained).suffix
            or Path(m.pretrained).expanduser().is_dir(),
            "model.pretrained",
            m.pretrained,
            "use imagenet, none, a run directory, or a path to a .pth, .pth.tar or .safetensors file",
        )
    _check(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "must be in [0, 1)")
    if m.bn_group > 0:
        _check(
            d.batch_size % m.bn_group == 0,
            "model.bn_group",
            m.bn_group,
            f"must divide data.batch_size ({d.batch_size}); the paper presets use 64 with batch 256",
        )
    _check(c.k2 <= c.k1, "cluster.k2", c.k2, f"must be between 1 and cluster.k1 ({c.k1})")
    _check(c.eps == "auto" or 0.0 < c.eps < 1.0, "cluster.eps", c.eps, f"use {AUTO_KEYS['cluster.eps']}")
    _check(
        0.0 <= c.infomap_min_sim < 1.0,
        "cluster.infomap_min_sim",
        c.infomap_min_sim,
        "must be in [0, 1) (a cosine similarity; cluster-contrast's 0.5)",
    )
    check_memory(
        mode=mem.mode,
        temp=mem.temp,
        momentum=mem.momentum,
        hard_weight=mem.hard_weight,
        smooth=mem.smooth,
        loss_form=mem.loss_form,
    )
    check_camera_memory(
        intra_weight=mem.intra_weight,
        offline_weight=mem.offline_weight,
        online_weight=mem.online_weight,
        bg_knn=mem.bg_knn,
        pos_k=mem.pos_k,
        balance_w=mem.balance_w,
    )
    _check(
        not (mem.camera_aware and mem.mode in CAMERA_MODES),
        "memory.camera_aware",
        mem.camera_aware,
        f"applies to the modes without camera terms ({', '.join(m for m in MEMORY_MODES if m not in CAMERA_MODES)}); "
        f"memory.mode = {mem.mode!r} is camera-aware "
        "by itself: set memory.camera_aware = false",
    )
    _check(o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(0 < o.gamma <= 1, "optim.gamma", o.gamma, "must be in (0, 1]")
    _check(0 < o.warmup_factor <= 1, "optim.warmup_factor", o.warmup_factor, "must be in (0, 1]")
    _check(
        t.device in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", t.device) is not None,
        "train.device",
        t.device,
        "use auto, cpu, cuda or cuda:N",
    )
    return cfg


DEFAULT = Config()

#: (lowest, highest, what the key means) of every integer key, from its :class:`KeyInfo`
INT_BOUNDS: dict[str, tuple[int, int, str]] = {
    k: (*info.bounds, info.help) for k in all_keys() if (info := key_info(k)).bounds is not None
}
#: the allowed values of every choice key, from its :class:`KeyInfo`
CHOICES: dict[str, tuple[str, ...]] = {k: info.choices for k in all_keys() if (info := key_info(k)).choices}
#: the keys a resume may change (``hhcl train --resume --set``): none changes what the run computes (tensorboard
#: only adds a log writer; train.epochs may not go below what the checkpoint has trained)
RESUMABLE_KEYS: tuple[str, ...] = tuple(k for k in all_keys() if key_info(k).resumable)


def preset_names() -> list[str]:
    """Names of the presets shipped with the package, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset '{name}': presets are {', '.join(preset_names())}, or give a path to a .toml file."
            f"{_suggest(name, preset_names())}"
        )
    return path


def _resolve_source(preset_or_path: str | os.PathLike[str]) -> Path:
    text = str(preset_or_path)
    as_path = Path(text).expanduser()
    if text.endswith(".toml") or os.sep in text or as_path.is_file():
        if not as_path.exists():
            raise ConfigError(
                f"config file '{as_path}' does not exist: give a preset name ({', '.join(preset_names())}) or an existing .toml path."
            )
        return as_path
    return preset_path(text)


def from_dict(raw: dict[str, Any], *, source: str = "config") -> Config:
    """Build a validated config from a nested dict (TOML-shaped); unknown sections/keys are errors."""
    cfg = Config()
    for section, values in raw.items():
        if section not in _SECTION_CLASSES:
            raise ConfigError(
                f"{source}: unknown section [{section}]: sections are {', '.join(_SECTION_CLASSES)}."
                f"{_suggest(section, tuple(_SECTION_CLASSES))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: '{section}' must be a [{section}] table, not {values!r}.")
        for key, value in values.items():
            dotted = f"{section}.{key}"
            try:
                setattr(getattr(cfg, section), key, _coerce(dotted, value, from_text=False))
            except ConfigError as err:
                raise ConfigError(f"{source}: {err}") from None
    return cfg


def apply_overrides(cfg: Config, overrides: tuple[str, ...] | list[str]) -> Config:
    """Apply ``section.key=value`` strings, typed by the key's declared type."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. optim.lr=0.0001.")
        dotted, text = item.split("=", 1)
        dotted = dotted.strip()
        section, key = _split_key(dotted)
        setattr(getattr(cfg, section), key, _coerce(dotted, text, from_text=True))
    return cfg


def load_config(
    preset_or_path: str | os.PathLike[str], overrides: tuple[str, ...] | list[str] = ()
) -> Config:
    """Load a preset by name or a TOML file, apply ``key=value`` overrides, validate."""
    path = _resolve_source(preset_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start : err.start + 1]!r}): "
            "save the config file as UTF-8."
        ) from None
    except OSError as err:
        raise ConfigError(
            f"config file '{path}' cannot be read ({err.strerror or err}): give a readable .toml file."
        ) from None
    cfg = from_dict(raw, source=str(path))
    apply_overrides(cfg, overrides)
    return validate(cfg)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def dump_toml(sections: dict[str, dict[str, Any]], header: str = "") -> str:
    """TOML text for a section -> key -> scalar mapping (the only shape a config has)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for section, values in sections.items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def preset_description(name: str) -> str:
    """The first comment line of a preset file: what it reproduces."""
    for line in preset_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
