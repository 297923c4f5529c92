"""Rank-list pictures, ``evaluate_checkpoint`` / ``hhcl eval`` on a tiny synthetic run, and the VIPeR
real-image path; the numbers are checked against an independent sklearn-per-query computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score
from test_evaluate import TinyNet, manual_features  # the tiny net and its independent features, shared
from typer.testing import CliRunner

import hhcl.evaluation.query_gallery as query_gallery
from hhcl.config import load_config
from hhcl.data import build_dataset, open_split, prepare_synthetic
from hhcl.evaluate import evaluate, evaluate_checkpoint, extract_features
from hhcl.models import build_model, load_model
from hhcl.visualize import save_ranklists
from hhcl.weight_files import save_weights
from hhcl_tui.cli import app


def naive_map_r1(dist, q_pids, g_pids, q_cams, g_cams):
    aps, r1 = [], []
    for i in range(len(q_pids)):
        valid = (g_pids != q_pids[i]) | (g_cams != q_cams[i])
        y = (g_pids == q_pids[i])[valid]
        if y.any():
            aps.append(average_precision_score(y, -dist[i][valid]))
            r1.append(bool(y[np.argsort(dist[i][valid], kind="stable")[0]]))
    return float(np.mean(aps)), float(np.mean(r1))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic dataset and a run directory holding a random-init resnet18 checkpoint with its config."""
    base = tmp_path_factory.mktemp("evalrun")
    root = base / "data"
    prepare_synthetic(root, ids=6, cams=2, seed=0, height=64, width=32, progress=False)
    cfg = load_config("demo", [f"data.root={root}", "data.height=64", "data.width=32"])
    torch.manual_seed(0)
    model = build_model("resnet18", "avg", "none")
    run = base / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(cfg.to_toml())
    save_weights(model, run / "checkpoints" / "best.safetensors", {"config": cfg.to_toml()})
    return run, root


def independent_numbers(run, root, amp="off"):
    model, info = load_model(run, device="cpu")
    data = build_dataset("synthetic", root)
    qs = open_split(data, "query", height=64, width=32, device="cpu", progress=False)
    gs = open_split(data, "gallery", height=64, width=32, device="cpu", progress=False)
    qf, gf = extract_features(model, qs, amp=amp), extract_features(model, gs, amp=amp)
    dist = torch.cdist(qf.double(), gf.double()).pow(2).numpy()
    return naive_map_r1(dist, qs.pids.numpy(), gs.pids.numpy(), qs.camids.numpy(), gs.camids.numpy())


def test_hhcl_eval_cli_json_and_ranklists(tiny_run, tmp_path):
    run, root = tiny_run
    out_json, out_dir = tmp_path / "res" / "eval.json", tmp_path / "ranks"
    result = CliRunner().invoke(
        app,
        ["eval", str(run), "--root", str(root), "--json", str(out_json), "--ranklist", "4", "--out", str(out_dir),
         "--num-queries", "2", "--device", "cpu", "--batch-size", "16", "--rerank"],
    )
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and "R10" in result.output
    data = json.loads(out_json.read_text())
    m_ref, r1_ref = independent_numbers(run, root)
    assert data["dataset"] == "synthetic" and data["mAP"] == pytest.approx(m_ref, abs=1e-5)
    assert data["R1"] == pytest.approx(r1_ref) and len(data["cmc"]) == 100
    assert len(list(out_dir.glob("*.png"))) == 2 and len(data["ranklists"]) == 2
    assert all(Image.open(p).size[1] > 256 for p in data["ranklists"]), "drawn from the originals, not 64x32"
    assert "re-ranked" in result.output and 0 < data["rerank"]["mAP"] <= 1 and len(data["rerank"]["cmc"]) == 100


def test_hhcl_eval_errors(tiny_run, tmp_path):
    run, root = tiny_run
    runner = CliRunner()

    def words(res):
        return " ".join(res.output.split())  # Rich wraps long lines

    res = runner.invoke(app, ["eval", str(run), "--root", str(root), "--ranklist", "3"])
    assert res.exit_code == 2 and "--out" in words(res)
    # a checkpoint or dataset that is not there is the user's to fix: exit 2, as in every command
    res = runner.invoke(app, ["eval", str(tmp_path / "missing"), "--root", str(root)])
    assert res.exit_code == 2 and "does not exist" in words(res)
    res = runner.invoke(app, ["eval", str(run), "--root", str(tmp_path / "nodata"), "--device", "cpu"])
    assert res.exit_code == 2 and "hhcl prepare synthetic" in words(res)


def _one_gpu(monkeypatch):
    """A machine with one CUDA device, as far as the device check can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_hhcl_eval_refuses_a_missing_gpu_and_a_bad_amp(tiny_run, monkeypatch):
    run, root = tiny_run
    _one_gpu(monkeypatch)
    res = CliRunner().invoke(app, ["eval", str(run), "--root", str(root), "--device", "cuda:5"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert " ".join(res.output.split()) == (
        "error: --device cuda:5: this machine has 1 CUDA device (cuda:0); use auto, cpu or cuda:0"
    )
    res = CliRunner().invoke(app, ["eval", str(run), "--root", str(root), "--device", "cpu", "--amp", "fp8"])
    assert res.exit_code == 2 and "--amp fp8 is not allowed: use one of off, bf16, fp16" in " ".join(res.output.split())


def test_evaluate_checkpoint_uses_the_runs_amp(tiny_run, tmp_path, monkeypatch):
    """A run trained with train.amp = bf16 is evaluated under bf16 autocast unless told otherwise."""
    source, root = tiny_run
    model, info = load_model(source)
    info.config.train.amp = "bf16"
    run = tmp_path / "bf16run"
    save_weights(model, run / "checkpoints" / "best.safetensors", {"config": info.config.to_toml()})
    seen = []
    real = query_gallery.extract_features

    def spy(*args, **kwargs):
        seen.append(kwargs["amp"])
        return real(*args, **kwargs)

    monkeypatch.setattr(query_gallery, "extract_features", spy)
    report = evaluate_checkpoint(run, root=root, device="cpu", batch_size=16)
    assert seen == ["bf16", "bf16"]
    m_ref, r1_ref = independent_numbers(run, root, amp="bf16")
    assert report.metrics["mAP"] == pytest.approx(m_ref, abs=1e-5)
    assert report.metrics["ranks"][1] == pytest.approx(r1_ref)
    evaluate_checkpoint(run, root=root, device="cpu", batch_size=16, amp="off")
    assert seen[2:] == ["off", "off"]


def test_viper_real_images_end_to_end(viper_dir, tmp_path):
    """Real VIPeR crops: cam_a queries vs cam_b gallery through the store, a tiny net, metrics, rank lists."""
    data = build_dataset("viper", viper_dir.parent)
    qs = open_split(data, "query", height=32, width=16, device="cpu", cache=False, progress=False)
    gs = open_split(data, "gallery", height=32, width=16, device="cpu", cache=False, progress=False)
    torch.manual_seed(0)
    model = TinyNet().eval()
    result = evaluate(model, qs, gs, batch_size=128)
    qi, gi = qs.gather(torch.arange(len(qs))), gs.gather(torch.arange(len(gs)))
    dist = torch.cdist(manual_features(model, qi).double(), manual_features(model, gi).double()).pow(2).numpy()
    m_ref, r1_ref = naive_map_r1(dist, qs.pids.numpy(), gs.pids.numpy(), qs.camids.numpy(), gs.camids.numpy())
    assert result["num_valid_queries"] == len(qs) == 316
    assert result["mAP"] == pytest.approx(m_ref, abs=1e-5) and result["ranks"][1] == pytest.approx(r1_ref)
    paths = save_ranklists(torch.from_numpy(dist[:2]).float(), [0, 1], qs.samples, gs.samples, topk=5, out_dir=tmp_path)
    assert all(Image.open(p).size[1] > 256 for p in paths), "drawn from the 128x48 originals at 256 px"
