"""The gallery side of ``hhcl search``: list the images, embed them once with the evaluation's test transform, and
keep the embeddings in a cache beside the folder, ``<gallery>/.hhcl-search/<model key>.npz``, refreshed file by
file: an entry is reused while its relative path, size and mtime are unchanged; new or changed files are embedded,
removed ones dropped. Where the gallery folder cannot be written the cache lives under ``$XDG_CACHE_HOME/hhcl``.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from hhcl.atomic import atomic_write_bytes
from hhcl.data.datasets import Sample
from hhcl.data.store import DECODE_VERSION, ImageStore
from hhcl.errors import UsageError
from hhcl.evaluation.features import extract_features, model_device
from hhcl.export import EmbedError, list_images

CACHE_DIR = ".hhcl-search"
CHUNK = 1024  # images embedded between progress reports (and possible cache saves)
SAVE_EVERY_S = 300.0  # a long embedding saves what it has at most this often, so a killed run loses little
GALLERY_HINT = "remove or replace these files in the gallery folder, then run `hhcl search` again"
_FIELDS = ("paths", "sizes", "mtimes", "features", "weights_sha256")


class SearchError(UsageError, ValueError):
    """``hhcl search`` cannot run as asked; the message names the path or value and the fix. A usage error."""


@dataclass
class GalleryEmbeddings:
    """The gallery's embeddings in ``files`` order, and what the cache did to get them."""

    files: list[Path]
    features: Tensor
    cache_file: Path
    embedded: int
    reused: int
    removed: int
    notes: list[str]


def list_gallery(gallery: Path, exclude: Sequence[Path] = ()) -> list[Path]:
    """Every image under ``gallery`` (recursive, sorted by relative path), leaving out files under ``exclude``."""
    try:
        files = list_images(gallery)
    except EmbedError as err:
        raise SearchError(f"{err}: point --gallery at the folder holding your image crops") from None
    skip = [Path(os.path.abspath(e)) for e in exclude]
    kept = [p for p in files if not any(Path(os.path.abspath(p)).is_relative_to(s) for s in skip)]
    if not kept:
        raise SearchError(
            f"no images under '{gallery}' besides the output folder: point --gallery at the folder of your crops"
        )
    return kept


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (the weights' identity for the cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_key(weights_sha256: str, height: int, width: int, flip: bool, amp: str) -> str:
    """The cache file stem: which weights, input size and test-time options produced the embeddings."""
    return f"{weights_sha256[:16]}_{height}x{width}_{'flip' if flip else 'noflip'}_{amp}"


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hhcl`` (default ``~/.cache/hhcl``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hhcl"


def cache_location(gallery: Path, key: str) -> tuple[Path, str | None]:
    """The cache file for ``gallery`` and ``key``: beside the gallery when it is writable, else in the user cache
    (then with a note saying why and where)."""
    beside = gallery / CACHE_DIR
    try:
        beside.mkdir(exist_ok=True)
        if not os.access(beside, os.W_OK):
            raise PermissionError(f"'{beside}' is not writable")
        return beside / f"{key}.npz", None
    except OSError as err:
        folder = user_cache_dir() / "search" / hashlib.sha256(os.fsencode(os.path.abspath(gallery))).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}.npz", f"cannot write beside the gallery ({err}); the embeddings cache is in {folder}"


def _stat(files: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, mtimes in ns) of ``files``; a file gone since the listing is a SearchError."""
    sizes, mtimes = [], []
    for path in files:
        try:
            st = path.stat()
        except OSError as err:
            raise SearchError(f"gallery file '{path}' cannot be read ({err}): run `hhcl search` again") from None
        sizes.append(st.st_size)
        mtimes.append(st.st_mtime_ns)
    return np.array(sizes, np.int64), np.array(mtimes, np.int64)


def _read_cache(path: Path, weights_sha256: str) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """The cache's arrays, or None (with a note when a file was there but unusable)."""
    if not path.is_file():
        return None, None
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in _FIELDS}
            decode = int(npz["decode"]) if "decode" in npz.files else 1
        if decode != DECODE_VERSION:  # embedded from images decoded another way (EXIF rotation, 16-bit)
            return None, f"the cache {path} was built by an older image decoder and is rebuilt"
        n = len(data["paths"])
        ok = (
            str(data["weights_sha256"]) == weights_sha256
            and data["features"].ndim == 2
            and len(data["features"]) == len(data["sizes"]) == len(data["mtimes"]) == n
        )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        return None, f"the cache {path} could not be read ({err}) and is rebuilt"
    return (data, None) if ok else (None, f"the cache {path} does not match these weights and is rebuilt")


def _write_cache(
    path: Path, rel: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray, features: np.ndarray, sha: str
) -> None:
    """The cache as one .npz, written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, paths=rel, sizes=sizes, mtimes=mtimes, features=features, weights_sha256=np.array(sha),
             decode=np.array(DECODE_VERSION))
    atomic_write_bytes(path, buffer.getvalue())


def embed_files(
    model: nn.Module,
    files: Sequence[Path],
    *,
    height: int,
    width: int,
    batch_size: int,
    flip: bool,
    amp: str,
    hint: str,
) -> Tensor:
    """[len(files), D] embeddings on the model's device, decoded and resized as the evaluation does (PIL bicubic
    to ``height`` x ``width``, test transform); CorruptImageError names unreadable files, with ``hint``."""
    samples = [Sample(str(p), -1, 0) for p in files]
    store = ImageStore(samples, height, width, model_device(model), hint=hint)
    return extract_features(model, store, batch_size=batch_size, flip=flip, amp=amp)


def embed_gallery(
    model: nn.Module,
    gallery: Path,
    files: Sequence[Path],
    cache_file: Path,
    weights_sha256: str,
    *,
    height: int,
    width: int,
    batch_size: int = 64,
    flip: bool = False,
    amp: str = "off",
    chunk: int = CHUNK,
    save_every_s: float = SAVE_EVERY_S,
    progress: Callable[[int, int], None] | None = None,
) -> GalleryEmbeddings:
    """Embeddings of ``files`` (under ``gallery``), reusing ``cache_file``'s unchanged entries and embedding the rest.

    The cache is rewritten when anything changed; an interrupted embedding (an error, Ctrl-C) first saves what it
    has, and a long one saves every ``save_every_s`` seconds. ``progress(done, total)`` counts new embeddings.
    """
    files = list(files)
    rel = np.array([p.relative_to(gallery).as_posix() for p in files], dtype=str)
    sizes, mtimes = _stat(files)
    cached, note = _read_cache(cache_file, weights_sha256)
    notes = [note] if note else []
    n = len(files)
    reuse = np.zeros(n, bool)
    feats: np.ndarray | None = None
    removed = 0
    if cached is not None:
        position = {p: i for i, p in enumerate(cached["paths"].tolist())}
        rows = np.array([position.get(r, -1) for r in rel.tolist()], np.int64)
        known = rows >= 0
        reuse[known] = (cached["sizes"][rows[known]] == sizes[known]) & (cached["mtimes"][rows[known]] == mtimes[known])
        removed = len(position) - int(known.sum())
        feats = np.empty((n, cached["features"].shape[1]), np.float32)
        feats[reuse] = cached["features"][rows[reuse]]
    todo = np.flatnonzero(~reuse)
    done = reuse.copy()

    def save() -> None:
        assert feats is not None
        _write_cache(cache_file, rel[done], sizes[done], mtimes[done], feats[done], weights_sha256)

    last_save = time.monotonic()
    try:
        for start in range(0, len(todo), chunk):
            idx = todo[start : start + chunk]
            new = embed_files(
                model, [files[i] for i in idx.tolist()], height=height, width=width, batch_size=batch_size,
                flip=flip, amp=amp, hint=GALLERY_HINT,
            ).cpu().numpy()
            if feats is None:
                feats = np.empty((n, new.shape[1]), np.float32)
            feats[idx] = new
            done[idx] = True
            if progress is not None:
                progress(start + len(idx), len(todo))
            if start + len(idx) < len(todo) and time.monotonic() - last_save >= save_every_s:
                save()
                last_save = time.monotonic()
    except BaseException:
        if feats is not None and done.sum() > reuse.sum():
            save()
        raise
    if len(todo) or removed:
        save()
    assert feats is not None
    return GalleryEmbeddings(
        files=files,
        features=torch.from_numpy(feats),
        cache_file=cache_file,
        embedded=len(todo),
        reused=int(reuse.sum()),
        removed=removed,
        notes=notes,
    )
