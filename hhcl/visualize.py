"""Rank-list pictures (like torchreid's visualisation), drawn from the original image files: the query, then its
top-K gallery images, every tile scaled to one display height (aspect ratio kept) with a coloured border and a
caption under it. ``hhcl eval`` colours a gallery tile green (same identity) or red (different identity) and
leaves out same-pid same-camera gallery items, as the evaluation does; ``hhcl search`` has no labels and uses
a neutral colour.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from hhcl.data.datasets import Sample
from hhcl.data.store import upright_rgb
from hhcl.run.atomic import atomic_write_bytes

MATCH, MISS, QUERY, RESULT = (0, 170, 0), (215, 0, 0), (40, 40, 40), (40, 110, 200)
BORDER, GAP, SEPARATOR = 4, 6, 24
DISPLAY_HEIGHT = 256

ImageSource = str | os.PathLike[str] | Image.Image
Color = tuple[int, int, int]


def _font(height: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The caption font, sized to the display height (Pillow's bundled font: no system fonts needed)."""
    return ImageFont.load_default(size=max(10, height // 16))


def display_image(source: ImageSource, height: int) -> Image.Image:
    """``source`` (a file or a PIL image) as RGB scaled to ``height`` pixels high, aspect ratio kept.

    A file that cannot be read raises ValueError naming it.
    """
    if isinstance(source, Image.Image):
        img = source.convert("RGB")
    else:
        try:
            with Image.open(source) as opened:
                opened.draft("RGB", (max(1, opened.width * height // max(opened.height, 1)), height))  # JPEG
                img = upright_rgb(opened)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise ValueError(
                f"cannot read image '{source}' for the rank list ({err}); restore or replace the file"
            ) from None
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def _tile(source: ImageSource, color: Color, caption: str, height: int, font: ImageFont.ImageFont) -> Image.Image:
    img = display_image(source, height)
    text_h = font.getbbox("0123456789:.query")[3] + 6
    tile = Image.new("RGB", (img.width + 2 * BORDER, height + 2 * BORDER + text_h), "white")
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, tile.width - 1, height + 2 * BORDER - 1), fill=color)
    tile.paste(img, (BORDER, BORDER))
    tw = draw.textlength(caption, font=font)
    draw.text(((tile.width - tw) / 2, height + 2 * BORDER + 2), caption, fill=(0, 0, 0), font=font)
    return tile


def ranklist_image(
    query: ImageSource,
    gallery: Sequence[ImageSource],
    captions: Sequence[str],
    colors: Sequence[Color],
    *,
    height: int = DISPLAY_HEIGHT,
) -> Image.Image:
    """One row: the query tile, a separator, then the gallery tiles in rank order, each ``height`` px high."""
    if not (len(gallery) == len(captions) == len(colors)):
        raise ValueError(f"got {len(gallery)} gallery images, {len(captions)} captions, {len(colors)} colours")
    if height < 1:
        raise ValueError(f"the display height must be at least 1 pixel, got {height}")
    font = _font(height)
    tiles = [_tile(query, QUERY, "query", height, font)]
    tiles += [_tile(s, c, t, height, font) for s, c, t in zip(gallery, colors, captions, strict=True)]
    width = sum(t.width for t in tiles) + GAP * max(len(tiles) - 2, 0) + (SEPARATOR if len(tiles) > 1 else 0)
    canvas = Image.new("RGB", (width, tiles[0].height), "white")
    x = 0
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (x, 0))
        x += tile.width + (SEPARATOR if i == 0 else GAP)
    return canvas


def rank_captions(distances: Sequence[float]) -> list[str]:
    """``"<rank>: <distance>"`` captions for gallery tiles in rank order."""
    return [f"{i + 1}: {d:.3f}" for i, d in enumerate(distances)]


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write ``image`` as a PNG atomically (a crash leaves the old file or the new one)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def sample_queries(num_queries: int, count: int) -> Tensor:
    """``count`` query indices spread evenly over ``num_queries`` (deterministic, first and last included)."""
    count = min(count, num_queries)
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.linspace(0, num_queries - 1, count).round().long().unique()


def save_ranklists(
    dist_rows: Tensor,
    query_indices: Tensor | Sequence[int],
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    topk: int,
    out_dir: str | os.PathLike[str],
    height: int = DISPLAY_HEIGHT,
) -> list[Path]:
    """One PNG per query from the samples' original files: ``dist_rows[i]`` are the gallery distances of query
    ``query_indices[i]``.

    Files are ``q<index>_pid<pid>_<hit|miss>.png`` (hit: the top-1 is a match), written atomically.
    """
    qidx = torch.as_tensor(query_indices, dtype=torch.long).cpu()
    if dist_rows.dim() != 2 or dist_rows.shape != (len(qidx), len(gallery_samples)):
        raise ValueError(
            f"dist_rows must be [{len(qidx)}, {len(gallery_samples)}] (queries x gallery), "
            f"got {tuple(dist_rows.shape)}"
        )
    if topk < 1:
        raise ValueError(f"--ranklist needs K >= 1 gallery images per row, got {topk}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = dist_rows.detach().float().cpu()
    q_pids = torch.tensor([query_samples[i].pid for i in qidx.tolist()], dtype=torch.long)
    q_cams = torch.tensor([query_samples[i].camid for i in qidx.tolist()], dtype=torch.long)
    g_pids = torch.tensor([s.pid for s in gallery_samples], dtype=torch.long)
    g_cams = torch.tensor([s.camid for s in gallery_samples], dtype=torch.long)
    junk = (g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None])
    n_valid = (~junk).sum(1)
    order = torch.sort(d.masked_fill(junk, torch.inf), dim=1, stable=True).indices
    paths = []
    for row, qi in enumerate(qidx.tolist()):
        top = order[row, : min(topk, int(n_valid[row]))]
        matches = (g_pids[top] == q_pids[row]).tolist()
        image = ranklist_image(
            query_samples[qi].path,
            [gallery_samples[g].path for g in top.tolist()],
            rank_captions(d[row, top].tolist()),
            [MATCH if m else MISS for m in matches],
            height=height,
        )
        tag = "hit" if matches and matches[0] else "miss"
        path = out / f"q{qi:05d}_pid{int(q_pids[row])}_{tag}.png"
        save_png(image, path)
        paths.append(path)
    return paths
