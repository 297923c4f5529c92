"""Image storage: decode + PIL-bicubic resize once into a memory-mappable uint8 cache; gather batches on the device.

The reference's first transform is ``Resize((H, W), interpolation=PIL.BICUBIC)``: deterministic, so it is done
once per image (quirk #7). A cache is ``<dataset>/cache/<split>_<H>x<W>.npy`` (uint8 [N, 3, H, W]) plus a
``.json`` index of the relative paths of its rows and of the rows that failed to decode (zeroed, recorded as
``corrupt``: ``open_split`` refuses a split holding one); it is built in chunks into ``.partial`` files whose
``done`` counter makes an interrupted build resume, then renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from hhcl.data.datasets import ReIDDataset, Sample
from hhcl.run.atomic import atomic_write_text

CHUNK = 512


class CorruptImageError(ValueError):
    """One or more images cannot be decoded; the message names every file."""

    def __init__(self, paths: Sequence[str], hint: str = ""):
        self.paths = list(paths)
        shown = "\n  ".join(self.paths[:20]) + ("\n  ..." if len(self.paths) > 20 else "")
        super().__init__(f"{len(self.paths)} corrupt image(s):\n  {shown}" + (f"\n{hint}" if hint else ""))


def corrupt_hint(name: str, root: Path) -> str:
    """The fix for corrupt images of dataset ``name`` under data root ``root`` (every refusal gives it)."""
    return (
        f"fix or delete them and re-run `hhcl prepare {name} --root {root}`, or leave them out with "
        f"`hhcl prepare {name} --root {root} --skip-corrupt`"
    )


def decode_threads(workers: int | None) -> int:
    """Decoding threads for ``workers`` (None: min(8, CPUs); 0: decode in the calling thread)."""
    if workers is None:
        return min(8, os.cpu_count() or 1)
    if workers < 0:
        raise ValueError(f"workers = {workers} is not allowed: use 0 (decode in the calling thread) or more")
    return workers


def load_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """Decode ``path`` as RGB and resize with PIL bicubic (the reference's first transform): uint8 [3, H, W]."""
    with Image.open(path) as img:
        rgb = img.convert("RGB").resize((width, height), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def try_load(path: str, height: int, width: int) -> np.ndarray | None:
    """``load_image``, or None when the file is corrupt or unreadable."""
    try:
        return load_image(path, height, width)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_batch(
    paths: Sequence[str],
    height: int,
    width: int,
    pool: ThreadPoolExecutor | None = None,
    hint: str = "",
) -> np.ndarray:
    """Decode ``paths`` into uint8 [B, 3, H, W]; CorruptImageError names the bad files, with ``hint``."""
    arrays = (
        list(pool.map(lambda p: try_load(p, height, width), paths))
        if pool
        else [try_load(p, height, width) for p in paths]
    )
    bad = [p for p, a in zip(paths, arrays, strict=True) if a is None]
    if bad:
        raise CorruptImageError(bad, hint)
    return np.stack(arrays) if arrays else np.zeros((0, 3, height, width), np.uint8)


def cache_paths(dataset_dir: Path, split: str, height: int, width: int) -> tuple[Path, Path]:
    """The (array, index) files of a split's cache at ``height`` x ``width``."""
    stem = Path(dataset_dir) / "cache" / f"{split}_{height}x{width}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj))


class CacheIndex(NamedTuple):
    """A complete cache's rows: ``paths`` in row order and the ``corrupt`` (zeroed) ones, both relative to the
    dataset folder (the form ``os.path.relpath(sample.path, dataset.root)`` gives)."""

    paths: list[str]
    corrupt: list[str]


def read_cache_index(dataset_dir: Path, split: str, height: int, width: int) -> CacheIndex | None:
    """The index of a complete cache, or None when there is no complete cache."""
    arr_path, idx_path = cache_paths(dataset_dir, split, height, width)
    if not (arr_path.is_file() and idx_path.is_file()):
        return None
    try:
        index = json.loads(idx_path.read_text())
    except json.JSONDecodeError:
        return None
    if not index.get("complete"):
        return None
    return CacheIndex(index["paths"], _relative(index.get("corrupt", []), index["paths"], dataset_dir))


def _relative(corrupt: list[str], rows: list[str], dataset_dir: Path) -> list[str]:
    """``corrupt`` in the rows' relative form (older indexes recorded the samples' own paths)."""
    known = set(rows)
    return [c if c in known else os.path.relpath(c, dataset_dir) for c in corrupt]


def _retry_corrupt(
    dataset_dir: Path, split: str, index: CacheIndex, full: dict[str, str], height: int, width: int
) -> list[str]:
    """Decode a complete cache's corrupt rows again (a file fixed since); returns those still corrupt."""
    arr_path, idx_path = cache_paths(dataset_dir, split, height, width)
    array = np.load(arr_path, mmap_mode="r+")
    row = {p: i for i, p in enumerate(index.paths)}
    still = []
    for rel in index.corrupt:
        img = try_load(full[rel], height, width)
        if img is None:
            still.append(rel)
        else:
            array[row[rel]] = img
    array.flush()
    del array
    if still != index.corrupt:
        _write_json(idx_path, {"paths": index.paths, "complete": True, "corrupt": still})
    return still


def build_cache(
    dataset_dir: Path,
    split: str,
    samples: Sequence[Sample],
    height: int,
    width: int,
    *,
    progress: bool = True,
    workers: int | None = None,
) -> list[str]:
    """Decode + resize every sample into the split's cache (resumable); returns the corrupt samples' paths.

    Corrupt rows are zeroed and recorded in the index. ``workers`` decoding threads (None: min(8, CPUs); 0: the
    calling thread). Idempotent: a complete cache holding exactly these paths is kept, but its corrupt rows are
    decoded again, so a file fixed in place is picked up.
    """
    dataset_dir = Path(dataset_dir)
    threads = decode_threads(workers)
    rel = [os.path.relpath(s.path, dataset_dir) for s in samples]
    full = dict(zip(rel, (s.path for s in samples), strict=True))
    arr_path, idx_path = cache_paths(dataset_dir, split, height, width)
    existing = read_cache_index(dataset_dir, split, height, width)
    if existing is not None and existing.paths == rel:
        still = _retry_corrupt(dataset_dir, split, existing, full, height, width) if existing.corrupt else []
        return [full[r] for r in still]
    arr_path.parent.mkdir(parents=True, exist_ok=True)
    part_arr = arr_path.with_name(arr_path.stem + ".partial.npy")
    part_idx = idx_path.with_name(idx_path.stem + ".partial.json")
    state = {"paths": rel, "done": 0, "corrupt": []}
    if part_arr.is_file() and part_idx.is_file():
        try:
            old = json.loads(part_idx.read_text())
            if old.get("paths") == rel:
                state = {**old, "corrupt": _relative(old.get("corrupt", []), rel, dataset_dir)}
        except json.JSONDecodeError:
            pass
    shape = (len(samples), 3, height, width)
    if state["done"] == 0 or not part_arr.is_file():
        state["done"], state["corrupt"] = 0, []
        array = np.lib.format.open_memmap(part_arr, mode="w+", dtype=np.uint8, shape=shape)
    else:
        array = np.load(part_arr, mmap_mode="r+")
    paths = [s.path for s in samples]
    pool_cm = ThreadPoolExecutor(threads) if threads else contextlib.nullcontext()
    with pool_cm as pool, _progress(progress) as bar:
        decode = pool.map if pool is not None else map
        task = bar.add_task(f"caching {split} {height}x{width}", total=len(paths), completed=state["done"])
        for start in range(state["done"], len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            for offset, img in enumerate(decode(lambda p: try_load(p, height, width), chunk)):
                if img is None:
                    state["corrupt"].append(rel[start + offset])
                    array[start + offset] = 0
                else:
                    array[start + offset] = img
            array.flush()
            state["done"] = start + len(chunk)
            _write_json(part_idx, state)
            bar.update(task, completed=state["done"])
    del array
    os.replace(part_arr, arr_path)
    _write_json(idx_path, {"paths": rel, "complete": True, "corrupt": state["corrupt"]})
    part_idx.unlink(missing_ok=True)
    return [full[r] for r in state["corrupt"]]


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


class ImageStore:
    """One split's images in the order of its samples: gathers uint8 [B, 3, H, W] batches on ``device``.

    Backed by the memory-mapped cache (optionally copied whole onto the device), or by PIL decoding per
    gather when there is no cache, on ``workers`` threads (None: min(8, CPUs); 0: the calling thread); a
    corrupt file then raises CorruptImageError with ``hint`` (the fix).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        height: int,
        width: int,
        device: torch.device | str,
        array: np.ndarray | None = None,
        rows: np.ndarray | None = None,
        resident: bool = False,
        workers: int | None = None,
        hint: str = "",
    ):
        self.samples = list(samples)
        self.height, self.width = height, width
        self.device = torch.device(device)
        self._array, self._rows = array, rows
        self._threads, self._hint = decode_threads(workers), hint
        self._pool: ThreadPoolExecutor | None = None
        self._resident: torch.Tensor | None = None
        if array is not None and resident:
            self._resident = torch.from_numpy(self._host(np.arange(len(self.samples)))).to(self.device)
        self._pids = torch.tensor([s.pid for s in self.samples], dtype=torch.long, device=self.device)
        self._camids = torch.tensor([s.camid for s in self.samples], dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def pids(self) -> torch.Tensor:
        """LongTensor [N] of the samples' pids, on ``device``."""
        return self._pids

    @property
    def camids(self) -> torch.Tensor:
        """LongTensor [N] of the samples' zero-based camera ids, on ``device``."""
        return self._camids

    @property
    def cached(self) -> bool:
        """Whether gathers read the uint8 cache (rather than decoding files)."""
        return self._array is not None

    def _host(self, idx: np.ndarray) -> np.ndarray:
        if self._array is not None:
            rows = self._rows[idx] if self._rows is not None else idx
            order = np.argsort(rows, kind="stable")  # read the memmap in file order
            out = np.empty((len(rows), 3, self.height, self.width), np.uint8)
            out[order] = self._array[rows[order]]
            return out
        if self._pool is None and self._threads:
            self._pool = ThreadPoolExecutor(self._threads)
        paths = [self.samples[i].path for i in idx.tolist()]
        return decode_batch(paths, self.height, self.width, self._pool, self._hint)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] images of store indices ``idx``, on ``device``."""
        if self._resident is not None:
            return self._resident[idx.to(self.device)]
        host = torch.from_numpy(self._host(idx.cpu().numpy().astype(np.int64)))
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)


def open_split(
    dataset: ReIDDataset,
    split: str,
    *,
    height: int,
    width: int,
    device: torch.device | str,
    cache: bool = True,
    resident: bool | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> ImageStore:
    """An ImageStore over ``dataset``'s ``split`` at ``height`` x ``width``.

    Uses the cache when present; with ``cache=True`` builds a missing one first (idempotent). Refuses, with
    CorruptImageError naming the files and the fix, a split holding an image the cache index records as
    corrupt (cached or not: training must never see a zeroed row). ``resident`` (default: on CUDA when the split
    fits in a quarter of free memory) copies the whole split onto the device. ``workers`` decoding threads
    (``data.workers``; None: min(8, CPUs); 0: the calling thread) build the cache or decode uncached gathers.
    """
    samples = dataset.split(split)
    device = torch.device(device)
    threads = decode_threads(workers)
    base = dataset.root
    hint = corrupt_hint(dataset.name, base.parent)
    index = read_cache_index(base, split, height, width)
    rels = [os.path.relpath(s.path, base) for s in samples]
    if cache and (index is None or not set(rels) <= set(index.paths)):
        build_cache(base, split, samples, height, width, progress=progress, workers=threads)
        index = read_cache_index(base, split, height, width)
    if index is not None and index.corrupt:
        recorded = set(index.corrupt)
        bad = [s.path for s, r in zip(samples, rels, strict=True) if r in recorded]
        if bad:
            raise CorruptImageError(bad, hint)
    if index is None or not set(rels) <= set(index.paths):
        return ImageStore(samples, height, width, device, workers=threads, hint=hint)
    arr_path, _ = cache_paths(base, split, height, width)
    array = np.load(arr_path, mmap_mode="r")
    position = {p: i for i, p in enumerate(index.paths)}
    rows = None if index.paths == rels else np.array([position[r] for r in rels], np.int64)
    if resident is None:
        resident = (
            device.type == "cuda"
            and len(samples) * 3 * height * width < torch.cuda.mem_get_info(device)[0] // 4
        )
    return ImageStore(
        samples, height, width, device, array=array, rows=rows, resident=resident, workers=threads, hint=hint
    )
