"""Test-only fault injection: ``HHCL_FAULT=<point>=<action>[,...]`` makes the process fail at a named point.

The crash-consistency tests run real training processes and need them to die at exact moments (between
the two files of a checkpoint, half-way through a write, at a chosen step). Points are plain strings such as
``step:1:0`` (after epoch index 1, iteration 0), ``checkpoint:2:0:weights-written`` (the checkpoint of
position epoch 2 iteration 0) or ``write:last.state.pt:half`` (the first time that file is half written).
Actions: ``kill`` (SIGKILL this process), ``term`` (SIGTERM), ``int`` (SIGINT), ``int2`` (SIGINT twice),
``stop`` (SIGSTOP: alive but frozen), ``hang`` (sleeps for ever: alive and frozen where a signal cannot stop
the process, as pid 1 of a container).
Without the variable, :func:`fault_point` is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal
import time
from functools import cache

ENV = "HHCL_FAULT"
_SIGNALS = {
    "kill": (signal.SIGKILL,),
    "term": (signal.SIGTERM,),
    "int": (signal.SIGINT,),
    "int2": (signal.SIGINT,) * 2,
    "stop": (signal.SIGSTOP,),  # a live process that makes no progress (lock tests)
}


@cache
def _plan() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    plan = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, action = item.rpartition("=")
        if (action not in _SIGNALS and action != "hang") or not point:
            raise ValueError(f"{ENV}: '{item}' is not <point>=<action> with action in {', '.join(_SIGNALS)}, hang")
        plan[point] = action
    return plan


def fault_point(name: str) -> None:
    """Fail here if ``HHCL_FAULT`` names this point (each point fires once per process)."""
    plan = _plan()
    if not plan:
        return
    action = plan.pop(name, None)
    if action == "hang":
        while True:
            time.sleep(3600)
    for sig in _SIGNALS.get(action or "", ()):
        os.kill(os.getpid(), sig)
