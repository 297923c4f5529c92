"""What every dataset parser shares: the ``Sample`` record, the two dataset errors, image listing, relabelling."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from hhcl.errors import UsageError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class Sample(NamedTuple):
    path: str
    pid: int
    camid: int


class DatasetNotFoundError(UsageError, FileNotFoundError):
    """A dataset (or its --src) is missing or not prepared; the message names the expected path and the prepare
    command. A usage error."""


class DatasetFormatError(UsageError, ValueError):
    """Files exist but break the dataset's layout rules (bad name, out-of-range camera, a --src that is neither
    a folder nor an archive); names the file. A usage error."""


def is_image(path: Path) -> bool:
    """Whether ``path`` is a visible image file (by extension)."""
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".") and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursive), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def relabel(samples: Iterable[Sample]) -> list[Sample]:
    """Sort by path and map pids to 0..P-1 in sorted raw-pid order (the train split)."""
    samples = sorted(samples, key=lambda s: s.path)
    mapping = {pid: i for i, pid in enumerate(sorted({s.pid for s in samples}))}
    return [Sample(s.path, mapping[s.pid], s.camid) for s in samples]
