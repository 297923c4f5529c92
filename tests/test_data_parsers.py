"""Dataset parsers on generated fixtures in each layout: pid/camid rules, junk, distractors, relabelling."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.data_fixtures import make_market, write_image

from hhcl.data import DatasetFormatError, DatasetNotFoundError, Sample, build_dataset, prepare_synthetic


def rel(samples: list[Sample], top: Path) -> list[tuple[str, int, int]]:
    return [(str(Path(s.path).relative_to(top)), s.pid, s.camid) for s in samples]


def test_market_rules_and_regex_on_file_name(tmp_path: Path) -> None:
    # the data root's own name matches the pid/cam regex: a full-path regex would read pid 999, cam 9
    root = tmp_path / "999_c9_root"
    top = make_market(root / "market1501" / "Market-1501-v15.09.15")
    ds = build_dataset("market1501", root)
    assert rel(ds.train, top) == [
        ("bounding_box_train/0002_c1s1_000451_03.jpg", 0, 0),
        ("bounding_box_train/0002_c3s1_000551_01.jpg", 0, 2),
        ("bounding_box_train/0007_c2s1_000001_01.jpg", 1, 1),
        ("bounding_box_train/0007_c6s2_000101_02.jpg", 1, 5),
        ("bounding_box_train/0011_c5s1_000020_01.jpg", 2, 4),
    ]
    assert rel(ds.query, top) == [
        ("query/0007_c1s1_000201_00.jpg", 7, 0),
        ("query/0011_c2s1_000301_00.jpg", 11, 1),
    ]
    assert rel(ds.gallery, top) == [  # junk dropped, distractor 0 kept, raw pids, sorted by path
        ("bounding_box_test/0000_c1s1_000601_01.jpg", 0, 0),
        ("bounding_box_test/0007_c3s1_000401_01.jpg", 7, 2),
        ("bounding_box_test/0011_c2s2_000801_01.jpg", 11, 1),
        ("bounding_box_test/0011_c4s1_000501_02.jpg", 11, 3),
    ]
    assert ds.root == root / "market1501" and ds.top == top


def test_market_rejects_bad_camera(tmp_path: Path) -> None:
    files = {"bounding_box_train": ["0002_c7s1_000451_03.jpg"], "query": [], "bounding_box_test": []}
    make_market(tmp_path / "market1501" / "Market-1501-v15.09.15", files)
    with pytest.raises(DatasetFormatError, match="0002_c7s1_000451_03.jpg: camera 7 outside 1..6"):
        build_dataset("market1501", tmp_path)


def test_duke_large_pids_and_eight_cameras(tmp_path: Path) -> None:
    files = {
        "bounding_box_train": ["5000_c8_f0000001.jpg", "0005_c2_f0046182.jpg", "0005_c1_f0046100.jpg"],
        "query": ["0008_c7_f0000010.jpg"],
        "bounding_box_test": ["0008_c2_f0000020.jpg"],
    }
    top = make_market(tmp_path / "dukemtmcreid" / "DukeMTMC-reID", files)
    ds = build_dataset("dukemtmcreid", tmp_path)
    assert rel(ds.train, top) == [
        ("bounding_box_train/0005_c1_f0046100.jpg", 0, 0),
        ("bounding_box_train/0005_c2_f0046182.jpg", 0, 1),
        ("bounding_box_train/5000_c8_f0000001.jpg", 1, 7),
    ]
    assert rel(ds.query, top) == [("query/0008_c7_f0000010.jpg", 8, 6)]


def _msmt_lists(top: Path, train_dir: str, test_dir: str) -> None:
    entries = {
        "list_train.txt": (
            train_dir,
            ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0003/0003_001_12_0303noon_0020_1.jpg 3"],
        ),
        "list_val.txt": (train_dir, ["0001/0001_000_15_0303afternoon_0030_0.jpg 1"]),
        "list_query.txt": (test_dir, ["0002/0002_000_04_0303morning_0040_0.jpg 2"]),
        "list_gallery.txt": (
            test_dir,
            ["0002/0002_001_05_0303noon_0041_0.jpg 2", "0009/0009_000_04_0303noon_0050_2.jpg 9"],
        ),
    }
    for n, (list_name, (folder, lines)) in enumerate(entries.items()):
        (top / list_name).parent.mkdir(parents=True, exist_ok=True)
        (top / list_name).write_text("\n".join(lines) + "\n")
        for k, line in enumerate(lines):
            write_image(top / folder / line.split()[0], seed=10 * n + k)


@pytest.mark.parametrize(
    ("top_name", "train_dir", "test_dir"),
    [("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2")],
)
def test_msmt17_list_layouts(tmp_path: Path, top_name: str, train_dir: str, test_dir: str) -> None:
    top = tmp_path / "msmt17" / top_name
    _msmt_lists(top, train_dir, test_dir)
    ds = build_dataset("msmt17", tmp_path)
    assert rel(ds.train, top) == [  # train + val, relabelled 0..2 in pid order
        (f"{train_dir}/0000/0000_000_01_0303morning_0015_0.jpg", 0, 0),
        (f"{train_dir}/0001/0001_000_15_0303afternoon_0030_0.jpg", 1, 14),
        (f"{train_dir}/0003/0003_001_12_0303noon_0020_1.jpg", 2, 11),
    ]
    assert rel(ds.query, top) == [(f"{test_dir}/0002/0002_000_04_0303morning_0040_0.jpg", 2, 3)]
    assert rel(ds.gallery, top) == [
        (f"{test_dir}/0002/0002_001_05_0303noon_0041_0.jpg", 2, 4),
        (f"{test_dir}/0009/0009_000_04_0303noon_0050_2.jpg", 9, 3),
    ]


def test_msmt17_market_style_layout(tmp_path: Path) -> None:
    files = {
        "bounding_box_train": ["0100_c15_0001.jpg", "0004_c11_0002.jpg"],
        "query": ["0200_c3_0003.jpg"],
        "bounding_box_test": ["0200_c14_0004.jpg", "-1_c1_0005.jpg"],
    }
    top = make_market(tmp_path / "msmt17" / "MSMT17_V1", files)
    ds = build_dataset("msmt17", tmp_path)
    assert rel(ds.train, top) == [
        ("bounding_box_train/0004_c11_0002.jpg", 0, 10),
        ("bounding_box_train/0100_c15_0001.jpg", 1, 14),
    ]
    assert rel(ds.gallery, top) == [("bounding_box_test/0200_c14_0004.jpg", 200, 13)]


def test_viper_seeded_half_split(tmp_path: Path) -> None:
    top = tmp_path / "viper" / "VIPeR"
    for pid in range(10):
        write_image(top / "cam_a" / f"{pid:03d}_45.bmp", seed=pid, fmt="BMP")
        write_image(top / "cam_b" / f"{pid:03d}_90.bmp", seed=100 + pid, fmt="BMP")
    ds = build_dataset("viper", tmp_path)
    test_ids = {s.pid for s in ds.query}
    assert len(ds.train) == 10 and len(ds.query) == 5 and len(ds.gallery) == 5
    assert test_ids == {s.pid for s in ds.gallery} and len(test_ids) == 5
    assert all(s.camid == 0 and "cam_a" in s.path for s in ds.query)
    assert all(s.camid == 1 and "cam_b" in s.path for s in ds.gallery)
    train_raw = {int(Path(s.path).name[:3]) for s in ds.train}
    assert not train_raw & test_ids and len(train_raw) == 5
    assert sorted({s.pid for s in ds.train}) == list(range(5))
    assert build_dataset("viper", tmp_path).query == ds.query  # deterministic
    other = {s.pid for s in build_dataset("viper", tmp_path, seed=1).query}
    assert other != test_ids  # the split follows the seed (10 choose 5 = 252 splits)


def test_folder_cameras_from_subfolders_and_labelled_eval(tmp_path: Path) -> None:
    top = tmp_path / "folder" / "images"
    for cam in ("gate", "lobby"):
        for k in range(2):
            write_image(top / "train" / cam / f"crop{k}.png", seed=k, fmt="PNG")
    write_image(top / "query" / "0003_c1_q.jpg", seed=1)
    write_image(top / "gallery" / "0003_c2_g.png", seed=2, fmt="PNG")
    write_image(top / "gallery" / "-1_c2_junk.jpg", seed=3)
    ds = build_dataset("folder", tmp_path)
    assert rel(ds.train, top) == [
        ("train/gate/crop0.png", 0, 0),
        ("train/gate/crop1.png", 1, 0),
        ("train/lobby/crop0.png", 2, 1),
        ("train/lobby/crop1.png", 3, 1),
    ]
    assert rel(ds.query, top) == [("query/0003_c1_q.jpg", 3, 0)]
    assert rel(ds.gallery, top) == [("gallery/0003_c2_g.png", 3, 1)]


def test_folder_camera_pattern(tmp_path: Path) -> None:
    top = tmp_path / "folder" / "images"
    for name in ("cam7_001.jpg", "cam2_002.jpg", "cam7_003.jpg"):
        write_image(top / name, seed=1)
    ds = build_dataset("folder", tmp_path, cam_pattern=r"cam(\d+)_")
    assert [(Path(s.path).name, s.camid) for s in ds.train] == [
        ("cam2_002.jpg", 0),
        ("cam7_001.jpg", 1),
        ("cam7_003.jpg", 1),
    ]
    assert ds.query == [] and ds.gallery == []
    with pytest.raises(DatasetFormatError, match="cam2_002.jpg: file name does not match the camera pattern"):
        build_dataset("folder", tmp_path, cam_pattern=r"camera(\d+)")


def test_missing_dataset_names_path_and_command(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("dukemtmcreid", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "dukemtmcreid" / "DukeMTMC-reID") in msg
    assert f"hhcl prepare dukemtmcreid --src ARCHIVE_OR_DIR --root {tmp_path}" in msg
    with pytest.raises(ValueError, match="unknown dataset 'cuhk03'"):
        build_dataset("cuhk03", tmp_path)


def test_synthetic_is_market_like(tmp_path: Path) -> None:
    report = prepare_synthetic(tmp_path, ids=8, cams=3, seed=3, height=32, width=16, progress=False)
    ds = build_dataset("synthetic", tmp_path)
    top = ds.top
    files = {p.parent.name: 0 for p in top.rglob("*.jpg")}
    for p in top.rglob("*.jpg"):
        files[p.parent.name] += 1
    junk = sum(1 for p in (top / "bounding_box_test").glob("-1_*.jpg"))
    assert junk > 0 and len(ds.gallery) == files["bounding_box_test"] - junk
    assert len(ds.train) == files["bounding_box_train"] == report.counts["train"]
    assert sorted({s.pid for s in ds.train}) == list(range(4))  # 8 ids: 4 train, relabelled
    assert {s.pid for s in ds.query} == {5, 6, 7, 8} and any(s.pid == 0 for s in ds.gallery)
    for q in ds.query:  # every query has a true match on another camera
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
