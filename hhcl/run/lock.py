"""One writer per run directory: ``run.lock`` names the process (pid, host) that owns the run.

The lock is created with ``O_EXCL``, so two processes cannot both take it. A lock left by a process that is
gone (same host, pid no longer running) is stale and is taken over; a lock from another host cannot be
checked from here, so it is refused with the way to clear it by hand.

A pid alone does not name a process for long: containers restart their training process as pid 1 again,
and pids are reused. The lock therefore also records the process's start time (``/proc/<pid>/stat``, clock
ticks since boot) and the kernel's boot id; a live pid whose start time or boot differs is another process,
and the lock is stale. Where ``/proc`` is missing (not Linux), the pid check alone decides.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hhcl.atomic import fsync_dir
from hhcl.errors import UsageError


class RunLockedError(UsageError, RuntimeError):
    """Another live process writes this run directory; the message names its pid and host. A usage error: pick
    another run directory, or wait."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or held) a run's lock."""

    pid: int | None
    host: str | None
    since: float | None
    started: int | None = None  # the process's start time, clock ticks since boot (Linux)
    boot: str | None = None  # the kernel's boot id when it was written (Linux)

    def alive(self) -> bool:
        """Whether this exact process still runs (call only for a holder on this host)."""
        return self.pid is not None and process_alive(self.pid, self.started, self.boot)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)) if self.since else "an unknown time"
        return f"pid {self.pid if self.pid is not None else '?'} on host {self.host or '?'} (since {since})"


class RunDirUnwritableError(RunLockedError):
    """The run directory cannot be written here (read-only file system, no permission): no process can own it. A
    usage error."""


def this_host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count fields after its last ')'
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def boot_id() -> str | None:
    """This kernel's boot id (changes at every boot); None where the system does not expose it."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def process_alive(pid: int, started: int | None = None, boot: str | None = None) -> bool:
    """Whether the process that was ``pid`` (started at ``started`` ticks during boot ``boot``, when known) still runs
    on this machine: a reused pid (a container's pid 1 after a restart) with another start time is not it."""
    if boot is not None and boot_id() not in (None, boot):
        return False
    if not pid_alive(pid):
        return False
    if started is not None:
        now = process_start(pid)
        return now is None or now == started
    return True


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
    started, boot = raw.get("started"), raw.get("boot")
    return LockHolder(
        pid if isinstance(pid, int) else None,
        host if isinstance(host, str) else None,
        float(since) if isinstance(since, int | float) else None,
        started if isinstance(started, int) and not isinstance(started, bool) else None,
        boot if isinstance(boot, str) else None,
    )


def this_process() -> dict[str, object]:
    """What names this process in a lock file and in ``run_start``: pid, host, start time and boot id."""
    return {"pid": os.getpid(), "host": this_host(), "started": process_start(os.getpid()), "boot": boot_id()}


def _is_stale(holder: LockHolder | None, path: Path) -> bool:
    if holder is None:  # a lock without content: its writer died between create and write
        try:
            return time.time() - path.stat().st_mtime > 5.0
        except FileNotFoundError:
            return True
    return holder.host == this_host() and holder.pid is not None and not holder.alive()


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
        try:
            return self._acquire()
        except (RunLockedError, FileExistsError):
            raise
        except OSError as err:  # a read-only or full disk, no permission: nobody can own this run directory
            raise RunDirUnwritableError(unwritable_message(self.path.parent, err)) from None

    def _acquire(self) -> RunLock:
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
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump({**this_process(), "since": round(time.time(), 3)}, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                self.path.unlink(missing_ok=True)  # never leave a half-written lock behind
                raise
            fsync_dir(self.path.parent)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}: other processes keep taking it.")

    def _refusal(self, holder: LockHolder | None) -> str:
        """Why the lock is refused and what to do: wait for or stop a live local holder, or clear a remote one."""
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
        """Remove the lock if this process holds it (and it still names this process)."""
        if self.held:
            holder = read_holder(self.path)
            if holder is None or (holder.pid == os.getpid() and holder.host == this_host()):
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def unwritable_message(run_dir: Path, err: OSError) -> str:
    """The message for a run directory this process cannot write (read-only file system, permission, full disk)."""
    why = err.strerror or str(err)
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = (f"copy it to a writable disk and resume the copy (cp -r '{run_dir}' NEW_DIR; hhcl train --resume NEW_DIR), "
               "or remount it writable")
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space on that disk, then run the same command again"
    else:
        fix = "check the folder and the disk it is on"
    return f"cannot write in run directory '{run_dir}' ({why}): {fix}."
