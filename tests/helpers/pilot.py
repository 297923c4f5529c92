"""Textual Pilot helpers shared by the dashboard tests."""

from __future__ import annotations

from collections.abc import Callable


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 20.0) -> None:  # noqa: ANN001
    """Pause until ``condition()`` holds (a loaded machine may take a while); fail after ``timeout`` seconds."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    assert condition(), "timed out waiting for the dashboard"
