"""``hhcl search``: embed a folder of your own crops once (cached), find each query's top K, and write rank-list
pictures from the original images plus ``results.json``.

A query whose file is also in the gallery is left out of its own rank list (it would be rank 1 at distance 0);
``excluded_self`` in the JSON says when that happened.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hhcl.atomic import atomic_write_text
from hhcl.data.store import CorruptImageError
from hhcl.distributed import resolve_device
from hhcl.export import EmbedError, list_images
from hhcl.models.loading import load_model
from hhcl.run.layout import find_checkpoint
from hhcl.search.gallery import (
    SearchError,
    cache_location,
    embed_files,
    embed_gallery,
    file_sha256,
    list_gallery,
    model_key,
)
from hhcl.search.rank import top_k
from hhcl.visualize import DISPLAY_HEIGHT, RESULT, rank_captions, ranklist_image, save_png

RESULTS_FILE = "results.json"
DISTANCE = "squared Euclidean distance between L2-normalised embeddings (0 = same, 4 = opposite)"
QUERY_HINT = "give a readable image file (jpg, png, bmp, ...) as --query"


@dataclass
class Match:
    """One gallery image in a query's rank list."""

    rank: int
    path: Path
    relpath: str
    distance: float


@dataclass
class QueryResult:
    """A query's rank list, its picture, and whether the query itself was left out of the gallery."""

    query: Path
    matches: list[Match]
    excluded_self: bool
    ranklist: Path


@dataclass
class SearchReport:
    """Everything ``hhcl search`` shows and writes."""

    source: str
    arch: str
    height: int
    width: int
    gallery: Path
    gallery_size: int
    cache_file: Path
    embedded: int
    reused: int
    removed: int
    top: int
    results: list[QueryResult]
    results_file: Path
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """What ``results.json`` holds: the model, the gallery and its cache, and every query's ranked paths."""
        return {
            "model": self.source,
            "arch": self.arch,
            "input_size": [self.height, self.width],
            "distance": DISTANCE,
            "gallery": str(self.gallery),
            "gallery_size": self.gallery_size,
            "cache": {
                "file": str(self.cache_file),
                "embedded": self.embedded,
                "reused": self.reused,
                "removed": self.removed,
            },
            "top": self.top,
            "queries": [
                {
                    "query": str(r.query),
                    "excluded_self": r.excluded_self,
                    "ranklist": str(r.ranklist),
                    "results": [
                        {"rank": m.rank, "path": str(m.path), "relpath": m.relpath, "distance": m.distance}
                        for m in r.matches
                    ],
                }
                for r in self.results
            ],
        }


def query_files(queries: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The query images: each argument is an image file or a folder of them (recursive, sorted)."""
    if not queries:
        raise SearchError("no query given: pass one or more --query IMG (an image file or a folder of images)")
    out: list[Path] = []
    for q in map(Path, queries):
        if q.is_dir():
            try:
                out += list_images(q)
            except EmbedError as err:
                raise SearchError(f"--query {q}: {err}; give image files or a folder holding images") from None
        elif q.is_file():
            out.append(q)
        else:
            raise SearchError(f"query image '{q}' does not exist: give an existing image file or folder with --query")
    return out


def _png_name(number: int, query: Path) -> str:
    """``q<number>_<stem>.png`` with the stem reduced to safe characters."""
    return f"q{number:03d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', query.stem)}.png"


def search(
    run_or_checkpoint: str | os.PathLike[str],
    gallery: str | os.PathLike[str],
    queries: Sequence[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str],
    top: int = 10,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    height: int = DISPLAY_HEIGHT,
    progress: Callable[[int, int], None] | None = None,
) -> SearchReport:
    """Rank the images under ``gallery`` for every query with the model of a run directory or weights file.

    The model's input size, ``eval.flip`` and ``train.amp`` come from its config (256x128, no flip, no autocast for
    an authors' checkpoint). Gallery embeddings are cached (see :mod:`hhcl.search.gallery`); files under
    ``out_dir`` are never part of the gallery. Writes one rank-list PNG per query (``height`` px tiles from the
    original images) and ``results.json`` into ``out_dir``. ``progress(done, total)`` counts gallery embeddings.
    """
    if top < 1:
        raise SearchError(f"--top {top} is not allowed: use 1 or more gallery images per query")
    if batch_size < 1:
        raise SearchError(f"--batch-size {batch_size} is not allowed: use 1 or more")
    gallery, out = Path(gallery), Path(out_dir)
    queries_in = query_files(queries)
    files = list_gallery(gallery, exclude=[out])
    dev = resolve_device(device, key="--device")
    weights = find_checkpoint(run_or_checkpoint)
    model, info = load_model(weights, device=dev)
    cfg = info.config
    flip = cfg.eval.flip if cfg is not None else False
    amp = cfg.train.amp if cfg is not None else "off"
    opts = {"height": info.height, "width": info.width, "batch_size": batch_size, "flip": flip, "amp": amp}
    try:
        qf = embed_files(model, queries_in, **opts, hint=QUERY_HINT)
    except CorruptImageError as err:  # a query is an argument, not data met on the way: the user gave a non-image
        raise SearchError(str(err)) from None
    sha = file_sha256(weights)
    cache_file, note = cache_location(gallery, model_key(sha, info.height, info.width, flip, amp))
    g = embed_gallery(model, gallery, files, cache_file, sha, **opts, progress=progress)
    position = {os.path.abspath(p): i for i, p in enumerate(files)}
    self_index = torch.tensor([position.get(os.path.abspath(q), -1) for q in queries_in])
    dist, idx = top_k(qf, g.features, top, exclude=self_index)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n, q in enumerate(queries_in):
        keep = idx[n] >= 0
        ranked = [g.files[i] for i in idx[n][keep].tolist()]
        distances = [float(d) for d in dist[n][keep]]
        picture = ranklist_image(q, ranked, rank_captions(distances), [RESULT] * len(ranked), height=height)
        png = out / _png_name(n + 1, q)
        save_png(picture, png)
        matches = [
            Match(rank=r + 1, path=p, relpath=p.relative_to(gallery).as_posix(), distance=d)
            for r, (p, d) in enumerate(zip(ranked, distances, strict=True))
        ]
        results.append(QueryResult(q, matches, bool(self_index[n] >= 0), png))
    report = SearchReport(
        source=info.source,
        arch=info.arch,
        height=info.height,
        width=info.width,
        gallery=gallery,
        gallery_size=len(files),
        cache_file=g.cache_file,
        embedded=g.embedded,
        reused=g.reused,
        removed=g.removed,
        top=top,
        results=results,
        results_file=out / RESULTS_FILE,
        notes=([note] if note else []) + g.notes,
    )
    atomic_write_text(report.results_file, json.dumps(report.to_json(), indent=2) + "\n")
    return report
