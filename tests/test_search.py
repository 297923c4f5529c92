"""``hhcl search`` and rank-list pictures from original images: rankings against a naive PIL + torch pipeline,
the gallery embedding cache (reuse, refresh, interruption, fallback), the JSON, the PNG sizes, the CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hhcl.config import load_config
from hhcl.data import Sample
from hhcl.models import build_model, load_model
from hhcl.search import embed_gallery, list_gallery, search, top_k
from hhcl.search.gallery import CACHE_DIR, embed_files, file_sha256
from hhcl.visualize import BORDER, GAP, MATCH, MISS, SEPARATOR, ranklist_image, sample_queries, save_ranklists
from hhcl.weight_files import save_weights
from hhcl_tui.cli import app

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZES = [(50, 150), (60, 120), (40, 160), (70, 140), (45, 135)]  # (width, height): none has the 1:2 of 64x32


def write_image(path: Path, seed: int, size: tuple[int, int]) -> Path:
    """A random RGB image of ``size`` (width, height) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_gallery(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` images in two sub-folders, sizes cycling through SIZES."""
    return [
        write_image(folder / f"cam{i % 2}" / f"p{i:02d}.png", seed + i, SIZES[i % len(SIZES)]) for i in range(count)
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with a random-init resnet18 (64x32) and its config."""
    run = tmp_path_factory.mktemp("searchrun")
    cfg = load_config("demo", ["data.height=64", "data.width=32"])
    torch.manual_seed(0)
    (run / "checkpoints").mkdir()
    (run / "config.toml").write_text(cfg.to_toml())
    save_weights(build_model("resnet18", "avg", "none"), run / "checkpoints" / "best.safetensors", {})
    return run


@pytest.fixture(scope="module")
def model(run_dir):
    """The run's model, loaded once for the naive pipeline and the direct cache tests."""
    return load_model(run_dir)[0]


def naive_features(model, paths: list[Path]) -> torch.Tensor:
    """Embeddings from PIL bicubic 64x32 images, ImageNet normalisation and the model (float64)."""
    imgs = [np.asarray(Image.open(p).convert("RGB").resize((32, 64), Image.BICUBIC)) for p in paths]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return model((x - MEAN) / STD).double()


def naive_distances(model, queries: list[Path], gallery: list[Path]) -> np.ndarray:
    """[Q, G] squared Euclidean distances of the naive embeddings."""
    return (torch.cdist(naive_features(model, queries), naive_features(model, gallery)) ** 2).numpy()


def ranked(result) -> tuple[list[Path], list[float]]:
    return [m.path for m in result.matches], [m.distance for m in result.matches]


def test_top_k_equals_brute_force():
    torch.manual_seed(1)
    q, g = torch.randn(6, 16), torch.randn(40, 16)
    d = torch.cdist(q.double(), g.double()) ** 2
    exclude = torch.tensor([-1, 3, 0, 39, -1, 7])
    for k in (1, 5, 40, 50):
        dist, idx = top_k(q, g, k, exclude=exclude)
        assert idx.shape == dist.shape == (6, min(k, 40))
        for row in range(6):
            expect = sorted((j for j in range(40) if j != exclude[row]), key=lambda j: float(d[row, j]))[:k]
            got = idx[row][idx[row] >= 0].tolist()
            assert got == expect
            assert dist[row][: len(got)] == pytest.approx(d[row, expect].numpy(), rel=1e-4, abs=1e-4)
            assert (idx[row][len(got) :] == -1).all() and np.isinf(dist[row][len(got) :]).all()
    with pytest.raises(ValueError, match="at least 1"):
        top_k(q, g, 0)


def test_search_ranks_like_naive_pipeline_and_draws_originals(run_dir, model, tmp_path):
    gallery = tmp_path / "gallery"
    files = sorted(make_gallery(gallery, 8), key=lambda p: p.relative_to(gallery).as_posix())
    outside = write_image(tmp_path / "q" / "new person.jpg", 99, (55, 165))
    inside = files[3]
    report = search(run_dir, gallery, [outside, inside], out_dir=tmp_path / "out", top=3, device="cpu")
    dist = naive_distances(model, [outside, inside], files)
    for row, (result, own) in enumerate(zip(report.results, (None, 3), strict=True)):
        order = [j for j in np.argsort(dist[row], kind="stable") if j != own][:3]
        paths, distances = ranked(result)
        assert paths == [files[j] for j in order]
        assert distances == pytest.approx(dist[row, order], rel=1e-4, abs=1e-5)
        assert result.excluded_self == (own is not None)
    assert (report.embedded, report.reused, report.removed, report.gallery_size) == (8, 0, 0, 8)
    assert report.cache_file.parent == gallery / CACHE_DIR and report.cache_file.is_file()

    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["gallery_size"] == 8 and data["top"] == 3 and data["input_size"] == [64, 32]
    assert data["cache"] == {"file": str(report.cache_file), "embedded": 8, "reused": 0, "removed": 0}
    q1 = data["queries"][1]
    assert q1["query"] == str(inside) and q1["excluded_self"] is True
    assert [r["path"] for r in q1["results"]] == [str(p) for p in ranked(report.results[1])[0]]
    assert [r["rank"] for r in q1["results"]] == [1, 2, 3]
    assert [r["relpath"] for r in q1["results"]] == [Path(r["path"]).relative_to(gallery).as_posix() for r in q1["results"]]
    assert [r["distance"] for r in q1["results"]] == [m.distance for m in report.results[1].matches]

    # the picture: every tile is the ORIGINAL image scaled to 256 px high, aspect ratio kept
    png = Image.open(data["queries"][0]["ranklist"])
    originals = [Image.open(outside).size] + [Image.open(p).size for p in ranked(report.results[0])[0]]
    tiles = [round(w * 256 / h) + 2 * BORDER for w, h in originals]
    assert png.width == sum(tiles) + SEPARATOR + 2 * GAP
    assert png.height > 256 + 2 * BORDER
    cache_sized = 4 * (round(32 * 256 / 64) + 2 * BORDER) + SEPARATOR + 2 * GAP
    assert png.width != cache_sized


def test_cache_is_reused_and_refreshed_file_by_file(run_dir, model, tmp_path):
    gallery, cache = tmp_path / "gallery", tmp_path / "cache.npz"
    files = make_gallery(gallery, 5) + [write_image(gallery / "cam1" / "same-size.bmp", 5, (50, 150))]
    sha = file_sha256(run_dir / "checkpoints" / "best.safetensors")

    def check(expect_counts):
        current = list_gallery(gallery)
        got = embed_gallery(model, gallery, current, cache, sha, height=64, width=32)
        assert (got.embedded, got.reused, got.removed) == expect_counts
        torch.testing.assert_close(got.features.double(), naive_features(model, current), rtol=1e-4, atol=1e-5)

    check((6, 0, 0))
    stamp = cache.stat().st_mtime_ns
    check((0, 6, 0))
    assert cache.stat().st_mtime_ns == stamp, "nothing changed: the cache is not rewritten"
    write_image(gallery / "cam0" / "late.png", 77, (40, 120))  # added (sorts between existing files)
    check((1, 6, 0))
    size = files[5].stat().st_size
    write_image(files[5], 1234, (50, 150))  # changed content, same size (BMP): only the mtime tells
    os.utime(files[5], ns=(1_000_000_000, 1_000_000_000))
    assert files[5].stat().st_size == size
    check((1, 6, 0))
    files[4].unlink()  # removed
    check((0, 6, 1))
    cache.write_bytes(b"not an npz")
    got = embed_gallery(model, gallery, list_gallery(gallery), cache, sha, height=64, width=32)
    assert got.embedded == 6 and any("could not be read" in n for n in got.notes)


def test_interrupted_embedding_keeps_what_it_finished(run_dir, model, tmp_path):
    gallery = tmp_path / "g"
    files = sorted(make_gallery(gallery, 5), key=lambda p: p.relative_to(gallery).as_posix())
    sha, cache = file_sha256(run_dir / "checkpoints" / "best.safetensors"), tmp_path / "cache.npz"
    opts = {"height": 64, "width": 32, "batch_size": 4}

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_gallery(model, gallery, files, cache, sha, chunk=2, progress=stop, **opts)
    resumed = embed_gallery(model, gallery, files, cache, sha, **opts)
    assert (resumed.embedded, resumed.reused) == (3, 2)
    fresh = embed_files(model, files, flip=False, amp="off", hint="", **opts)
    torch.testing.assert_close(resumed.features, fresh, rtol=1e-5, atol=1e-6)


def test_unwritable_gallery_caches_under_xdg(run_dir, tmp_path, monkeypatch):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, 3)
    (gallery / CACHE_DIR).write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    query = write_image(tmp_path / "q.png", 5, (50, 100))
    first = search(run_dir, gallery, [query], out_dir=tmp_path / "out", top=2, device="cpu")
    assert first.cache_file.is_relative_to(tmp_path / "xdg" / "hhcl" / "search")
    assert any("cannot write beside the gallery" in n for n in first.notes)
    again = search(run_dir, gallery, [query], out_dir=tmp_path / "out", top=2, device="cpu")
    assert (again.embedded, again.reused, again.cache_file) == (0, 3, first.cache_file)


def test_output_folder_inside_the_gallery_is_not_searched(run_dir, tmp_path):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, 3)
    query = write_image(tmp_path / "q.png", 5, (50, 100))
    search(run_dir, gallery, [query], out_dir=gallery / "results", top=5, device="cpu")
    again = search(run_dir, gallery, [query], out_dir=gallery / "results", top=5, device="cpu")
    assert again.gallery_size == 3 and (again.embedded, again.reused) == (0, 3)


def words(result) -> str:
    return " ".join(result.output.split())


def test_cli_search_table_and_errors(run_dir, tmp_path):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, 4)
    query = write_image(tmp_path / "q.png", 5, (50, 100))
    out = tmp_path / "out"
    runner = CliRunner()
    base = [str(run_dir), "--gallery", str(gallery), "--out", str(out), "--device", "cpu"]
    res = runner.invoke(app, ["search", *base, "--query", str(query), "--top", "2"])
    assert res.exit_code == 0, res.output
    text = words(res)
    assert "4 images (4 embedded, 0 reused from the cache, 0 removed)" in text
    assert "cam0/p00.png" in text or "cam1/p01.png" in text
    assert len(json.loads((out / "results.json").read_text())["queries"][0]["results"]) == 2
    assert len(list(out.glob("q001_q.png"))) == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["search", str(run_dir), "--gallery", str(empty), "--out", str(out), "-q", str(query)])
    assert res.exit_code == 2 and "no images" in words(res) and str(empty) in words(res)
    res = runner.invoke(app, ["search", *base, "--query", str(tmp_path / "nope.jpg")])
    assert res.exit_code == 2 and f"query image '{tmp_path / 'nope.jpg'}' does not exist" in words(res)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    res = runner.invoke(app, ["search", *base, "--query", str(bad)])
    assert res.exit_code == 2 and str(bad) in words(res) and "--query" in words(res)
    res = runner.invoke(app, ["search", *base, "--query", str(query), "--top", "0"])
    assert res.exit_code == 2 and "--top 0 is not allowed" in words(res)
    no_weights = tmp_path / "run-without-weights"
    no_weights.mkdir()
    res = runner.invoke(app, ["search", str(no_weights), *base[1:], "--query", str(query)])
    assert res.exit_code == 2 and f"run directory '{no_weights}' has no checkpoint" in words(res)
    (gallery / "cam0" / "broken.png").write_bytes(b"\x89PNG broken")
    res = runner.invoke(app, ["search", *base, "--query", str(query)])
    # a corrupt image met while embedding is a failure (exit 1) in every command; a bad --query above is a usage error
    assert res.exit_code == 1 and "broken.png" in words(res) and "gallery folder" in words(res)
    assert "Traceback" not in res.output


def test_eval_ranklists_use_the_original_images(tmp_path):
    """save_ranklists draws the samples' files (here 128x64) at 256 px, not the 64x32 cache; borders kept."""
    query = [Sample(str(write_image(tmp_path / "q.png", 0, (64, 128))), 1, 0)]
    gallery = [
        Sample(str(write_image(tmp_path / f"g{i}.png", i + 1, (64, 128))), pid, cam)
        for i, (pid, cam) in enumerate([(1, 0), (1, 1), (2, 1)])
    ]  # gallery 0 is the query's same-camera copy: left out
    dist = torch.tensor([[0.0, 0.5, 0.2]])
    (path,) = save_ranklists(dist, [0], query, gallery, topk=5, out_dir=tmp_path / "rl")
    assert path.name == "q001_1_q_miss.png"  # the query's identity (the dataset's pid) and file stem
    px = np.asarray(Image.open(path))
    tile = 128 + 2 * BORDER
    assert px.shape[1] == 3 * tile + SEPARATOR + GAP and px.shape[0] > 256 + 2 * BORDER
    assert tuple(px[0, tile + SEPARATOR]) == MISS and tuple(px[0, 2 * tile + SEPARATOR + GAP]) == MATCH
    original = np.asarray(Image.open(gallery[2].path).resize((128, 256), Image.Resampling.LANCZOS))
    shown = px[BORDER : BORDER + 256, tile + SEPARATOR + BORDER : tile + SEPARATOR + BORDER + 128]
    assert np.abs(shown.astype(int) - original).max() <= 1
    assert sample_queries(100, 5).tolist() == [0, 25, 50, 74, 99]


def test_ranklist_image_errors(tmp_path):
    with pytest.raises(ValueError, match="captions"):
        ranklist_image(Image.new("RGB", (8, 16)), [Image.new("RGB", (8, 16))], [], [MATCH])
    with pytest.raises(ValueError, match=str(tmp_path / "gone.png")):
        ranklist_image(tmp_path / "gone.png", [], [], [])
