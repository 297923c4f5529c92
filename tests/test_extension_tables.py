"""A walk over the extension tables: every clusterer (hhcl.cluster.methods.CLUSTERERS), memory (hhcl.memories.MEMORIES)
and backbone (hhcl.models.backbones.BACKBONES) trains a tiny step through the engine, checkpoints, resumes to the
same weights as an uninterrupted run, and reaches ``hhcl presets keys``, the wizard and the dashboard while no file of
the user interface names it: what a contributor adds to a table is everywhere without touching the UIs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers.hooks import StopAt
from helpers.tiny_run import TINY
from safetensors.torch import load_file
from typer.testing import CliRunner

from hhcl.cluster.methods import CLUSTERERS
from hhcl.config import CLUSTER_PARAMS, key_info, load_config
from hhcl.engine import Trainer
from hhcl.memories import MEMORIES
from hhcl.models.backbones import BACKBONES
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import read_events
from hhcl_tui.cli import app
from hhcl_tui.dashboard.state import reduce_events
from hhcl_tui.wizard import FIELDS

UI = Path(__file__).resolve().parents[1] / "hhcl_tui"
#: every entry of the three tables, as the config key that picks it and its value
ENTRIES = (
    [("cluster.method", name) for name in CLUSTERERS]
    + [("memory.mode", name) for name in MEMORIES]
    + [("model.arch", name) for name in BACKBONES]
)
DEMO = load_config("demo")
#: the backbones whose walk is opt-in (-m slow): 21-45M parameters make three tiny runs cost up to a minute each on
#: two cores, most of it writing checkpoints, while the table path they take is resnet18's (tests/test_backbones.py
#: builds, runs and recognises every one of them on every `make test`)
BIG = {name for name in BACKBONES if name != "resnet18"}


def _walks() -> list:
    """One training walk per entry; the entries the demo preset already picks (its clusterer, memory and backbone)
    walk once together, as the first."""
    default = [e for e in ENTRIES if DEMO.get(e[0]) == e[1]]
    walks = [pytest.param(default[0], id="+".join(f"{k}={v}" for k, v in default))]
    for key, value in ENTRIES:
        if DEMO.get(key) != value:
            marks = [pytest.mark.slow] if key == "model.arch" and value in BIG else []
            walks.append(pytest.param((key, value), id=f"{key}={value}", marks=marks))
    return walks
#: an entry's own settings for a seconds-long run on the tiny set (each as its table's tests run it)
OWN = {
    ("cluster.method", "infomap"): ("cluster.infomap_k=6", "cluster.infomap_min_size=3"),
    ("memory.mode", "O2CAP"): ("memory.temp=0.07", "memory.momentum=0.2", "memory.bg_knn=5", "model.bn_group=0"),
}


def _fit(root: Path, run_dir: Path, entry: tuple[str, str], **kw: object):
    key, value = entry
    if key == "cluster.method" and value == "infomap":
        pytest.importorskip("infomap")
    cfg = load_config("demo", [f"data.root={root}", *TINY, "model.bn_group=8", "model.pretrained=none",
                               "train.epochs=1", "train.iters=2", "train.eval_every=9", f"{key}={value}",
                               *OWN.get(entry, ())])
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(cfg.to_toml())
    return Trainer(cfg, run_dir, preset="demo", **kw).fit()


@pytest.mark.parametrize("entry", _walks())
def test_every_entry_trains_checkpoints_resumes_exactly_and_the_dashboard_names_it(
    synth_root: Path, tmp_path: Path, entry: tuple[str, str]
) -> None:
    straight = _fit(synth_root, tmp_path / "straight", entry)
    assert straight.status == "ok", straight.message
    stopped = _fit(synth_root, tmp_path / "stopped", entry, hooks=[StopAt(0, 0)])
    assert stopped.status == "interrupted", stopped.message
    resumed = Trainer(resume_config(tmp_path / "stopped"), tmp_path / "stopped", resume=True).fit()
    assert resumed.status == "ok", resumed.message
    a, b = (load_file(tmp_path / d / "checkpoints" / "last.safetensors") for d in ("straight", "stopped"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{entry}: the resume diverged"

    state = reduce_events(read_events(tmp_path / "stopped"))
    key, value = entry
    assert state.last_cluster is not None
    shown = {"cluster.method": state.last_cluster.method, "memory.mode": state.memory, "model.arch": state.arch}
    assert shown[key] == value
    # the clustering's own settings, by the names its table entry gives them
    assert list(state.last_cluster.params) == [p.name for p in CLUSTER_PARAMS[state.last_cluster.method]]


def test_every_entry_is_offered_by_the_wizard_and_hhcl_presets_keys() -> None:
    listing = CliRunner().invoke(app, ["presets", "keys"], env={"COLUMNS": "400"})
    assert listing.exit_code == 0, listing.output
    rows = {line.split("│")[1].strip(): line for line in listing.output.splitlines() if line.count("│") > 3}
    choices = {f.key: f.choices for f in FIELDS}
    for key, value in ENTRIES:
        assert value in choices[key], f"the wizard does not offer {key} = {value}"
        assert value in key_info(key).choices
        assert re.search(rf"\b{re.escape(value)}\b", rows[key]), f"hhcl presets keys does not list {key} = {value}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{k}={v}" for k, v in ENTRIES])
def test_no_file_of_the_interface_names_an_entry(entry: tuple[str, str]) -> None:
    literal = re.compile(rf"""["']{re.escape(entry[1])}["']""")
    naming = [str(p.relative_to(UI)) for p in UI.rglob("*.py") if literal.search(p.read_text())]
    assert naming == [], f"{entry[1]!r} is named in {naming}: the UIs must read it from the tables"
