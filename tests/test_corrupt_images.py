"""Corrupt images are refused, never trained on as black rows: prepare names them, ``open_split`` refuses a
split holding one (cached or not) with the same files and fix, ``--skip-corrupt`` leaves them out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data_fixtures import make_market, write_image
from PIL import Image

from hhcl.data import CorruptImageError, build_dataset, open_split, prepare_dataset

HW = {"height": 16, "width": 8}
BAD = "0007_c2s1_000001_01.jpg"  # third of the five train images in path order


def pil_expected(path: str) -> torch.Tensor:
    """The reference's first transform done with PIL directly: uint8 [3, 16, 8]."""
    rgb = Image.open(path).convert("RGB").resize((8, 16), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).transpose(2, 0, 1).copy())


def market_with_garbage(tmp_path: Path) -> Path:
    """A tiny Market source folder whose train image BAD is garbage bytes named .jpg; returns the source."""
    src = tmp_path / "mine"
    top = make_market(src / "Market-1501-v15.09.15")
    (top / "bounding_box_train" / BAD).write_bytes(b"this is not a jpeg at all " * 8)
    return src


def prepared_with_corrupt(tmp_path: Path) -> tuple[Path, Path, str]:
    """Run prepare (which must fail naming BAD); returns (source, data root, the sample path of BAD)."""
    src, root = market_with_garbage(tmp_path), tmp_path / "data"
    bad = str(root / "market1501" / "Market-1501-v15.09.15" / "bounding_box_train" / BAD)
    with pytest.raises(CorruptImageError) as err:
        prepare_dataset("market1501", src, root, progress=False, **HW)
    assert err.value.paths == [bad]
    assert f"hhcl prepare market1501 --root {root} --skip-corrupt" in str(err.value)
    return src, root, bad


def test_open_split_refuses_a_recorded_corrupt_image_cached_or_not(tmp_path: Path) -> None:
    _, root, bad = prepared_with_corrupt(tmp_path)
    ds = build_dataset("market1501", root)
    assert bad in [s.path for s in ds.train]  # prepare failed, so nothing is skipped yet
    errors = []
    for cache in (True, False):
        with pytest.raises(CorruptImageError) as err:
            open_split(ds, "train", device="cpu", cache=cache, progress=False, **HW)
        assert err.value.paths == [bad]
        errors.append(str(err.value))
    assert errors[0] == errors[1]  # the same files and the same advice either way
    assert "fix or delete them" in errors[0] and "--skip-corrupt" in errors[0]
    query = open_split(ds, "query", device="cpu", progress=False, **HW)  # a clean split still opens
    assert torch.equal(query.gather(torch.tensor([0]))[0], pil_expected(ds.query[0].path))


def test_refusal_holds_when_the_root_is_spelled_differently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index records paths relative to the dataset folder: a relative --root finds the same record."""
    prepared_with_corrupt(tmp_path)
    monkeypatch.chdir(tmp_path)
    ds = build_dataset("market1501", "data")
    with pytest.raises(CorruptImageError, match=BAD):
        open_split(ds, "train", device="cpu", cache=False, **HW)


def test_skip_corrupt_leaves_it_out_and_training_data_opens(tmp_path: Path) -> None:
    src, root, bad = prepared_with_corrupt(tmp_path)
    report = prepare_dataset("market1501", src, root, skip_corrupt=True, progress=False, **HW)
    assert report.skipped == [bad]
    ds = build_dataset("market1501", root)
    assert len(ds.train) == 4 and bad not in [s.path for s in ds.train]
    for cache in (True, False):
        store = open_split(ds, "train", device="cpu", cache=cache, progress=False, **HW)
        assert len(store) == 4  # one image fewer than the five files
        imgs = store.gather(torch.arange(4))
        assert all(torch.equal(imgs[i], pil_expected(s.path)) for i, s in enumerate(ds.train))


def test_a_file_fixed_in_place_is_decoded_again_by_prepare(tmp_path: Path) -> None:
    src, root, bad = prepared_with_corrupt(tmp_path)
    write_image(src / "Market-1501-v15.09.15" / "bounding_box_train" / BAD, seed=7)
    report = prepare_dataset("market1501", src, root, progress=False, **HW)
    assert report.skipped == []
    ds = build_dataset("market1501", root)
    store = open_split(ds, "train", device="cpu", progress=False, **HW)
    assert store.cached and torch.equal(store.gather(torch.tensor([2]))[0], pil_expected(bad))


def test_an_index_holding_sample_paths_is_still_honoured(tmp_path: Path) -> None:
    """Caches written before the corrupt record was relative list the samples' own paths."""
    _, root, bad = prepared_with_corrupt(tmp_path)
    index = root / "market1501" / "cache" / "train_16x8.json"
    record = json.loads(index.read_text())
    assert record["corrupt"] == ["Market-1501-v15.09.15/bounding_box_train/" + BAD]
    record["corrupt"] = [bad]
    index.write_text(json.dumps(record))
    with pytest.raises(CorruptImageError, match=BAD):
        open_split(build_dataset("market1501", root), "train", device="cpu", **HW)


@pytest.mark.parametrize("workers", [0, 2])
def test_uncached_gather_of_a_corrupt_row_raises_with_the_fix(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "data"
    top = make_market(root / "market1501" / "Market-1501-v15.09.15")  # placed by hand: no cache, no index
    (top / "bounding_box_train" / BAD).write_bytes(b"\x89PNG not an image")
    ds = build_dataset("market1501", root)
    store = open_split(ds, "train", device="cpu", cache=False, workers=workers, **HW)
    assert not store.cached and not (root / "market1501" / "cache").exists()
    assert torch.equal(store.gather(torch.tensor([1]))[0], pil_expected(ds.train[1].path))
    with pytest.raises(CorruptImageError) as err:
        store.gather(torch.tensor([0, 2]))
    assert err.value.paths == [str(top / "bounding_box_train" / BAD)]
    assert f"`hhcl prepare market1501 --root {root} --skip-corrupt`" in str(err.value)
