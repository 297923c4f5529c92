"""Contact sheets of one epoch's pseudo labels: what the clustering put together, from the original images.

One row per cluster (largest first; members sampled, each image at its own resolution with its camera under
it), one row of outliers, and a histogram of cluster sizes. This is how a user sees whether the clusters of
their own cameras are people or, say, backgrounds or one camera's colour cast.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from hhcl.atomic import atomic_write_bytes, atomic_write_text
from hhcl.cluster.quality import LabelQuality, label_quality
from hhcl.config import load_config
from hhcl.data.store import CorruptImageError, upright_rgb
from hhcl.run.labels import LabelsError, load_epoch_labels, read_train_index
from hhcl.run.layout import RunLayout
from hhcl.words import plural

GAP, LABEL_W, PAD = 4, 190, 8
CAMERA_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                  (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


@dataclass(frozen=True)
class SheetReport:
    """What ``hhcl clusters`` wrote: the pictures and the numbers they show."""

    files: list[Path]
    n_clusters: int
    n_outliers: int
    shown_clusters: int


@dataclass(frozen=True)
class ClusterPick:
    """One cluster chosen for display: its id, all its members, the sampled members shown, its camera count."""

    cluster: int
    members: np.ndarray
    shown: np.ndarray
    n_cameras: int


def pick_clusters(
    labels: np.ndarray, camids: np.ndarray, *, clusters: int, per_cluster: int, rng: np.random.Generator
) -> list[ClusterPick]:
    """The ``clusters`` largest clusters (equal sizes: lower id first), each with up to ``per_cluster`` members
    drawn by ``rng`` (sorted); the one choice shared by the contact sheets and the dashboard's Clusters tab."""
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    order = np.argsort(-sizes, kind="stable")[: min(clusters, int((sizes > 0).sum()))]
    picks = []
    for c in order:
        members = np.flatnonzero(labels == c)
        shown = np.sort(rng.choice(members, size=min(per_cluster, len(members)), replace=False))
        picks.append(ClusterPick(int(c), members, shown, len(np.unique(camids[members]))))
    return picks


def _font(size: int = 12) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _open(path: str) -> Image.Image:
    """The image at ``path``, upright RGB; an unreadable one is a CorruptImageError naming it."""
    try:
        with Image.open(path) as img:
            return upright_rgb(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise CorruptImageError([path], f"it cannot be read for the contact sheet ({err}); restore or replace it") from None


def camera_label(name: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> str:
    """The camera name drawn under an image ``width`` pixels wide: whole when it fits, else its last word (the
    number of ``cam 2``, never cut: a cut number would name another camera; other words are cut to fit). Tiny
    crops (CAVIAR4REID's are 16-75 px wide) would otherwise all read ``cam``, hiding each image's camera."""
    if font.getlength(name) <= width:
        return name
    short = name.split()[-1] if name.split() else name
    while len(short) > 1 and not short.isdigit() and font.getlength(short) > width:
        short = short[:-1]
    return short


def _row(caption: str, paths: Sequence[str], cams: Sequence[str], camids: Sequence[int]) -> Image.Image:
    """A caption, then the images at their own resolution, each with a camera bar and name under it."""
    font = _font()
    images = [_open(p) for p in paths]
    text_h = 16
    height = max([im.height for im in images] + [40]) + 4 + text_h
    width = LABEL_W + sum(im.width + GAP for im in images) + PAD
    row = Image.new("RGB", (width, height + 2 * GAP), "white")
    draw = ImageDraw.Draw(row)
    draw.multiline_text((PAD, GAP), caption, fill=(0, 0, 0), font=font, spacing=2)
    x = LABEL_W
    for im, cam, camid in zip(images, cams, camids, strict=True):
        colour = CAMERA_COLOURS[camid % len(CAMERA_COLOURS)]
        row.paste(im, (x, GAP))
        draw.rectangle((x, GAP + im.height, x + im.width - 1, GAP + im.height + 3), fill=colour)
        draw.text((x, GAP + im.height + 5), camera_label(cam, im.width, font), fill=colour, font=font)
        x += im.width + GAP
    return row


def _stack(rows: list[Image.Image], title: str) -> Image.Image:
    width = max(r.width for r in rows) if rows else 400
    head = 24
    sheet = Image.new("RGB", (width, head + sum(r.height + 1 for r in rows)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, 5), title, fill=(0, 0, 0), font=_font(14))
    y = head
    for r in rows:
        draw.line((0, y, width, y), fill=(200, 200, 200))
        sheet.paste(r, (0, y + 1))
        y += r.height + 1
    return sheet


def size_histogram(sizes: np.ndarray, title: str) -> Image.Image:
    """A bar chart of how many clusters have each size (wider bins for larger sizes), drawn with PIL."""
    edges = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 128, 256, 10**9]
    edges = [e for e in edges if e <= max(int(sizes.max(initial=1)) + 1, 3)] + [10**9]
    counts = np.histogram(sizes, bins=edges)[0] if sizes.size else np.zeros(len(edges) - 1, int)
    labels = [f"{a}" if b == a + 1 else (f"{a}+" if b >= 10**9 else f"{a}-{b - 1}") for a, b in itertools.pairwise(edges)]
    w, h, bar, left, bottom = 60 + 48 * len(counts), 260, 36, 40, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    draw.text((left, 6), title, fill=(0, 0, 0), font=_font(13))
    top = max(int(counts.max(initial=0)), 1)
    for k, (c, label) in enumerate(zip(counts, labels, strict=True)):
        x = left + 48 * k
        bh = round((h - bottom - 40) * c / top)
        draw.rectangle((x, h - bottom - bh, x + bar, h - bottom), fill=(31, 119, 180))
        draw.text((x, h - bottom - bh - 14), str(int(c)), fill=(0, 0, 0), font=font)
        draw.text((x, h - bottom + 4), label, fill=(0, 0, 0), font=font)
    draw.line((left - 4, h - bottom, w - 10, h - bottom), fill=(0, 0, 0))
    draw.text((left, h - 18), "cluster size (images)", fill=(0, 0, 0), font=font)
    return img


def _save(img: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def draw_contact_sheets(
    labels: np.ndarray,
    paths: Sequence[str],
    camids: np.ndarray,
    cam_names: Sequence[str],
    out: Path,
    *,
    title: str,
    clusters: int = 24,
    per_cluster: int = 12,
    rows_per_sheet: int = 8,
    seed: int = 0,
) -> SheetReport:
    """Write ``clusters_NN.png`` (largest ``clusters`` clusters), ``outliers.png``, ``sizes.png``, ``clusters.json``."""
    labels, camids = np.asarray(labels), np.asarray(camids)
    if not len(labels) == len(paths) == len(camids):
        raise ValueError(f"{len(labels)} labels for {len(paths)} images and {len(camids)} camera ids")
    if clusters < 1 or per_cluster < 1 or rows_per_sheet < 1:
        raise ValueError("--clusters, --per-cluster and rows per sheet must be >= 1")
    rng = np.random.default_rng(seed)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    picks = pick_clusters(labels, camids, clusters=clusters, per_cluster=per_cluster, rng=rng)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    rows: list[Image.Image] = []
    listing = []
    for rank, pick in enumerate(picks, 1):
        c, members, shown, n_cams = pick.cluster, pick.members, pick.shown, pick.n_cameras
        caption = f"#{rank}  cluster {c}\n{plural(len(members), 'image')}\n{plural(n_cams, 'camera')}"
        if len(shown) < len(members):
            caption += f"\n{len(shown)} shown"
        shown_cams = [cam_names[camids[i]] for i in shown]
        rows.append(_row(caption, [paths[i] for i in shown], shown_cams, camids[shown].tolist()))
        listing.append({"cluster": c, "size": len(members), "cameras": n_cams,
                        "camera_names": [cam_names[k] for k in np.unique(camids[members])],
                        "shown": [paths[i] for i in shown], "shown_cameras": shown_cams})
        if len(rows) == rows_per_sheet or rank == len(picks):
            files.append(_save(_stack(rows, f"{title}: clusters by size"), out / f"clusters_{len(files) + 1:02d}.png"))
            rows = []
    outliers = np.flatnonzero(labels < 0)
    if outliers.size:
        shown = np.sort(rng.choice(outliers, size=min(2 * per_cluster, outliers.size), replace=False))
        caption = f"outliers\n{plural(int(outliers.size), 'image')}\n({100 * outliers.size / len(labels):.1f}%)"
        row = _row(caption, [paths[i] for i in shown], [cam_names[camids[i]] for i in shown], camids[shown].tolist())
        files.append(_save(_stack([row], f"{title}: outliers (not in any cluster)"), out / "outliers.png"))
    n_clusters = int((sizes > 0).sum())
    files.append(_save(size_histogram(sizes[sizes > 0], f"{title}: sizes of {plural(n_clusters, 'cluster')}"), out / "sizes.png"))
    summary = {"title": title, "n_images": len(labels), "n_clusters": n_clusters, "n_outliers": int(outliers.size),
               "clusters": listing}
    atomic_write_text(out / "clusters.json", json.dumps(summary, indent=1) + "\n")
    files.append(out / "clusters.json")
    return SheetReport(files, n_clusters, int(outliers.size), len(picks))


def draw_run_clusters(
    run_dir: Path,
    out: Path,
    *,
    epoch: int | None = None,
    root: Path | None = None,
    clusters: int = 24,
    per_cluster: int = 12,
) -> tuple[int, SheetReport, LabelQuality | None]:
    """Contact sheets of a run's kept pseudo labels of 0-based ``epoch`` (latest when None); images are found
    through the run's recorded ``data.root`` unless ``root`` overrides it. Returns (epoch, report, quality)."""
    layout = RunLayout.of(run_dir)
    if not layout.config.is_file():
        raise LabelsError(f"'{run_dir}' is not a run directory (no {layout.config.name}): pass runs/<name>")
    index = read_train_index(layout)
    epoch, labels = load_epoch_labels(layout, epoch)
    if len(labels) != len(index.paths):
        raise LabelsError(f"{layout.epoch_labels(epoch)} holds {len(labels)} labels for {len(index.paths)} images in "
                          f"{layout.labels / 'train.tsv'}: the run directory is damaged")
    base = Path(root) if root is not None else Path(load_config(layout.config).data.root)
    paths = [p if Path(p).is_absolute() else str(base / p) for p in index.paths]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise LabelsError(f"{len(missing)} of the run's {len(paths)} train images are missing under {base} "
                          f"(first: {missing[0]}); pass --root with the data root the run was trained on")
    quality = label_quality(torch.from_numpy(labels), torch.from_numpy(index.pids)) if (index.pids >= 0).all() else None
    title = f"{layout.root.name}, epoch {epoch + 1}"
    report = draw_contact_sheets(labels, paths, index.camids, index.camera_names(), out, title=title, clusters=clusters,
                                 per_cluster=per_cluster)
    return epoch, report, quality
