"""Your own cameras, end to end: ``hhcl prepare folder`` on the layouts people have (and loud refusals of the
rest), training on unlabelled crops (what to do next, the dry run's data check, a failed ImageNet download that
leaves no run behind), starting from a re-ID model (our runs and checkpoints, an export, the authors' .pth.tar),
and ``hhcl eval`` on the data the run recorded, wherever it is started from."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data_fixtures import write_image
from helpers.own_cameras import write_crops
from helpers.tiny_run import TINY
from safetensors.torch import load_file
from typer.testing import CliRunner

from hhcl.config import load_config
from hhcl.data import build_dataset, prepare_dataset, prepare_synthetic
from hhcl.data.datasets import DatasetFormatError
from hhcl.engine import Hook, Trainer
from hhcl.evaluation.run import EvalError, eval_data_root
from hhcl.export import export
from hhcl.models import build_model, resolve_pretrained
from hhcl.run.events import read_raw_events
from hhcl.weight_files import CheckpointError, save_weights
from hhcl_tui.cli import app

runner = CliRunner()
HW = {"height": 64, "width": 32}
RUN_SETS = [*TINY, "model.bn_group=8", "data.dataset=folder", "train.epochs=1", "train.iters=2"]


def words(result) -> str:
    return " ".join(result.output.split())


def table_rows(output: str) -> list[list[str]]:
    """The cells of every row of the Rich tables in ``output``."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if line.startswith("│")]


def sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


# --------------------------------------------------------------------------------------------- prepare folder
def test_identity_folders_in_query_and_gallery_are_read_with_their_cameras(tmp_path: Path) -> None:
    truth = write_crops(tmp_path / "crops", ids=6, cams=2, seed=1)
    result = runner.invoke(
        app, ["prepare", "folder", "--src", str(tmp_path / "crops"), "--root", str(tmp_path / "data"),
              "--height", "64", "--width", "32", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    ds = build_dataset("folder", tmp_path / "data")
    top = ds.top
    assert top is not None
    for split in ("query", "gallery"):  # every labelled image, with its person and camera, nothing dropped
        got = {(str(Path(s.path).relative_to(top)), s.pid, s.camid) for s in ds.split(split)}
        assert len(got) == len(truth[split]) > 0
        people = sorted({p for _, p, _ in truth["query"] + truth["gallery"]}, key=lambda n: int(n[6:]))
        expected = {(rel, people.index(person), int(cam[3:]) - 1) for rel, person, cam in truth[split]}
        assert got == expected
    assert {Path(s.path).relative_to(top).parts[1] for s in ds.train} == {"cam1", "cam2"}
    assert [s.pid for s in ds.train] == list(range(len(truth["train"])))  # unlabelled: one id per image
    assert "cameras found" in result.output and "unlabelled" in result.output
    rows = table_rows(result.output)
    for cam in ("cam1", "cam2"):  # each camera's id and image count per split is printed
        n = {s: str(sum(c == cam for *_, c in truth[s])) for s in truth}
        camid = str(int(cam[3:]) - 1)
        assert ["train", cam, camid, n["train"], "", ""] in rows
        assert ["query/gallery", cam, camid, "", n["query"], n["gallery"]] in rows


def test_camera_pattern_named_group_and_identity_folders_without_camera_level(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for k, name in enumerate(["lobby-7_a.jpg", "gate-12_b.jpg", "lobby-07_c.jpg"]):
        write_image(src / "day1" / name, seed=k)
    write_image(src / "query" / "alice" / "gate-12_q.jpg", seed=5)
    write_image(src / "gallery" / "alice" / "lobby-7_g.jpg", seed=6)
    write_image(src / "gallery" / "bob" / "gate-12_g.jpg", seed=7)
    report = prepare_dataset(
        "folder", src, tmp_path / "data", options={"cam_pattern": r"(?P<site>[a-z]+)-(?P<cam>\d+)_"},
        progress=False, height=16, width=8,
    )
    assert report.counts == {"train": 3, "query": 1, "gallery": 2}
    train_cams = {(c.name, c.camid, c.images["train"]) for c in report.cameras if c.group == "train"}
    assert train_cams == {("7", 0, 2), ("12", 1, 1)}  # "07" and "7" are one camera; 7 sorts before 12
    ds = build_dataset("folder", tmp_path / "data")
    # query + gallery share their ids: alice 0, bob 1; camera 7 -> 0, 12 -> 1
    assert [(Path(s.path).name, s.pid, s.camid) for s in ds.query] == [("gate-12_q.jpg", 0, 1)]
    assert [(Path(s.path).name, s.pid, s.camid) for s in ds.gallery] == [("lobby-7_g.jpg", 0, 0), ("gate-12_g.jpg", 1, 1)]


def test_labelled_train_in_identity_folders_is_relabelled(tmp_path: Path) -> None:
    top = tmp_path / "folder" / "images"
    for person, cam, k in [("p10", "c2", 0), ("p2", "c1", 1), ("p10", "c1", 2)]:
        write_image(top / "bounding_box_train" / person / cam / f"{k}.jpg", seed=k)
    ds = build_dataset("folder", tmp_path)
    assert [(Path(s.path).relative_to(top).as_posix(), s.pid, s.camid) for s in ds.train] == [
        ("bounding_box_train/p10/c1/2.jpg", 1, 0),
        ("bounding_box_train/p10/c2/0.jpg", 1, 1),
        ("bounding_box_train/p2/c1/1.jpg", 0, 0),  # p2 < p10 in natural order
    ]


@pytest.mark.parametrize(
    ("files", "where", "problem"),
    [
        (["train/cam1/a.jpg", "query/7/cam1/q.jpg"], "", "has query/ but no gallery/"),
        (["cam1/a.jpg", "query/x.jpg", "gallery/0001_c1_g.jpg"], "query/x.jpg", "is not a Market name"),
        (["cam1/a.jpg", "query/7/q.jpg", "gallery/7/g.jpg"], "query/7", "holds images but no camera"),
        (["cam1/a.jpg", "query/7/c1/d/q.jpg", "gallery/7/c1/g.jpg"], "query/7/c1/d", "a folder too deep"),
        (["cam1/a.jpg", "query/0001_c1_q.jpg", "gallery/1/c2/g.jpg"], "", "both must use the same layout"),
        (["cam1/a.jpg", "loose.jpg"], "", "holds both images (loose.jpg, ...) and sub-folders (cam1/, ...)"),
        (["train/cam1/a.jpg", "extra/b.jpg"], "extra", "is not part of the dataset"),
        (["query/7/c1/q.jpg", "gallery/7/c1/g.jpg", "gallery/7/c2/q.jpg"], "", "no train images"),
    ],
)
def test_unrecognised_layouts_are_refused_naming_the_folder_and_showing_the_layouts(
    tmp_path: Path, files: list[str], where: str, problem: str
) -> None:
    src = tmp_path / "src"
    for k, rel in enumerate(files):
        write_image(src / rel, seed=k)
    result = runner.invoke(app, ["prepare", "folder", "--src", str(src), "--root", str(tmp_path / "data"), "--no-progress"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert f"error: {src / where}".rstrip("/") in out and problem in out
    assert "accepted layouts" in out and "<pid>/<cam>/<img>" in out and "Traceback" not in out
    assert not (tmp_path / "data" / "folder" / "manifest.json").exists()


def test_camera_pattern_errors_name_the_pattern(tmp_path: Path) -> None:
    write_image(tmp_path / "folder" / "images" / "cam1_a.jpg", seed=0)
    with pytest.raises(DatasetFormatError, match="has no group"):
        build_dataset("folder", tmp_path, cam_pattern=r"cam\d")
    with pytest.raises(DatasetFormatError, match="not a valid regular expression"):
        build_dataset("folder", tmp_path, cam_pattern=r"cam(\d")


# ------------------------------------------------------------------------------------------ training, unlabelled
@pytest.fixture(scope="module")
def own_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Unlabelled crops of 3 cameras, prepared and trained on for a tiny run through the CLI: (data root, run,
    the command's output)."""
    base = tmp_path_factory.mktemp("own")
    write_crops(base / "crops", labelled=False)
    prepare_dataset("folder", base / "crops", base / "data", progress=False, **HW)
    result = runner.invoke(
        app, ["train", "--preset", "demo", "--root", str(base / "data"), "--runs-dir", str(base / "runs"),
              "--name", "mine", *sets(*RUN_SETS)]
    )
    assert result.exit_code == 0, result.output
    return base / "data", base / "runs" / "mine", result.output


def test_an_unlabelled_run_suggests_what_works_not_eval(own_run) -> None:
    root, run, output = own_run
    text = " ".join(output.split())
    assert "hhcl eval" not in text
    for command in ("hhcl search", "hhcl embed", "hhcl export", "hhcl monitor"):
        assert f"{command} {run}" in text
    result = runner.invoke(app, ["eval", str(run), "--device", "cpu"])  # and eval says why it cannot
    assert result.exit_code == 2 and "no query/gallery split" in words(result)


def test_a_failed_imagenet_download_leaves_no_run_directory(tmp_path, monkeypatch, own_run) -> None:
    root = own_run[0]

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty: nothing cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = runner.invoke(
        app, ["train", "--preset", "demo", "--root", str(root), "--runs-dir", str(tmp_path / "runs"), "--name", "x",
              *sets(*RUN_SETS, "model.pretrained=imagenet")]
    )
    assert result.exit_code == 2, result.output
    assert "ImageNet weights for resnet18 could not be downloaded" in words(result)
    assert not (tmp_path / "runs" / "x").exists()


def test_dry_run_checks_the_folder_dataset(tmp_path, own_run) -> None:
    root = own_run[0]
    args = ["train", "--preset", "demo", "--runs-dir", str(tmp_path), "--dry-run", *sets(*RUN_SETS)]
    result = runner.invoke(app, [*args, "--root", str(root)])
    assert result.exit_code == 0, result.output
    n = len(build_dataset("folder", root).train)
    assert f"train {n} images from 3 cameras; no query/gallery, so the run is never evaluated; cache 64x32: ready" in words(result)
    broken = tmp_path / "broken"
    write_image(broken / "folder" / "images" / "query" / "x.jpg", seed=0)
    result = runner.invoke(app, [*args, "--root", str(broken)])
    assert result.exit_code == 2 and "has query/ but no gallery/" in words(result)


# ------------------------------------------------------------------------------- starting from a re-ID model
class StartWeights(Hook):
    """Keeps a copy of the model's weights as the run starts (after set-up, before the first step)."""

    def __init__(self) -> None:
        self.trainer: Trainer | None = None
        self.weights: dict[str, torch.Tensor] = {}

    def on_event(self, event) -> None:
        if event.type == "run_start" and self.trainer is not None:
            self.weights = {k: v.clone() for k, v in self.trainer.model.state_dict().items()}


def assert_same_weights(model_state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(model_state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(model_state[key].cpu(), value), key


def test_a_run_starts_from_another_run_and_records_it(tmp_path, monkeypatch, own_run) -> None:
    root, source, _ = own_run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").symlink_to(root, target_is_directory=True)
    cfg = load_config("demo", [*RUN_SETS, "data.root=data", f"model.pretrained={source}", "train.iters=1"])
    hook = StartWeights()
    trainer = Trainer(cfg, tmp_path / "runs" / "adapted", hooks=[hook])
    hook.trainer = trainer
    assert trainer.fit().status == "ok"
    expected = load_file(source / "checkpoints" / "last.safetensors")  # unlabelled: no best, so the last
    assert_same_weights(hook.weights, expected)
    start = next(e for e in read_raw_events(tmp_path / "runs" / "adapted") if e["type"] == "run_start")
    assert any(str(source / "checkpoints" / "last.safetensors") in n and "re-ID model" in n for n in start["notes"])
    recorded = (tmp_path / "runs" / "adapted" / "config.toml").read_text()
    assert f'root = "{tmp_path / "data"}"' in recorded  # the relative root, recorded absolute


def test_checkpoint_files_export_and_authors_format_all_start_a_model(tmp_path, own_run) -> None:
    _, source, _ = own_run
    expected = load_file(source / "checkpoints" / "last.safetensors")
    exported = export(source, "safetensors", tmp_path / "mine.safetensors").path
    authors = tmp_path / "model_best.pth.tar"
    state = {f"module.{k}": v for k, v in expected.items()}
    state["module.classifier.weight"] = torch.randn(7, 512)  # a classifier is never loaded
    torch.save({"state_dict": state, "epoch": 50, "best_mAP": np.float64(0.5)}, authors)
    for given, file in [
        (source / "checkpoints" / "last.state.pt", source / "checkpoints" / "last.safetensors"),
        (source / "checkpoints" / "last.safetensors", source / "checkpoints" / "last.safetensors"),
        (exported, exported),
        (authors, authors),
    ]:
        pretrained = resolve_pretrained(str(given), arch="resnet18", pooling="avg", num_features=0)
        assert pretrained.kind == "re-id model" and pretrained.path == file
        model = build_model("resnet18", "avg", pretrained.weights)
        assert_same_weights(model.state_dict(), expected)


def test_architecture_and_head_mismatches_are_refused_before_a_run_exists(tmp_path, own_run) -> None:
    root, source, _ = own_run
    base = ["train", "--preset", "demo", "--root", str(root), "--runs-dir", str(tmp_path / "runs"), "--name", "x"]
    for extra, text in [
        (["model.arch=resnet34"], "has model.arch = resnet18, this run has model.arch = resnet34"),
        (["model.pooling=gem"], "has model.pooling = avg, this run has model.pooling = gem"),
        (["model.num_features=64"], "has model.num_features = 0, this run has model.num_features = 64"),
    ]:
        result = runner.invoke(app, [*base, *sets(*RUN_SETS, f"model.pretrained={source}", *extra)])
        assert result.exit_code == 2, result.output
        assert text in words(result) and str(source / "checkpoints" / "last.safetensors") in words(result)
        assert not (tmp_path / "runs" / "x").exists()
    backbone = tmp_path / "resnet18-f37072fd.pth"  # torchvision names; only the key names tell the architecture
    names = torch.nn.Module.state_dict(__import__("torchvision").models.resnet18(weights=None))
    torch.save({k: torch.zeros(1) for k in names}, backbone)
    with pytest.raises(CheckpointError, match=rf"'{backbone}' has model.arch = resnet18, this run has model.arch = resnet34"):
        resolve_pretrained(str(backbone), arch="resnet34", pooling="avg", num_features=0)
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        resolve_pretrained(str(tmp_path), arch="resnet18", pooling="avg", num_features=0)


# --------------------------------------------------------------------------------------- eval: the run's data
@pytest.fixture(scope="module")
def two_roots(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two data roots, each holding a different ``synthetic`` dataset, and a run whose config records the first."""
    base = tmp_path_factory.mktemp("roots")
    recorded, other = base / "recorded", base / "elsewhere" / "data"
    prepare_synthetic(recorded, ids=6, cams=2, seed=0, progress=False, **HW)
    prepare_synthetic(other, ids=10, cams=2, seed=1, progress=False, **HW)
    cfg = load_config("demo", [f"data.root={recorded}", "data.height=64", "data.width=32"])
    torch.manual_seed(0)
    run = base / "run"
    save_weights(build_model("resnet18", "avg", "none"), run / "checkpoints" / "best.safetensors", {"config": cfg.to_toml()})
    (run / "config.toml").write_text(cfg.to_toml())
    return recorded, other, run


def _eval_json(args: list[str], out: Path) -> tuple[dict, str]:
    result = runner.invoke(app, ["eval", *args, "--device", "cpu", "--batch-size", "16", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), words(result)


def test_eval_uses_the_runs_data_root_from_any_folder(two_roots, tmp_path, monkeypatch) -> None:
    recorded, other, run = two_roots
    monkeypatch.chdir(other.parent)  # ./data here holds another dataset of the same name
    monkeypatch.setenv("HHCL_DATA", str(other))
    data, shown = _eval_json([str(run)], tmp_path / "a.json")
    assert data["data_root"] == str(recorded) and data["data_root_from"] == "run"
    assert f"data: {recorded}/synthetic (the run's data.root)" in shown
    assert data["num_query"] == len(build_dataset("synthetic", recorded).query)
    assert data["num_query"] != len(build_dataset("synthetic", other).query)
    data, _ = _eval_json([str(run), "--root", str(other)], tmp_path / "b.json")  # an override is followed, and said
    assert data["data_root"] == str(other) and data["data_root_from"] == "override"
    assert data["num_query"] == len(build_dataset("synthetic", other).query)


def test_a_relative_recorded_root_is_taken_from_the_current_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo", ["data.root=data"])  # a run from before roots were recorded absolute
    with pytest.raises(EvalError, match=f"the run's data.root {tmp_path / 'data'} does not exist here"):
        eval_data_root(None, cfg, "fallback", "synthetic")
    (tmp_path / "data").mkdir()
    assert eval_data_root(None, cfg, "fallback", "synthetic") == (tmp_path / "data", "run")
    assert eval_data_root("mine", cfg, "fallback", "synthetic") == (tmp_path / "mine", "override")
    assert eval_data_root(None, None, "fallback", "synthetic") == (tmp_path / "fallback", "default")


def test_eval_of_a_copied_run_names_the_missing_root_and_the_override(two_roots, tmp_path) -> None:
    recorded, _, run = two_roots
    copied = tmp_path / "copied"
    (copied / "checkpoints").mkdir(parents=True)
    cfg = load_config(run / "config.toml", [f"data.root={tmp_path / 'gone'}"])
    weights = load_file(run / "checkpoints" / "best.safetensors")
    model = build_model("resnet18", "avg", "none")
    model.load_state_dict(weights)
    save_weights(model, copied / "checkpoints" / "best.safetensors", {"config": cfg.to_toml()})
    result = runner.invoke(app, ["eval", str(copied), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert f"the run's data.root {tmp_path / 'gone'} does not exist here" in words(result) and "--root" in words(result)
    data, shown = _eval_json([str(copied), "--root", str(recorded)], tmp_path / "c.json")
    assert data["data_root"] == str(recorded) and data["data_root_from"] == "override"
    assert f"data: {recorded}/synthetic (--root)" in shown


def test_dry_run_refuses_camera_aware_memory_on_one_camera(tmp_path, own_run) -> None:
    """O2CAP and memory.camera_aware split clusters by camera: a one-camera folder dataset is refused by the dry
    run with the training's own message, a multi-camera one passes."""
    write_crops(tmp_path / "crops", cams=1, labelled=False)
    prepare_dataset("folder", tmp_path / "crops", tmp_path / "one", progress=False, **HW)
    args = ["train", "--preset", "demo", "--runs-dir", str(tmp_path), "--dry-run", *sets(*RUN_SETS)]
    for key in ("memory.mode=O2CAP", "memory.camera_aware=true"):
        result = runner.invoke(app, [*args, "--set", key, "--root", str(tmp_path / "one")])
        assert result.exit_code == 2, result.output
        assert "needs camera ids" in words(result) and "--cam-pattern" in words(result)
        assert runner.invoke(app, [*args, "--set", key, "--root", str(own_run[0])]).exit_code == 0
    assert runner.invoke(app, [*args, "--root", str(tmp_path / "one")]).exit_code == 0  # HHCL needs no cameras
