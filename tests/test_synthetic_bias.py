"""`hhcl prepare synthetic --camera-bias B`: the default draws exactly the data of before the knob; a growing B
makes a naive colour feature see cameras rather than people; bad values are refused naming the option."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from hhcl.data import prepare_synthetic
from hhcl.data.synthetic import generate
from hhcl_tui.cli import app

# sha256 over (folder, file name, pixels) of every generated image, taken with the generator as it was before
# the knob existed (hhcl/data/synthetic.py before issue 18), for three (ids, cams, seed) settings
BEFORE_THE_KNOB = {
    (6, 3, 0): "9d2f444ee6ea398d89360b4b22147bee12c4b0bc566a6fd0a35b249e6dcc9d9e",
    (8, 4, 1): "1599dbe236e8b45ee08a6c70cb5823a5e383e4fca8068780a04cb79d5b0bd885",
    (5, 1, 2): "8f5d539dc8eb6163a059140c1bf2549a9b9fc8a80ac0a01a55c72c921adcee6e",
}


def _digest(files: list[tuple[str, str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for folder, name, img in files:
        h.update(folder.encode())
        h.update(name.encode())
        h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("args", sorted(BEFORE_THE_KNOB))
def test_the_default_bias_generates_the_data_of_before_the_knob(args):
    assert _digest(generate(*args)) == BEFORE_THE_KNOB[args]
    assert _digest(generate(*args, camera_bias=0.0)) == BEFORE_THE_KNOB[args]


def _colour_distances(files: list[tuple[str, str, np.ndarray]]) -> tuple[float, float]:
    """Mean distance of a naive feature (mean colour of a 4 x 2 grid, divided by the crop's mean brightness)
    between (same camera, different people) and between (same person, different cameras); identities only."""
    names = [f[1] for f in files]
    pid = np.array([int(n.split("_")[0]) for n in names])
    cam = np.array([int(re.search(r"_c(\d)", n).group(1)) for n in names])
    imgs = np.stack([f[2] for f in files]).astype(np.float64)[pid > 0]
    pid, cam = pid[pid > 0], cam[pid > 0]
    n, h, w, _ = imgs.shape
    grid = imgs.reshape(n, 4, h // 4, 2, w // 2, 3).mean((2, 4)).reshape(n, -1)
    grid /= grid.mean(1, keepdims=True)
    dist = np.linalg.norm(grid[:, None] - grid[None], axis=-1)
    same_cam = (cam[:, None] == cam[None]) & (pid[:, None] != pid[None])
    same_pid = (cam[:, None] != cam[None]) & (pid[:, None] == pid[None])
    return float(dist[same_cam].mean()), float(dist[same_pid].mean())


def test_a_growing_bias_makes_cameras_look_more_alike_than_people():
    ratios = []  # (same camera, other person) distance / (same person, other camera) distance
    for bias in (0.0, 0.5, 1.0):
        same_cam, same_pid = _colour_distances(generate(12, 3, 0, camera_bias=bias))
        ratios.append(same_cam / same_pid)
    # seed 0's cameras: without the bias one person's crops are nearer each other than a camera's crops are
    assert ratios[0] > 1.05, ratios
    assert ratios[0] > ratios[1] > ratios[2], ratios
    assert ratios[2] < 0.5, ratios  # at B = 1 a camera's crops of different people are the nearer pairs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_full_bias_favours_the_camera_over_the_person_for_other_draws(seed):
    loose_cam, loose_pid = _colour_distances(generate(12, 3, seed))
    same_cam, same_pid = _colour_distances(generate(12, 3, seed, camera_bias=1.0))
    assert same_cam / same_pid < 0.6
    assert same_cam / same_pid < loose_cam / loose_pid


def test_the_bias_keeps_the_people_and_the_file_plan():
    plain, biased = generate(8, 3, 4), generate(8, 3, 4, camera_bias=0.7)
    assert [(f, n) for f, n, _ in plain] == [(f, n) for f, n, _ in biased]
    assert not np.array_equal(plain[0][2], biased[0][2])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_a_bias_outside_0_1_is_refused_naming_the_option(tmp_path, bad):
    with pytest.raises(ValueError, match=r"--camera-bias must be in \[0, 1\]"):
        prepare_synthetic(tmp_path, ids=4, cams=2, camera_bias=bad, progress=False)
    assert not (tmp_path / "synthetic").exists()


def test_cli_refuses_a_bad_bias_with_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["prepare", "synthetic", "--root", str(tmp_path), "--camera-bias", "2"])
    assert result.exit_code == 2
    assert "--camera-bias must be in [0, 1]" in result.output


def test_cli_records_the_bias_and_regenerates_only_when_it_changes(tmp_path):
    run = ["prepare", "synthetic", "--root", str(tmp_path), "--ids", "4", "--cams", "2", "--height", "32",
           "--width", "16", "--no-progress"]
    assert CliRunner().invoke(app, [*run, "--camera-bias", "0.5"]).exit_code == 0
    manifest = tmp_path / "synthetic" / "manifest.json"
    assert json.loads(manifest.read_text())["options"]["camera_bias"] == 0.5
    image = next((tmp_path / "synthetic").rglob("0001_c*.jpg"))
    biased = image.read_bytes()
    assert CliRunner().invoke(app, run).exit_code == 0  # back to the default: regenerated
    assert json.loads(manifest.read_text())["options"]["camera_bias"] == 0.0
    assert image.read_bytes() != biased


def test_data_prepared_before_the_knob_counts_as_bias_0_and_is_kept(tmp_path):
    prepare_synthetic(tmp_path, ids=4, cams=2, height=32, width=16, progress=False)
    manifest = tmp_path / "synthetic" / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["options"]["camera_bias"]  # what prepare wrote before the knob existed
    manifest.write_text(json.dumps(old))
    report = prepare_synthetic(tmp_path, ids=4, cams=2, height=32, width=16, progress=False)
    assert not report.extracted  # found in place, not generated again
    assert json.loads(manifest.read_text())["options"]["camera_bias"] == 0.0
