"""``prepare``: archives built here, safe extraction, corrupt images, idempotence/resume, the cache, VIPeR."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data_fixtures import make_market, write_image
from PIL import Image
from typer.testing import CliRunner

import hhcl.data.store as store
from hhcl.data import (
    CorruptImageError,
    DatasetNotFoundError,
    UnsafeArchiveError,
    build_dataset,
    open_split,
    prepare_dataset,
)
from hhcl_tui.cli import app

HW = {"height": 16, "width": 8}


def market_archive(tmp_path: Path, kind: str = "zip", files: dict | None = None) -> Path:
    """A zip or tar.gz of a tiny Market tree, wrapped in one extra folder like many downloads."""
    tree = make_market(tmp_path / "src" / "download" / "Market-1501-v15.09.15", files)
    base = tmp_path / "src"
    if kind == "zip":
        path = tmp_path / "market.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for p in sorted(tree.rglob("*")):
                zf.write(p, p.relative_to(base))
    else:
        path = tmp_path / "market.tar.gz"
        with tarfile.open(path, "w:gz") as tf:
            tf.add(base / "download", "download")
    return path


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_prepare_archive_counts_cache_manifest(tmp_path: Path, kind: str) -> None:
    archive = market_archive(tmp_path, kind)
    root = tmp_path / "data"
    report = prepare_dataset("market1501", archive, root, progress=False, **HW)
    assert report.counts == {"train": 5, "query": 2, "gallery": 4}
    assert "train: found 5 images, the published market1501 has 12,936" in report.warnings
    manifest = json.loads((root / "market1501" / "manifest.json").read_text())
    assert manifest["top"] == "files/download/Market-1501-v15.09.15" and manifest["skipped"] == []
    ds = build_dataset("market1501", root)
    for split in ("train", "query", "gallery"):
        cache = np.load(root / "market1501" / "cache" / f"{split}_16x8.npy", mmap_mode="r")
        expected = [  # the reference's first transform, done here with PIL directly
            np.asarray(Image.open(s.path).convert("RGB").resize((8, 16), Image.BICUBIC)).transpose(2, 0, 1)
            for s in ds.split(split)
        ]
        assert cache.shape == (len(expected), 3, 16, 8) and np.array_equal(cache, np.stack(expected))


def test_prepare_is_idempotent_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = market_archive(tmp_path)
    root = tmp_path / "data"
    calls: list[str] = []
    real = store.try_load

    def counting(path: str, h: int, w: int):
        calls.append(path)
        if len(calls) == 3 and not resumed:
            raise KeyboardInterrupt  # killed mid-way through the train cache
        return real(path, h, w)

    monkeypatch.setattr(store, "try_load", counting)
    monkeypatch.setattr(store, "CHUNK", 2)
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("market1501", archive, root, progress=False, **HW)
    assert not (root / "market1501" / "manifest.json").exists()
    resumed, calls[:] = True, []
    prepare_dataset("market1501", archive, root, progress=False, **HW)
    assert len(calls) == 3 + 2 + 4  # the first chunk of 2 train images was kept
    calls.clear()
    report = prepare_dataset("market1501", archive, root, progress=False, **HW)
    assert calls == [] and not report.extracted  # nothing decoded or extracted again
    ds = build_dataset("market1501", root)
    train = np.load(root / "market1501" / "cache" / "train_16x8.npy")
    assert np.array_equal(train[0], store.load_image(ds.train[0].path, 16, 8))


def test_missing_folder_names_the_expected_path(tmp_path: Path) -> None:
    files = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg"],
        "bounding_box_test": ["0002_c2s1_000451_03.jpg"],
    }
    archive = market_archive(tmp_path, "zip", files)
    with pytest.raises(DatasetNotFoundError, match=r"missing folder\(s\) .*Market-1501-v15.09.15/query"):
        prepare_dataset("market1501", archive, tmp_path / "data", progress=False, **HW)


def test_corrupt_image_is_named_or_skipped(tmp_path: Path) -> None:
    top = make_market(tmp_path / "mine" / "Market-1501-v15.09.15")
    bad = top / "bounding_box_train" / "0007_c2s1_000001_01.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    root = tmp_path / "data"
    with pytest.raises(CorruptImageError, match="0007_c2s1_000001_01.jpg"):
        prepare_dataset("market1501", tmp_path / "mine", root, progress=False, **HW)
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "market1501",
            "--src",
            str(tmp_path / "mine"),
            "--root",
            str(root),
            "--height",
            "16",
            "--width",
            "8",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1 and "0007_c2s1_000001_01.jpg" in result.output
    report = prepare_dataset("market1501", tmp_path / "mine", root, skip_corrupt=True, progress=False, **HW)
    assert report.skipped == [str(root / "market1501" / "Market-1501-v15.09.15" / bad.relative_to(top))]
    ds = build_dataset("market1501", root)
    assert len(ds.train) == 4 and not any("0007_c2s1_000001" in s.path for s in ds.train)
    assert sorted({s.pid for s in ds.train}) == [0, 1, 2]  # still relabelled densely
    imgs = open_split(ds, "train", height=16, width=8, device="cpu").gather(torch.arange(4))
    assert all(
        torch.equal(imgs[i], torch.from_numpy(store.load_image(s.path, 16, 8)))
        for i, s in enumerate(ds.train)
    )
    assert (root / "market1501" / "Market-1501-v15.09.15").is_symlink()  # a folder source is linked


def _evil_tars(tmp_path: Path) -> list[Path]:
    out = []
    for name, member in [
        ("dotdot", tarfile.TarInfo("Market/../../evil.txt")),
        ("absolute", tarfile.TarInfo(str(tmp_path / "evil.txt"))),
        ("symlink", tarfile.TarInfo("Market/link")),
    ]:
        path = tmp_path / f"{name}.tar"
        with tarfile.open(path, "w") as tf:
            tf.addfile(tarfile.TarInfo("Market/ok.txt"), io.BytesIO(b""))
            if name == "symlink":
                member.type, member.linkname = tarfile.SYMTYPE, "../../.."
                tf.addfile(member)
                inner = tarfile.TarInfo("Market/link/evil.txt")
                inner.size = 4
                tf.addfile(inner, io.BytesIO(b"evil"))
            else:
                member.size = 4
                tf.addfile(member, io.BytesIO(b"evil"))
        out.append(path)
    zpath = tmp_path / "dotdot.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("../evil.txt", "evil")
    return out + [zpath]


def test_traversal_archives_are_refused_and_write_nothing(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "data"
    for archive in _evil_tars(tmp_path):
        with pytest.raises(UnsafeArchiveError, match="refusing to extract|through the link"):
            prepare_dataset("market1501", archive, root, progress=False, **HW)
        result = CliRunner().invoke(
            app, ["prepare", "market1501", "--src", str(archive), "--root", str(root)]
        )
        assert result.exit_code == 2, result.output
    assert not list(tmp_path.rglob("evil.txt"))
    assert (
        not (root / "market1501" / "files").exists() and not (root / "market1501" / "files.partial").exists()
    )


def test_cli_prepare_archive(tmp_path: Path) -> None:
    archive = market_archive(tmp_path, "tar")
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "market1501",
            "--src",
            str(archive),
            "--root",
            str(tmp_path / "d"),
            "--height",
            "16",
            "--width",
            "8",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "12,936" in result.output and (tmp_path / "d" / "market1501" / "cache" / "gallery_16x8.npy").is_file()
    )
    missing = CliRunner().invoke(
        app, ["prepare", "market1501", "--src", str(tmp_path / "nope.zip"), "--root", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "nope.zip does not exist" in " ".join(missing.output.split())
    assert not (tmp_path / "x").exists()


def test_open_split_cache_and_decode_modes(tmp_path: Path) -> None:
    make_market(tmp_path / "market1501" / "Market-1501-v15.09.15")
    ds = build_dataset("market1501", tmp_path)
    idx = torch.tensor([3, 0, 3, 1])
    direct = open_split(ds, "train", height=16, width=8, device="cpu", cache=False)
    assert not direct.cached and not (tmp_path / "market1501" / "cache").exists()
    cached = open_split(ds, "train", height=16, width=8, device="cpu", progress=False)  # builds the cache
    assert cached.cached and (tmp_path / "market1501" / "cache" / "train_16x8.npy").is_file()
    expected = torch.stack(
        [torch.from_numpy(store.load_image(ds.train[i].path, 16, 8)) for i in idx.tolist()]
    )
    assert torch.equal(cached.gather(idx), expected) and torch.equal(direct.gather(idx), expected)
    assert cached.gather(idx).dtype == torch.uint8 and len(cached) == 5
    assert cached.pids.tolist() == [0, 0, 1, 1, 2] and cached.camids.tolist() == [0, 2, 1, 5, 4]


def test_prepare_viper_from_shared_folder(tmp_path: Path, viper_dir: Path) -> None:
    report = prepare_dataset("viper", viper_dir, tmp_path, progress=False, height=32, width=16)
    assert report.counts == {"train": 632, "query": 316, "gallery": 316} and report.warnings == []
    ds = build_dataset("viper", tmp_path)
    assert len({s.pid for s in ds.train}) == 316 and {s.pid for s in ds.query} == {s.pid for s in ds.gallery}
    store_q = open_split(ds, "query", height=32, width=16, device="cpu")
    assert torch.equal(
        store_q.gather(torch.tensor([0]))[0], torch.from_numpy(store.load_image(ds.query[0].path, 32, 16))
    )


def test_prepare_folder_links_tree_and_records_camera_pattern(tmp_path: Path) -> None:
    src = tmp_path / "my_crops"
    for name in ("cam1_a.jpg", "cam2_b.jpg", "cam2_c.jpg"):
        write_image(src / "day1" / name, seed=len(name))
    report = prepare_dataset(
        "folder", src, tmp_path / "data", options={"cam_pattern": r"cam(\d)_"}, progress=False, **HW
    )
    assert report.counts == {"train": 3, "query": 0, "gallery": 0} and report.warnings == []
    ds = build_dataset("folder", tmp_path / "data")  # the pattern comes back from the manifest
    assert [s.camid for s in ds.train] == [0, 1, 1] and [s.pid for s in ds.train] == [0, 1, 2]
    assert (tmp_path / "data" / "folder" / "images").resolve() == (
        src / "day1"
    ).resolve()  # wrapper folder skipped


def test_workers_zero_decodes_in_the_calling_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_market(tmp_path / "market1501" / "Market-1501-v15.09.15")
    ds = build_dataset("market1501", tmp_path)
    idx = torch.tensor([4, 0, 2])
    expected = torch.stack(  # the reference's first transform, done here with PIL directly
        [
            torch.from_numpy(
                np.asarray(Image.open(ds.train[i].path).convert("RGB").resize((8, 16), Image.BICUBIC))
                .transpose(2, 0, 1)
                .copy()
            )
            for i in idx.tolist()
        ]
    )
    pooled = open_split(ds, "train", device="cpu", cache=False, workers=2, **HW).gather(idx)
    threads: set[int] = set()
    real = store.try_load

    def recording(path: str, h: int, w: int):
        threads.add(threading.get_ident())
        return real(path, h, w)

    def no_pool(*args, **kwargs):
        raise AssertionError("workers=0 must not start a thread pool")

    monkeypatch.setattr(store, "try_load", recording)
    monkeypatch.setattr(store, "ThreadPoolExecutor", no_pool)
    inline = open_split(ds, "train", device="cpu", cache=False, workers=0, **HW).gather(idx)
    cached = open_split(ds, "train", device="cpu", workers=0, progress=False, **HW)  # builds the cache inline
    assert torch.equal(pooled, expected) and torch.equal(inline, expected)
    assert cached.cached and torch.equal(cached.gather(idx), expected)
    assert threads == {threading.get_ident()}
    with pytest.raises(ValueError, match="workers = -1"):
        open_split(ds, "train", device="cpu", cache=False, workers=-1, **HW)
