"""Free disk space: refuse a large write that cannot fit, and reserve a file's blocks before writing into it.

A memory-mapped file grown in a full filesystem is sparse, and a write into one of its holes dies with SIGBUS:
no exception, no message, no ``run_end``. So a large file is first checked against ``shutil.disk_usage`` (a
refusal names the file, the bytes needed and free, and the fix), then reserved with ``posix_fallocate``, which
fails at once with ENOSPC (or EFBIG past ``ulimit -f``) instead of at the first write into a hole. Errors are
:class:`DiskSpaceError`, an ``OSError`` with ``errno`` and ``filename`` set, so callers that word a full disk
from those (``hhcl.ending.describe_failure``) word these too.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path
from typing import TypeGuard

from hhcl.errors import FailureError

MARGIN = 1 << 20  # bytes left free beyond a checked write (at least): the logs and index files still need a few
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)  # posix_fallocate cannot reserve on this filesystem
_ZEROS = 1 << 24  # bytes per write when reserving by writing zeros


class DiskSpaceError(FailureError, OSError):
    """A file does not fit: ``errno`` ENOSPC (disk full) or EFBIG (file size limit), ``filename`` the file,
    ``strerror`` the bytes needed and free and the fix. A failure: the input was fine, the disk is not."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def human_bytes(count: int) -> str:
    """``count`` bytes in a short form for messages: 512 B, 3.1 MB, 96.2 GB (powers of 1000, like ``df -H``)."""
    if count < 1000:
        return f"{count} B"
    exponent = min(int(math.log10(count)) // 3, 5)
    return f"{count / 1000**exponent:.1f} {('kB', 'MB', 'GB', 'TB', 'PB')[exponent - 1]}"


def is_disk_full(err: BaseException) -> TypeGuard[OSError]:
    """Whether ``err`` says the disk is full, a quota is reached or a file size limit is exceeded."""
    return isinstance(err, OSError) and err.errno in DISK_FULL


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (or its nearest existing
    parent: the folder may not exist yet)."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def require_free(path: str | os.PathLike[str], needed: int, what: str, fix: str) -> None:
    """Refuse, before a byte is written, a write of ``needed`` bytes to ``path`` that would leave less than a
    margin (1 MB or 1 %, the larger) free: a :class:`DiskSpaceError` (ENOSPC) naming ``what``, the bytes and ``fix``."""
    free = free_bytes(path)
    margin = max(MARGIN, needed // 100)
    if needed + margin > free:
        raise DiskSpaceError(
            errno.ENOSPC,
            f"{what} would take {human_bytes(needed)} (and {human_bytes(margin)} is kept free) but only "
            f"{human_bytes(free)} is free on that disk; {fix}",
            str(path),
        )


def disk_error(err: OSError, path: str | os.PathLike[str], fix: str) -> DiskSpaceError:
    """A disk-full ``err`` (from a write that ran out of space) as a :class:`DiskSpaceError` naming ``path`` and
    ``fix``; ``err`` itself when it already is one."""
    if isinstance(err, DiskSpaceError):
        return err
    return DiskSpaceError(err.errno, f"{err.strerror or err}; {fix}", str(path))


def reserve(path: str | os.PathLike[str], size: int) -> None:
    """Allocate the first ``size`` bytes of the existing file ``path`` on disk (extending it), so that writing
    into them, through a memory map included, can no longer run out of space.

    ``posix_fallocate`` keeps the bytes already there; where the filesystem cannot do it, zeros are written
    from the file's current end instead. Running out of space or past ``ulimit -f`` raises that OSError
    (ENOSPC, EDQUOT or EFBIG) at once, for the caller to remove the file and word it (:func:`disk_error`).
    """
    fallocate = getattr(os, "posix_fallocate", None)
    with open(path, "r+b") as handle:
        if fallocate is None:
            _write_zeros(handle.fileno(), size)
            return
        try:
            fallocate(handle.fileno(), 0, size)
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                raise
            _write_zeros(handle.fileno(), size)


def _write_zeros(fd: int, size: int) -> None:
    """Extend the file ``fd`` to ``size`` bytes by writing zeros after its current end, then flush them."""
    end = os.fstat(fd).st_size
    os.lseek(fd, end, os.SEEK_SET)
    zeros = memoryview(bytes(min(_ZEROS, max(size - end, 0))))
    while end < size:
        end += os.write(fd, zeros[: size - end])
    os.fsync(fd)


__all__ = [
    "DISK_FULL",
    "DiskSpaceError",
    "disk_error",
    "free_bytes",
    "human_bytes",
    "is_disk_full",
    "require_free",
    "reserve",
]
