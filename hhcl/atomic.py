"""Atomic file writes: a temporary file in the same folder, fsync, ``os.replace``; and clean-up of leftovers.

A crash at any instant leaves either the old file or the new one. Temporary files are named
``.<name>.<random>.tmp`` so that :func:`remove_stray_tmp` can find and delete the ones a killed process left.
They are created with the mode a plain ``open(path, "w")`` gives (0o666 less the umask, a default ACL
applied) and folders with ``mkdir``'s (0o777 less the umask), never ``tempfile``'s private 0o600 / 0o700:
the renamed file is the output, so it must be as readable as any other file the user writes.
"""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path
from typing import Any

from hhcl.faults import fault_point

TMP_SUFFIX = ".tmp"
_NAME_TRIES = 100  # fresh random names tried before giving up (a clash among 2**48 names is already unlikely)
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _tmp_name(path: Path) -> Path:
    """A fresh ``.<name>.<random>.tmp`` beside ``path``."""
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"


def _create_tmp(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``path`` and open it for writing; returns (fd, its path).

    ``O_EXCL`` makes it ours alone (as ``mkstemp`` does); mode 0o666 lets the kernel apply the umask and any
    default ACL, exactly as for a file ``open`` creates, so no umask has to be read (which would set it)."""
    for _ in range(_NAME_TRIES):
        tmp = _tmp_name(path)
        try:
            return os.open(tmp, _TMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path} after {_NAME_TRIES} tries")


def make_tmp_dir(path: str | os.PathLike[str]) -> Path:
    """Create a new, empty temporary folder ``.<name>.<random>.tmp`` beside ``path`` (parents created); returns it.

    Its mode is a new folder's (0o777 less the umask), not ``mkdtemp``'s 0o700: it becomes the output folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_NAME_TRIES):
        tmp = _tmp_name(path)
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path} after {_NAME_TRIES} tries")


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
    fd, tmp = _create_tmp(path)
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
        tmp.unlink(missing_ok=True)
        raise naming(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


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
