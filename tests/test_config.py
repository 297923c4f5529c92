"""Config loading, overrides and validation; every paper-critical preset value pinned by hand."""

from __future__ import annotations

import os

import pytest

from hhcl.config import ConfigError, all_keys, load_config, preset_names, validate

PAPER = {  # hhcl-reference.md sections 0 and 9, written out by hand
    "data.batch_size": 256,
    "data.num_instances": 16,
    "data.height": 256,
    "data.width": 128,
    "model.pooling": "avg",
    "model.pretrained": "imagenet",
    "model.num_features": 0,
    "model.dropout": 0.0,
    "model.bn_group": 64,
    "cluster.k1": 30,
    "cluster.k2": 6,
    "cluster.min_samples": 4,
    "memory.mode": "CMhybrid",
    "memory.temp": 0.05,
    "memory.momentum": 0.1,
    "memory.hard_weight": 0.5,
    "memory.smooth": 0.0,
    "memory.loss_form": "reference",
    "optim.lr": 3.5e-4,
    "optim.weight_decay": 5e-4,
    "optim.step_size": 20,
    "optim.gamma": 0.1,
    "train.epochs": 60,
    "train.seed": 1,
    "train.eval_every": 10,
    "train.amp": "off",
    "train.tf32": False,
    "train.channels_last": False,
    "train.compile": False,
    "train.supervised": False,
    "eval.rerank": False,
    "eval.flip": False,
}
PER_PRESET = {
    "market": {"data.dataset": "market1501", "cluster.eps": 0.45, "train.iters": 200, "model.arch": "resnet50"},
    "duke": {"data.dataset": "dukemtmcreid", "cluster.eps": 0.6, "train.iters": 200, "model.arch": "resnet50"},
    "msmt17": {"data.dataset": "msmt17", "cluster.eps": 0.7, "train.iters": 300, "model.arch": "resnet50"},
    "market-ibn": {"data.dataset": "market1501", "cluster.eps": 0.45, "train.iters": 200,
                   "model.arch": "resnet50_ibn_a", "model.pooling": "gem"},
    "duke-ibn": {"data.dataset": "dukemtmcreid", "cluster.eps": 0.6, "train.iters": 200,
                 "model.arch": "resnet50_ibn_a", "model.pooling": "gem"},
}


def test_twelve_presets_ship_inside_the_package():
    assert preset_names() == [
        "cc-infomap-market", "cc-infomap-msmt17", "demo", "duke", "duke-ibn", "folder-cpu", "market", "market-ibn",
        "msmt17", "o2cap-duke", "o2cap-market", "o2cap-msmt17",
    ]


@pytest.mark.parametrize("name", sorted(PER_PRESET))
def test_paper_presets_pin_every_critical_value(name):
    cfg = load_config(name)
    expected = {**PAPER, **PER_PRESET[name]}
    for key, value in expected.items():
        assert cfg.get(key) == value, f"{name}: {key}"


@pytest.mark.parametrize(
    "name", ["cc-infomap-market", "cc-infomap-msmt17", "demo", "duke", "duke-ibn", "folder-cpu", "market", "market-ibn",
             "msmt17"]
)
def test_presets_are_complete_and_round_trip(name, tmp_path):
    import tomllib

    from hhcl.config import preset_path

    raw = tomllib.loads(preset_path(name).read_text())
    written = {f"{s}.{k}" for s, keys in raw.items() for k in keys}
    assert written == set(all_keys())
    cfg = load_config(name)
    path = tmp_path / "again.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg


def test_demo_preset_is_cpu_sized():
    cfg = load_config("demo")
    assert cfg.data.dataset == "synthetic"
    assert cfg.model.arch == "resnet18" and cfg.model.pretrained == "none"
    assert cfg.data.height * cfg.data.width <= 128 * 64


def test_folder_cpu_preset_fits_a_few_hundred_crops_on_a_cpu():
    """The own-crops starting point: a folder dataset, a CPU-sized model and image, eps from the data, and a batch
    of 32 that 8 clusters fill (4 images each), half the images per step of the demo's 8 x 8."""
    from hhcl.data.sampler import clusters_needed

    cfg = load_config("folder-cpu")
    assert cfg.data.dataset == "folder" and cfg.cluster.eps == "auto"
    assert cfg.model.arch == "resnet18" and cfg.data.height * cfg.data.width <= 128 * 64
    assert clusters_needed(cfg.data.batch_size, cfg.data.num_instances) == 8
    assert cfg.model.bn_group == 0 or cfg.data.batch_size % cfg.model.bn_group == 0


def test_overrides_are_typed():
    cfg = load_config(
        "market",
        ["optim.lr=0.0001", "train.epochs=40", "eval.flip=yes", "data.root=/tmp/x", "cluster.eps=1e-1", "train.amp=bf16"],
    )
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 40 and isinstance(cfg.train.epochs, int)
    assert cfg.eval.flip is True
    assert cfg.data.root == "/tmp/x"
    assert cfg.cluster.eps == pytest.approx(0.1)
    assert cfg.train.amp == "bf16"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("optim.lrr=1", ["optim.lrr", "optim.lr"]),
        ("eps=0.5", ["eps", "cluster.eps"]),
        ("clster.eps=0.5", ["clster", "cluster"]),
        ("cluster.eps=0", ["cluster.eps", "0.0", "(0, 1)"]),
        ("cluster.eps=-0.2", ["cluster.eps", "(0, 1)"]),
        ("cluster.eps=abc", ["cluster.eps", "'abc'", "number"]),
        ("data.batch_size=250", ["data.batch_size", "250", "multiple of data.num_instances"]),
        ("train.epochs=2.5", ["train.epochs", "2.5", "int"]),
        ("eval.flip=maybe", ["eval.flip", "maybe", "true or false"]),
        ("model.arch=resnet51", ["model.arch", "resnet51", "resnet50"]),
        ("memory.mode=CMhybird", ["memory.mode", "CMhybird", "CMhybrid"]),
        ("model.bn_group=48", ["model.bn_group", "48", "divide"]),
        ("optim.lr", ["optim.lr", "section.key=value"]),
    ],
)
def test_bad_values_name_the_key_value_and_what_is_allowed(override, fragments):
    with pytest.raises(ConfigError) as err:
        load_config("market", [override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_toml_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[cluster]\nepss = 0.5\n')
    with pytest.raises(ConfigError, match=r"mine\.toml.*cluster\.epss.*cluster\.eps"):
        load_config(path)
    path.write_text('[clusters]\neps = 0.5\n')
    with pytest.raises(ConfigError, match=r"\[clusters\]"):
        load_config(path)
    path.write_text('[cluster]\neps = "0.5"\n')
    with pytest.raises(ConfigError, match="cluster.eps"):
        load_config(path)
    path.write_text("[cluster\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_partial_file_takes_defaults(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text('[cluster]\neps = 0.5\n[data]\ndataset = "viper"\n')
    cfg = load_config(path)
    assert cfg.cluster.eps == 0.5 and cfg.data.dataset == "viper" and cfg.cluster.k1 == 30


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown preset 'markt'.*market"):
        load_config("markt")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere/x.toml")


def test_validate_catches_direct_edits():
    cfg = load_config("market")
    cfg.memory.temp = 0.0
    with pytest.raises(ConfigError, match="memory.temp"):
        validate(cfg)


@pytest.mark.parametrize(
    ("override", "key", "shown"),
    [
        ("optim.lr=inf", "optim.lr", "inf"),
        ("optim.lr=nan", "optim.lr", "nan"),
        ("optim.lr=1e400", "optim.lr", "inf"),  # beyond the largest double: reads as inf
        ("optim.weight_decay=inf", "optim.weight_decay", "inf"),
        ("optim.gamma=-inf", "optim.gamma", "-inf"),
        ("memory.temp=nan", "memory.temp", "nan"),
        ("memory.temp=inf", "memory.temp", "inf"),
        ("memory.hard_weight=nan", "memory.hard_weight", "nan"),
        ("cluster.eps=nan", "cluster.eps", "nan"),
        ("model.dropout=nan", "model.dropout", "nan"),
    ],
)
def test_non_finite_floats_are_refused(override, key, shown):
    with pytest.raises(ConfigError) as err:
        load_config("market", [override])
    assert f"{key} = {shown} is not allowed: must be a finite number" in str(err.value)


def test_non_finite_floats_in_a_file_or_a_direct_edit_are_refused(tmp_path):
    path = tmp_path / "inf.toml"
    path.write_text("[optim]\nweight_decay = inf\n")  # TOML's own inf literal
    with pytest.raises(ConfigError, match="optim.weight_decay = inf"):
        load_config(path)
    cfg = load_config("market")
    cfg.memory.momentum = float("nan")
    with pytest.raises(ConfigError, match="memory.momentum = nan"):
        validate(cfg)


def test_a_directory_named_like_a_config_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "x.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match=rf"config file '{folder}' cannot be read \(Is a directory\)"):
        load_config(folder)


def test_a_config_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[data]\nroot = "/données"\n'.encode("latin-1"))  # é is byte 20
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: not UTF-8 text (byte 20 is b'\\xe9')")
    assert "save the config file as UTF-8" in str(err.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_config_is_an_error_naming_it(tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text("[cluster]\neps = 0.5\n")
    path.chmod(0)
    try:
        with pytest.raises(ConfigError, match=rf"config file '{path}' cannot be read \(Permission denied\)"):
            load_config(path)
    finally:
        path.chmod(0o600)


@pytest.mark.parametrize(
    ("override", "shown"),
    [  # the cases, with the tops written out by hand
        ("data.height=6400000", "data.height = 6400000 is not allowed: must be between 32 and 4096"),
        ("data.width=4112", "data.width = 4112 is not allowed: must be between 32 and 4096"),
        ("train.seed=99999999999999999999", "train.seed = 99999999999999999999 is not allowed: must be between 0 and 4294967295"),
        ("train.seed=-1", "train.seed = -1 is not allowed: must be between 0 and 4294967295"),
        ("model.num_features=1000000000", "model.num_features = 1000000000 is not allowed: must be between 0 and 16384"),
        ("data.batch_size=1048576", "data.batch_size = 1048576 is not allowed: must be between 2 and 16384"),
        ("cluster.k1=1000000", "cluster.k1 = 1000000 is not allowed: must be between 2 and 1000"),
        ("train.iters=1000000000", "train.iters = 1000000000 is not allowed: must be between 1 and 100000"),
    ],
)
def test_sizes_beyond_their_bound_are_refused_naming_the_range(override, shown):
    with pytest.raises(ConfigError) as err:
        load_config("market", [override])
    assert str(err.value).startswith(shown)


def test_every_integer_key_has_a_bound_refused_on_both_sides_and_its_top_is_accepted():
    from hhcl.config import DEFAULT, INT_BOUNDS

    ints = {key for key in all_keys() if type(DEFAULT.get(key)) is int}  # bools aside
    assert set(INT_BOUNDS) == ints
    for key, (low, high, _) in INT_BOUNDS.items():
        for bad in (low - 1, high + 1):
            with pytest.raises(ConfigError, match=rf"^{key} = {bad} is not allowed: must be between {low} and {high} \("):
                load_config("market", [f"{key}={bad}"])
    tops = ["data.height=4096", "data.width=4096", "train.seed=4294967295", "model.num_features=16384", "train.epochs=10000"]
    cfg = load_config("market", tops)
    assert (cfg.data.height, cfg.train.seed, cfg.model.num_features) == (4096, 2**32 - 1, 16384)


def test_every_key_states_its_meaning_and_each_choice_key_refuses_what_its_info_does_not_list():
    from hhcl.config import CHOICES, RESUMABLE_KEYS, key_info

    for key in all_keys():
        assert len(key_info(key).help) > 10, f"{key} has no help text"
    assert set(RESUMABLE_KEYS) == {"data.root", "data.workers", "train.epochs", "train.eval_every", "train.device",
                                   "train.tensorboard"}  # nothing that changes what a run computes
    for key, allowed in CHOICES.items():
        for value in allowed:
            load_config("market", [f"{key}={value}"] + (["memory.camera_aware=false"] if key == "memory.mode" else []))
        with pytest.raises(ConfigError, match=rf"^{key} = 'nope' is not allowed: use one of {', '.join(allowed)}"):
            load_config("market", [f"{key}=nope"])
    with pytest.raises(ConfigError, match="unknown config key 'cluster.epss'. Did you mean 'cluster.eps'"):
        key_info("cluster.epss")


@pytest.mark.parametrize(("name", "dataset", "iters"), [("cc-infomap-market", "market1501", 200),
                                                       ("cc-infomap-msmt17", "msmt17", 400)])
def test_cluster_contrast_infomap_presets_pin_run_code_sh(name, dataset, iters):
    """run_code.sh: -b 256 --iters N --momentum 0.1 --eps 0.5 --k1 15 --k2 4 --num-instances 16, and the script's
    defaults (GeM, 50 epochs, step 20, temp 0.05, lr 3.5e-4, the plain cluster memory)."""
    cfg = load_config(name)
    expected = {
        "data.dataset": dataset, "train.iters": iters, "data.batch_size": 256, "data.num_instances": 16,
        "cluster.method": "infomap", "cluster.infomap_min_sim": 0.5, "cluster.infomap_k": 15,
        "cluster.infomap_min_size": 5, "memory.mode": "CM", "memory.momentum": 0.1, "memory.temp": 0.05,
        "model.pooling": "gem", "model.arch": "resnet50", "train.epochs": 50, "optim.step_size": 20,
        "optim.lr": 3.5e-4, "optim.weight_decay": 5e-4, "train.eval_every": 10, "model.bn_group": 64,
    }
    assert {key: cfg.get(key) for key in expected} == expected


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_infomap_min_sim_is_a_similarity_below_one(value):
    with pytest.raises(ConfigError, match=rf"cluster.infomap_min_sim = {float(value)!r} is not allowed: must be in \[0, 1\)"):
        load_config("market", [f"cluster.infomap_min_sim={value}"])
    assert load_config("market", ["cluster.infomap_min_sim=0"]).cluster.infomap_min_sim == 0.0
