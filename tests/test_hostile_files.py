"""Hostile files at prepare time, each a real file on disk: symlink loops and duplicate links in camera folders,
16-bit PNGs, EXIF-rotated JPEGs, a corrupt JPEG whose printed fix must keep the cameras apart, and file names
holding line breaks and tabs (train.tsv and ``hhcl embed``'s name list)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data_fixtures import write_image
from PIL import Image
from typer.testing import CliRunner

from hhcl.config import Config
from hhcl.data import CorruptImageError, build_dataset, open_split, prepare_dataset
from hhcl.data.store import cache_paths, load_image
from hhcl.export import embed, load_embedder
from hhcl.models import build_model
from hhcl.run.labels import read_train_index, save_train_index
from hhcl.run.layout import RunLayout
from hhcl.weight_files import save_weights
from hhcl_tui.cli import app

HW = {"height": 16, "width": 8}


def cached_rows(root: Path, split: str = "train") -> np.ndarray:
    """The uint8 cache rows prepare wrote for the folder dataset's ``split`` at 16x8."""
    return np.load(cache_paths(root / "folder", split, 16, 8)[0])


def cameras_of(root: Path) -> dict[tuple[str, int], int]:
    """Train images per (camera folder: the first part of the path under the dataset's top folder, camera id)."""
    ds = build_dataset("folder", root)
    return dict(Counter((Path(s.path).relative_to(ds.top).parts[0], s.camid) for s in ds.train))


# ------------------------------------------------------------------------------------------------ symlinks
def linked_crops(tmp_path: Path) -> Path:
    """cam1 (4 images) holding ``loop -> .``; cam2 (3 images) holding ``up -> ..`` and a link to a cam1 image;
    cam3 a link to a folder on 'another disk' (2 images) that holds ``back -> ..`` (its parent: a loop there) and
    two links to one image outside it. 10 real images in all."""
    src, disk = tmp_path / "crops", tmp_path / "disk"
    for cam, n in (("cam1", 4), ("cam2", 3)):
        for i in range(n):
            write_image(src / cam / f"{cam}_{i}.jpg", seed=10 * int(cam[-1]) + i)
    for i in range(2):
        write_image(disk / "cam3" / f"far_{i}.jpg", seed=30 + i)
    os.symlink(".", src / "cam1" / "loop", target_is_directory=True)
    os.symlink("..", src / "cam2" / "up", target_is_directory=True)
    os.symlink("../cam1/cam1_0.jpg", src / "cam2" / "again.jpg")  # read at its own place, in cam1
    os.symlink(disk / "cam3", src / "cam3", target_is_directory=True)  # a camera folder on another disk
    os.symlink("..", disk / "cam3" / "back", target_is_directory=True)
    write_image(disk / "twin.jpg", seed=99)
    os.symlink(disk / "twin.jpg", disk / "cam3" / "twin_a.jpg")
    os.symlink(disk / "twin.jpg", disk / "cam3" / "twin_b.jpg")  # the same real file twice: read once
    return src


@pytest.mark.parametrize("copy", [False, True])
def test_symlink_loops_and_duplicate_links_read_each_image_once(tmp_path: Path, copy: bool) -> None:
    src, root = linked_crops(tmp_path), tmp_path / "data"
    report = prepare_dataset("folder", src, root, progress=False, copy=copy, **HW)
    assert report.counts["train"] == 10  # 4 + 3 + 2 + the twin once, not 1,600
    assert cameras_of(root) == {("cam1", 0): 4, ("cam2", 1): 3, ("cam3", 2): 3}
    if copy:  # the copy holds the images read, no links: it parses the same and notes nothing more
        assert not any(p.is_symlink() for p in (root / "folder").rglob("*"))
        return
    left_out = "\n".join(report.notes)
    for link in ("cam1/loop", "cam2/up", "cam2/again.jpg", "cam3/back", "cam3/twin_b.jpg"):
        assert f"{root / 'folder' / 'images' / link}:" in left_out, link
    assert "a loop" in left_out and "read at its own place" in left_out and "the same file as" in left_out
    ds = build_dataset("folder", root)
    rows = cached_rows(root)
    assert all(np.array_equal(rows[i], load_image(s.path, 16, 8)) for i, s in enumerate(ds.train))


def test_prepare_prints_what_it_left_out(tmp_path: Path) -> None:
    src, root = linked_crops(tmp_path), tmp_path / "data"
    args = ["prepare", "folder", "--src", str(src), "--root", str(root), "--height", "16", "--width", "8"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: left out")]
    assert len(notes) == 5 and any("cam1/loop: a link to" in n and "a loop" in n for n in notes)


# ------------------------------------------------------------------------------------------------ 16-bit
def test_a_16_bit_png_is_cached_by_its_high_byte_not_clipped_white(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    values = rng.permutation(np.linspace(0, 65535, 16 * 8).astype(np.uint16)).reshape(16, 8)
    path = tmp_path / "thermal" / "cam1" / "t.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16" and values.min() == 0 and values.max() == 65535
    prepare_dataset("folder", tmp_path / "thermal", tmp_path / "data", progress=False, **HW)
    expected = (values // 256).astype(np.uint8)  # the top 8 of 16 bits; same size, so no resampling
    assert np.array_equal(cached_rows(tmp_path / "data")[0], np.stack([expected] * 3))


def test_float_and_32_bit_greyscale_are_stretched_by_their_own_range() -> None:
    from hhcl.data.store import upright_rgb

    values = np.array([[-2.0, 0.4], [1.0, 3.0]], np.float32)
    expected = np.rint((values.astype(np.float64) + 2.0) * 255 / 5.0).astype(np.uint8)
    for img in (Image.fromarray(values), Image.fromarray((values * 1000).astype(np.int32))):
        assert img.mode in ("F", "I")
        assert np.array_equal(np.asarray(upright_rgb(img)), np.stack([expected] * 3, axis=-1))
    with pytest.raises(ValueError, match="NaN"):
        upright_rgb(Image.fromarray(np.array([[0.0, np.nan]], np.float32)))


# ------------------------------------------------------------------------------------------------ EXIF
def test_an_exif_rotated_jpeg_is_cached_upright_and_an_older_cache_is_rebuilt(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), np.uint8)  # stored landscape 32x16: a bright block at the top left
    stored[:6, :10] = (250, 40, 40)
    stored[10:, 20:] = (30, 200, 90)
    path = tmp_path / "phone" / "cam1" / "p.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the picture is to be shown rotated 90 degrees clockwise
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    decoded = np.asarray(Image.open(path).convert("RGB"))  # the JPEG's pixels as stored (lossy)
    upright = np.ascontiguousarray(np.rot90(decoded, k=-1))  # 16 wide, 32 tall
    expected = np.asarray(Image.fromarray(upright).resize((8, 16), Image.BICUBIC)).transpose(2, 0, 1)
    root = tmp_path / "data"
    prepare_dataset("folder", tmp_path / "phone", root, progress=False, **HW)
    assert np.array_equal(cached_rows(root)[0], expected)
    arr_path, idx_path = cache_paths(root / "folder", "train", 16, 8)
    index = json.loads(idx_path.read_text())  # a cache built before orientation was applied: no decode stamp
    del index["decode"]
    idx_path.write_text(json.dumps(index))
    np.save(arr_path, np.zeros((1, 3, 16, 8), np.uint8))
    prepare_dataset("folder", None, root, progress=False, **HW)
    assert np.array_equal(cached_rows(root)[0], expected)


# ------------------------------------------------------------------------------------------------ corrupt
def two_cameras_one_truncated(src: Path) -> None:
    """cam1 and cam2, three crops each; cam2's second crop is a JPEG cut short."""
    for cam in ("cam1", "cam2"):
        for i in range(3):
            write_image(src / cam / f"{cam}_{i}.jpg", seed=10 * int(cam[-1]) + i, size=(32, 64))
    bad = src / "cam2" / "cam2_1.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])


def test_the_printed_skip_corrupt_command_keeps_the_cameras_apart(tmp_path: Path) -> None:
    src, root = tmp_path / "crops", tmp_path / "data"
    two_cameras_one_truncated(src)
    hhcl = [sys.executable, "-m", "hhcl"]
    first = subprocess.run(
        [*hhcl, "prepare", "folder", "--src", str(src), "--root", str(root), "--height", "16", "--width", "8"],
        capture_output=True, text=True, timeout=120,
    )
    assert first.returncode == 1, first.stderr
    assert str(root / "folder" / "images" / "cam2" / "cam2_1.jpg") in first.stderr
    printed = re.findall(r"`(hhcl prepare [^`]*--skip-corrupt[^`]*)`", first.stderr)
    assert len(printed) == 1, first.stderr
    words = shlex.split(printed[0])
    second = subprocess.run([*hhcl, *words[1:]], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert cameras_of(root) == {("cam1", 0): 3, ("cam2", 1): 2}  # not one camera 'images' of 5


def test_skip_corrupt_without_src_reuses_the_camera_pattern(tmp_path: Path) -> None:
    src, root = tmp_path / "flat", tmp_path / "data"
    two_cameras_one_truncated(tmp_path / "crops")
    src.mkdir()
    for path in sorted((tmp_path / "crops").rglob("*.jpg")):
        path.rename(src / path.name)  # cam1_0.jpg ...: the camera is in the name
    with pytest.raises(CorruptImageError, match="cam2_1.jpg"):
        prepare_dataset("folder", src, root, progress=False, options={"cam_pattern": r"cam(\d)_"}, **HW)
    report = prepare_dataset("folder", None, root, progress=False, skip_corrupt=True, **HW)
    assert report.counts["train"] == 6 and report.cams["train"] == 2 and len(report.skipped) == 1
    ds = build_dataset("folder", root)
    assert sorted({s.camid for s in ds.train}) == [0, 1] and len(ds.train) == 5


# ------------------------------------------------------------------------------------------------ names
NAMES = ["cam1/a\nb.jpg", "cam1/c\td.jpg", "cam1/100%25.jpg", "cam2/e\r\nf.jpg", "cam2/plain.jpg"]


def named_crops(folder: Path) -> list[str]:
    """Real images under ``folder`` named with line breaks, a tab and a literal '%25'; their sorted names."""
    for i, name in enumerate(NAMES):
        write_image(folder / name, seed=i, size=(8 + 4 * i, 16))
    return sorted(NAMES)


def test_train_tsv_keeps_names_with_line_breaks_and_tabs_row_for_row(tmp_path: Path) -> None:
    root = tmp_path / "data"
    named_crops(tmp_path / "crops")
    prepare_dataset("folder", tmp_path / "crops", root, progress=False, **HW)
    ds = build_dataset("folder", root)
    assert len(ds.train) == len(NAMES)
    rel = [os.path.relpath(s.path, root) for s in ds.train]  # what the engine keeps (relative to data.root)
    layout = RunLayout(tmp_path / "run")
    save_train_index(layout, rel, None, [s.camid for s in ds.train])
    text = (layout.labels / "train.tsv").read_text(encoding="utf-8")
    lines = text.split("\n")[1:-1]
    assert len(lines) == len(NAMES)  # one line per image, whatever its name
    assert [urllib.parse.unquote(line.rsplit("\t", 2)[0]) for line in lines] == rel  # plain percent-encoding
    index = read_train_index(layout)
    assert index.paths == rel and index.camids.tolist() == [s.camid for s in ds.train]
    store = open_split(ds, "train", device="cpu", progress=False, **HW)
    for i, path in enumerate(index.paths):  # row i of the labels is image i
        assert torch.equal(store.gather(torch.tensor([i]))[0], torch.from_numpy(load_image(root / path, 16, 8)))


def test_embed_name_list_keeps_names_with_line_breaks_and_tabs_row_for_row(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", "gem", "none").eval()
    cfg = Config()
    cfg.model.arch, cfg.model.pooling = "resnet18", "gem"
    cfg.data.height, cfg.data.width = 32, 16
    run = tmp_path / "run"
    save_weights(model, run / "checkpoints" / "best.safetensors", {"config": cfg.to_toml(), "format": "hhcl"})
    order = named_crops(tmp_path / "imgs")
    out = tmp_path / "emb.npy"
    embed(run, tmp_path / "imgs", out, device="cpu")
    lines = out.with_suffix(".txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert [urllib.parse.unquote(line) for line in lines] == order
    from hhcl.export import read_name_list

    names = read_name_list(out.with_suffix(".txt"))
    assert names == order
    array = np.load(out)
    expected = load_embedder(run, device="cpu")([Image.open(tmp_path / "imgs" / n) for n in names])
    np.testing.assert_allclose(array, expected.numpy(), rtol=1e-5, atol=1e-6)  # row i embeds image i
