"""benchmarks/camera_aware.py's reading of event logs, its tables and its RESULTS.md block, on hand-written
events.jsonl files (no training)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import camera_aware as bench  # noqa: E402


def _write_log(run_dir: Path, events: list[dict], torn_tail: str = "") -> Path:
    run_dir.mkdir(parents=True)
    lines = [json.dumps({"v": 1, "t": 1.0 + i, **e}) for i, e in enumerate(events)]
    (run_dir / "events.jsonl").write_text("\n".join(lines) + "\n" + torn_tail)
    return run_dir


def _cluster(epoch, ari, n):
    return {"type": "cluster", "epoch": epoch, "n_clusters": n, "n_outliers": 3,
            "quality": {"ari": ari, "nmi": 0.5, "precision": 0.5, "recall": 0.5}}


def _eval(epoch, mAP, r1):
    return {"type": "eval", "epoch": epoch, "mAP": mAP, "cmc": [r1, 0.9, 0.95], "best": mAP, "is_best": True}


@pytest.fixture
def two_runs(tmp_path):
    hhcl = _write_log(tmp_path / "hhcl", [
        {"type": "run_start", "run": "hhcl", "epochs": 3, "iters": 2},
        _cluster(0, 0.10, 12), {"type": "step", "epoch": 0, "iter": 1, "loss": 2.0},
        _eval(0, 0.20, 0.25),
        _cluster(1, 0.30, 20), _eval(1, 0.35, 0.40),
        _cluster(2, 0.45, 25), _eval(2, 0.30, 0.38),
        {"type": "run_end", "status": "ok", "best_mAP": 0.35, "best_epoch": 1, "elapsed": 150.0},
    ], torn_tail='{"v": 1, "type": "eval", "epoch": 3, "mAP": 0.9')  # a torn last line: never read
    combo = _write_log(tmp_path / "combo", [
        _cluster(0, 0.10, 12), _eval(0, 0.22, 0.30),
        _cluster(1, None, 15),  # no identities for quality: ARI unknown
        _eval(1, 0.10, 0.12), _eval(1, 0.28, 0.33),  # the later eval of an epoch wins (a resumed run)
        {"type": "run_end", "status": "interrupted", "elapsed": 90.0, "message": "stopped"},
    ])
    return bench.read_curve(hhcl), bench.read_curve(combo)


def test_read_curve_takes_per_epoch_map_r1_ari_and_the_ending(two_runs):
    hhcl, combo = two_runs
    assert hhcl.mAP == {0: 0.20, 1: 0.35, 2: 0.30}
    assert hhcl.r1 == {0: 0.25, 1: 0.40, 2: 0.38}
    assert hhcl.ari == {0: 0.10, 1: 0.30, 2: 0.45}
    assert hhcl.clusters == {0: 12, 1: 20, 2: 25}
    assert (hhcl.status, hhcl.elapsed) == ("ok", 150.0)
    assert combo.mAP == {0: 0.22, 1: 0.28} and combo.ari == {0: 0.10, 1: None}
    assert (combo.status, combo.elapsed) == ("interrupted", 90.0)


def test_epoch_table_rows_are_1_based_with_the_untrained_row_first(two_runs):
    hhcl, combo = two_runs
    table = bench.epoch_table({"hhcl": hhcl, "combo": combo}, untrained_mAP=0.125)
    rows = table.splitlines()
    assert rows[0] == ("| epoch | HHCL (CMhybrid) mAP | HHCL (CMhybrid) ARI | HHCL + camera-aware mAP "
                       "| HHCL + camera-aware ARI |")
    assert rows[2] == "| 0 (untrained) | 12.5 | - | 12.5 | - |"
    assert rows[3] == "| 1 | 20.0 | 0.100 | 22.0 | 0.100 |"
    assert rows[4] == "| 2 | 35.0 | 0.300 | 28.0 | - |"
    assert rows[5] == "| 3 | 30.0 | 0.450 | - | - |"  # combo stopped after 2 epochs
    assert len(rows) == 6


def test_final_table_takes_the_last_epoch_the_best_one_and_the_lift(two_runs):
    hhcl, combo = two_runs
    rows = bench.final_table({"hhcl": hhcl, "combo": combo}, untrained_mAP=0.125).splitlines()
    # last epoch 3: mAP 30.0, R1 38.0; best 35.0 at epoch 2; lift 30.0 - 12.5; ARI 0.450; 25 clusters; 2.5 min
    assert rows[2] == "| HHCL (CMhybrid) | 30.0 | 38.0 | 35.0 (2) | +17.5 | 0.450 | 25 | ok | 2.5 |"
    assert rows[3] == "| HHCL + camera-aware | 28.0 | 33.0 | 28.0 (2) | +15.5 | - | 15 | interrupted | 1.5 |"


def test_an_empty_log_gives_dashes_not_a_crash(tmp_path):
    curve = bench.read_curve(_write_log(tmp_path / "o2cap", [{"type": "run_start", "run": "x"}]))
    rows = bench.final_table({"o2cap": curve}, untrained_mAP=None).splitlines()
    assert rows[2] == "| O2CAP | - | - | - | - | - | - | no run_end | - |"


def test_replace_block_swaps_only_the_marked_block():
    text = f"# R\n\n## Camera-aware proxies\n\n{bench.BEGIN}\nold\n{bench.END}\n\n## Next\nkeep\n"
    out = bench.replace_block(text, f"{bench.BEGIN}\nnew\n{bench.END}")
    assert out == f"# R\n\n## Camera-aware proxies\n\n{bench.BEGIN}\nnew\n{bench.END}\n\n## Next\nkeep\n"
    with pytest.raises(ValueError, match="exactly one block"):
        bench.replace_block("no markers here", "x")
    with pytest.raises(ValueError, match="found 2"):
        bench.replace_block(text + text, "x")


def test_results_md_has_exactly_one_camera_aware_block():
    text = bench.RESULTS.read_text()
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    assert text.index("## Camera-aware proxies") < text.index(bench.BEGIN) < text.index(bench.END)


def test_modes_parse_and_bad_ones_name_the_option():
    assert bench.parse_modes("hhcl, combo") == ["hhcl", "combo"]
    for bad in ("hhcl,cap", "", "hhcl,hhcl"):
        with pytest.raises(argparse.ArgumentTypeError, match="--modes"):
            bench.parse_modes(bad)


def test_each_method_is_the_demo_budget_plus_its_memory_overrides(tmp_path, monkeypatch):
    import hhcl.config

    (tmp_path / "demo.toml").write_text(
        '[data]\nbatch_size = 64\n[memory]\nmode = "CMhybrid"\ntemp = 0.05\n[train]\nepochs = 14\n'
    )
    monkeypatch.setattr(hhcl.config, "PRESETS_DIR", tmp_path)
    assert bench.method_overrides("hhcl") == []
    assert bench.method_overrides("combo") == ["memory.camera_aware=true"]
    with pytest.raises(SystemExit, match="needs the preset 'o2cap-market'"):
        bench.method_overrides("o2cap")
    (tmp_path / "o2cap-market.toml").write_text(
        '[data]\nbatch_size = 32\nsampler = "camera"\n[memory]\nmode = "O2CAP"\ntemp = 0.07\n'
        "camera_aware = false\n[train]\nepochs = 50\n"
    )
    # the whole [memory] section, plus keys the demo preset lacks; the budget (batch, epochs) stays the demo's
    assert bench.method_overrides("o2cap") == [
        "data.sampler=camera", "memory.mode=O2CAP", "memory.temp=0.07", "memory.camera_aware=false"
    ]


def test_a_mode_the_config_rejects_stops_with_the_configs_message():
    with pytest.raises(SystemExit, match=r"--modes combo: this checkout cannot run it .*memory\.mode"):
        bench.configs(["combo"], ["memory.mode=NOPE"])


def test_bias_list_parsing():
    assert bench.parse_biases("0.25,0") == [0.25, 0.0]
    assert bench.parse_biases("1") == [1.0]
    for bad in ("0.25,x", "0.5,0.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="--bias"):
            bench.parse_biases(bad)
