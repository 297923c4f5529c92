"""Each epoch's pseudo labels are kept in the run directory; `hhcl clusters` draws them from the original images,
and the `cluster` event carries their quality against the train identities (never used in training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.tiny_run import TINY
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from typer.testing import CliRunner

from hhcl.cluster_sheets import GAP, LABEL_W
from hhcl.config import load_config
from hhcl.data import build_dataset
from hhcl.engine import Trainer
from hhcl.run.events import read_raw_events
from hhcl_tui.cli import app


@pytest.fixture(scope="module")
def run_dir(synth_root, tmp_path_factory) -> Path:
    cfg = load_config("demo", [f"data.root={synth_root}", *TINY, "model.bn_group=8", "train.eval_every=2"])
    run = tmp_path_factory.mktemp("clusters") / "run"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml())
    assert Trainer(cfg, run, preset="demo").fit().status == "ok"
    return run


def _singletons(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[out < 0] = labels.max() + 1 + np.arange((labels < 0).sum())
    return out


def test_labels_kept_per_epoch_match_the_cluster_events_and_quality(run_dir, synth_root):
    train = build_dataset("synthetic", synth_root).train
    index = (run_dir / "labels" / "train.tsv").read_text().splitlines()
    assert index[0] == "path\tpid\tcamid" and len(index) - 1 == len(train)
    assert [row.split("\t")[0] for row in index[1:]] == [str(Path(s.path).relative_to(synth_root)) for s in train]
    pids = np.array([s.pid for s in train])
    events = [e for e in read_raw_events(run_dir / "events.jsonl") if e["type"] == "cluster"]
    assert len(events) == 2
    for ev in events:
        labels = np.load(run_dir / "labels" / f"epoch_{ev['epoch'] + 1:03d}.npy")
        assert labels.dtype == np.int32 and len(labels) == len(train)
        assert ev["n_clusters"] == len(np.unique(labels[labels >= 0])) and ev["n_outliers"] == int((labels < 0).sum())
        assert ev["quality"]["ari"] == pytest.approx(adjusted_rand_score(pids, _singletons(labels)), abs=1e-5)
        assert ev["quality"]["nmi"] == pytest.approx(normalized_mutual_info_score(pids, _singletons(labels)), abs=1e-5)


def test_clusters_command_draws_original_images_largest_first(run_dir, tmp_path):
    out = tmp_path / "sheets"
    result = CliRunner().invoke(app, ["clusters", str(run_dir), "--out", str(out), "--per-cluster", "5"])
    assert result.exit_code == 0, result.output
    assert "epoch 2:" in result.output and "ARI" in result.output
    labels = np.load(run_dir / "labels" / "epoch_002.npy")
    summary = json.loads((out / "clusters.json").read_text())
    sizes = np.bincount(labels[labels >= 0])
    assert [c["size"] for c in summary["clusters"]] == sorted(sizes[sizes > 0].tolist(), reverse=True)[: len(summary["clusters"])]
    assert (out / "sizes.png").is_file() and (out / "clusters_01.png").is_file()
    # the first image of the largest cluster is pasted pixel for pixel, at its own resolution
    first = summary["clusters"][0]["shown"][0]
    original = np.asarray(Image.open(first).convert("RGB"))
    sheet = np.asarray(Image.open(out / "clusters_01.png").convert("RGB"))
    top = 24 + 1 + GAP  # sheet title, separator line, row padding
    h, w = original.shape[:2]
    assert np.array_equal(sheet[top : top + h, LABEL_W : LABEL_W + w], original)


def test_clusters_command_errors_name_what_exists(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["clusters", str(run_dir), "--out", str(tmp_path / "x"), "--epoch", "9"])
    assert result.exit_code == 2 and "epochs kept: 1, 2" in result.output
    result = runner.invoke(app, ["clusters", str(tmp_path), "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = runner.invoke(app, ["clusters", str(run_dir), "--out", str(tmp_path / "z"), "--root", str(tmp_path)])
    assert result.exit_code == 2 and "pass --root" in result.output


def test_camera_label_under_a_tiny_crop_keeps_the_camera_number():
    """Under an image narrower than its camera's name, the sheet shows the number (``2``), not ``cam`` (which
    every camera would read under CAVIAR4REID's 16-30 px wide crops); a number is never cut into another one."""
    from hhcl.cluster_sheets import _font, camera_label

    font = _font()
    assert camera_label("cam 2", 200, font) == "cam 2"
    assert camera_label("cam 2", 18, font) == "2"
    assert camera_label("cam 12", 4, font) == "12"
    short = camera_label("entrance", 20, font)
    assert "entrance".startswith(short) and font.getlength(short) <= 20
