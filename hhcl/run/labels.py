"""Each epoch's pseudo labels, kept in the run directory: a small int32 array per epoch plus the train image list.

``labels/train.tsv`` lists the train images in the order the labels index them (path, identity or -1 when the
train set has none, camera id and, where the dataset names its cameras, the camera's name: a folder dataset's
sub-folder or ``--cam-pattern`` name; files without that column read as ``cam N``), written once per run; ``labels/epoch_NNN.npy`` holds one epoch's labels (-1 for
outliers). ``hhcl clusters`` draws them, and a copied run directory keeps them.

A file name may hold any character but ``/`` and NUL, tabs and line breaks included, so a path is written with
:func:`quote_name` (``%`` and every character Python splits lines on, tab included, percent-encoded as their
UTF-8 bytes: ``%25``, ``%09``, ``%0A``, ...) and read with :func:`unquote_name`; other names are written as they
are, so files written before the encoding read the same (unless a name held one of those escapes literally).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hhcl.atomic import atomic_write_bytes, atomic_write_text
from hhcl.errors import UsageError
from hhcl.run.layout import RunLayout

TRAIN_INDEX = "train.tsv"
_EPOCH_FILE = re.compile(r"^epoch_(\d{3,})\.npy$")
_ESCAPED = "%\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # "%", tab, and what str.splitlines splits on
_QUOTE = {c: "".join(f"%{b:02X}" for b in c.encode()) for c in _ESCAPED}
_UNQUOTE = {v: k for k, v in _QUOTE.items()}
_QUOTED = re.compile("|".join(map(re.escape, _UNQUOTE)))


def quote_name(name: str) -> str:
    """``name`` with ``%``, tab and line breaks percent-encoded: one field of a tab-separated line, whatever the name."""
    return "".join(_QUOTE.get(c, c) for c in name)


def unquote_name(text: str) -> str:
    """The name :func:`quote_name` wrote as ``text``."""
    return _QUOTED.sub(lambda m: _UNQUOTE[m.group()], text)


class LabelsError(UsageError, ValueError):
    """The run keeps no labels for what was asked (or they do not fit its image list); says what exists. A usage
    error."""


@dataclass(frozen=True)
class TrainIndex:
    """The train images the labels index: paths, identities (-1 when unknown), camera ids and the cameras' names
    by camid (None: the file records none, as for datasets that only number their cameras)."""

    paths: list[str]
    pids: np.ndarray
    camids: np.ndarray
    cam_names: list[str] | None = None

    def camera_names(self) -> list[str]:
        """The name of each camid: the recorded one, else ``cam N`` (1-based, as Market's ``c1`` is camid 0)."""
        count = max(int(self.camids.max(initial=-1)) + 1, len(self.cam_names or []))
        return [self.cam_names[c] if self.cam_names and c < len(self.cam_names) else f"cam {c + 1}"
                for c in range(count)]


def save_train_index(
    layout: RunLayout,
    paths: Sequence[str],
    pids: Sequence[int] | None,
    camids: Sequence[int],
    cam_names: Sequence[str] | None = None,
) -> None:
    """Write ``train.tsv`` (``pids`` None: the train set has no identities), paths quoted (:func:`quote_name`);
    ``cam_names`` (by camid: the names the user gave the cameras) adds a ``camera`` column, so the contact sheets
    and the dashboard show them."""
    pid_list = list(pids) if pids is not None else [-1] * len(paths)
    rows = zip(paths, pid_list, camids, strict=True)
    if cam_names is None:
        lines = ["path\tpid\tcamid", *(f"{quote_name(p)}\t{int(i)}\t{int(c)}" for p, i, c in rows)]
    else:
        lines = ["path\tpid\tcamid\tcamera",
                 *(f"{quote_name(p)}\t{int(i)}\t{int(c)}\t{quote_name(cam_names[int(c)])}" for p, i, c in rows)]
    atomic_write_text(layout.labels / TRAIN_INDEX, "\n".join(lines) + "\n")


def read_train_index(layout: RunLayout) -> TrainIndex:
    """The image list the run's labels index (rows split on line feeds only, paths and names unquoted); a file
    without the ``camera`` column (older runs, numbered cameras) has no names."""
    path = layout.labels / TRAIN_INDEX
    if not path.is_file():
        raise LabelsError(f"{path} is missing: this run keeps no pseudo labels (runs before hhcl kept them did not)")
    header, *lines = path.read_text(encoding="utf-8").split("\n")
    named = header.endswith("\tcamera")
    cols = [line.rsplit("\t", 3 if named else 2) for line in lines if line]
    if any(len(c) != (4 if named else 3) for c in cols):
        raise LabelsError(f"{path} is malformed: expected 'path<TAB>pid<TAB>camid{'<TAB>camera' * named}' rows")
    paths = [unquote_name(c[0]) for c in cols]
    camids = np.array([int(c[2]) for c in cols], np.int64)
    cam_names = None
    if named:
        by_camid = {int(c[2]): unquote_name(c[3]) for c in cols}
        cam_names = [by_camid.get(c, f"cam {c + 1}") for c in range(int(camids.max(initial=-1)) + 1)]
    return TrainIndex(paths, np.array([int(c[1]) for c in cols], np.int64), camids, cam_names)


def save_epoch_labels(layout: RunLayout, epoch: int, labels: np.ndarray) -> Path:
    """Write the pseudo labels of 0-based ``epoch`` as int32 (atomic)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(labels, dtype=np.int32))
    path = layout.epoch_labels(epoch)
    atomic_write_bytes(path, buf.getvalue())
    return path


def saved_epochs(layout: RunLayout) -> list[int]:
    """0-based epochs whose labels are kept, ascending."""
    if not layout.labels.is_dir():
        return []
    found = (_EPOCH_FILE.match(p.name) for p in layout.labels.iterdir())
    return sorted(int(m.group(1)) - 1 for m in found if m)


def load_epoch_labels(layout: RunLayout, epoch: int | None = None) -> tuple[int, np.ndarray]:
    """(0-based epoch, labels) of ``epoch``, or of the latest kept epoch when None."""
    epochs = saved_epochs(layout)
    if not epochs:
        raise LabelsError(f"{layout.root} keeps no pseudo labels yet (no {layout.labels}/epoch_NNN.npy): "
                          "they are written at each epoch's clustering")
    if epoch is None:
        epoch = epochs[-1]
    elif epoch not in epochs:
        shown = ", ".join(str(e + 1) for e in epochs)
        raise LabelsError(f"{layout.root} keeps no labels for epoch {epoch + 1}; epochs kept: {shown}")
    labels = np.load(layout.epoch_labels(epoch))
    return epoch, labels.astype(np.int64)
