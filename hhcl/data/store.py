"""Image storage: decode + PIL-bicubic resize once into a memory-mappable uint8 cache; gather batches on the device.

The reference's first transform is ``Resize((H, W), interpolation=PIL.BICUBIC)``: deterministic, so it is done
once per image (quirk #7). A cache is ``<dataset>/cache/<split>_<H>x<W>.npy`` (uint8 [N, 3, H, W]) plus a
``.json`` index of the relative paths of its rows, the size and mtime of the file each row was decoded from
(another folder prepared into the same data root under the same names, or a file replaced, makes the cache
stale: it is rebuilt) and the rows that failed to decode (zeroed, recorded as ``corrupt``: ``open_split``
refuses a split holding one); it is built in chunks into ``.partial`` files whose
``done`` counter makes an interrupted build resume, then renamed into place. The array's blocks are reserved on
disk before a byte of it is written (``hhcl.diskspace``): a cache that does not fit is refused with a message,
never left to die of SIGBUS in a sparse memory map, and a build that runs out of space leaves no part file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from hhcl.atomic import atomic_write_text
from hhcl.data.datasets import ReIDDataset, Sample
from hhcl.diskspace import disk_error, is_disk_full, require_free, reserve
from hhcl.errors import FailureError

CHUNK = 512
#: how images are decoded into a cache, stamped into its index: 2 = EXIF orientation applied, 16-bit and float
#: greyscale scaled (:func:`upright_rgb`); an index without it (or another) is stale and the cache is rebuilt
DECODE_VERSION = 2
#: what to do when a cache does not fit (after "... is free on that disk; ")
CACHE_FIX = (
    "free space on it, use another data root (--root), or cache smaller images "
    "(data.height/data.width; hhcl prepare: --height/--width)"
)


class CorruptImageError(FailureError, ValueError):
    """One or more images cannot be decoded; the message names every file. A failure: found while working through
    the data, not in what the command was given."""

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


def upright_rgb(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB the way it is meant to be seen (PIL's ``convert("RGB")`` alone gets both wrong): its
    EXIF orientation applied (phone and body-cam crops are stored sideways), 16-bit greyscale (``I;16``, ``I;16B``,
    ..., thermal and depth cameras) mapped to 8 bits by ``>> 8``, the faithful full-range mapping (convert clips
    it white), and 32-bit integer or float greyscale (``I``, ``F``: no fixed range) stretched from the image's own
    minimum..maximum to 0..255 (a flat image is black); a float image holding NaN or inf is a ValueError."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16"):
        grey = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    elif img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError(f"a {img.mode} image holding NaN or infinite values")
        low, span = values.min(), np.ptp(values)
        grey = np.rint((values - low) * (255 / span) if span else np.zeros_like(values)).astype(np.uint8)
    else:
        return img.convert("RGB")
    return Image.fromarray(grey).convert("RGB")


def load_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """Decode ``path`` as upright 8-bit RGB (:func:`upright_rgb`) and resize with PIL bicubic (the reference's
    first transform): uint8 [3, H, W]."""
    with Image.open(path) as img:
        rgb = upright_rgb(img).resize((width, height), Image.BICUBIC)
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


def _part_paths(dataset_dir: Path, split: str, height: int, width: int) -> tuple[Path, Path]:
    """The (array, index) files of a split's cache while it is being built."""
    arr_path, idx_path = cache_paths(dataset_dir, split, height, width)
    return arr_path.with_name(arr_path.stem + ".partial.npy"), idx_path.with_name(idx_path.stem + ".partial.json")


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (version 1.0) header of a C-order uint8 array of ``shape``: what ``np.load`` maps it with."""
    buffer = io.BytesIO()
    descr = np.lib.format.dtype_to_descr(np.dtype(np.uint8))
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _build_bytes(dataset_dir: Path, split: str, rel: list[str], height: int, width: int) -> int:
    """Disk bytes that building ``split``'s cache of the rows ``rel`` still needs: the array (N x 3 x H x W plus
    its header, less what an interrupted build has already reserved) and its index files (the partial one, the
    final one and a temporary copy)."""
    shape = (len(rel), 3, height, width)
    part_arr, _ = _part_paths(dataset_dir, split, height, width)
    reserved = part_arr.stat().st_blocks * 512 if part_arr.is_file() else 0
    array = len(_npy_header(shape)) + math.prod(shape)
    return max(0, array - reserved) + 3 * len(json.dumps({"paths": rel, "done": len(rel), "corrupt": []}))


def cache_bytes(dataset_dir: Path, split: str, samples: Sequence[Sample], height: int, width: int) -> int:
    """Disk bytes that ``split``'s cache of ``samples`` at ``height`` x ``width`` still needs: 0 when a complete
    cache holds every sample as its file is now (:func:`cache_holds`: the cache ``open_split`` reads), else what
    building it takes."""
    dataset_dir = Path(dataset_dir)
    rel = [os.path.relpath(s.path, dataset_dir) for s in samples]
    if cache_holds(read_cache_index(dataset_dir, split, height, width), rel, [s.path for s in samples]):
        return 0
    return _build_bytes(dataset_dir, split, rel, height, width)


def _require_space(dataset_dir: Path, needed: dict[str, int], height: int, width: int) -> None:
    """Refuse building caches that need ``needed`` bytes (split -> bytes) on the data root's disk when they do
    not fit, naming the first cache file."""
    missing = [s for s, n in needed.items() if n]
    if missing:
        first = cache_paths(dataset_dir, missing[0], height, width)[0]
        what = f"the {', '.join(missing)} image cache{'s' * (len(missing) > 1)} at {height}x{width}"
        require_free(first, sum(needed.values()), what, CACHE_FIX)


def require_cache_space(
    dataset_dir: Path, splits: Mapping[str, Sequence[Sample]], height: int, width: int
) -> int:
    """Refuse, before a byte is written, building the caches of ``splits`` that the data root's disk cannot hold:
    a :class:`hhcl.diskspace.DiskSpaceError` (ENOSPC) naming the cache file, the bytes needed and free, and the
    fix. Returns the bytes the missing caches need (0: all complete)."""
    needed = {s: cache_bytes(dataset_dir, s, samples, height, width) for s, samples in splits.items() if samples}
    _require_space(Path(dataset_dir), needed, height, width)
    return sum(needed.values())


def _open_part(part_arr: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The partial cache array (created when missing) memory-mapped for writing, its every block reserved on
    disk first: a write into it can no longer find the disk full."""
    header = _npy_header(shape)
    if not part_arr.is_file():
        part_arr.write_bytes(header)
    reserve(part_arr, len(header) + math.prod(shape))
    return np.load(part_arr, mmap_mode="r+")


def _write_json(path: Path, obj: dict) -> None:
    """Write a cache index or part index, stamped with the :data:`DECODE_VERSION` its rows were decoded with."""
    atomic_write_text(path, json.dumps({**obj, "decode": DECODE_VERSION}))


class CacheIndex(NamedTuple):
    """A complete cache's rows: ``paths`` in row order and the ``corrupt`` (zeroed) ones, both relative to the
    dataset folder (the form ``os.path.relpath(sample.path, dataset.root)`` gives), and the ``stamps`` (size,
    mtime in ns: :func:`file_stamps`) of the files the rows were decoded from, in row order."""

    paths: list[str]
    corrupt: list[str]
    stamps: list[list[int]]


def file_stamps(paths: Sequence[str]) -> list[list[int]]:
    """``[size, mtime in ns]`` of each file (``[-1, -1]`` when it cannot be read): a cache row is current while
    the file it was decoded from still has its stamp."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append([-1, -1])
        else:
            stamps.append([st.st_size, st.st_mtime_ns])
    return stamps


def cache_holds(index: CacheIndex | None, rel: Sequence[str], paths: Sequence[str]) -> bool:
    """Whether the complete cache ``index`` holds the files ``paths`` (named ``rel`` as its rows are) as they
    are now: each is one of its rows, decoded from a file of the same size and mtime (rows recorded corrupt are
    not compared: they are never read, and a fixed file is decoded again by :func:`build_cache`). The one rule
    by which ``open_split`` and ``build_cache`` rebuild a cache and ``hhcl train --dry-run`` reports it."""
    if index is None:
        return False
    stamp = dict(zip(index.paths, index.stamps, strict=True))
    if not all(r in stamp for r in rel):
        return False
    corrupt = set(index.corrupt)
    compared = [(r, p) for r, p in zip(rel, paths, strict=True) if r not in corrupt]
    return file_stamps([p for _, p in compared]) == [stamp[r] for r, _ in compared]


def read_cache_index(dataset_dir: Path, split: str, height: int, width: int) -> CacheIndex | None:
    """The index of a complete cache, or None when there is no complete cache decoded as this code decodes
    (:data:`DECODE_VERSION`) with the stamps of its files (an index written before they were recorded cannot
    tell another folder's images from these: the cache is rebuilt once)."""
    arr_path, idx_path = cache_paths(dataset_dir, split, height, width)
    if not (arr_path.is_file() and idx_path.is_file()):
        return None
    try:
        index = json.loads(idx_path.read_text())
    except json.JSONDecodeError:
        return None
    stamps = index.get("stamps")
    if not index.get("complete") or index.get("decode") != DECODE_VERSION or not isinstance(stamps, list) \
            or len(stamps) != len(index["paths"]):
        return None
    return CacheIndex(index["paths"], _relative(index.get("corrupt", []), index["paths"], dataset_dir), stamps)


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
    stamps = [list(s) for s in index.stamps]
    still = []
    for rel in index.corrupt:
        stamps[row[rel]] = file_stamps([full[rel]])[0]  # before decoding: a file changed meanwhile is stale
        img = try_load(full[rel], height, width)
        if img is None:
            still.append(rel)
        else:
            array[row[rel]] = img
    array.flush()
    del array
    if still != index.corrupt:
        _write_json(idx_path, {"paths": index.paths, "stamps": stamps, "complete": True, "corrupt": still})
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
    after_chunk: Callable[[], None] | None = None,
) -> list[str]:
    """Decode + resize every sample into the split's cache (resumable); returns the corrupt samples' paths.

    ``after_chunk()`` is called once each chunk of CHUNK images is recorded; an exception it raises (a stop asked
    of a run) ends the build there, and the next build resumes from that chunk.

    Corrupt rows are zeroed and recorded in the index. ``workers`` decoding threads (None: min(8, CPUs); 0: the
    calling thread). Idempotent: a complete cache holding exactly these paths, decoded from the files as they
    are now (:func:`cache_holds`), is kept, but its corrupt rows are decoded again, so a file fixed in place is
    picked up. A cache the disk cannot hold is refused before a byte
    is written, and running out of space (or past ``ulimit -f``) removes the part files: both raise
    :class:`hhcl.diskspace.DiskSpaceError` naming the cache file and the fix.
    """
    dataset_dir = Path(dataset_dir)
    threads = decode_threads(workers)
    rel = [os.path.relpath(s.path, dataset_dir) for s in samples]
    full = dict(zip(rel, (s.path for s in samples), strict=True))
    arr_path, idx_path = cache_paths(dataset_dir, split, height, width)
    existing = read_cache_index(dataset_dir, split, height, width)
    if existing is not None and existing.paths == rel and cache_holds(existing, rel, list(full.values())):
        still = _retry_corrupt(dataset_dir, split, existing, full, height, width) if existing.corrupt else []
        return [full[r] for r in still]
    arr_path.parent.mkdir(parents=True, exist_ok=True)
    part_arr, part_idx = _part_paths(dataset_dir, split, height, width)
    stamps = file_stamps(list(full.values()))  # before decoding: a file changed meanwhile makes the cache stale
    state = {"paths": rel, "stamps": stamps, "done": 0, "corrupt": []}
    if part_arr.is_file() and part_idx.is_file():
        try:
            old = json.loads(part_idx.read_text())
            if old.get("paths") == rel and old.get("stamps") == stamps and old.get("decode") == DECODE_VERSION:
                state = {**old, "corrupt": _relative(old.get("corrupt", []), rel, dataset_dir)}
        except json.JSONDecodeError:
            pass
    if state["done"] == 0 or not part_arr.is_file():
        state["done"], state["corrupt"] = 0, []
        part_arr.unlink(missing_ok=True)  # a stale build's: its blocks count as free space
    _require_space(dataset_dir, {split: _build_bytes(dataset_dir, split, rel, height, width)}, height, width)
    try:
        _fill_cache(part_arr, part_idx, state, samples, split, height, width, progress=progress, threads=threads,
                    after_chunk=after_chunk)
        idx_path.unlink(missing_ok=True)  # an older cache's index never describes the new array
        os.replace(part_arr, arr_path)
        try:
            _write_json(idx_path, {"paths": rel, "stamps": stamps, "complete": True, "corrupt": state["corrupt"]})
        except BaseException:
            arr_path.unlink(missing_ok=True)  # never read without its index: give its space back
            raise
    except OSError as err:
        if not is_disk_full(err):
            raise
        part_arr.unlink(missing_ok=True)
        part_idx.unlink(missing_ok=True)
        raise disk_error(err, arr_path, CACHE_FIX) from None
    part_idx.unlink(missing_ok=True)
    return [full[r] for r in state["corrupt"]]


def _fill_cache(
    part_arr: Path,
    part_idx: Path,
    state: dict,
    samples: Sequence[Sample],
    split: str,
    height: int,
    width: int,
    *,
    progress: bool,
    threads: int,
    after_chunk: Callable[[], None] | None = None,
) -> None:
    """Decode ``samples[state["done"]:]`` into the reserved part array in chunks, recording ``state`` (rows
    done, corrupt rows) in the part index after each chunk, so that an interrupted build resumes."""
    rel, paths = state["paths"], [s.path for s in samples]
    array = _open_part(part_arr, (len(paths), 3, height, width))
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
            if after_chunk is not None:
                after_chunk()
    del array


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
    after_chunk: Callable[[], None] | None = None,
) -> ImageStore:
    """An ImageStore over ``dataset``'s ``split`` at ``height`` x ``width``.

    Uses the cache when present; with ``cache=True`` builds a missing one first (idempotent). Refuses, with
    CorruptImageError naming the files and the fix, a split holding an image the cache index records as
    corrupt (cached or not: training must never see a zeroed row). ``resident`` (default: on CUDA when the split
    fits in a quarter of free memory) copies the whole split onto the device. ``workers`` decoding threads
    (``data.workers``; None: min(8, CPUs); 0: the calling thread) build the cache or decode uncached gathers.
    ``after_chunk`` is :func:`build_cache`'s (a run's stop check while a cache is built).
    """
    samples = dataset.split(split)
    device = torch.device(device)
    threads = decode_threads(workers)
    base = dataset.root
    hint = corrupt_hint(dataset.name, base.parent)
    index = read_cache_index(base, split, height, width)
    rels = [os.path.relpath(s.path, base) for s in samples]
    current = cache_holds(index, rels, [s.path for s in samples])
    if cache and not current:
        build_cache(base, split, samples, height, width, progress=progress, workers=threads, after_chunk=after_chunk)
        index = read_cache_index(base, split, height, width)
        current = index is not None  # just built from these files
    if index is not None and index.corrupt:
        recorded = set(index.corrupt)
        bad = [s.path for s, r in zip(samples, rels, strict=True) if r in recorded]
        if bad:
            raise CorruptImageError(bad, hint)
    if index is None or not current:
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
