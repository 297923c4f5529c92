"""The benchmarks' "loaded" condition: one competing busy process per core (a shared machine's figure)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def busy(enabled: bool) -> Iterator[None]:
    """One competing process per core spinning for the whole block (nothing when ``enabled`` is false)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)] if enabled else []
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()
