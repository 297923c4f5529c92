"""Safe extraction of zip/tar archives: every member is checked before anything is written.

Refused (``UnsafeArchiveError``): absolute paths, ``..`` components, links whose target leaves the
destination, device files. The archive is unpacked into a temporary folder and renamed into place, so an
interrupted extraction never leaves a half tree behind.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from hhcl.errors import UsageError


class UnsafeArchiveError(UsageError, ValueError):
    """An archive member would escape the destination (absolute path, ``..``, a link out, a device). A usage
    error: the archive given is refused."""


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a zip or tar file (by content, not by name)."""
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def _check_name(archive: Path, name: str) -> PurePosixPath:
    rel = PurePosixPath(name.replace("\\", "/"))
    if rel.is_absolute() or name.startswith(("/", "\\")) or (rel.parts and ":" in rel.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    if ".." in rel.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    return rel


def _check_links(archive: Path, names: list[PurePosixPath], links: dict[PurePosixPath, str]) -> None:
    """Links may only point down from their own folder, and no member may be written through a link."""
    for name, target in links.items():
        tgt = PurePosixPath(target.replace("\\", "/"))
        if tgt.is_absolute() or ".." in tgt.parts:
            raise UnsafeArchiveError(
                f"{archive}: link {str(name)!r} -> {target!r} may point outside; refusing to extract"
            )
    for name in names:
        for parent in name.parents:
            if parent in links:
                raise UnsafeArchiveError(
                    f"{archive}: member {str(name)!r} is written through the link {str(parent)!r}"
                )


def check_archive(archive: Path) -> int:
    """Validate every member of ``archive``; returns the number of members. Raises UnsafeArchiveError."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            names = [_check_name(archive, info.filename) for info in infos]
            links = {
                n: zf.read(i).decode("utf-8", "replace")
                for n, i in zip(names, infos, strict=True)
                if stat.S_ISLNK(i.external_attr >> 16)
            }
            _check_links(archive, names, links)
            return len(infos)
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        names = [_check_name(archive, m.name) for m in members]
        for m in members:
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise UnsafeArchiveError(
                    f"{archive}: member {m.name!r} is a device or fifo; refusing to extract"
                )
        links = {n: m.linkname for n, m in zip(names, members, strict=True) if m.issym() or m.islnk()}
        _check_links(archive, names, links)
        return len(members)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Check then extract ``archive`` into ``dest`` (created); returns ``dest``. Nothing is written if unsafe."""
    archive, dest = Path(archive), Path(dest)
    check_archive(archive)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if stat.S_ISLNK(info.external_attr >> 16):
                        link = tmp / _check_name(archive, info.filename)
                        link.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(zf.read(info).decode(), link)
                    else:
                        zf.extract(info, tmp)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
