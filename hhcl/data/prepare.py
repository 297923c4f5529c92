"""``hhcl prepare``: put a dataset under ``<root>/<name>/``, verify it, and build its uint8 cache.

Steps: extract the archive safely (or link/copy a folder) -> find the dataset's top folder -> verify the layout
and compare the image counts with the published ones (a mismatch is a warning) -> decode every image, naming
each corrupt file (an error unless ``skip_corrupt``) while writing the PIL-bicubic cache -> write
``manifest.json``. Idempotent (a prepared dataset is only re-checked) and resumable (cache chunks, extraction
into a temporary folder). The manifest is written last, by a prepare that completed; before decoding, the
placement and the layout options go to ``.pending.json`` (removed with the manifest's writing), so that a re-run
without ``--src`` (the ``--skip-corrupt`` one a corrupt image asks for) reads the same top folder and options.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hhcl.atomic import atomic_write_text
from hhcl.data.archive import UnsafeArchiveError, is_archive, safe_extract
from hhcl.data.datasets import (
    MANIFEST,
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetSpec,
    build_dataset,
    get_spec,
    has_layout,
    prepare_hint,
    read_manifest,
)
from hhcl.data.folder import SPLIT_DIRS, Camera, FolderData, parse_folder
from hhcl.data.store import (
    CorruptImageError,
    build_cache,
    cache_bytes,
    cache_paths,
    corrupt_hint,
    require_cache_space,
)
from hhcl.diskspace import disk_error, human_bytes, is_disk_full
from hhcl.words import plural

SPLITS = ("train", "query", "gallery")
EXTRACT_DIR = "files"
PENDING = ".pending.json"  # placement and options of a prepare that has not completed (no manifest yet)


@dataclass
class PrepareReport:
    """What prepare did: where the dataset is, its counts (images, identities: None when unlabelled, cameras),
    the cameras a folder dataset found, warnings, notes (links a folder dataset left out), skipped files and
    caches."""

    name: str
    root: Path
    top: Path
    counts: dict[str, int]
    ids: dict[str, int | None] = field(default_factory=dict)
    cams: dict[str, int] = field(default_factory=dict)
    cameras: list[Camera] = field(default_factory=list)
    published: dict[str, int] | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    caches: list[Path] = field(default_factory=list)
    extracted: bool = False
    seconds: float = 0.0


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1))


def _recorded(root: Path, name: str) -> dict | None:
    """What the last prepare of ``name`` recorded (top, source, options): the placement of one that did not
    complete (a corrupt image, an interruption: newer than any manifest), else the manifest, else None."""
    try:
        return json.loads((root / name / PENDING).read_text())
    except (OSError, json.JSONDecodeError):
        return read_manifest(root, name)


def _candidates(folder: Path, depth: int = 4) -> list[Path]:
    """``folder`` and its sub-folders, breadth first, up to ``depth`` levels (hidden and cache folders skipped)."""
    out, level = [], [folder]
    for _ in range(depth + 1):
        out += level
        level = [
            c
            for d in level
            for c in sorted(d.iterdir())
            if c.is_dir() and not c.name.startswith(".") and c.name != "cache"
        ]
    return out


def locate_top(folder: Path, spec: DatasetSpec) -> Path:
    """The dataset's top folder inside ``folder``; a missing sub-folder is an error naming the expected path."""
    if not any(spec.layouts[0]):  # the folder dataset: descend through single-folder wrappers
        top = folder
        while True:
            entries = [e for e in top.iterdir() if not e.name.startswith(".")]
            if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in SPLIT_DIRS:
                return top
            if top.resolve().is_relative_to(entries[0].resolve()):  # a link to a folder holding it: a loop
                return top
            top = entries[0]
    candidates = _candidates(folder)
    for cand in candidates:
        if has_layout(cand, spec):
            return cand
    wanted = {d for layout in spec.layouts for d in layout}
    scored = [
        (sum((c / d).is_dir() for d in layout), -i, c, layout)
        for i, c in enumerate(candidates)
        for layout in spec.layouts
    ]
    best = max(scored, key=lambda s: s[:2])
    if best[0] == 0:
        raise DatasetNotFoundError(
            f"no {spec.name} folder found in {folder}: expected a folder like {folder / spec.tops[0]} "
            f"holding {', '.join(spec.layouts[0])} (any of: {', '.join(sorted(wanted))})"
        )
    missing = [str(best[2] / d) for d in best[3] if not (best[2] / d).is_dir()]
    raise DatasetNotFoundError(f"{spec.name} layout incomplete: missing folder(s) {', '.join(missing)}")


def _placed_top(base: Path, spec: DatasetSpec) -> Path:
    """The top folder an earlier prepare placed in ``base`` when no manifest records it (extracted into
    ``files/``, or a folder dataset linked or copied as ``images``), else the dataset put into ``base`` by hand.
    Never ``base`` itself when it holds the placed folder beside the cache: that would read both as cameras."""
    if (base / EXTRACT_DIR).is_dir():
        return locate_top(base / EXTRACT_DIR, spec)
    placed = base / spec.tops[0]
    if not any(spec.layouts[0]) and placed.is_dir():
        return placed
    return locate_top(base, spec)


def _copy_files(top: Path, files: list[str], dest: Path) -> None:
    """Copy the image ``files`` (paths under ``top``, links followed) to the same places under ``dest``."""
    for path in files:
        target = dest / os.path.relpath(path, top)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _place(
    name: str,
    spec: DatasetSpec,
    src: Path | None,
    base: Path,
    manifest: dict | None,
    copy: bool,
    folder: FolderData | None = None,
):
    """Extract/link/copy ``src`` into ``base``; returns (top folder, whether something was extracted). A folder
    dataset is copied as the images its parse ``folder`` reads (links followed once, loops and duplicates left
    out), so the copy parses the same."""
    if src is None:
        if manifest and (base / manifest["top"]).is_dir():
            return base / manifest["top"], False
        return _placed_top(base, spec), False
    src = Path(src).expanduser()
    if not src.exists():
        raise DatasetNotFoundError(
            f"--src {src} does not exist: give the {name} archive (.zip/.tar[.gz]) or its folder"
        )
    source = str(src.resolve())
    if manifest and manifest.get("source") == source and (base / manifest["top"]).is_dir():
        return base / manifest["top"], False  # already placed from this source
    if src.is_file():
        if not is_archive(src):
            raise DatasetFormatError(f"--src {src} is neither a folder nor a zip/tar archive")
        marker = base / ".extracted"
        if marker.is_file() and marker.read_text() == source and (base / EXTRACT_DIR).is_dir():
            return locate_top(base / EXTRACT_DIR, spec), False  # extracted before, caching was interrupted
        marker.unlink(missing_ok=True)
        top = locate_top(safe_extract(src, base / EXTRACT_DIR), spec)
        marker.write_text(source)
        return top, True
    top = locate_top(src, spec)
    link = base / (top.name if top.name in spec.tops else spec.tops[0])
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    if copy:
        tmp = link.with_name(link.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        if folder is not None:
            tmp.mkdir()
            _copy_files(top, [s.path for s in (*folder.train, *folder.query, *folder.gallery)], tmp)
        else:
            shutil.copytree(top, tmp, symlinks=False)
        tmp.rename(link)
    else:
        link.symlink_to(top.resolve(), target_is_directory=True)
    return link, False


def prepare_dataset(
    name: str,
    src: str | Path | None,
    root: str | Path,
    *,
    height: int = 256,
    width: int = 128,
    skip_corrupt: bool = False,
    progress: bool = True,
    copy: bool = False,
    options: dict | None = None,
) -> PrepareReport:
    """Place, verify and cache dataset ``name`` from ``src`` (archive or folder; None = already in place) under
    ``<root>/<name>/``. ``options`` (viper ``seed``, folder ``cam_pattern``) are recorded in the manifest."""
    start = time.perf_counter()
    spec = get_spec(name)
    if name == "synthetic":
        raise ValueError("the synthetic dataset is generated, not prepared from files: use prepare_synthetic")
    base = Path(root) / name
    if src is not None and not Path(src).expanduser().exists():
        raise DatasetNotFoundError(
            f"--src {src} does not exist: give the {name} archive (.zip/.tar[.gz]) or its folder"
        )
    manifest = _recorded(Path(root), name)
    opts = {**(manifest or {}).get("options", {}), **(options or {})}
    folder = None
    if name == "folder" and src is not None and Path(src).expanduser().is_dir():
        folder = parse_folder(locate_top(Path(src).expanduser(), spec), opts)  # refuse a bad tree, the user's paths
    base.mkdir(parents=True, exist_ok=True)
    top, extracted = _place(name, spec, None if src is None else Path(src), base, manifest, copy, folder)
    return _finish(name, spec, base, top, opts, src, height, width, skip_corrupt, progress, extracted, start)


def _finish(
    name, spec, base, top, opts, src, height, width, skip_corrupt, progress, extracted, start
) -> PrepareReport:
    """Parse, compare counts, decode + cache every split, and write the manifest."""
    folder = parse_folder(top, opts) if name == "folder" else None
    parsed = (folder.train, folder.query, folder.gallery) if folder else spec.parse(top, opts)
    splits = dict(zip(SPLITS, parsed, strict=True))
    counts = {k: len(v) for k, v in splits.items()}
    report = PrepareReport(name, base, top, counts, extracted=extracted)
    report.ids = {k: len({s.pid for s in v}) for k, v in splits.items()}
    report.cams = {k: len({s.camid for s in v}) for k, v in splits.items()}
    if folder is not None:
        report.cameras = folder.cameras
        report.notes = folder.notes
        if not folder.labelled_train:
            report.ids["train"] = None
    if spec.counts:
        report.published = dict(zip(SPLITS, spec.counts, strict=True))
        report.warnings += [
            f"{k}: found {counts[k]:,} images, the published {name} has {report.published[k]:,}"
            for k in SPLITS
            if counts[k] != report.published[k]
        ]
    if counts["train"] == 0:
        raise DatasetNotFoundError(f"no train images found in {top}")
    require_cache_space(base, splits, height, width)  # all three, before the first is written
    placed = {
        "top": os.path.relpath(top, base),
        "source": str(Path(src).resolve()) if src is not None else None,
        "options": opts,
    }
    _write_json(base / PENDING, placed)  # a re-run without --src (or cut short) reuses the placement and options
    corrupt: list[str] = []
    for split, samples in splits.items():
        if samples:
            corrupt += build_cache(base, split, samples, height, width, progress=progress)
            report.caches.append(cache_paths(base, split, height, width)[0])
    corrupt = sorted(set(corrupt))
    if corrupt and not skip_corrupt:
        raise CorruptImageError(corrupt, corrupt_hint(name, base.parent))
    report.skipped = corrupt
    report.warnings += [f"skipped corrupt image {p}" for p in corrupt]
    manifest = {
        "version": 1,
        "dataset": name,
        **placed,
        "counts": counts,
        "published": report.published,
        "skipped": [os.path.relpath(p, top) for p in corrupt],
        "caches": [f"{height}x{width}"],
    }
    old = read_manifest(base.parent, name) or {}
    if old.get("top") == manifest["top"]:
        manifest["caches"] = sorted(set(old.get("caches", [])) | set(manifest["caches"]))
    _write_json(base / MANIFEST, manifest)
    (base / PENDING).unlink(missing_ok=True)
    report.seconds = time.perf_counter() - start
    return report


def check_prepared(name: str, root: str | Path, *, height: int, width: int, cache: bool = True) -> str:
    """One line saying that dataset ``name`` under ``root`` is ready to train on: where it is, its image and
    camera counts, whether its cache at ``height`` x ``width`` holds these images as they are now (``cache``:
    whether the run uses one; by the rule ``open_split`` rebuilds by, so a cache left by another folder prepared
    into ``root`` is "rebuilt", not "ready") and, when it is still to build, its size; a DatasetNotFoundError
    (naming the prepare command) or
    DatasetFormatError when it is not ready, a :class:`hhcl.diskspace.DiskSpaceError` when the cache to build
    does not fit on the data root's disk. What ``hhcl train --dry-run`` checks."""
    data = build_dataset(name, root)
    if not data.train:
        hint = prepare_hint(name, Path(root))
        raise DatasetNotFoundError(f"dataset {name!r} in {data.top} has no train images: run `{hint}`")
    cams = len({s.camid for s in data.train})
    parts = [f"{name} in {data.top}: train {plural(len(data.train), 'image', spec=',')} from {plural(cams, 'camera')}"]
    if data.query and data.gallery:
        parts.append(f"query {len(data.query):,}, gallery {len(data.gallery):,}")
    else:
        parts.append("no query/gallery, so the run is never evaluated")
    if not cache:
        parts.append("no cache (data.cache = false): images are decoded at every use")
        return "; ".join(parts)
    splits = {s: data.split(s) for s in SPLITS}
    needed = {s: cache_bytes(data.root, s, samples, height, width) for s, samples in splits.items() if samples}
    if not any(needed.values()):
        parts.append(f"cache {height}x{width}: ready")
        return "; ".join(parts)
    size = human_bytes(require_cache_space(data.root, splits, height, width))
    stale = [s for s, n in needed.items() if n and cache_paths(data.root, s, height, width)[0].is_file()]
    if stale:
        parts.append(f"cache {height}x{width}: will be rebuilt on first use ({size}, fits on the disk): the "
                     f"{', '.join(stale)} cache{'s' * (len(stale) > 1)} hold{'s' * (len(stale) == 1)} other images "
                     "(another folder prepared into this root, or files changed since)")
    else:
        parts.append(f"cache {height}x{width}: built on first use ({size}, fits on the disk)")
    return "; ".join(parts)


def prepare_synthetic(
    root: str | Path,
    *,
    ids: int = 100,
    cams: int = 4,
    seed: int = 0,
    camera_bias: float = 0.0,
    site: int | None = None,
    height: int = 128,
    width: int = 64,
    progress: bool = True,
) -> PrepareReport:
    """Generate the synthetic people (Market layout, deterministic in ``seed``, ``camera_bias`` and ``site``, the
    cameras' own seed; see :mod:`hhcl.data.synthetic`) under ``<root>/synthetic/`` and cache them at ``height`` x
    ``width`` (default: the native 128x64). The manifest's options record all five; regenerates only when they
    change."""
    from hhcl.data.synthetic import check_camera_bias, generate

    start = time.perf_counter()
    check_camera_bias(camera_bias)
    spec = get_spec("synthetic")
    base = Path(root) / "synthetic"
    top = base / spec.tops[0]
    opts = {"ids": ids, "cams": cams, "seed": seed, "camera_bias": float(camera_bias), "site": site}
    manifest = read_manifest(Path(root), "synthetic")
    # data from before a knob: bias 0, cameras drawn from the seed
    recorded = {"camera_bias": 0.0, "site": None, **(manifest or {}).get("options", {})}
    fresh = not (manifest and recorded == opts and has_layout(top, spec))
    if fresh:
        files = generate(ids, cams, seed, camera_bias, site)
        tmp = top.with_name(top.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        _write_images(tmp, files)
        (base / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(base / "cache", ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)
        tmp.rename(top)
    return _finish("synthetic", spec, base, top, opts, None, height, width, False, progress, fresh, start)


def _write_images(folder: Path, files: list[tuple[str, str, np.ndarray]]) -> None:
    """Save the synthetic ``files`` (sub-folder, name, image) as JPEGs under ``folder``; a disk that fills up
    removes ``folder`` (nothing half-written stays) and raises a DiskSpaceError naming the file."""
    path = folder
    try:
        for sub in ("bounding_box_train", "query", "bounding_box_test"):
            path = folder / sub
            path.mkdir(parents=True)
        for sub, fname, img in files:
            path = folder / sub / fname
            Image.fromarray(np.ascontiguousarray(img)).save(path, quality=95)
    except OSError as err:
        if not is_disk_full(err):
            raise
        shutil.rmtree(folder, ignore_errors=True)
        fix = "free space on it, use another data root (--root), or generate fewer people (--ids)"
        raise disk_error(err, path, fix) from None


__all__ = [
    "PrepareReport",
    "UnsafeArchiveError",
    "check_prepared",
    "locate_top",
    "prepare_dataset",
    "prepare_synthetic",
]
