"""Rank-list pictures (like torchreid's visualisation), drawn from the original image files: the query, then its
top-K gallery images, every tile scaled to one display height (aspect ratio kept) with a coloured border and a
caption under it. ``hhcl eval`` colours a gallery tile green (same identity) or red (different identity) and
leaves out same-pid same-camera gallery items, as the evaluation does; ``hhcl search`` has no labels and uses
a neutral colour.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from hhcl.atomic import atomic_write_bytes
from hhcl.data.datasets import Sample
from hhcl.data.store import upright_rgb

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


#: the most characters of one name (an identity, a file stem) that goes into a rank list's file name
NAME_CHARS = 60


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
    query_caption: str = "query",
) -> Image.Image:
    """One row: the query tile (captioned ``query_caption``), a separator, then the gallery tiles in rank order,
    each ``height`` px high."""
    if not (len(gallery) == len(captions) == len(colors)):
        raise ValueError(f"got {len(gallery)} gallery images, {len(captions)} captions, {len(colors)} colours")
    if height < 1:
        raise ValueError(f"the display height must be at least 1 pixel, got {height}")
    font = _font(height)
    tiles = [_tile(query, QUERY, query_caption, height, font)]
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


def file_part(name: str) -> str:
    """``name`` as one part of a file name: each run of characters other than letters and digits (of any script),
    ``.``, ``-`` and ``_`` becomes one ``_``; at most :data:`NAME_CHARS` characters, never empty."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_")[:NAME_CHARS] or "_"


@dataclass(frozen=True)
class RankRow:
    """One rank-list picture as it is drawn: its file name, the query (file and caption), then the gallery files
    in rank order with their captions and colours."""

    name: str
    query: str
    query_caption: str
    gallery: list[str]
    captions: list[str]
    colors: list[Color]


def rank_rows(
    dist_rows: Tensor,
    query_indices: Tensor | Sequence[int],
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    topk: int,
    identities: Mapping[int, str] | None = None,
) -> list[RankRow]:
    """What each query's rank list shows: ``dist_rows[i]`` are the gallery distances of query
    ``query_indices[i]``; its top ``topk`` gallery items (same-pid same-camera ones left out), green for the
    query's identity, red otherwise.

    A query is named by its identity as the user named it (``identities``: pid -> an identity folder's name;
    else the dataset's pid) and its file's stem: file ``q<NNN>_<identity>_<stem>_<hit|miss>.png`` (NNN counts
    the pictures from 1; hit: the top-1 is a match), caption ``query <identity>``.
    """
    qidx = torch.as_tensor(query_indices, dtype=torch.long).cpu()
    if dist_rows.dim() != 2 or dist_rows.shape != (len(qidx), len(gallery_samples)):
        raise ValueError(
            f"dist_rows must be [{len(qidx)}, {len(gallery_samples)}] (queries x gallery), "
            f"got {tuple(dist_rows.shape)}"
        )
    if topk < 1:
        raise ValueError(f"--ranklist needs K >= 1 gallery images per row, got {topk}")
    d = dist_rows.detach().float().cpu()
    q_pids = torch.tensor([query_samples[i].pid for i in qidx.tolist()], dtype=torch.long)
    q_cams = torch.tensor([query_samples[i].camid for i in qidx.tolist()], dtype=torch.long)
    g_pids = torch.tensor([s.pid for s in gallery_samples], dtype=torch.long)
    g_cams = torch.tensor([s.camid for s in gallery_samples], dtype=torch.long)
    junk = (g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None])
    n_valid = (~junk).sum(1)
    order = torch.sort(d.masked_fill(junk, torch.inf), dim=1, stable=True).indices
    names = identities or {}
    rows = []
    for row, qi in enumerate(qidx.tolist()):
        top = order[row, : min(topk, int(n_valid[row]))]
        matches = (g_pids[top] == q_pids[row]).tolist()
        pid = int(q_pids[row])
        identity = names.get(pid, str(pid))
        tag = "hit" if matches and matches[0] else "miss"
        stem = Path(query_samples[qi].path).stem
        rows.append(RankRow(
            f"q{row + 1:03d}_{file_part(identity)}_{file_part(stem)}_{tag}.png",
            query_samples[qi].path,
            f"query {identity}",
            [gallery_samples[g].path for g in top.tolist()],
            rank_captions(d[row, top].tolist()),
            [MATCH if m else MISS for m in matches],
        ))
    return rows


def save_ranklists(
    dist_rows: Tensor,
    query_indices: Tensor | Sequence[int],
    query_samples: Sequence[Sample],
    gallery_samples: Sequence[Sample],
    *,
    topk: int,
    out_dir: str | os.PathLike[str],
    height: int = DISPLAY_HEIGHT,
    identities: Mapping[int, str] | None = None,
) -> list[Path]:
    """One PNG per query from the samples' original files, as :func:`rank_rows` lays them out and names them
    (``identities``: the user's identity names by pid), written atomically under ``out_dir``."""
    rows = rank_rows(dist_rows, query_indices, query_samples, gallery_samples, topk=topk, identities=identities)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        image = ranklist_image(row.query, row.gallery, row.captions, row.colors, height=height,
                               query_caption=row.query_caption)
        save_png(image, out / row.name)
        paths.append(out / row.name)
    return paths
