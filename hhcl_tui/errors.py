"""``@cli_errors``: the one place where an error leaving a command becomes ``error: <message>`` and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from hhcl.diskspace import disk_error, is_disk_full
from hhcl.errors import EXIT_FAILURE, HhclError
from hhcl_tui.common import fail

P = ParamSpec("P")
R = TypeVar("R")

DISK_FIX = "free space on that disk (or write somewhere else), then run the command again"


def cli_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Wrap a command: an :class:`HhclError` exits with its own code (2 usage, 1 failure) and a full disk or file
    size limit exits 1 naming the file, each after ``error: <message>``. Anything else keeps its traceback: it is
    a bug to report, not a message to word."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except HhclError as err:
            raise fail(str(err), err.exit_code) from None
        except OSError as err:
            if not is_disk_full(err):
                raise
            raise fail(disk_full_message(err), EXIT_FAILURE) from None

    return run


def disk_full_message(err: OSError) -> str:
    """What a full disk (or file size limit) met while writing says: the file when the error names one, the fix."""
    if err.filename is None:
        return f"the disk is full or a file size limit was reached ({err.strerror or err}): {DISK_FIX}"
    return str(disk_error(err, err.filename, DISK_FIX))
