"""One writer per run directory: ``run.lock`` names the process (pid, host) that owns the run.

The lock is created with ``O_EXCL``, so two processes cannot both take it. A lock left by a process that is
gone (same host, pid no longer running) is stale and is taken over; a lock from another host cannot be
checked from here, so it is refused with the way to clear it by hand.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hhcl.run.atomic import fsync_dir


class RunLockedError(RuntimeError):
    """Another live process writes this run directory; the message names its pid and host."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a run's lock."""

    pid: int | None
    host: str | None
    since: float | None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "an unknown time"
        return f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'} (since {since})"


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a process we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(path: Path) -> LockHolder | None:
    """The holder a lock file names; None when the file is missing, empty or unreadable."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    pid, host, since = raw.get("pid"), raw.get("host"), raw.get("since")
    return LockHolder(
        pid if isinstance(pid, int) else None,
        host if isinstance(host, str) else None,
        float(since) if isinstance(since, int | float) else None,
    )


def _is_stale(holder: LockHolder | None, path: Path) -> bool:
    if holder is None:  # a lock without content: its writer died between create and write
        try:
            return time.time() - path.stat().st_mtime > 5.0
        except FileNotFoundError:
            return True
    return holder.host == this_host() and holder.pid is not None and not pid_alive(holder.pid)


def check_free(path: str | os.PathLike[str]) -> None:
    """Raise :class:`RunLockedError` if a live (or unverifiable remote) process holds this lock."""
    lock = RunLock(path)
    if lock.path.exists():
        holder = read_holder(lock.path)
        if not _is_stale(holder, lock.path):
            raise RunLockedError(lock._refusal(holder))


class RunLock:
    """``with RunLock(path):`` holds the run directory for this process; released on exit (not on SIGKILL)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.held = False
        self.took_over: LockHolder | None = None

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; raises :class:`RunLockedError` while another process lives."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if not _is_stale(holder, self.path):
                    raise RunLockedError(self._refusal(holder)) from None
                self.took_over = holder
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"pid": os.getpid(), "host": this_host(), "since": round(time.time(), 3)}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            fsync_dir(self.path.parent)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep taking it.")

    def _refusal(self, holder: LockHolder | None) -> str:
        run = self.path.parent
        who = holder.describe() if holder else "another process"
        remote = holder is not None and holder.host not in (None, this_host())
        hint = (
            f"it runs on another machine, so it cannot be checked from here: if that process is gone, delete {self.path}"
            if remote
            else f"wait for it to finish or stop it (kill -INT {holder.pid if holder and holder.pid else '<pid>'}), then try again"
        )
        return f"run directory '{run}' is in use by {who}: {hint}."

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            holder = read_holder(self.path)
            if holder is None or (holder.pid == os.getpid() and holder.host == this_host()):
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
