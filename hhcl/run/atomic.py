"""Atomic file writes: a temporary file in the same folder, fsync, ``os.replace``; and clean-up of leftovers.

A crash at any instant leaves either the old file or the new one. Temporary files are named
``.<name>.<random>.tmp`` so that :func:`remove_stray_tmp` can find and delete the ones a killed process left.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from hhcl.run.faults import fault_point

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a directory entry change (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def naming(err: OSError, path: str | os.PathLike[str]) -> OSError:
    """``err`` with ``path`` as its file name when it has none (a failed ``write`` does not say which file), so
    the message of a full disk names the file that could not be written."""
    if err.filename is not None:
        return err
    named = OSError(err.errno, err.strerror or str(err), os.fspath(path))
    named.__cause__ = err
    return named


def write_tmp(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a fresh temporary file beside ``path`` (fsynced); returns its path.

    On any failure (a full disk included) the temporary file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            half = len(data) // 2
            handle.write(data[:half])
            handle.flush()
            fault_point(f"write:{path.name}:half")  # tests kill the process in the middle of a write
            handle.write(data[half:])
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise naming(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    tmp = write_tmp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(Path(path).parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into bytes (plain containers and tensors: readable with ``weights_only=True``)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    atomic_write_bytes(path, torch_bytes(obj))


def remove_stray_tmp(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files interrupted writes left in ``folder`` (not recursive); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stray = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file()]
    for path in stray:
        path.unlink(missing_ok=True)
    return stray
