"""Counts in words for messages: ``plural(1, "epoch")`` is ``1 epoch``, ``plural(2, "epoch")`` is ``2 epochs``.

The one helper for every message with a count, the engine's and the front's (``hhcl_tui`` imports it from
here; ``hhcl`` never imports ``hhcl_tui``), so no message says "1 epochs" or "wrote 1 rank lists".
"""

from __future__ import annotations


def plural(n: int | None, word: str, many: str | None = None, *, spec: str = "") -> str:
    """``n`` followed by ``word``, or by its plural ``many`` (default ``word`` + "s") for any count but 1.

    ``spec`` formats the number (``","`` groups thousands); an unknown count (None, a field an older event
    log lacks) reads ``?`` with the plural."""
    noun = word if n == 1 else (many or f"{word}s")
    return f"{'?' if n is None else format(n, spec)} {noun}"
