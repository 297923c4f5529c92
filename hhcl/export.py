"""Deployable embedders: ONNX / TorchScript / safetensors export with a parity check, folder embedding, and
:func:`load_embedder`, a callable on PIL images or tensors for notebooks and services.

An exported embedder takes RGB float32 images in [0, 1], NCHW at the model's height x width (any batch size),
applies the ImageNet normalisation inside, and returns L2-normalised embeddings.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from hhcl.atomic import atomic_write_bytes
from hhcl.config import Config
from hhcl.data.store import CorruptImageError, upright_rgb
from hhcl.distributed import resolve_device
from hhcl.errors import FailureError, UsageError
from hhcl.models import ModelInfo, load_model
from hhcl.run.labels import quote_name, unquote_name
from hhcl.weight_files import CheckpointError, save_weights

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FORMATS = ("onnx", "torchscript", "safetensors")
MIN_COSINE = 0.9999
ONNX_OPSET = 17
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_EXTRA = "hhcl.json"


class ExportError(FailureError, RuntimeError):
    """An export that failed or whose exported model disagrees with PyTorch. A failure."""


class EmbedError(UsageError, ValueError):
    """Bad input to :func:`embed` (no images folder, no images in it, an --out that is not .npy); the message names
    the path. A usage error (an unreadable image found while embedding is a :class:`CorruptImageError`)."""


class Embedder(nn.Module):
    """RGB float [0, 1] NCHW -> ImageNet normalisation -> re-ID model -> L2-normalised embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


@dataclass
class ExportReport:
    """Result of :func:`export`: the file written and the worst cosine between the export and PyTorch."""

    path: Path
    format: str
    worst_cosine: float
    metadata: dict[str, str]


def hhcl_version() -> str:
    """The installed hhcl version (``0+unknown`` when running from an uninstalled tree)."""
    try:
        return package_metadata.version("hhcl")
    except package_metadata.PackageNotFoundError:
        return "0+unknown"


def _metadata(info: ModelInfo, feature_dim: int) -> dict[str, str]:
    return {
        "format": "hhcl-embedder",
        "hhcl_version": hhcl_version(),
        "arch": info.arch,
        "pooling": info.pooling,
        "num_features": str(info.num_features),
        "feature_dim": str(feature_dim),
        "input_height": str(info.height),
        "input_width": str(info.width),
        "input": "RGB float32 in [0, 1], NCHW, dynamic batch",
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "source": info.source,
    }


def _worst_cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    a = torch.as_tensor(np.asarray(a, dtype=np.float32) if not isinstance(a, torch.Tensor) else a).float()
    return float(F.cosine_similarity(a, b.float(), dim=1).min())


def _write_onnx(embedder: Embedder, dummy: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is chosen on purpose (stable, one file)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            embedder,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())


def _run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.cpu().numpy()})[0]


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript is the requested format: silence torch.jit's deprecation FutureWarnings around it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def _write_torchscript(embedder: Embedder, dummy: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    buffer = io.BytesIO()
    with torch.no_grad(), _quiet_jit():
        traced = torch.jit.trace(embedder, (dummy,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={_EXTRA: json.dumps(meta)})
    atomic_write_bytes(path, buffer.getvalue())


def _safetensors_config_text(info: ModelInfo) -> str:
    cfg = info.config or Config()
    if info.config is None:  # an authors' checkpoint: record what was inferred, so load_model can rebuild it
        cfg.model.arch, cfg.model.pooling, cfg.model.num_features = info.arch, info.pooling, info.num_features
        cfg.model.pretrained = "none"
        cfg.data.height, cfg.data.width = info.height, info.width
    return cfg.to_toml()


def export(
    run_or_checkpoint: str | os.PathLike[str], format: str, path: str | os.PathLike[str], *, batch: int = 3
) -> ExportReport:
    """Export a run's (or checkpoint's) embedder to ``path`` and check it against PyTorch on a random batch.

    The exported file is reloaded fresh (onnxruntime on the CPU, ``torch.jit.load``, or :func:`load_model`)
    and run on ``batch`` images; a worst cosine below 0.9999 raises :class:`ExportError`.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format '{format}': use one of {', '.join(FORMATS)}")
    model, info = load_model(run_or_checkpoint, device="cpu")
    embedder = Embedder(model).eval()
    meta = _metadata(info, model.feature_dim)
    path = Path(path)
    generator = torch.Generator().manual_seed(0)
    dummy = torch.rand(2, 3, info.height, info.width, generator=generator)
    check = torch.rand(batch, 3, info.height, info.width, generator=generator)  # another batch size: dynamic
    with torch.no_grad():
        expected = embedder(check)
    try:
        if format == "onnx":
            _write_onnx(embedder, dummy, path, meta)
            got: Any = _run_onnx(path, check)
        elif format == "torchscript":
            _write_torchscript(embedder, dummy, path, meta)
            with torch.no_grad(), _quiet_jit():
                got = torch.jit.load(str(path), map_location="cpu")(check)
        else:
            save_weights(model, path, {**meta, "config": _safetensors_config_text(info), "format": "hhcl"})
            reloaded, _ = load_model(path)
            with torch.no_grad():
                got = Embedder(reloaded).eval()(check)
    except (CheckpointError, ExportError):
        raise
    except Exception as err:
        raise ExportError(
            f"{format} export of '{info.source}' to '{path}' failed: {type(err).__name__}: {err}"
        ) from err
    worst = _worst_cosine(got, expected)
    if not worst >= MIN_COSINE:
        raise ExportError(
            f"{format} export '{path}' disagrees with PyTorch: worst cosine {worst:.6f} < {MIN_COSINE} "
            f"on {batch} images; do not deploy it"
        )
    return ExportReport(path=path, format=format, worst_cosine=worst, metadata=meta)


# ------------------------------------------------------------------------------------------ embedding


def read_image(path: str | os.PathLike[str], height: int, width: int) -> torch.Tensor:
    """An image file as uint8 ``[3, height, width]`` RGB, decoded and resized with PIL bicubic as in training
    (:func:`hhcl.data.store.upright_rgb`: EXIF orientation, 16-bit greyscale); a CorruptImageError names a file
    that cannot be decoded."""
    try:
        with Image.open(path) as img:
            rgb = upright_rgb(img).resize((width, height), Image.Resampling.BICUBIC)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError([str(path)], f"it cannot be read ({err}): remove or replace the file") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def _to_batch(images: Any, height: int, width: int) -> torch.Tensor:
    """PIL image(s) or an image tensor/array (CHW/NCHW, uint8 or float in [0, 1]) -> float [B, 3, H, W] in [0, 1]."""
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, Sequence) and images and all(isinstance(i, Image.Image) for i in images):
        pil = [upright_rgb(i).resize((width, height), Image.Resampling.BICUBIC) for i in images]
        return torch.from_numpy(np.stack([np.asarray(i) for i in pil])).permute(0, 3, 1, 2).float().div_(255)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected PIL images or an image tensor, got {type(images).__name__}")
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected images shaped [3, H, W] or [B, 3, H, W] (RGB), got {list(images.shape)}")
    batch = batch.float().div(255) if batch.dtype == torch.uint8 else batch.float()
    if tuple(batch.shape[2:]) != (height, width):  # tensors: torch bicubic with antialias (close to PIL's)
        batch = F.interpolate(
            batch, size=(height, width), mode="bicubic", antialias=True, align_corners=False
        )
        batch = batch.clamp_(0, 1)
    return batch


class ImageEmbedder:
    """``embedder(images) -> [B, D]`` float32 CPU tensor of L2-normalised embeddings.

    ``images``: a PIL image, a list of them, or a tensor/array ``[3, H, W]``/``[B, 3, H, W]`` (uint8, or float
    in [0, 1]); other sizes are resized to the model's ``height`` x ``width``.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        height: int,
        width: int,
        device: torch.device,
        metadata: dict[str, str],
        batch_size: int = 64,
    ) -> None:
        self._run, self.height, self.width = run, height, width
        self.device, self.metadata, self.batch_size = device, metadata, batch_size

    def __call__(self, images: Any) -> torch.Tensor:
        batch = _to_batch(images, self.height, self.width)
        outs = [self._run(chunk.to(self.device)).float().cpu() for chunk in batch.split(self.batch_size)]
        return torch.cat(outs) if outs else torch.empty(0)


def _torchscript_meta(path: Path) -> dict[str, str] | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(f"extra/{_EXTRA}")]
        return json.loads(zf.read(names[0])) if names else None


def load_embedder(path: str | os.PathLike[str], *, device: str | torch.device = "auto") -> ImageEmbedder:
    """A callable embedder from a run directory, a checkpoint, or an exported ``.onnx``/TorchScript file.

    ``device`` (auto, cpu, cuda, cuda:N, mps) is checked against this machine: a ConfigError if it is not there.
    """
    path = Path(path).expanduser()
    dev = resolve_device(device, key="device")
    if path.is_file() and path.suffix == ".onnx":
        return _onnx_embedder(path)
    meta = _torchscript_meta(path) if path.is_file() and not path.name.endswith(".safetensors") else None
    if meta is not None:
        try:
            with _quiet_jit():
                module = torch.jit.load(str(path), map_location=dev).eval()
        except RuntimeError as err:
            raise CheckpointError(f"cannot load the exported TorchScript model '{path}': {err}") from None
        return ImageEmbedder(_no_grad(module), int(meta["input_height"]), int(meta["input_width"]), dev, meta)
    model, info = load_model(path, device=dev)
    embedder = Embedder(model).eval().to(dev)
    return ImageEmbedder(_no_grad(embedder), info.height, info.width, dev, _metadata(info, model.feature_dim))


def _onnx_embedder(path: Path) -> ImageEmbedder:
    """An embedder running the exported ``.onnx`` file ``path`` with onnxruntime on the CPU; a file that does not
    load, or lacks the input size :func:`export` records, is a CheckpointError naming it."""
    import onnx
    import onnxruntime as ort

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        height, width = int(meta["input_height"]), int(meta["input_width"])
    except KeyError as err:
        raise CheckpointError(f"'{path}' is not an hhcl export: it records no {err} (use hhcl export)") from None
    except Exception as err:  # protobuf's and onnxruntime's own errors: the file is no model they can run
        raise CheckpointError(f"cannot load the exported ONNX model '{path}': {type(err).__name__}: {err}") from None
    name = session.get_inputs()[0].name

    def run_onnx(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.cpu().numpy()})[0])

    return ImageEmbedder(run_onnx, height, width, torch.device("cpu"), meta)


def _no_grad(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def list_images(images_dir: str | os.PathLike[str]) -> list[Path]:
    """Every image under ``images_dir`` (recursively), sorted by path relative to it."""
    root = Path(images_dir)
    if not root.is_dir():
        raise EmbedError(f"images folder '{root}' does not exist or is not a folder")
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise EmbedError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under '{root}'")
    return files


@dataclass
class EmbedResult:
    """Result of :func:`embed`: the .npy written, the file list beside it, and the embeddings' shape."""

    out: Path
    list_file: Path
    shape: tuple[int, int]


def embed(
    run_or_checkpoint: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> EmbedResult:
    """Embed every image under ``images_dir`` (sorted path order) into ``out`` (.npy, float32 [N, D]).

    Images are decoded and resized (PIL bicubic) by a thread pool one batch ahead of the model, which runs
    batched on ``device``. The relative paths, one per line and quoted (a name may hold a line break:
    :func:`hhcl.run.labels.quote_name`, read back by :func:`read_name_list`), go to ``out`` with suffix ``.txt``.
    ``progress(done, total)`` is called after every batch. ``device`` is checked as ``--device``.
    """
    out = Path(out)
    if out.suffix != ".npy":
        raise EmbedError(f"--out '{out}' must end in .npy")
    dev = resolve_device(device, key="--device")
    files = list_images(images_dir)
    embedder = load_embedder(run_or_checkpoint, device=dev)
    h, w = embedder.height, embedder.width
    batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
    outputs: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:

        def submit(chunk: list[Path]) -> list[Future[torch.Tensor]]:
            return [pool.submit(read_image, p, h, w) for p in chunk]

        pending = submit(batches[0])
        done = 0
        for index in range(len(batches)):
            images = torch.stack([f.result() for f in pending])
            if index + 1 < len(batches):
                pending = submit(batches[index + 1])
            pixels = images.to(embedder.device, non_blocking=True).float().div_(255)
            outputs.append(embedder(pixels).numpy())
            done += len(images)
            if progress is not None:
                progress(done, len(files))
    array = np.concatenate(outputs).astype(np.float32, copy=False)
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(out, buffer.getvalue())
    list_file = out.with_suffix(".txt")
    root = Path(images_dir)
    atomic_write_bytes(list_file, "".join(f"{quote_name(p.relative_to(root).as_posix())}\n" for p in files).encode())
    return EmbedResult(out=out, list_file=list_file, shape=(array.shape[0], array.shape[1]))


def read_name_list(list_file: str | os.PathLike[str]) -> list[str]:
    """The relative paths :func:`embed` wrote to its ``.txt``: name i is the image of row i of the ``.npy``."""
    return [unquote_name(line) for line in Path(list_file).read_text(encoding="utf-8").split("\n")[:-1]]
