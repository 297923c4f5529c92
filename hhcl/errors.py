"""The one error base: every error hhcl raises on purpose is an :class:`HhclError`, and its class carries the exit
code, so the same error exits the same way from every command and from a training run.

Two kinds. :class:`UsageError` (exit 2): the user can fix the input and run again (a config key, an argument, a
file or folder given, the data). :class:`FailureError` (exit 1): the work failed at run time (a corrupt image met
on the way, a full disk, a training that cannot go on). A project error subclasses one kind and keeps its builtin
base second, so ``except ValueError`` (or ``OSError``, ...) callers still catch it::

    class ConfigError(UsageError, ValueError): ...

The CLI maps these to a message and the code in one place (``hhcl_tui.errors.cli_errors``); a run's ending takes
the code from the error (``hhcl.ending.describe_failure``). Imports nothing: :mod:`hhcl.config` builds on it.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_FAILURE = 1  # the work failed at run time
EXIT_USAGE = 2  # the input (config, arguments, files, data) needs the user's fix


class HhclError(Exception):
    """Base of every hhcl error; the class attribute ``exit_code`` is the exit code a command leaves with."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class UsageError(HhclError):
    """Kind: the user can fix the input (config, arguments, files, data) and run again; exit 2."""

    exit_code: ClassVar[int] = EXIT_USAGE


class FailureError(HhclError):
    """Kind: the work failed at run time, though the input was accepted; exit 1."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class ArgumentError(UsageError, ValueError):
    """A value given to a command (or to the library function behind it) outside what is allowed; the message
    names the option, the value and what is allowed. A usage error."""


__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "ArgumentError", "FailureError", "HhclError", "UsageError"]
