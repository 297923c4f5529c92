"""The dashboard's Clusters tab: the largest clusters of the newest kept epoch, as rows of member crops.

The run keeps each epoch's pseudo labels (``labels/epoch_NNN.npy``) and the train images they index
(``labels/train.tsv``); clusters and members are chosen by :func:`hhcl.cluster_sheets.pick_clusters`, the
same choice ``hhcl clusters`` draws. :func:`load_gallery` reads files and images (run it off the UI thread);
:class:`ClustersPane` shows its result with ``textual-image`` (terminal graphics where the terminal has them,
unicode blocks elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static
from textual_image.renderable import Image as AutoRenderable
from textual_image.renderable.unicode import Image as ShadeRenderable
from textual_image.widget import HalfcellImage
from textual_image.widget import Image as AutoImage

from hhcl.config import CLUSTER_PARAMS, Config, ConfigError, load_config
from hhcl.run.labels import LabelsError, load_epoch_labels, read_train_index, saved_epochs
from hhcl.run.layout import RunLayout
from hhcl.words import plural

#: the terminal's graphics protocol (sixel, kitty) where it has one; else coloured half blocks, never the
#: grey shades textual-image falls back to off a tty (a browser through textual-serve, a snapshot)
TerminalImage: type[AutoImage] | type[HalfcellImage] = HalfcellImage if AutoRenderable is ShadeRenderable else AutoImage
SHOWN_CLUSTERS = 4
PER_CLUSTER = 8
TILE_HEIGHT = 96  # pixels of each crop in the strip (crops keep their aspect ratio)
CAMERA_BAR = 6  # pixels of the camera-coloured bar under each crop
STRIP_GAP = 4
STRIP_BACKGROUND = (24, 24, 24)
MISSING_TILE = (70, 70, 70)


@dataclass(frozen=True)
class ClusterRow:
    """One cluster as the tab shows it: id, size, cameras (the names the user gave them, else their 1-based
    numbers, as ``hhcl clusters`` names them), strip."""

    cluster: int
    size: int
    cameras: list[str]
    shown: int
    strip: Image.Image


@dataclass(frozen=True)
class ClusterGallery:
    """What the tab shows for one epoch (``epoch`` None: nothing to show, ``note`` says why)."""

    epoch: int | None
    n_images: int = 0
    n_clusters: int = 0
    n_outliers: int = 0
    rows: list[ClusterRow] = field(default_factory=list)
    note: str = ""  # a problem in words: no labels yet, images not found, a damaged run directory
    clustering: str = ""  # the run's cluster.method and the settings it shows, e.g. "dbscan (eps 0.6)"


def labels_key(run_dir: Path) -> tuple[int, int] | None:
    """(0-based epoch, file mtime in ns) of the newest kept labels, None when there are none: the tab reloads
    when this changes (a newer epoch, or the same epoch's labels rewritten by a fresh attempt)."""
    layout = RunLayout.of(run_dir)
    epochs = saved_epochs(layout)
    if not epochs:
        return None
    try:
        return epochs[-1], layout.epoch_labels(epochs[-1]).stat().st_mtime_ns
    except FileNotFoundError:  # replaced between the listing and the stat: the next poll sees the new one
        return None


def _open_tile(path: Path, height: int) -> Image.Image | None:
    """The crop scaled to ``height`` pixels (aspect kept), or None when it is missing or unreadable."""
    # decoded as training saw it (EXIF rotation, 16-bit); imports torch, which only this tab needs
    from hhcl.data.store import upright_rgb

    try:
        with Image.open(path) as img:
            rgb = upright_rgb(img)
    except (OSError, ValueError, SyntaxError):
        return None
    width = max(1, round(rgb.width * height / rgb.height))
    return rgb.resize((width, height), Image.Resampling.BICUBIC)


def _missing_tile(height: int) -> Image.Image:
    """A grey crossed tile standing for an image that cannot be found."""
    tile = Image.new("RGB", (max(1, height // 2), height), MISSING_TILE)
    draw = ImageDraw.Draw(tile)
    draw.line((0, 0, tile.width - 1, height - 1), fill=(200, 60, 60), width=2)
    draw.line((0, height - 1, tile.width - 1, 0), fill=(200, 60, 60), width=2)
    return tile


def cluster_strip(paths: list[Path], camids: list[int], height: int = TILE_HEIGHT) -> tuple[Image.Image, list[Path]]:
    """The crops side by side at ``height`` pixels, each over a bar in its camera's colour (the colours of
    ``hhcl clusters``); returns the strip and the images that could not be read (drawn as crossed tiles)."""
    from hhcl.cluster_sheets import CAMERA_COLOURS  # imports torch: only when the Clusters tab loads

    tiles = [_open_tile(p, height) for p in paths]
    unread = [p for p, t in zip(paths, tiles, strict=True) if t is None]
    shown = [t if t is not None else _missing_tile(height) for t in tiles]
    width = sum(t.width for t in shown) + STRIP_GAP * max(len(shown) - 1, 0)
    strip = Image.new("RGB", (max(width, 1), height + CAMERA_BAR), STRIP_BACKGROUND)
    draw = ImageDraw.Draw(strip)
    x = 0
    for tile, camid in zip(shown, camids, strict=True):
        strip.paste(tile, (x, 0))
        draw.rectangle((x, height + 1, x + tile.width - 1, height + CAMERA_BAR - 1),
                       fill=CAMERA_COLOURS[camid % len(CAMERA_COLOURS)])
        x += tile.width + STRIP_GAP
    return strip, unread


def _run_config(layout: RunLayout) -> tuple[Config | None, str]:
    """The run's recorded config (its ``data.root``: relative image paths are under it), or None and why not."""
    try:
        return load_config(layout.config), ""
    except (ConfigError, OSError) as err:
        return None, f"cannot read the run's data root from {layout.config} ({err})"


def clustering_text(cfg: Config) -> str:
    """``cluster.method`` and the settings the config table shows for it, e.g. ``dbscan (eps 0.6)``."""
    shown = ", ".join(f"{p.name} {cfg.get(p.key)}" for p in CLUSTER_PARAMS[cfg.cluster.method])
    return f"{cfg.cluster.method} ({shown})"


def load_gallery(
    run_dir: Path, *, clusters: int = SHOWN_CLUSTERS, per_cluster: int = PER_CLUSTER, tile_height: int = TILE_HEIGHT
) -> ClusterGallery:
    """The ``clusters`` largest clusters of the newest kept epoch with up to ``per_cluster`` crops each; every
    expected problem (no labels yet, no image list, images not found) comes back as the gallery's ``note``."""
    layout = RunLayout.of(run_dir)
    if not saved_epochs(layout):
        return ClusterGallery(None, note=f"no pseudo labels yet: each epoch's clustering keeps them in "
                                         f"{layout.labels}/epoch_NNN.npy")
    try:
        index = read_train_index(layout)
        epoch, labels = load_epoch_labels(layout)
    except (LabelsError, OSError, ValueError) as err:
        return ClusterGallery(None, note=str(err))
    if len(labels) != len(index.paths):
        return ClusterGallery(None, note=f"{layout.epoch_labels(epoch)} holds {len(labels)} labels for "
                                         f"{len(index.paths)} images in {layout.labels / 'train.tsv'}: "
                                         "the run directory is damaged")
    from hhcl.cluster_sheets import pick_clusters  # imports torch: only when the Clusters tab loads

    picks = pick_clusters(labels, index.camids, clusters=clusters, per_cluster=per_cluster,
                          rng=np.random.default_rng(0))
    cfg, root_note = _run_config(layout)
    root = None if cfg is None else Path(cfg.data.root)
    rows: list[ClusterRow] = []
    unread: list[Path] = []
    for pick in picks:
        paths = [Path(index.paths[i]) for i in pick.shown]
        paths = [p if p.is_absolute() or root is None else root / p for p in paths]
        strip, lost = cluster_strip(paths, index.camids[pick.shown].tolist(), tile_height)
        unread += lost
        cameras = [index.cam_names[c] if index.cam_names else str(c + 1) for c in np.unique(index.camids[pick.members])]
        rows.append(ClusterRow(pick.cluster, len(pick.members), cameras, len(pick.shown), strip))
    note = ""
    if unread:
        where = root_note or f"not under the run's data root {root}"
        note = (f"{len(unread)} of the {sum(r.shown for r in rows)} images shown cannot be read ({where}; "
                f"first: {unread[0]}): a run copied without its data? Crossed tiles stand for them")
    return ClusterGallery(epoch, len(labels), len(np.unique(labels[labels >= 0])), int((labels < 0).sum()), rows,
                          note, "" if cfg is None else clustering_text(cfg))


def gallery_head(gallery: ClusterGallery) -> Text:
    """The tab's first line: which epoch, how many clusters and outliers (by which method and settings), what is
    shown; then any problem."""
    text = Text()
    if gallery.epoch is not None:
        text.append(f"epoch {gallery.epoch + 1}", style="bold cyan")
        text.append(f" · {plural(gallery.n_clusters, 'cluster', spec=',')}, "
                    f"{plural(gallery.n_outliers, 'outlier', spec=',')} of {plural(gallery.n_images, 'image', spec=',')}",
                    style="")
        if gallery.rows:
            text.append(f" · the {len(gallery.rows)} largest, camera bar under each crop", style="dim")
        else:
            text.append(" · no clusters: every image is an outlier", style="yellow")
        if gallery.clustering:
            text.append(f"\nclustering: {gallery.clustering}", style="dim")
    if gallery.note:
        if text:
            text.append("\n")
        text.append(gallery.note, style="yellow")
    return text


def row_caption(rank: int, row: ClusterRow) -> Text:
    """``#1 cluster 7`` / ``12 images`` / ``cams 1 2 4`` (or the cameras' names: ``cams a b``; ``cams front
    door, yard`` when a name has a space) / ``8 shown`` (the last only when not all are)."""
    text = Text()
    text.append(f"#{rank} ", style="dim")
    text.append(f"cluster {row.cluster}\n", style="bold")
    text.append(f"{plural(row.size, 'image')}\n")
    joint = ", " if any(" " in name for name in row.cameras) else " "
    text.append(f"cam{'s' * (len(row.cameras) != 1)} " + joint.join(row.cameras), style="dim")
    if row.shown < row.size:
        text.append(f"\n{row.shown} shown", style="dim")
    return text


class ClusterRowView(Horizontal):
    """One cluster: its caption, then its crops."""

    def __init__(self, rank: int, row: ClusterRow) -> None:
        super().__init__(classes="cluster-row")
        self.rank, self.row = rank, row

    def compose(self) -> ComposeResult:
        yield Static(row_caption(self.rank, self.row), classes="cluster-caption")
        yield TerminalImage(self.row.strip, classes="cluster-strip")


class ClustersPane(VerticalScroll):
    """The Clusters tab's content: a head line, then one row per cluster."""

    def compose(self) -> ComposeResult:
        yield Static(Text("reading the run's pseudo labels…", style="dim"), id="clusters-head")
        yield Vertical(id="cluster-rows")

    async def show(self, gallery: ClusterGallery) -> None:
        """Replace what is shown by ``gallery``."""
        self.query_one("#clusters-head", Static).update(gallery_head(gallery))
        rows = self.query_one("#cluster-rows", Vertical)
        await rows.remove_children()
        await rows.mount_all([ClusterRowView(rank, row) for rank, row in enumerate(gallery.rows, 1)])
