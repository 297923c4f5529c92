"""SVG snapshots of the dashboard (its Training and Clusters tabs) and the wizard at 100x32, compared with
tests/snapshots/*.svg.

Set HHCL_UPDATE_SNAPSHOTS=1 to (re)write the stored files after a deliberate visual change; without it a
missing snapshot is a failure. Rich's per-export class prefix (``terminal-<hash>``) is normalised away.
"""

from __future__ import annotations

import difflib
import html
import os
import re
from pathlib import Path

import pytest
from test_dashboard_clusters import EPOCH_1, EPOCH_2, captions, make_run, wait_until  # the tiny labelled run
from test_dashboard_state import NOW, write_tiny_log  # the recorded log, shared
from textual_image.widget import HalfcellImage

from hhcl_tui.dashboard import clusters
from hhcl_tui.dashboard.app import DashboardApp
from hhcl_tui.wizard import WizardApp

SNAPSHOTS = Path(__file__).parent / "snapshots"
SIZE = (100, 32)

pytestmark = pytest.mark.asyncio


def normalise_svg(svg: str) -> str:
    return re.sub(r"terminal-\d+", "terminal", svg)


def svg_text(svg: str) -> list[str]:
    """The screen's text, row by row, from the SVG (for a readable failure message)."""
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in re.finditer(r'<text [^>]*x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows.setdefault(float(m.group(2)), []).append((float(m.group(1)), html.unescape(m.group(3))))
    return ["".join(t for _, t in sorted(parts)).replace("\xa0", " ") for _, parts in sorted(rows.items())]


def assert_snapshot(svg: str, name: str) -> None:
    path = SNAPSHOTS / f"{name}.svg"
    got = normalise_svg(svg)
    if os.environ.get("HHCL_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(got, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"no stored snapshot {path}: run with HHCL_UPDATE_SNAPSHOTS=1 to create it, then review it")
    want = path.read_text(encoding="utf-8")
    if got != want:
        diff = "\n".join(difflib.unified_diff(svg_text(want), svg_text(got), "stored", "now", lineterm=""))
        pytest.fail(f"{name} differs from {path} (HHCL_UPDATE_SNAPSHOTS=1 accepts it):\n{diff or '(styles only)'}")


async def test_dashboard_snapshot(tmp_path: Path) -> None:
    app = DashboardApp(write_tiny_log(tmp_path / "tiny-run"), clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert_snapshot(app.export_screenshot(), "dashboard")


async def test_dashboard_clusters_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # coloured half blocks, as off a tty: a terminal with a graphics protocol would draw these pixels with it
    monkeypatch.setattr(clusters, "TerminalImage", HalfcellImage)
    run = make_run(tmp_path, [EPOCH_1, EPOCH_2])
    write_tiny_log(run)
    app = DashboardApp(run, clock=lambda: NOW)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await wait_until(pilot, lambda: len(captions(app)) == 3)
        await pilot.pause()
        assert_snapshot(app.export_screenshot(), "dashboard-clusters")


async def test_wizard_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # paths on screen are relative, so the picture does not depend on tmp_path
    (tmp_path / "data" / "market1501").mkdir(parents=True)
    app = WizardApp(preset="market", data_root=Path("data"), out=Path("market-custom.toml"))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.query_one("#f-cluster-eps").value = "0.5"  # type: ignore[attr-defined]
        app.query_one("#f-data-batch_size").value = "250"  # type: ignore[attr-defined]
        await pilot.pause()
        assert_snapshot(app.export_screenshot(), "wizard")


async def test_dashboard_is_readable_at_80x24(tmp_path: Path) -> None:
    app = DashboardApp(write_tiny_log(tmp_path / "tiny-run"), clock=lambda: NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = "\n".join(svg_text(app.export_screenshot()))
    for expected in ("tiny-run", "epoch 3/4", "iter 5/10", "ETA 0:36", "lr 3.50e-05", "img/s 125", "hard 0.750",
                     "15 clusters", "(12.5%)", "best mAP 45.0%", "R1 55.0%", "knn 0.50s", "q Quit"):
        assert expected in screen, f"{expected!r} not visible at 80x24:\n{screen}"
