"""A one-line bar chart whose bars start at zero, with its scale written beside it.

Textual's Sparkline scales each series from its minimum to its maximum, so 49 -> 55 clusters reads as
empty -> full; here a bar's height is its value over the series' maximum, and the text ``0–55`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

LEVELS = " ▁▂▃▄▅▆▇█"  # eighths of a cell; a value of 0 draws nothing, any positive value at least one eighth


def scale_label(top: float, unit: str = "") -> str:
    """The scale of a zero-based chart up to ``top``: ``0–55``, ``0–12.5%``."""
    return f"0–{top:.3g}{unit}"


def bucket_max(values: Sequence[float], width: int) -> list[float]:
    """At most ``width`` values: one per value when they fit, else the maximum of consecutive equal buckets."""
    if width <= 0:
        return []
    if len(values) <= width:
        return list(values)
    return [max(values[b * len(values) // width : (b + 1) * len(values) // width]) for b in range(width)]


def zero_bars(values: Sequence[float], width: int) -> str:
    """One block character per value (or per bucket of values), its height ``value / max`` in eighths of a cell."""
    shown = bucket_max(values, width)
    top = max(shown, default=0.0)
    if top <= 0:
        return " " * len(shown)
    return "".join(LEVELS[max(round(v / top * 8), 1) if v > 0 else 0] for v in shown)


class ZeroBars(Widget):
    """A sparkline with a zero baseline: bars on the left, the scale (``0–max``) on the right."""

    COMPONENT_CLASSES = {"zero-bars--bar", "zero-bars--scale"}
    DEFAULT_CSS = """
    ZeroBars {
        height: 1;
        width: 1fr;
    }
    ZeroBars > .zero-bars--scale {
        color: $text-muted;
    }
    """

    data: reactive[tuple[float, ...]] = reactive(tuple)

    def __init__(self, *, unit: str = "", id: str | None = None) -> None:
        """``unit`` follows the scale's top value (``%`` for percentages)."""
        super().__init__(id=id)
        self.unit = unit

    def render(self) -> Text:
        """Bars for as many values as fit before the scale label, which is right-aligned."""
        values = list(self.data)
        if not values:
            return Text("")
        scale = " " + scale_label(max(values), self.unit)
        bars = zero_bars(values, max(self.size.width - len(scale), 0))
        pad = max(self.size.width - len(bars) - len(scale), 0)
        return Text.assemble(
            (bars, self.get_component_rich_style("zero-bars--bar")),
            " " * pad,
            (scale, self.get_component_rich_style("zero-bars--scale")),
            no_wrap=True,
        )
