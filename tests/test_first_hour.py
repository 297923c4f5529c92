"""What a new user hits in the first hour on a fresh clone (issue #24 item 5), each with real files and, where
the bug is about one, a real process: ``hhcl monitor`` started before ``hhcl train`` has created the run, a
typo'd key on resume, a stale cache after the data root was re-prepared from another folder, the user's own
camera names in the contact sheets and the Clusters tab, and identity names in the rank-list files."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.pilot import wait_until
from helpers.terminal import Terminal
from PIL import Image
from textual.widgets import RichLog, Static
from typer.testing import CliRunner

from hhcl.config import ConfigError, load_config
from hhcl.run.checkpoint import resume_config
from hhcl.run.events import EpochStart, EventWriter, RunStart
from hhcl_tui.cli import app
from hhcl_tui.commands.monitor import waiting_note
from hhcl_tui.dashboard.app import QUIT, DashboardApp

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]|\x1b[=>]")


def words(text: str) -> str:
    """``text`` with its line wrapping undone (Rich wraps error messages to the terminal's width)."""
    return " ".join(text.split())


def write_run(run_dir: Path, name: str) -> None:
    """A run directory as `hhcl train` starts it: config.toml, then run_start and the first epoch in its log."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(load_config("demo").to_toml())
    with EventWriter(run_dir / "events.jsonl") as writer:
        writer.emit(RunStart(run=name, preset="demo", device="cpu", world_size=1, epochs=2, iters=3,
                             start_epoch=0, start_iter=0))
        writer.emit(EpochStart(epoch=0, lr=3.5e-4))


# ---------------------------------------------------------------- a. hhcl monitor before hhcl train
def shown(dashboard: DashboardApp, wid: str) -> str:
    content = dashboard.query_one(f"#{wid}", Static).content
    return getattr(content, "plain", str(content))


def log_text(dashboard: DashboardApp) -> str:
    return " ".join(strip.text.rstrip() for strip in dashboard.query_one("#log", RichLog).lines)


def test_a_missing_run_is_waited_for_only_where_a_person_watches(tmp_path: Path, monkeypatch) -> None:
    """Off a terminal (scripts, CliRunner) a missing run is still a usage error, now naming the close names;
    --wait on a path no `hhcl train` could be creating is refused; the note says how to start the run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "market-1").mkdir(parents=True)
    result = runner.invoke(app, ["monitor", "runs/markt-1"])
    assert result.exit_code == 2
    assert "'runs/markt-1' does not exist (did you mean runs/market-1?)" in words(result.output)
    assert "--wait" in words(result.output)
    result = runner.invoke(app, ["monitor", str(tmp_path / "no" / "such" / "runs" / "x"), "--wait"])
    assert result.exit_code == 2 and f"nor does {tmp_path / 'no' / 'such'}" in words(result.output)
    note = waiting_note(Path("runs/market1"), True)
    assert note == ("waiting for runs/market1 to appear: start it with `hhcl train --preset NAME --name market1` "
                    "(did you mean runs/market-1?)")
    assert "--runs-dir exp --name r1" in waiting_note(Path("exp/r1"), True)  # exp/ is made by hhcl train


@pytest.mark.asyncio
async def test_the_dashboard_waits_for_the_run_then_shows_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_dir = Path("runs/first")
    dashboard = DashboardApp(run_dir, poll_interval=0.05, wait_note=waiting_note(run_dir, True))
    async with dashboard.run_test(size=(160, 32)) as pilot:
        await wait_until(pilot, lambda: "q quits" in log_text(dashboard))
        assert "waiting for runs/first to appear: start it with `hhcl train --preset NAME --name first`; q quits" \
            in log_text(dashboard)
        assert dashboard.sub_title == "first · waiting"
        write_run(run_dir, "first-hour-run")
        await wait_until(pilot, lambda: "first-hour-run" in shown(dashboard, "run"))
        assert "appeared: showing the run" in log_text(dashboard)
        assert shown(dashboard, "epoch-text").startswith("epoch 1/2")
        await pilot.press("q")
    assert dashboard.return_value == QUIT


@pytest.mark.timeout(120)
def test_hhcl_monitor_in_a_terminal_waits_for_hhcl_train(tmp_path: Path) -> None:
    """`hhcl monitor runs/tiny-run` typed a few seconds before `hhcl train` creates the run: the real command
    in a terminal (a pty) says it is waiting, with a near name, and shows the run once it appears. Before:
    it exited at once with "does not exist"."""
    (tmp_path / "runs" / "tiny-runs").mkdir(parents=True)  # an older run: a near name of the one asked for
    terminal = Terminal([sys.executable, "-m", "hhcl", "monitor", "runs/tiny-run"], cwd=tmp_path,
                        env={**os.environ, "TERM": "xterm-256color"})
    process = terminal.process

    def screen() -> str:
        return " ".join(ANSI.sub("", terminal.output()).split())

    def wait_for(text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in screen() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert text in screen(), f"{text!r} not shown (exit code {process.poll()}): {screen()[-1500:]}"

    try:
        wait_for("waiting for runs/tiny-run to appear")
        wait_for("did you mean runs/tiny-runs?")
        time.sleep(1.0)  # the run appears a moment later, as `hhcl train` creates it
        assert process.poll() is None
        write_run(tmp_path / "runs" / "tiny-run", "first-hour-run")
        wait_for("first-hour-run")
        wait_for("appeared: showing the run")
        terminal.type(b"q")
        assert process.wait(timeout=30) == 0
    finally:
        terminal.kill()


# ---------------------------------------------------------------- b. a typo on resume
def test_a_typo_on_resume_is_an_unknown_key_with_the_near_one(tmp_path: Path) -> None:
    """Before: "'train.epoch' cannot change on resume", as if the key existed."""
    run_dir = tmp_path / "runs" / "r"
    write_run(run_dir, "r")
    result = runner.invoke(app, ["train", "--resume", str(run_dir), "--set", "train.epoch=5"])
    assert result.exit_code == 2
    text = words(result.output)
    assert "unknown config key 'train.epoch'. Did you mean 'train.epochs'?" in text
    assert "cannot change on resume" not in text
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'. Did you mean 'optim.lr'?"):
        resume_config(run_dir, ["optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match="'optim.lr' cannot change on resume"):  # a real key: the resume rule
        resume_config(run_dir, ["optim.lr=1e-4"])
    assert resume_config(run_dir, ["train.epochs=5"]).train.epochs == 5


# ---------------------------------------------------------------- c. a stale cache after re-preparing the root
def noise_crops(folder: Path, seed: int) -> None:
    """Three crops per camera sub-folder, the same file names whatever the ``seed``, different pixels."""
    rng = np.random.default_rng(seed)
    for cam in ("cam1", "cam2"):
        (folder / cam).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(folder / cam / f"{k}.png")


def test_dry_run_says_a_cache_of_another_folder_will_be_rebuilt(tmp_path: Path) -> None:
    """`hhcl prepare folder --src A --root R`, then `--src B` (same file names, other pictures) at another
    size: the 64x32 cache still holds A's pictures. Before, --dry-run called it "ready" and training read A's
    pictures for B's files; and re-preparing at the cache's own size kept it."""
    from hhcl.data import build_dataset, open_split
    from hhcl.data.store import cache_paths, load_image

    noise_crops(tmp_path / "A", seed=0)
    noise_crops(tmp_path / "B", seed=1)
    root = tmp_path / "data"

    def prepare(src: str, height: int, width: int) -> None:
        result = runner.invoke(app, ["prepare", "folder", "--src", str(tmp_path / src), "--root", str(root),
                                     "--height", str(height), "--width", str(width), "--no-progress"])
        assert result.exit_code == 0, result.output

    def dry_run() -> str:
        result = runner.invoke(app, ["train", "--preset", "demo", "--root", str(root), "--runs-dir",
                                     str(tmp_path / "runs"), "--dry-run", "--set", "data.dataset=folder",
                                     "--set", "data.height=64", "--set", "data.width=32", "--set",
                                     "data.batch_size=4", "--set", "data.num_instances=2", "--set", "model.bn_group=4"])
        assert result.exit_code == 0, result.output
        return words(result.output)

    def cached_is(src: str) -> bool:
        """Whether every row of the 64x32 train cache is the picture of folder ``src``'s file of that name."""
        data = build_dataset("folder", root)
        rows = np.load(cache_paths(data.root, "train", 64, 32)[0])
        originals = [tmp_path / src / Path(s.path).parent.name / Path(s.path).name for s in data.train]
        return all(np.array_equal(row, load_image(str(p), 64, 32)) for row, p in zip(rows, originals, strict=True))

    prepare("A", 64, 32)
    assert "cache 64x32: ready" in dry_run()
    prepare("B", 128, 64)
    text = dry_run()
    assert "cache 64x32: will be rebuilt on first use (" in text and "the train cache holds other images" in text
    assert "ready" not in text
    store = open_split(build_dataset("folder", root), "train", height=64, width=32, device="cpu", progress=False)
    assert cached_is("B") and len(store) == 6  # training now reads B's pictures, from a rebuilt cache
    assert "cache 64x32: ready" in dry_run()
    prepare("A", 64, 32)  # back to A at the cache's own size: prepare itself rebuilds it
    assert cached_is("A") and "cache 64x32: ready" in dry_run()


# ---------------------------------------------------------------- d, e. the user's camera and identity names
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank")
CAM_PATTERN = "^(?P<cam>[ab])_"


def named_crops(dst: Path) -> None:
    """Synthetic people as a user's crops: unlabelled ``train/<cam>_<frame>.jpg`` and identity folders
    ``query|gallery/<person>/<cam>_<frame>.jpg``; the camera ("a" or "b") is only in the file name."""
    from hhcl.data.synthetic import generate

    items = []
    for folder, name, img in generate(12, 2, 3):
        pid, cam = (int(g) for g in re.match(r"^(-?\d+)_c(\d+)", name).groups())  # type: ignore[union-attr]
        if folder == "bounding_box_train" or pid > 0:
            items.append((folder, pid, "ab"[cam - 1], name.split("_", 2)[2], img))
    people = dict(zip(sorted({pid for folder, pid, *_ in items if folder != "bounding_box_train"}), PEOPLE, strict=True))
    for folder, pid, cam, frame, img in items:
        sub = "train" if folder == "bounding_box_train" else f"{'query' if folder == 'query' else 'gallery'}/{people[pid]}"
        (dst / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(dst / sub / f"{cam}_{frame}", quality=95)


@pytest.fixture(scope="module")
def named_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root, run) of a tiny real training on :func:`named_crops`, prepared with --cam-pattern."""
    from helpers.tiny_run import TINY

    base = tmp_path_factory.mktemp("named")
    named_crops(base / "crops")
    result = runner.invoke(app, ["prepare", "folder", "--src", str(base / "crops"), "--root", str(base / "data"),
                                 "--cam-pattern", CAM_PATTERN, "--height", "64", "--width", "32", "--no-progress"])
    assert result.exit_code == 0, result.output
    sets = [*TINY, "model.bn_group=8", "data.dataset=folder", "train.epochs=1", "train.iters=2"]
    result = runner.invoke(app, ["train", "--preset", "demo", "--root", str(base / "data"), "--runs-dir",
                                 str(base / "runs"), "--name", "named", *(a for s in sets for a in ("--set", s))])
    assert result.exit_code == 0, result.output
    return base / "data", base / "runs" / "named"


def test_contact_sheets_and_the_clusters_tab_name_the_cameras_as_the_user_did(named_run, tmp_path: Path) -> None:
    """Cameras "a" and "b" (from --cam-pattern) are "a" and "b" in `hhcl clusters` and the Clusters tab, not
    "cam 1" and "cam 2"; the camera of each image is the letter its file name starts with."""
    from hhcl.run.labels import read_train_index, save_epoch_labels
    from hhcl.run.layout import RunLayout
    from hhcl_tui.dashboard.clusters import load_gallery, row_caption

    root, run = named_run
    layout = RunLayout(run)
    index = read_train_index(layout)  # written by the training run
    labels = np.arange(len(index.paths)) % 3  # three clusters of both cameras, whatever this tiny run found
    labels[-2:] = -1
    save_epoch_labels(layout, 0, labels)
    gallery = load_gallery(run)
    assert [row.cameras for row in gallery.rows] == [["a", "b"]] * 3
    assert "\ncams a b\n" in row_caption(1, gallery.rows[0]).plain
    result = runner.invoke(app, ["clusters", str(run), "--out", str(tmp_path / "sheets")])
    assert result.exit_code == 0, result.output
    listing = json.loads((tmp_path / "sheets" / "clusters.json").read_text())["clusters"]
    assert [c["camera_names"] for c in listing] == [["a", "b"]] * 3
    for cluster in listing:
        assert cluster["shown_cameras"] == [Path(p).name[0] for p in cluster["shown"]]
    assert index.cam_names == ["a", "b"] and index.camera_names() == ["a", "b"]
    assert [index.cam_names[c] for c in index.camids] == [Path(p).name[0] for p in index.paths]


def test_a_train_index_without_camera_names_still_reads(tmp_path: Path) -> None:
    """labels/train.tsv as runs before the camera column wrote it: cameras are numbered, as they were."""
    from hhcl.run.labels import read_train_index
    from hhcl.run.layout import RunLayout

    layout = RunLayout(tmp_path / "run")
    layout.labels.mkdir(parents=True)
    (layout.labels / "train.tsv").write_text("path\tpid\tcamid\nx/0.jpg\t-1\t0\nx/1.jpg\t-1\t2\n")
    index = read_train_index(layout)
    assert index.paths == ["x/0.jpg", "x/1.jpg"] and index.camids.tolist() == [0, 2] and index.cam_names is None
    assert index.camera_names() == ["cam 1", "cam 2", "cam 3"]


def test_rank_lists_are_named_by_the_users_identity_folders(named_run, tmp_path: Path) -> None:
    """`hhcl eval RUN --ranklist K --out DIR` names each picture (and captions its query) with the identity
    folder ("alice", ...) and the query's file stem. Before: q<index>_pid<internal number>_hit.png."""
    from hhcl.data import build_dataset

    root, run = named_run
    out = tmp_path / "ranks"
    result = runner.invoke(app, ["eval", str(run), "--ranklist", "3", "--out", str(out), "--num-queries", "4",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    data = build_dataset("folder", root)
    expected = {f"{Path(q.path).parent.name}_{Path(q.path).stem}" for q in data.query}
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == 4
    for number, name in enumerate(files, 1):
        match = re.fullmatch(rf"q{number:03d}_(.+)_(hit|miss)\.png", name)
        assert match and match.group(1) in expected, name
    assert {name.split("_")[1] for name in files} <= set(PEOPLE)
    from hhcl.visualize import rank_rows  # what each picture shows, its caption included

    rows = rank_rows(torch.rand(len(data.query), len(data.gallery)), range(len(data.query)), data.query,
                     data.gallery, topk=2, identities=data.identities)
    assert [row.query_caption for row in rows] == [f"query {Path(q.path).parent.name}" for q in data.query]
    odd = rank_rows(torch.zeros(1, 1), [0], [data.query[0]._replace(path="/x/it's a/b c?.jpg")], data.gallery[:1],
                    topk=1, identities={data.query[0].pid: "zoë / x"})
    assert odd[0].name.startswith("q001_zoë_x_b_c_")  # safe in a file name, the name still readable
