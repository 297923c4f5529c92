"""The demo's figure across conditions: ``hhcl demo --seed``, and ``benchmarks/demo_figures.py --grid``'s runs and
its summary (median, range, the 3-point target), checked against hand-computed values on made-up results."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from typer.testing import CliRunner

from hhcl.data.datasets import read_manifest
from hhcl.demo import run_demo
from hhcl_tui.cli import app

FIGURES = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_figures.py"


def figures_module():
    spec = importlib.util.spec_from_file_location("demo_figures", FIGURES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_grid_is_isa_by_threads_by_seeds():
    grid = figures_module().grid()
    assert len(grid) == 12 and len(set(grid)) == 12
    assert {isa for isa, _, _ in grid} == {None, "avx2"} and {t for _, t, _ in grid} == {1, 2}
    assert {s for _, _, s in grid} == {1, 2, 3}


def fake(isa: str, threads: int, seed: int, m: float) -> dict:
    numerics = {"cpu_capability": isa, "threads": threads, "seed": seed, "machine": "x86_64", "blas": "MKL",
                "torch": "2.x"}
    return {"numerics": numerics, "untrained": {"mAP": 0.184, "R1": 0.228}, "trained": {"mAP": m, "R1": 0.5},
            "wall_seconds": 61.0}


def test_the_grid_block_gives_the_median_range_and_verdict():
    mod = figures_module()
    runs = [fake("AVX512", 2, 1, 0.289), fake("AVX2", 2, 1, 0.470), fake("AVX512", 1, 2, 0.440)]
    text = mod.grid_block(runs, "2026-12-02", "abc1234")
    # by hand: 28.9, 44.0, 47.0 -> median 44.0, spread 18.1
    assert "median **44.0**, range 28.9 to 47.0 (spread 18.1 points; target <= 3: NOT met)" in text
    assert "| AVX512 | 2 | 1 | 18.4 / 22.8 | **28.9 / 50.0** | 1 min 01 s |" in text
    close = [fake("AVX2", 2, s, m) for s, m in ((1, 0.500), (2, 0.515), (3, 0.525))]
    assert "spread 2.5 points; target <= 3: met" in mod.grid_block(close, "2026-12-02", "abc1234")


def test_demo_seed_reaches_the_data_and_the_training(tmp_path):
    tiny = ("train.seed=2", "train.epochs=1", "train.iters=1", "data.batch_size=16", "data.num_instances=4",
            "model.bn_group=0")
    result = run_demo(tmp_path / "data", tmp_path / "runs", overrides=tiny, ids=24)
    assert result.numerics["seed"] == 2 and result.status == "ok", result.message
    assert read_manifest(tmp_path / "data", "synthetic")["options"]["seed"] == 2
    refused = CliRunner().invoke(app, ["demo", "--seed", "99999999999", "--root", str(tmp_path / "d2"),
                                       "--runs-dir", str(tmp_path / "r2"), "--json", str(tmp_path / "x.json")])
    assert refused.exit_code == 2 and "train.seed" in refused.output
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "d2").exists()
