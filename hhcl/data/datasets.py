"""Dataset parsers and their registry: files on disk -> train/query/gallery lists of ``Sample(path, pid, camid)``.

Rules (reference 3.2, fixed per quirk #17): the pid/camera regex matches the *file name*, never the whole path;
pid -1 (junk) is dropped from every split, pid 0 (distractors) is kept in the gallery; camid is zero-based;
every split is sorted by path and train pids are relabelled 0..P-1 in sorted raw-pid order.
A prepared dataset lives in ``<root>/<name>/`` with a ``manifest.json`` written by ``hhcl prepare``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hhcl.data.folder import parse as parse_folder_dataset
from hhcl.data.folder import parse_folder
from hhcl.data.samples import (
    DatasetFormatError,
    DatasetNotFoundError,
    Sample,
    list_images,
    relabel,
)
from hhcl.errors import ArgumentError

MANIFEST = "manifest.json"
MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
VIPER_SEED = 0


@dataclass
class ReIDDataset:
    """A parsed dataset. ``root`` is its folder ``<data root>/<name>`` (manifest, cache); ``top`` holds the images."""

    name: str
    root: Path
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    top: Path | None = None
    skipped: list[str] = field(default_factory=list)
    #: split -> camera names by camid, where the user named the cameras (a folder dataset); else "cam N"
    cameras: dict[str, list[str]] = field(default_factory=dict)
    #: query/gallery pid -> the identity folder's name (a folder dataset with identity folders)
    identities: dict[int, str] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``train``, ``query`` or ``gallery``."""
        if name not in ("train", "query", "gallery"):
            raise ValueError(f"unknown split {name!r}: expected train, query or gallery")
        return getattr(self, name)

    def summary(self) -> dict[str, dict[str, int]]:
        """Images, identities and cameras per split (for logs and the run_start event)."""
        out = {}
        for split in ("train", "query", "gallery"):
            samples = self.split(split)
            out[split] = {
                "images": len(samples),
                "ids": len({s.pid for s in samples}),
                "cams": len({s.camid for s in samples}),
            }
        return out


@dataclass(frozen=True)
class DatasetSpec:
    """How a registered dataset is found and parsed."""

    name: str
    tops: tuple[str, ...]  # accepted names of the top folder inside <root>/<name>/
    layouts: tuple[tuple[str, ...], ...]  # any one of these sets of sub-folders marks the top folder
    parse: Callable[[Path, dict], tuple[list[Sample], list[Sample], list[Sample]]]
    counts: tuple[int, int, int] | None = None  # published train/query/gallery image counts


def parse_named(
    folder: Path,
    pattern: str,
    *,
    cam_range: tuple[int, int] | None,
    pid_max: int | None = None,
    exts: tuple[str, ...] = (".jpg",),
) -> list[Sample]:
    """Parse ``<pid>_c<cam>...`` names of the ``exts`` files in ``folder`` (not recursive, like the reference's
    ``*.jpg`` glob); junk pid -1 dropped; camid = cam - 1."""
    regex = re.compile(pattern)
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file()):
        m = regex.search(path.name)
        if m is None:
            raise DatasetFormatError(f"{path}: file name does not match the pattern {pattern!r}")
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1:
            continue
        if pid < 0 or (pid_max is not None and pid > pid_max):
            raise DatasetFormatError(f"{path}: pid {pid} outside 0..{pid_max}")
        if cam_range is not None and not cam_range[0] <= cam <= cam_range[1]:
            raise DatasetFormatError(f"{path}: camera {cam} outside {cam_range[0]}..{cam_range[1]}")
        out.append(Sample(str(path), pid, cam - 1))
    return out


def _market_style(pattern: str, cams: tuple[int, int] | None, pid_max: int | None):
    def parse(top: Path, options: dict) -> tuple[list[Sample], list[Sample], list[Sample]]:
        splits = {
            k: parse_named(top / v, pattern, cam_range=cams, pid_max=pid_max)
            for k, v in MARKET_SPLITS.items()
        }
        return relabel(splits["train"]), sorted(splits["query"]), sorted(splits["gallery"])

    return parse


def _msmt17(top: Path, options: dict) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """MSMT17 in the Market-style layout (as the reference used) or the official list-file layout (V1/V2)."""
    if (top / "bounding_box_train").is_dir():
        return _market_style(r"^([-\d]+)_c(\d+)", (1, 15), None)(top, options)
    img_train = next(top / d for d in ("train", "mask_train_v2") if (top / d).is_dir())
    img_test = next(top / d for d in ("test", "mask_test_v2") if (top / d).is_dir())

    def read(list_name: str, img_dir: Path) -> list[Sample]:
        list_file = top / list_name
        if not list_file.is_file():
            raise DatasetNotFoundError(f"missing MSMT17 list file {list_file}")
        out = []
        for n, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rel, pid = line.split()
                cam = int(Path(rel).name.split("_")[2])
                out.append(Sample(str(img_dir / rel), int(pid), cam - 1))
            except (ValueError, IndexError):
                raise DatasetFormatError(
                    f"{list_file}:{n}: expected '<pid folder>/<pid>_<idx>_<cam>_....jpg <pid>', got {line!r}"
                ) from None
            if not 1 <= cam <= 15:
                raise DatasetFormatError(f"{list_file}:{n}: camera {cam} outside 1..15")
        return out

    train = read("list_train.txt", img_train)
    if (top / "list_val.txt").is_file():  # the published 32,621 train images are train + val
        train += read("list_val.txt", img_train)
    return (
        relabel(train),
        sorted(read("list_query.txt", img_test)),
        sorted(read("list_gallery.txt", img_test)),
    )


def _viper(top: Path, options: dict) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """VIPeR: ``cam_a``/``cam_b`` with ``<pid>_<angle>.bmp``; seeded half split of ids; cam_a query, cam_b gallery."""
    by_cam = []
    for camid, cam in enumerate(("cam_a", "cam_b")):
        items = []
        for path in list_images(top / cam):
            m = re.match(r"^(\d+)_", path.name)
            if m is None:
                raise DatasetFormatError(f"{path}: expected '<pid>_<angle>.bmp'")
            items.append(Sample(str(path), int(m.group(1)), camid))
        by_cam.append(items)
    pids = sorted({s.pid for items in by_cam for s in items})
    gen = torch.Generator().manual_seed(int(options.get("seed", VIPER_SEED)))
    order = torch.randperm(len(pids), generator=gen).tolist()
    train_ids = {pids[i] for i in order[: len(pids) // 2]}
    train = [s for items in by_cam for s in items if s.pid in train_ids]
    query = sorted(s for s in by_cam[0] if s.pid not in train_ids)
    gallery = sorted(s for s in by_cam[1] if s.pid not in train_ids)
    return relabel(train), query, gallery


MARKET_LAYOUT = (tuple(MARKET_SPLITS.values()),)
REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "market1501",
            ("Market-1501-v15.09.15", "Market-1501"),
            MARKET_LAYOUT,
            _market_style(r"^([-\d]+)_c(\d)", (1, 6), 1501),
            (12936, 3368, 15913),
        ),
        DatasetSpec(
            "dukemtmcreid",
            ("DukeMTMC-reID",),
            MARKET_LAYOUT,
            _market_style(r"^([-\d]+)_c(\d)", (1, 8), None),
            (16522, 2228, 17661),
        ),
        DatasetSpec(
            "msmt17",
            ("MSMT17_V1", "MSMT17_V2", "MSMT17"),
            MARKET_LAYOUT + (("train", "test"), ("mask_train_v2", "mask_test_v2")),
            _msmt17,
            (32621, 11659, 82161),
        ),
        DatasetSpec("viper", ("VIPeR", "viper"), (("cam_a", "cam_b"),), _viper, (632, 316, 316)),
        DatasetSpec("folder", ("images",), ((),), parse_folder_dataset),
        DatasetSpec(
            "synthetic",
            ("SyntheticPeople",),
            MARKET_LAYOUT,
            _market_style(r"^([-\d]+)_c(\d+)", (1, 99), None),
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name`` (a clear error listing the known names otherwise)."""
    if name not in REGISTRY:
        raise ArgumentError(f"unknown dataset {name!r}: expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def has_layout(folder: Path, spec: DatasetSpec) -> bool:
    """Whether ``folder`` holds one of the dataset's layouts (all of its sub-folders)."""
    return folder.is_dir() and any(all((folder / d).is_dir() for d in layout) for layout in spec.layouts)


def prepare_hint(name: str, root: Path) -> str:
    """The exact command that prepares ``name`` under ``root``."""
    if name == "synthetic":
        return f"hhcl prepare synthetic --root {root}"
    return f"hhcl prepare {name} --src ARCHIVE_OR_DIR --root {root}"


def read_manifest(root: Path, name: str) -> dict | None:
    """The manifest written by prepare in ``<root>/<name>/``, or None."""
    path = Path(root) / name / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetNotFoundError(
            f"corrupt manifest {path} ({err}); re-run `{prepare_hint(name, root)}`"
        ) from None


def find_top(name: str, root: str | Path) -> Path:
    """The dataset's top folder: the manifest's record, else a known folder name with the right layout."""
    spec = get_spec(name)
    base = Path(root) / name
    manifest = read_manifest(Path(root), name)
    candidates = [base / manifest["top"]] if manifest and "top" in manifest else []
    candidates += [base / t for t in spec.tops] + ([base] if name != "folder" else [])
    for cand in candidates:
        if has_layout(cand, spec):
            return cand
    expected = base / spec.tops[0]
    raise DatasetNotFoundError(
        f"dataset {name!r} not found: expected {expected}"
        + (f" with sub-folders {', '.join(spec.layouts[0])}" if spec.layouts[0] else "")
        + f". Run `{prepare_hint(name, Path(root))}`"
    )


def build_dataset(name: str, root: str | Path, **options) -> ReIDDataset:
    """Parse the prepared dataset ``<root>/<name>/`` into sorted train/query/gallery sample lists.

    ``options`` override the ones prepare recorded (``seed`` for viper, ``cam_pattern`` for folder). Files
    that prepare found corrupt and skipped (``--skip-corrupt``) are left out.
    """
    spec = get_spec(name)
    top = find_top(name, root)
    manifest = read_manifest(Path(root), name) or {}
    opts = {**manifest.get("options", {}), **options}
    cameras: dict[str, list[str]] = {}
    identities: dict[int, str] = {}
    if name == "folder":  # the user's own data: keep the names it gives its cameras and identities
        folder = parse_folder(top, opts)
        train, query, gallery = folder.train, folder.query, folder.gallery
        cameras, identities = folder.camera_names(), folder.identities
    else:
        train, query, gallery = spec.parse(top, opts)
    skipped = [str(top / rel) for rel in manifest.get("skipped", [])]
    if skipped:
        drop = set(skipped)
        train = [s for s in train if s.path not in drop]
        train = relabel(train)  # folder: unlabelled pids (one per image) stay in path order
        query = [s for s in query if s.path not in drop]
        gallery = [s for s in gallery if s.path not in drop]
    return ReIDDataset(name, Path(root) / name, train, query, gallery, top, skipped, cameras, identities)
