"""Export and embed: ONNX (onnxruntime, CPU) and TorchScript (fresh process) parity, load_embedder, hhcl embed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import hhcl
from hhcl.config import Config
from hhcl.data import CorruptImageError
from hhcl.export import EmbedError, ExportError, embed, export, load_embedder
from hhcl.models import build_model, load_model
from hhcl.weight_files import CheckpointError, save_weights
from hhcl_tui.cli import app

H, W = 64, 32
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding a small trained-looking resnet18/GeM model at 64x32."""
    torch.manual_seed(0)
    model = build_model("resnet18", "gem", "none").train()
    with torch.no_grad():
        model(torch.randn(6, 3, H, W))
    cfg = Config()
    cfg.model.arch, cfg.model.pooling = "resnet18", "gem"
    cfg.data.height, cfg.data.width = H, W
    run = tmp_path_factory.mktemp("export") / "run"
    save_weights(
        model.eval(),
        run / "checkpoints" / "best.safetensors",
        {"config": cfg.to_toml(), "epoch": "3", "mAP": "0.1", "format": "hhcl"},
    )
    return run


@pytest.fixture(scope="module")
def onnx_file(run_dir: Path) -> tuple[Path, float]:
    out = run_dir.parent / "model.onnx"
    return out, export(run_dir, "onnx", out).worst_cosine


_MODELS: dict[Path, torch.nn.Module] = {}


def _reference(run: Path, images: torch.Tensor) -> torch.Tensor:
    """Independent expectation: the PyTorch model on hand-normalised images."""
    if run not in _MODELS:
        _MODELS[run] = load_model(run)[0]
    with torch.no_grad():
        return _MODELS[run]((images - MEAN) / STD)


def _min_cos(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(torch.as_tensor(a).detach(), b, dim=1).min())


IMAGES = torch.rand(5, 3, H, W, generator=torch.Generator().manual_seed(11))


def test_onnx_round_trip_onnxruntime_cpu(run_dir: Path, onnx_file: tuple[Path, float]) -> None:
    import onnx
    import onnxruntime as ort

    out, worst = onnx_file
    assert worst >= 0.9999
    proto = onnx.load(str(out))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (meta["input_height"], meta["input_width"], meta["arch"]) == ("64", "32", "resnet18")
    assert meta["mean"] == "[0.485, 0.456, 0.406]" and meta["source"].endswith("best.safetensors")
    assert meta["hhcl_version"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": IMAGES.numpy()})[0]  # batch 5: the batch axis is dynamic
    assert got.shape == (5, 512)
    assert _min_cos(got, _reference(run_dir, IMAGES)) >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_torchscript_round_trip_in_fresh_process(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.ts"
    assert export(run_dir, "torchscript", out).worst_cosine >= 0.9999
    torch.save(IMAGES, tmp_path / "x.pt")
    script = (
        "import json, sys, torch\n"
        "extra = {'hhcl.json': ''}\n"
        f"m = torch.jit.load({str(out)!r}, _extra_files=extra)\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save(m(x), {str(tmp_path / 'y.pt')!r})\n"
        "print(json.loads(extra['hhcl.json'])['input_height'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "64"
    got = torch.load(tmp_path / "y.pt")
    assert _min_cos(got, _reference(run_dir, IMAGES)) >= 0.9999


def test_safetensors_export_reloads(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    assert export(run_dir, "safetensors", out).worst_cosine >= 0.9999
    model, info = load_model(out)
    assert (info.arch, info.height, info.width) == ("resnet18", H, W)
    assert info.metadata["hhcl_version"] and info.metadata["input_height"] == "64"
    with torch.no_grad():
        torch.testing.assert_close(model((IMAGES - MEAN) / STD), _reference(run_dir, IMAGES))


def test_export_errors(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((run_dir / "checkpoints" / "best.safetensors").read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        export(bad, "onnx", tmp_path / "x.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        export(tmp_path / "missing", "onnx", tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="unknown export format"):
        export(run_dir, "tflite", tmp_path / "x.tflite")


def _pil(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_load_embedder_on_pil_images_and_tensors(run_dir: Path, onnx_file: tuple[Path, float]) -> None:
    assert hhcl.load_embedder is load_embedder  # the lazy top-level re-export
    embedder = load_embedder(run_dir, device="cpu")
    assert (embedder.height, embedder.width) == (H, W)
    images = [_pil(1, (48, 128)), _pil(2, (20, 50))]
    resized = np.stack([np.asarray(i.resize((W, H), Image.BICUBIC)) for i in images])
    pixels = torch.from_numpy(resized).permute(0, 3, 1, 2)
    expected = _reference(run_dir, pixels.float() / 255)
    torch.testing.assert_close(embedder(images), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedder(pixels), expected, rtol=1e-5, atol=1e-6)  # uint8 tensor
    torch.testing.assert_close(embedder(images[0]), expected[:1], rtol=1e-5, atol=1e-6)
    assert _min_cos(load_embedder(onnx_file[0])(images), expected) >= 0.9999
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        embedder(torch.zeros(2, 1, H, W))


def test_embed_folder_sorted_with_file_list(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    (folder / "b").mkdir(parents=True)
    names = ["b/z.png", "a.jpg", "b/a.bmp", "c.JPG"]
    for i, name in enumerate(names):
        _pil(i, (40 + i, 100)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    calls: list[tuple[int, int]] = []
    result = embed(
        run_dir,
        folder,
        tmp_path / "out.npy",
        batch_size=3,
        device="cpu",
        progress=lambda d, t: calls.append((d, t)),
    )
    order = ["a.jpg", "b/a.bmp", "b/z.png", "c.JPG"]
    assert (tmp_path / "out.txt").read_text().splitlines() == order
    array = np.load(tmp_path / "out.npy")
    assert array.shape == result.shape == (4, 512) and array.dtype == np.float32
    assert calls == [(3, 4), (4, 4)]
    expected = load_embedder(run_dir, device="cpu")([Image.open(folder / n) for n in order])
    np.testing.assert_allclose(array, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_embed_errors_name_the_file(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    with pytest.raises(EmbedError, match="no images"):
        embed(run_dir, folder, tmp_path / "o.npy")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CorruptImageError, match=r"broken\.jpg"):  # met on the way, as in every command: a failure
        embed(run_dir, folder, tmp_path / "o.npy", device="cpu")
    with pytest.raises(EmbedError, match=r"\.npy"):
        embed(run_dir, folder, tmp_path / "o.csv")
    assert not (tmp_path / "o.npy").exists()


def _check_viper(run_dir: Path, folder: Path, out: Path, expected_count: int) -> None:
    result = embed(run_dir, folder, out, batch_size=128, device="cpu")
    files = out.with_suffix(".txt").read_text().splitlines()
    assert len(files) == result.shape[0] == expected_count
    assert files == sorted(files) and all(f.endswith(".bmp") for f in files)
    array = np.load(out)
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, rtol=1e-4)
    last = load_embedder(run_dir, device="cpu")(Image.open(folder / files[-1]))
    np.testing.assert_allclose(array[-1], last[0].numpy(), rtol=1e-4, atol=1e-5)


def test_embed_viper_sample(run_dir: Path, viper_dir: Path, tmp_path: Path) -> None:
    """Real images (48x128 .bmp, upsampled with PIL bicubic): 32 per camera, linked into one folder."""
    folder = tmp_path / "viper"
    for cam in ("cam_a", "cam_b"):
        (folder / cam).mkdir(parents=True)
        for src in sorted((viper_dir / "VIPeR" / cam).glob("*.bmp"))[:32]:
            (folder / cam / src.name).symlink_to(src)
    _check_viper(run_dir, folder, tmp_path / "viper.npy", 64)


@pytest.mark.slow
def test_embed_viper_all(run_dir: Path, viper_dir: Path, tmp_path: Path) -> None:
    """The whole ../shared/data/viper folder (1,264 images; opt-in: -m slow)."""
    count = len(list(viper_dir.rglob("*.bmp")))
    _check_viper(run_dir, viper_dir, tmp_path / "viper.npy", count)


def test_cli_export_and_embed(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(
        app, ["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "m.st.safetensors")]
    )
    assert done.exit_code == 0, done.output
    assert "worst cosine" in done.output
    (tmp_path / "imgs").mkdir()
    _pil(0, (48, 128)).save(tmp_path / "imgs" / "x.png")
    done = runner.invoke(
        app, ["embed", str(run_dir), str(tmp_path / "imgs"), "--out", str(tmp_path / "e.npy")]
    )
    assert done.exit_code == 0, done.output
    assert np.load(tmp_path / "e.npy").shape == (1, 512)
    (tmp_path / "junk.pth.tar").write_bytes(b"junk")
    done = runner.invoke(
        app, ["export", str(tmp_path / "junk.pth.tar"), "--format", "onnx", "--out", "x.onnx"]
    )
    assert done.exit_code == 2 and "junk.pth.tar" in done.output  # the user gave a file that is no checkpoint
    done = runner.invoke(app, ["export", str(run_dir), "--format", "tflite", "--out", "x.tflite"])
    assert done.exit_code == 2


def test_cli_embed_refuses_a_missing_gpu(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # one CUDA device, as far as the check sees
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    (tmp_path / "imgs").mkdir()
    _pil(0, (48, 128)).save(tmp_path / "imgs" / "x.png")
    args = ["embed", str(run_dir), str(tmp_path / "imgs"), "--out", str(tmp_path / "e.npy"), "--device", "cuda:5"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert " ".join(done.output.split()) == (
        "error: --device cuda:5: this machine has 1 CUDA device (cuda:0); use auto, cpu or cuda:0"
    )
    assert not (tmp_path / "e.npy").exists()
