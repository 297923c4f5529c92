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


def test_the_grid_range_file_and_the_demo_placement():
    """demo_range's median/range by hand, then `hhcl demo`'s line for a figure inside, outside, and under other
    conditions (each condition that differs named), and without a range file."""
    from hhcl.demo import placement

    mod = figures_module()
    runs = [fake("AVX512", 2, 1, 0.500), fake("AVX2", 1, 2, 0.530), fake("AVX512", 1, 3, 0.515)]
    measured = mod.demo_range(runs, "2026-12-02", "abc1234")
    assert (measured["median"], measured["low"], measured["high"]) == (51.5, 50.0, 53.0)
    env = {"torch": "2.x", "machine": "x86_64", "cpu_capability": "AVX512", "threads": 2, "seed": 1}
    inside, text = placement(52.04, env, measured)
    assert inside is True and text.startswith("HHCL mAP 52.0 is inside the measured range 50.0 to 53.0 (median 51.5")
    assert "3 runs: AVX2/AVX512 kernels x 1/2 threads x seeds 1/2/3" in text and "differs" not in text
    assert placement(53.04, env, measured)[0] is True  # printed as 53.0: inside as shown
    outside, text = placement(47.0, {**env, "torch": "2.15", "cpu_capability": "NEON", "seed": 7}, measured)
    assert outside is False and "is OUTSIDE the measured range" in text
    assert text.endswith("differs from those in torch 2.15, NEON kernels, seed 7, so its figure may differ too")
    assert placement(50.0, env, None) == (None, placement(50.0, env, None)[1])
    assert "no measured range ships" in placement(50.0, env, None)[1]


def test_a_partial_grid_says_so_and_judges_nothing(tmp_path, monkeypatch):
    """--only-kept: the runs kept so far, each with its commit; the block names the share of the grid and gives no
    verdict; a kept run is read back, never re-run."""
    mod = figures_module()
    runs = [fake("AVX512", 2, 1, 0.500) | {"commit": "aaa1111"}, fake("AVX512", 2, 2, 0.580) | {"commit": "bbb2222"}]
    text = mod.grid_block(runs, "2026-12-03", "ccc3333", total=12)
    assert "at commits `aaa1111`, `bbb2222`" in text and "**partial: 2 of the grid's 12 runs**" in text
    assert "spread 8.0 points; the target, <= 3 over all 12, is judged when the grid is whole" in text
    assert "NOT met" not in text and "--grid --only-kept" in text
    kept = mod.kept_path((None, 2, 1), tmp_path)
    kept.write_text('{"trained": {"mAP": 0.5}}')
    monkeypatch.setattr(mod, "run_once", lambda *a: (_ for _ in ()).throw(AssertionError("re-ran a kept run")))
    assert mod.run_kept((None, 2, 1), tmp_path) == {"trained": {"mAP": 0.5}}
