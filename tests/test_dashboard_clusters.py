"""The dashboard's Clusters tab: the newest epoch's largest clusters as rows of crops, from a run directory made
here with tiny one-colour images, its train.tsv and per-epoch labels; and what it says when it cannot show them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.pilot import wait_until
from PIL import Image
from textual.widgets import Static

from hhcl.cluster_sheets import CAMERA_COLOURS
from hhcl.config import load_config
from hhcl.run.labels import save_epoch_labels, save_train_index
from hhcl.run.layout import RunLayout
from hhcl_tui.dashboard.app import DashboardApp
from hhcl_tui.dashboard.clusters import (
    CAMERA_BAR,
    STRIP_GAP,
    TILE_HEIGHT,
    ClusterRowView,
    gallery_head,
    load_gallery,
    row_caption,
)

# 12 crops of 32x16 pixels, each one solid colour; camera of each image
COLOURS = [(20 * i + 10, 200 - 15 * i, (60 * i) % 256) for i in range(12)]
CAMS = [0, 1, 0, 1, 1, 2, 2, 2, 0, 1, 2, 0]
EPOCH_1 = [0, 0, 0, 0, 0, 1, 1, 1, -1, -1, -1, -1]  # cluster 0: 5 images on cams 1, 2; cluster 1: 3 on cam 3
EPOCH_2 = [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2]  # cluster 1 (7) is now the largest, then 0 (3), then 2 (2)
TILE_W = TILE_HEIGHT // 2  # a 32x16 crop scaled to TILE_HEIGHT keeps its 1:2 aspect


def make_run(tmp_path: Path, epochs: list[list[int]]) -> Path:
    """A run directory as training leaves it: config.toml (data.root), labels/train.tsv, labels/epoch_NNN.npy."""
    root, run = tmp_path / "data", tmp_path / "runs" / "tiny-run"
    (root / "crops").mkdir(parents=True)
    run.mkdir(parents=True)
    rel = []
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (16, 32), colour).save(root / "crops" / f"{i:02d}.png")
        rel.append(f"crops/{i:02d}.png")
    (run / "config.toml").write_text(load_config("demo", [f"data.root={root}"]).to_toml())
    layout = RunLayout(run)
    save_train_index(layout, rel, None, CAMS)
    for epoch, labels in enumerate(epochs):
        save_epoch_labels(layout, epoch, np.array(labels))
    return run


def head(app: DashboardApp) -> str:
    content = app.query_one("#clusters-head", Static).content
    return getattr(content, "plain", str(content))


def captions(app: DashboardApp) -> list[str]:
    return [str(row.query_one(".cluster-caption", Static).content).replace("\n", " / ")
            for row in app.query(ClusterRowView)]


def tile_colours(strip: Image.Image, n: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(crop colour at each tile's centre, camera bar colour under it) for the first ``n`` tiles."""
    x0 = [k * (TILE_W + STRIP_GAP) + TILE_W // 2 for k in range(n)]
    return [(strip.getpixel((x, TILE_HEIGHT // 2)), strip.getpixel((x, TILE_HEIGHT + CAMERA_BAR // 2))) for x in x0]


def expected_tiles(members: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return [(COLOURS[i], CAMERA_COLOURS[CAMS[i]]) for i in members]


def test_gallery_shows_the_largest_clusters_with_their_crops_and_cameras(tmp_path: Path) -> None:
    gallery = load_gallery(make_run(tmp_path, [EPOCH_1, EPOCH_2]))
    assert gallery.epoch == 1 and gallery.note == ""  # the newest kept epoch, 0-based
    assert (gallery.n_images, gallery.n_clusters, gallery.n_outliers) == (12, 3, 0)
    assert [(r.cluster, r.size, r.cameras, r.shown) for r in gallery.rows] == [
        (1, 7, ["1", "2", "3"], 7), (0, 3, ["1", "2"], 3), (2, 2, ["1", "3"], 2)]  # no names recorded: numbers
    strip = gallery.rows[0].strip
    assert strip.size == (7 * TILE_W + 6 * STRIP_GAP, TILE_HEIGHT + CAMERA_BAR)
    assert tile_colours(strip, 7) == expected_tiles([3, 4, 5, 6, 7, 8, 9])
    assert row_caption(1, gallery.rows[0]).plain == "#1 cluster 1\n7 images\ncams 1 2 3"
    assert gallery_head(gallery).plain.startswith("epoch 2 · 3 clusters, 0 outliers of 12 images")


def test_gallery_samples_big_clusters_and_says_so(tmp_path: Path) -> None:
    gallery = load_gallery(make_run(tmp_path, [EPOCH_2]), clusters=1, per_cluster=4)
    (row,) = gallery.rows
    assert (row.cluster, row.size, row.shown) == (1, 7, 4)
    assert row_caption(1, row).plain.endswith("\n4 shown")
    members = {COLOURS[i]: CAMERA_COLOURS[CAMS[i]] for i in range(3, 10)}
    shown = tile_colours(row.strip, 4)
    assert len({c for c, _ in shown}) == 4 and all(members.get(c) == bar for c, bar in shown)


def test_gallery_says_why_it_shows_nothing_or_crossed_tiles(tmp_path: Path) -> None:
    run = make_run(tmp_path, [])
    assert load_gallery(run).epoch is None and "no pseudo labels yet" in load_gallery(run).note
    save_epoch_labels(RunLayout(run), 0, np.array(EPOCH_1[:5]))
    assert "holds 5 labels for 12 images" in load_gallery(run).note and "damaged" in load_gallery(run).note
    save_epoch_labels(RunLayout(run), 0, np.array(EPOCH_1))
    shutil.rmtree(tmp_path / "data")  # a run directory copied without its data
    gallery = load_gallery(run)
    assert [r.size for r in gallery.rows] == [5, 3]  # sizes and cameras still come from the labels
    assert "8 of the 8 images shown cannot be read" in gallery.note and "copied without its data" in gallery.note
    assert str(tmp_path / "data") in gallery.note
    (run / "labels" / "train.tsv").unlink()
    assert "train.tsv is missing" in load_gallery(run).note


@pytest.mark.asyncio
async def test_clusters_tab_shows_the_latest_epoch_and_follows_new_ones(tmp_path: Path) -> None:
    run = make_run(tmp_path, [EPOCH_1])
    app = DashboardApp(run, poll_interval=0.05, clock=lambda: 0.0)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("c")
        await wait_until(pilot, lambda: len(captions(app)) == 2)
        assert app.query_one("#tabs").active == "tab-clusters"
        assert head(app).startswith("epoch 1 · 2 clusters, 4 outliers of 12 images")
        assert captions(app) == ["#1 cluster 0 / 5 images / cams 1 2", "#2 cluster 1 / 3 images / cam 3"]
        strips = [img.image for img in app.query(".cluster-strip")]
        assert tile_colours(strips[0], 5) == expected_tiles([0, 1, 2, 3, 4])
        assert tile_colours(strips[1], 3) == expected_tiles([5, 6, 7])
        save_epoch_labels(RunLayout(run), 1, np.array(EPOCH_2))  # the next epoch's clustering
        await wait_until(pilot, lambda: head(app).startswith("epoch 2"))
        await wait_until(pilot, lambda: len(captions(app)) == 3)
        assert captions(app)[0] == "#1 cluster 1 / 7 images / cams 1 2 3"
        assert tile_colours(app.query(".cluster-strip").first().image, 7) == expected_tiles([3, 4, 5, 6, 7, 8, 9])


@pytest.mark.asyncio
async def test_clusters_tab_says_when_there_are_no_labels_or_no_images(tmp_path: Path) -> None:
    run = make_run(tmp_path, [])
    app = DashboardApp(run, poll_interval=0.05, clock=lambda: 0.0)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.press("c")
        await wait_until(pilot, lambda: "no pseudo labels yet" in head(app))
        assert captions(app) == []
        shutil.rmtree(tmp_path / "data")
        save_epoch_labels(RunLayout(run), 0, np.array(EPOCH_1))
        await wait_until(pilot, lambda: "cannot be read" in head(app))
        assert head(app).startswith("epoch 1 · 2 clusters") and len(captions(app)) == 2
