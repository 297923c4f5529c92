"""Rank-list pictures (like torchreid's visualisation): the query, then its top-K gallery images with a green
(same identity) or red (different identity) border and the distance under each. Same-pid same-camera
gallery items are left out, as the evaluation leaves them out.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

MATCH, MISS, QUERY = (0, 170, 0), (215, 0, 0), (40, 40, 40)
BORDER, GAP, SEPARATOR, TEXT_H = 4, 6, 24, 14


def _to_pil(image: Tensor | np.ndarray) -> Image.Image:
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"expected a uint8 [3, H, W] image, got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))


def _tile(image: Tensor | np.ndarray, color: tuple[int, int, int], caption: str) -> Image.Image:
    img = _to_pil(image)
    w, h = img.size
    tile = Image.new("RGB", (w + 2 * BORDER, h + 2 * BORDER + TEXT_H), "white")
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, w + 2 * BORDER - 1, h + 2 * BORDER - 1), fill=color)
    tile.paste(img, (BORDER, BORDER))
    font = ImageFont.load_default()
    tw = draw.textlength(caption, font=font)
    draw.text(((tile.width - tw) / 2, h + 2 * BORDER + 1), caption, fill=(0, 0, 0), font=font)
    return tile


def ranklist_image(
    query: Tensor | np.ndarray,
    gallery: Sequence[Tensor | np.ndarray] | Tensor,
    matches: Sequence[bool],
    distances: Sequence[float],
) -> Image.Image:
    """One row: the query tile, a gap, then the gallery tiles in rank order (green match / red miss)."""
    if not (len(gallery) == len(matches) == len(distances)):
        raise ValueError(f"got {len(gallery)} gallery images, {len(matches)} match flags, {len(distances)} distances")
    tiles = [_tile(query, QUERY, "query")]
    tiles += [
        _tile(img, MATCH if m else MISS, f"{i + 1}: {d:.3f}")
        for i, (img, m, d) in enumerate(zip(gallery, matches, distances, strict=True))
    ]
    tw, th = tiles[0].size
    width = tw * len(tiles) + GAP * max(len(tiles) - 2, 0) + (SEPARATOR if len(tiles) > 1 else 0)
    canvas = Image.new("RGB", (width, th), "white")
    x = 0
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (x, 0))
        x += tile.width + (SEPARATOR if i == 0 else GAP)
    return canvas


def sample_queries(num_queries: int, count: int) -> Tensor:
    """``count`` query indices spread evenly over ``num_queries`` (deterministic, first and last included)."""
    count = min(count, num_queries)
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.linspace(0, num_queries - 1, count).round().long().unique()


def _save_png(image: Image.Image, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_ranklists(
    dist_rows: Tensor,
    query_indices: Tensor | Sequence[int],
    query_store: Any,
    gallery_store: Any,
    *,
    topk: int,
    out_dir: str | os.PathLike[str],
) -> list[Path]:
    """One PNG per query: ``dist_rows[i]`` are the gallery distances of query ``query_indices[i]``.

    Files are ``q<index>_pid<pid>_<hit|miss>.png`` (hit: the top-1 is a match), written atomically.
    """
    qidx = torch.as_tensor(query_indices, dtype=torch.long).cpu()
    if dist_rows.dim() != 2 or dist_rows.shape != (len(qidx), len(gallery_store)):
        raise ValueError(
            f"dist_rows must be [{len(qidx)}, {len(gallery_store)}] (queries x gallery), got {tuple(dist_rows.shape)}"
        )
    if topk < 1:
        raise ValueError(f"--ranklist needs K >= 1 gallery images per row, got {topk}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = dist_rows.detach().float().cpu()
    q_pids, q_cams = query_store.pids.cpu()[qidx], query_store.camids.cpu()[qidx]
    g_pids, g_cams = gallery_store.pids.cpu(), gallery_store.camids.cpu()
    junk = (g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None])
    n_valid = (~junk).sum(1)
    order = torch.sort(d.masked_fill(junk, torch.inf), dim=1, stable=True).indices
    query_imgs = query_store.gather(qidx.to(getattr(query_store, "device", "cpu"))).cpu()
    paths = []
    for row, qi in enumerate(qidx.tolist()):
        top = order[row, : min(topk, int(n_valid[row]))]
        gal = gallery_store.gather(top.to(getattr(gallery_store, "device", "cpu"))).cpu()
        matches = (g_pids[top] == q_pids[row]).tolist()
        image = ranklist_image(query_imgs[row], gal, matches, d[row, top].tolist())
        tag = "hit" if matches and matches[0] else "miss"
        path = out / f"q{qi:05d}_pid{int(q_pids[row])}_{tag}.png"
        _save_png(image, path)
        paths.append(path)
    return paths
