"""``examples/own_cameras.py --quick``: the real-image walk-through (README "Your own camera crops") runs end to end.

It trains two tiny models and runs seven ``hhcl`` commands on the real images of ../shared/data, which users do
not have: the test skips without them. It took 99 s on the 2-core CPU at load average 3 (2 min at load 6),
so it is opt-in: ``pytest -m slow tests/test_example_own_cameras.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "own_cameras.py"
SHARED = REPO.parent / "shared" / "data"
NEEDED = ("prid2011", "ilids", "viper/VIPeR", "caviar4reid")


def shared_data() -> Path:
    """The shared real images, or a skip naming what is missing (users do not have them)."""
    missing = [d for d in NEEDED if not (SHARED / d).is_dir()]
    if missing:
        pytest.skip(f"the walk-through needs the shared real images: {', '.join(missing)} not found under {SHARED}")
    return SHARED


@pytest.mark.slow
def test_quick_walk_through_runs_end_to_end(tmp_path: Path) -> None:
    shared = shared_data()
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--shared", str(shared), "--work", str(work)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    # every step shows the command a user would type
    for command in ("hhcl prepare folder", "hhcl train", "hhcl eval", "hhcl clusters", "hhcl search"):
        assert f"$ {command}" in out
    # one ARI / NMI row per epoch of the adaptation (--quick: 2 epochs)
    epochs = re.findall(r"^\| (\d+) \| \d+ \| \d+ \| \d+ / 620 \| [\d.]+ \| (-?[\d.]+) \| ([\d.]+) \|", out, re.MULTILINE)
    assert [e for e, _, _ in epochs] == ["1", "2"], out[-3000:]
    for _, ari, nmi in epochs:
        assert -1 <= float(ari) <= 1 and 0 <= float(nmi) <= 1
    # the before/after table
    assert re.search(r"^\| before: source model \| [\d.]+ \| [\d.]+ \|", out, re.MULTILINE)
    assert re.search(r"^\| after: HHCL, 2 epochs \(last\) \| [\d.]+ \| [\d.]+ \|", out, re.MULTILINE)
    # what the commands left behind, and nothing copied: the dataset folders hold links to the shared images
    assert (work / "sheets" / "clusters.json").is_file() and (work / "search" / "results.json").is_file()
    crops = [p for p in (work / "crops").rglob("*.jpg") if ".hhcl-search" not in p.parts]
    assert len(crops) == 1220 and all(p.is_symlink() for p in crops)


def test_script_refuses_a_missing_shared_folder(tmp_path: Path) -> None:
    """Without the shared images the script stops at once, saying what it lacks (no training starts)."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--shared", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "lacks prid2011, ilids, viper/VIPeR, caviar4reid" in proc.stderr
