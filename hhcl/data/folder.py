"""The ``folder`` dataset: your own camera crops (unlabelled train) with an optional labelled query/gallery set.

The accepted layouts are :data:`LAYOUTS` (shown in every refusal and in the README). A camera is named by its
sub-folder, by ``--cam-pattern`` on the file name, or by the ``c<N>`` of a flat Market name; names map to ids
in natural order (``cam2`` before ``cam10``), once for train and once for query + gallery together. Unlabelled
train images get pid = their index in path order (each image its own identity). Identity folders map to pids
in natural order of their names, the same name in query/ and gallery/ being the same person.

Symbolic links follow :data:`LINKS`: each real folder and image is read once per split, a link never makes a
loop or a duplicate, and every link left out is named in :attr:`FolderData.notes` (``hhcl prepare`` prints them).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hhcl.data.samples import IMAGE_EXTS, DatasetFormatError, DatasetNotFoundError, Sample, is_image, relabel

TRAIN, LABELLED_TRAIN, QUERY, GALLERIES = "train", "bounding_box_train", "query", ("gallery", "bounding_box_test")
SPLIT_DIRS = (TRAIN, LABELLED_TRAIN, QUERY, *GALLERIES)
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
ONE_CAMERA = "(one camera)"
MARKET_NAMES, IDENTITY_FOLDERS = "flat Market names", "identity folders"  # the camera name of loose images when there are no camera sub-folders
LAYOUTS = """accepted layouts of a folder dataset DIR (hidden and non-image files are ignored):
  DIR/<img>                       unlabelled train crops, all from one camera (or --cam-pattern)
  DIR/<cam>/.../<img>             unlabelled train crops, one sub-folder per camera
  DIR/train/...                   the same inside train/ (beside it only query/ and gallery/)
  DIR/bounding_box_train/...      labelled train crops instead, in one labelled layout below
  DIR/query/ + DIR/gallery/       optional labelled evaluation set, both or neither (gallery/ may be
                                  called bounding_box_test/), both in the same labelled layout:
      <pid>_c<cam>_<any>.jpg        flat Market names (pid -1 = junk, left out)
      <pid>/<cam>/<img>             one folder per identity, then one per camera
      <pid>/<img>                   one folder per identity, camera from --cam-pattern
--cam-pattern REGEX, searched in the file name (its group 'cam', else its first group), gives the camera of
every image except flat Market names, in place of the camera sub-folder."""
LINKS = """symbolic links: a link to a folder or image outside the split being read (a camera folder on another
disk) is followed; a link to a folder or image inside that split is left out (it is read at its own place), so
is a link to a folder that holds the link (a loop) or to a folder already read, and an image reached twice (two
links, hard links) is read once, at its first place in sorted path order. Each one left out is named."""


@dataclass(frozen=True)
class Camera:
    """One camera found: its group (train or query/gallery), name, id and image count per split."""

    group: str
    name: str
    camid: int
    images: dict[str, int]


@dataclass
class FolderData:
    """The parsed splits, whether train is labelled, the cameras found, and the query/gallery identity folders'
    names by pid."""

    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    labelled_train: bool
    cameras: list[Camera]
    notes: list[str]
    identities: dict[int, str] = field(default_factory=dict)

    def camera_names(self) -> dict[str, list[str]]:
        """Split -> the cameras' names by camid (query and gallery share theirs): how the user named them."""
        groups = {group: sorted((c.camid, c.name) for c in self.cameras if c.group == group)
                  for group in ("train", "query/gallery")}
        names = {group: [name for _, name in cams] for group, cams in groups.items() if cams}
        split_groups = {"train": "train", "query": "query/gallery", "gallery": "query/gallery"}
        return {split: names[group] for split, group in split_groups.items() if group in names}


def natural_key(name: str) -> list[int | str]:
    """Sort key that orders digit runs by value: cam2 < cam10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layout_error(where: Path, problem: str) -> DatasetFormatError:
    """A refusal naming the folder or file and showing the accepted layouts."""
    return DatasetFormatError(f"{where}: {problem}\n{LAYOUTS}")


class CameraPattern:
    """``--cam-pattern``: a regex searched in each file name; its group ``cam`` (else group 1) is the camera."""

    def __init__(self, pattern: str) -> None:
        try:
            self.regex = re.compile(pattern)
        except re.error as err:
            raise DatasetFormatError(f"--cam-pattern {pattern!r} is not a valid regular expression: {err}") from None
        if not self.regex.groups:
            raise DatasetFormatError(
                f"--cam-pattern {pattern!r} has no group: put the camera part in parentheses, e.g. 'cam(\\d+)_' "
                "or '(?P<cam>[a-z]+)-'"
            )
        self.pattern = pattern
        self.group: int | str = "cam" if "cam" in self.regex.groupindex else 1

    def camera(self, path: Path) -> str:
        """The camera name in ``path``'s file name (a number loses its leading zeros)."""
        m = self.regex.search(path.name)
        value = m.group(self.group) if m else None
        if not value:
            raise DatasetFormatError(
                f"{path}: file name does not match the camera pattern {self.pattern!r} (--cam-pattern gives the "
                "camera of every image except flat Market names)"
            )
        return str(int(value)) if value.isdigit() else value


def _inode(path: Path) -> tuple[int, int]:
    """(device, inode) of what ``path`` points at: one real file or folder, however it is reached."""
    info = path.stat()
    return info.st_dev, info.st_ino


class _Walk:
    """One split's traversal under ``root`` (``skip``: folders of other splits inside it), applying :data:`LINKS`;
    what it leaves out goes to ``notes`` (an ordered set shared by the parse)."""

    def __init__(self, root: Path, notes: dict[str, None], skip: tuple[Path, ...] = ()) -> None:
        self.root = root.resolve()
        self.skip = tuple(s.resolve() for s in skip)
        self.notes = notes
        self.dirs: set[tuple[int, int]] = set()
        self.files: dict[tuple[int, int], Path] = {}

    def _leave_out(self, path: Path, why: str) -> None:
        self.notes[f"left out {path}: {why}"] = None

    def _read_in_place(self, target: Path) -> bool:
        """Whether the real path ``target`` is read at its own place by this walk (inside root, not hidden, not
        in a skipped split)."""
        if not target.is_relative_to(self.root) or any(target.is_relative_to(s) for s in self.skip):
            return False
        return not any(part.startswith(".") for part in target.relative_to(self.root).parts)

    def _link_kept(self, path: Path, folder: Path, is_dir: bool) -> bool:
        """Whether the link ``path`` in ``folder`` is followed (:data:`LINKS`); notes the reason when it is not."""
        target = path.resolve()
        if is_dir and any(held == target or held.is_relative_to(target) for held in (folder.resolve(), self.root)):
            self._leave_out(path, f"a link to {target}, a folder that holds it (a loop)")
        elif self._read_in_place(target):
            self._leave_out(path, f"a link to {target}, which is read at its own place")
        else:
            return True
        return False

    def children(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(images, sub-folders) directly in ``folder``, sorted; hidden entries, other files and the links and
        duplicates :data:`LINKS` leaves out are not listed."""
        self.dirs.add(_inode(folder))
        images, dirs = [], []
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            link = path.is_symlink()
            if link and not path.exists():  # dangling, or a chain of links that loops
                self._leave_out(path, f"a link to {os.readlink(path)}, which leads to nothing readable")
                continue
            is_dir = path.is_dir()
            if not (is_dir or is_image(path)) or (link and not self._link_kept(path, folder, is_dir)):
                continue
            key = _inode(path)
            if is_dir:
                if key in self.dirs:
                    self._leave_out(path, f"{path.resolve()} is a folder already read")
                    continue
                self.dirs.add(key)
                dirs.append(path)
            elif (first := self.files.setdefault(key, path)) != path:
                self._leave_out(path, f"the same file as {first}")
            else:
                images.append(path)
        return images, dirs

    def images_under(self, folder: Path) -> list[Path]:
        """Every image this walk reads under ``folder`` (recursive, hidden folders skipped)."""
        images, dirs = self.children(folder)
        return images + [p for d in dirs for p in self.images_under(d)]


def _unlabelled(
    root: Path, cams: CameraPattern | None, skip: tuple[Path, ...], notes: dict[str, None]
) -> list[tuple[Path, str]]:
    """(image, camera name) of the unlabelled train crops under ``root`` (``skip``: the labelled folders)."""
    walk = _Walk(root, notes, skip)
    images, dirs = walk.children(root)
    dirs = [d for d in dirs if d not in skip]
    if cams is not None:
        return [(p, cams.camera(p)) for p in images + [p for d in dirs for p in walk.images_under(d)]]
    if images and dirs:
        raise layout_error(
            root,
            f"holds both images ({images[0].name}, ...) and sub-folders ({dirs[0].name}/, ...): without "
            "--cam-pattern each sub-folder is a camera, so move the loose images into a camera folder or give "
            "--cam-pattern",
        )
    if images:
        return [(p, ONE_CAMERA) for p in images]
    return [(p, d.name) for d in dirs for p in walk.images_under(d)]


def _labelled(
    folder: Path, cams: CameraPattern | None, notes: dict[str, None]
) -> tuple[str, list[tuple[Path, int | str, str]]]:
    """(MARKET_NAMES or IDENTITY_FOLDERS, [(image, pid or identity folder name, camera name)]) of a split."""
    walk = _Walk(folder, notes)
    images, dirs = walk.children(folder)
    if images and dirs:
        raise layout_error(
            folder, f"holds both images ({images[0].name}, ...) and sub-folders ({dirs[0].name}/, ...): use one layout"
        )
    out: list[tuple[Path, int | str, str]] = []
    if images:
        for path in images:
            m = MARKET_NAME.match(path.name)
            if m is None:
                raise layout_error(
                    path,
                    "is not a Market name <pid>_c<cam>_... (e.g. 0001_c1s1_000151_01.jpg): rename the files, or "
                    "put them in one folder per identity",
                )
            pid = int(m.group(1))
            if pid < -1:
                raise layout_error(path, f"pid {pid} is negative (only -1, junk, is allowed)")
            if pid != -1:
                out.append((path, pid, f"c{int(m.group(2))}"))
        return MARKET_NAMES, out
    if not dirs:
        raise layout_error(folder, "holds no images")
    for ident in dirs:
        flat, subs = walk.children(ident)
        if flat and subs:
            raise layout_error(
                ident,
                "holds both images and sub-folders: an identity folder holds either images (camera from "
                "--cam-pattern) or one sub-folder per camera",
            )
        if flat and cams is None:
            raise layout_error(
                ident,
                "holds images but no camera: put them in <pid>/<cam>/ sub-folders, or give --cam-pattern to read "
                "the camera from the file name",
            )
        out += [(p, ident.name, cams.camera(p)) for p in flat if cams is not None]
        for cam_dir in subs:
            imgs, deeper = walk.children(cam_dir)
            if deeper:
                raise layout_error(deeper[0], "is a folder too deep: a labelled split is <split>/<pid>/<cam>/<img>")
            out += [(p, ident.name, cams.camera(p) if cams else cam_dir.name) for p in imgs]
    if not out:
        raise layout_error(folder, "holds no images")
    return IDENTITY_FOLDERS, out


def _only_splits(top: Path, train_name: str, notes: dict[str, None]) -> None:
    """Beside train/ (or bounding_box_train/) only the split folders may hold images."""
    walk = _Walk(top, notes, tuple(top / d for d in SPLIT_DIRS))
    images, dirs = walk.children(top)
    stray = [d for d in dirs if d.name not in SPLIT_DIRS and walk.images_under(d)]
    if images or stray:
        where = stray[0] if stray else images[0]
        raise layout_error(where, f"is not part of the dataset: beside {train_name}/ only query/ and gallery/ may be")


def _camera_ids(names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(sorted(set(names), key=natural_key))}


def _cameras(group: str, splits: dict[str, list[str]], ids: dict[str, int]) -> list[Camera]:
    counts = {s: Counter(names) for s, names in splits.items()}
    return [Camera(group, name, camid, {s: c[name] for s, c in counts.items()}) for name, camid in ids.items()]


def _pid_index(items: list) -> dict[str, int]:
    """Identity folder name -> pid, in natural order of the names (integer pids from Market names stay)."""
    names = sorted({pid for _, pid, _ in items if isinstance(pid, str)}, key=natural_key)
    return {n: i for i, n in enumerate(names)}


def _samples(items: list, pids: dict[str, int], cam_ids: dict[str, int]) -> list[Sample]:
    return [Sample(str(p), pid if isinstance(pid, int) else pids[pid], cam_ids[c]) for p, pid, c in items]


def parse_folder(top: Path, options: dict) -> FolderData:
    """Parse a folder dataset (see :data:`LAYOUTS`); anything else is a DatasetFormatError naming the folder."""
    pattern = options.get("cam_pattern")
    cams = CameraPattern(pattern) if pattern else None
    notes: dict[str, None] = {}
    galleries = [top / g for g in GALLERIES if (top / g).is_dir()]
    if len(galleries) > 1:
        raise layout_error(top, "holds both gallery/ and bounding_box_test/: keep one gallery folder")
    query_dir = top / QUERY if (top / QUERY).is_dir() else None
    gallery_dir = galleries[0] if galleries else None
    if (query_dir is None) != (gallery_dir is None):
        have, lack = ("query", "gallery") if query_dir else (galleries[0].name, "query")
        raise layout_error(top, f"has {have}/ but no {lack}/: evaluation needs both (or neither)")
    labelled_dir = top / LABELLED_TRAIN
    labelled_train = labelled_dir.is_dir()
    if labelled_train:
        if (top / TRAIN).is_dir():
            raise layout_error(top, "holds both train/ (unlabelled) and bounding_box_train/ (labelled): keep one")
        _only_splits(top, LABELLED_TRAIN, notes)
        raw = [(str(p), pid, cam) for p, pid, cam in _labelled(labelled_dir, cams, notes)[1]]
    else:
        root = top / TRAIN if (top / TRAIN).is_dir() else top
        if root != top:
            _only_splits(top, TRAIN, notes)
        skip = tuple(d for d in (query_dir, gallery_dir) if d is not None)
        pairs = sorted((str(p), cam) for p, cam in _unlabelled(root, cams, skip, notes))
        if not pairs:
            outside = "" if root != top else " outside query/ and gallery/"
            raise DatasetNotFoundError(
                f"{root}: no train images ({', '.join(IMAGE_EXTS)}) found{outside}: train needs crops\n{LAYOUTS}"
            )
        raw = [(p, i, cam) for i, (p, cam) in enumerate(pairs)]
    train_ids = _camera_ids([c for *_, c in raw])
    train = relabel(_samples(raw, _pid_index(raw), train_ids))
    cameras = _cameras("train", {"train": [c for *_, c in raw]}, train_ids)
    query: list[Sample] = []
    gallery: list[Sample] = []
    identities: dict[int, str] = {}
    if query_dir is not None and gallery_dir is not None:
        (q_kind, q_items), (g_kind, g_items) = _labelled(query_dir, cams, notes), _labelled(gallery_dir, cams, notes)
        if q_kind != g_kind:
            raise layout_error(
                top, f"query/ uses {q_kind} and {gallery_dir.name}/ uses {g_kind}: both must use the same layout"
            )
        eval_ids = _camera_ids([c for *_, c in q_items + g_items])
        pids = _pid_index(q_items + g_items)
        identities = {pid: name for name, pid in pids.items()}
        query, gallery = sorted(_samples(q_items, pids, eval_ids)), sorted(_samples(g_items, pids, eval_ids))
        split_cams = {"query": [c for *_, c in q_items], "gallery": [c for *_, c in g_items]}
        cameras += _cameras("query/gallery", split_cams, eval_ids)
    return FolderData(train, query, gallery, labelled_train, cameras, list(notes), identities)


def parse(top: Path, options: dict) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """The registry's parser: train, query and gallery of :func:`parse_folder`."""
    data = parse_folder(top, options)
    return data.train, data.query, data.gallery
