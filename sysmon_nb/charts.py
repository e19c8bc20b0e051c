"""Chart helpers of the dashboard: one bqplot chart with its legend, and the axis maths.

:class:`Chart` is one Figure (a date x axis, a linear y axis from 0) with its legend
drawn as HTML under it; :func:`nice_ceiling` and :func:`nice_ticks` give axis tops and
round ticks; :func:`byte_unit` and :func:`human_bytes` pick the binary unit a value is
shown in (the tables' byte counts too). Only the dashboard's modules import it (bqplot is
heavy: ``import sysmon_nb`` does not reach this module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import bqplot
import ipywidgets as widgets
import numpy as np

from .markup import byte_unit, fmt, join

__all__ = [
    "COLORS",
    "Chart",
    "byte_unit",
    "human_bytes",
    "legend_html",
    "nice_ceiling",
    "nice_ticks",
]

#: Line colours, in the order lines are drawn.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def human_bytes(value: float | None, suffix: str = "") -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"-"``."""
    if value is None:
        return "-"
    name, size = byte_unit(abs(value))
    number = value / size
    text = f"{number:.0f}" if name == "B" or number >= 100 else f"{number:.1f}"
    return f"{text} {name}{suffix}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5 times a power of ten that is >= ``value``:
    an axis top whose fifths are round numbers; 1 for nothing to show."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def nice_ticks(top: float, most: int = 5) -> np.ndarray:
    """Round tick values from 0 up to ``top`` (1, 2, 2.5 or 5 times a power of ten apart,
    at most ``most`` steps): the axis may end at an unround total, its labels stay round."""
    if not top > 0 or not math.isfinite(top):
        return np.array([0.0, 1.0])
    power = 10.0 ** math.floor(math.log10(top / most))
    step = next(
        (f * power for f in (1.0, 2.0, 2.5, 5.0) if top / (f * power) <= most + 1e-9),
        10.0 * power,
    )
    return np.arange(0.0, top * (1 + 1e-9), step)


def legend_html(labels: Sequence[str], colors: Sequence[str], faint: str = "") -> str:
    """A legend line under a chart: a colour key per line (and one for the faint lines).

    It sits outside the plot, so it never covers a line near the top of the axis (a
    bqplot legend is always drawn inside the plot area). Labels are escaped; the title,
    axis labels and line labels inside the figure are SVG text (bqplot sets them with
    d3's ``.text()``), never parsed as HTML."""
    key = (
        "<span style='white-space:nowrap'><span style='color:{};font-weight:bold'>━</span>"
        " {}</span>"
    )
    keys = [fmt(key, _color(color), label) for label, color in zip(labels, colors)]
    if faint:
        keys.append(fmt(key, "#9ecae1", faint))
    return fmt(
        "<div style='display:flex;gap:14px;justify-content:center;flex-wrap:wrap;"
        "font-size:12px;line-height:16px'>{}</div>",
        join(keys),
    )


def _color(color: str) -> str:
    """A ``#rrggbb`` colour as it is; anything else black (it lands in a style)."""
    ok = (
        len(color) == 7
        and color[0] == "#"
        and all(c in "0123456789abcdefABCDEF" for c in color[1:])
    )
    return color if ok else "#000000"


class Chart:
    """One bqplot Figure (a date x axis, a linear y axis from 0, a Lines mark and a
    faint one for per-core lines) with its legend, as HTML, under it."""

    def __init__(self, title: str, y_label: str, *, y_max: float | None = None) -> None:
        self.x_scale = bqplot.DateScale()
        self.y_scale = bqplot.LinearScale(min=0.0, max=y_max, allow_padding=False)
        ticks = nice_ticks(y_max) if y_max is not None else None
        self.x_axis = bqplot.Axis(
            scale=self.x_scale, tick_format="%H:%M:%S", num_ticks=5, grid_lines="none"
        )
        self.y_axis = bqplot.Axis(
            scale=self.y_scale,
            side="left",
            label=y_label,
            tick_format=".4~g",
            tick_values=ticks,
            grid_lines="dashed",
            label_offset="42px",
        )
        scales = {"x": self.x_scale, "y": self.y_scale}
        self.faint = bqplot.Lines(
            x=np.zeros(0),
            y=np.zeros((1, 0)),
            scales=scales,
            display_legend=False,
            stroke_width=1,
            colors=["#9ecae1"],
        )
        self.lines = bqplot.Lines(
            x=np.zeros(0),
            y=np.zeros((1, 0)),
            scales=scales,
            display_legend=False,
            stroke_width=2,
            colors=list(COLORS),
        )
        self.figure = bqplot.Figure(
            marks=[self.faint, self.lines],
            axes=[self.x_axis, self.y_axis],
            title=title,
            fig_margin={"top": 40, "bottom": 30, "left": 65, "right": 35},
            animation_duration=0,
            layout=widgets.Layout(width="100%", height="250px", min_width="320px"),
            title_style={"font-size": "14px"},
        )
        self.legend = widgets.HTML(layout=widgets.Layout(width="100%"))
        self.box = widgets.VBox([self.figure, self.legend], layout=widgets.Layout(width="100%"))

    def synced(self) -> list[Any]:
        return [self.faint, self.lines, self.y_scale, self.y_axis, self.figure, self.legend]

    def draw(
        self,
        x: np.ndarray,
        rows: Sequence[Sequence[float]],
        labels: list[str],
        title: str,
        *,
        colors: list[str] | None = None,
        faint: Sequence[Sequence[float]] = (),
        y_label: str | None = None,
        y_max: float | None = None,
        faint_label: str = "",
    ) -> None:
        if len(x) < 2:  # bqplot squeezes a one-point array to a scalar it then refuses
            x, rows, faint = np.zeros(0), [[] for _ in rows], [[] for _ in faint]
        self.lines.x = x
        self.lines.y = np.asarray(rows, dtype=float).reshape(len(rows), len(x))
        self.lines.labels = labels
        self.lines.colors = colors or list(COLORS)
        if faint and len(x):
            self.faint.x = x
            self.faint.y = np.asarray(faint, dtype=float).reshape(len(faint), len(x))
        elif len(self.faint.x):
            self.faint.x = np.zeros(0)
            self.faint.y = np.zeros(0)
        self.figure.title = title
        legend = legend_html(labels, list(self.lines.colors), faint_label if faint else "")
        if legend != self.legend.value:
            self.legend.value = legend
        if y_label is not None:
            self.y_axis.label = y_label
        if y_max is not None and y_max != self.y_scale.max:
            self.y_scale.max = y_max
            self.y_axis.tick_values = nice_ticks(y_max)
