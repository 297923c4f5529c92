"""A real terminal for a child process: a pty that is the child's controlling terminal, read as a terminal
reads it (closing its master is closing the terminal window: the kernel hangs the child's session up)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading


def own_terminal() -> None:
    """``preexec_fn``: a new session whose controlling terminal is the child's stdin (a shell's foreground job)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """Runs ``cmd`` on a fresh pty of ``rows`` x ``cols``; ``output()`` is everything it printed so far, read by
    a thread (a full pty buffer would block the child); ``close()`` hangs it up."""

    def __init__(self, cmd: list[str], *, rows: int = 40, cols: int = 220, **popen: object) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.process = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, preexec_fn=own_terminal, **popen)
        os.close(slave)
        self._chunks: list[bytes] = []
        self._open = True
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        """Close the terminal window: the kernel sends the child's session SIGHUP."""
        if self._open:
            os.close(self.master)
            self._open = False

    def kill(self) -> None:
        """Make sure the child is gone (a test's clean-up)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.close()
