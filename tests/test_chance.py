"""Chance level: what a random ranking scores under the evaluation protocol, exact, against an enumeration of
every ranking; and ``hhcl eval`` saying so when a model does no better."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hhcl.config import load_config
from hhcl.data import prepare_synthetic
from hhcl.evaluation.metrics import chance_metrics, rank_metrics
from hhcl.models import build_model
from hhcl.weight_files import save_weights
from hhcl_tui.cli import app

# two queries; gallery: query 0's person (pid 1) twice from camera 2, once from its own camera 1 (left out),
# query 1's person (pid 2) once from camera 1, and two other people
Q_PIDS, Q_CAMS = np.array([1, 2]), np.array([1, 2])
G_PIDS, G_CAMS = np.array([1, 1, 1, 2, 3, 4]), np.array([2, 2, 1, 1, 1, 2])


def enumerated() -> tuple[float, dict[int, float]]:
    """The mean of rank_metrics over every ordering of the gallery (6! rankings): the exact chance level."""
    maps, cmc = [], {1: [], 2: [], 3: []}
    for perm in itertools.permutations(range(len(G_PIDS))):
        dist = np.tile(np.array(perm, dtype=np.float64), (2, 1))  # gallery item j at position perm[j]
        m = rank_metrics(dist, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ranks=(1, 2, 3))
        maps.append(m["mAP"])
        for k in cmc:
            cmc[k].append(m["ranks"][k])
    return float(np.mean(maps)), {k: float(np.mean(v)) for k, v in cmc.items()}


def test_chance_is_the_mean_over_every_ranking():
    exact_map, exact_cmc = enumerated()
    got = chance_metrics(Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ranks=(1, 2, 3), draws=4)
    assert got["mAP"] == pytest.approx(exact_map, abs=1e-12)
    for k, v in exact_cmc.items():
        assert got["ranks"][k] == pytest.approx(v, abs=1e-12)
    # by hand, query 1 (one true match among 6 ranked items): H_6 / 6; query 0 (2 among 5): its formula
    h5, h6 = sum(1 / i for i in range(1, 6)), sum(1 / i for i in range(1, 7))
    assert got["mAP"] == pytest.approx((h5 / 5 + (5 - h5) / 20 + h6 / 6) / 2, abs=1e-12)


def test_the_spread_matches_random_rankings():
    rng = np.random.default_rng(0)
    gp, gc = rng.integers(0, 30, 300), rng.integers(0, 4, 300)
    qp, qc = rng.integers(0, 30, 60), rng.integers(0, 4, 60)
    got = chance_metrics(qp, gp, qc, gc, draws=40, seed=1)
    draws = [rank_metrics(torch.rand(60, 300, generator=torch.Generator().manual_seed(100 + i)), qp, gp, qc, gc)["mAP"]
             for i in range(40)]
    assert np.mean(draws) == pytest.approx(got["mAP"], abs=4 * got["mAP_sd"] / np.sqrt(40))
    assert got["mAP_sd"] == pytest.approx(np.std(draws, ddof=1), rel=0.5)


def test_hhcl_eval_prints_chance_and_says_when_a_model_is_no_better(tmp_path):
    """Before, `hhcl eval` printed a model's mAP with nothing to read it against (2.8 where chance is 2.7 went
    unnoticed). Now: the chance row, the JSON's chance, and a verdict line for a model no better than chance, here
    one whose weights are all zero (every gallery item ties; the ranking is the gallery's order), and none for a
    randomly initialised ResNet-18, which colour alone lifts far above chance on synthetic people."""
    root = tmp_path / "data"
    prepare_synthetic(root, ids=40, cams=2, seed=0, height=64, width=32, progress=False)
    cfg = load_config("demo", [f"data.root={root}"])
    shown = {}
    for kind in ("zero", "random"):
        run = tmp_path / kind
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.toml").write_text(cfg.to_toml())
        torch.manual_seed(0)
        model = build_model("resnet18", "avg", "none")
        if kind == "zero":
            for p in model.parameters():
                p.data.zero_()
        save_weights(model, run / "checkpoints" / "best.safetensors", {"config": cfg.to_toml()})
        out = tmp_path / f"{kind}.json"
        result = CliRunner().invoke(app, ["eval", str(run), "--device", "cpu", "--json", str(out)])
        assert result.exit_code == 0, result.output
        shown[kind] = (json.loads(out.read_text()), " ".join(result.output.split()))
    (zero, zero_text), (rand, rand_text) = shown["zero"], shown["random"]
    assert zero["chance"] == rand["chance"]  # the same query/gallery: the same chance level
    assert 0 < zero["chance"]["mAP"] < 0.2 and zero["chance"]["mAP_sd"] > 0
    assert "a random ranking (chance)" in zero_text and "a random ranking (chance)" in rand_text
    assert zero["beats_chance"] is False and "no better than chance" in zero_text
    assert f"{100 * zero['chance']['mAP']:.1f} +- {100 * zero['chance']['mAP_sd']:.1f}" in zero_text
    assert rand["beats_chance"] is True and "no better than chance" not in rand_text
