"""The one way text reaches the widgets' HTML: escaped, unless it is markup built here.

What a server sends (host names, paths, process and user names, messages, even numbers
from an older or hostile server), what a hub says (user and server names) and a
connection's close reason are all untrusted: an ``ipywidgets.HTML`` value is set as
``innerHTML`` in the admin's JupyterLab, so one unescaped string runs script there.

:class:`Markup` marks HTML that was built from escaped parts. :func:`fmt` fills a
template of ours with values, escaping each unless it is :class:`Markup`;
:func:`table` builds a table the same way, cell by cell. A renderer interpolates
values only through these (never with a bare f-string), so escaping is the default,
and forgetting it shows markup as text rather than running it.

bqplot draws figure titles, axis labels and line labels as SVG text (d3's ``.text()``:
checked in bqplot 0.13), so chart titles need no escaping; the legend under each chart
is HTML and goes through :func:`fmt`.

Values as text (:func:`finite`, :func:`as_text`, ``fmt_*``) take whatever a sample
holds: a value of an unexpected type (a sample that did not come through
:func:`~sysmon_nb.protocol.decode`) shows as ``-``, never breaks a redraw.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Readings at or over a warning level are shown in this red.
WARN_COLOR = "#d62728"
_BINARY_UNITS = (("TiB", 1024.0**4), ("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0))


class Markup(str):
    """A string that is already HTML, built from escaped parts: inserted as it is.
    Adding text to it escapes the text (``Markup("<b>x</b>") + "<y>"`` stays safe)."""

    __slots__ = ()

    def __add__(self, other: str) -> Markup:
        return Markup(str.__add__(self, escape(other)))

    def __radd__(self, other: str) -> Markup:
        return Markup(str.__add__(escape(other), self))


def escape(value: object) -> Markup:
    """``value`` as text in HTML (quotes too, so it is safe inside an attribute);
    :class:`Markup` is returned unchanged."""
    if isinstance(value, Markup):
        return value
    return Markup(_escaped(value))


def _escaped(value: object) -> str:
    """The one escaping rule: ``& < > " '`` as entities, so text is safe between tags
    and inside quoted attributes."""
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    """:func:`escape` without making a :class:`Markup` of the result (tables' cells)."""
    return value if isinstance(value, Markup) else _escaped(value)


def fmt(template: str, *values: object) -> Markup:
    """``template`` (our own markup) with each ``{}`` replaced by the next of ``values``,
    escaped unless it is :class:`Markup`. Other braces (CSS) are kept as they are."""
    parts = template.split("{}")
    if len(parts) != len(values) + 1:
        raise ValueError(f"{len(parts) - 1} fields for {len(values)} values in {template!r}")
    out = [parts[0]]
    for value, part in zip(values, parts[1:]):
        out.append(escape(value))
        out.append(part)
    return Markup("".join(out))


def join(parts: Iterable[object], sep: str = "") -> Markup:
    """``parts`` (each escaped unless :class:`Markup`) joined by ``sep`` (our markup)."""
    return Markup(sep.join(escape(p) for p in parts))


def table(
    head: Sequence[tuple[object, bool]],
    rows: Iterable[Sequence[object]],
    *,
    attrs: str = "",
    row_attrs: Sequence[str] | None = None,
) -> Markup:
    """A ``<table>``: ``head`` is (name, right-aligned) per column (an empty head, no
    header row); each cell is escaped unless it is :class:`Markup`. ``attrs`` are the
    table's own attributes and ``row_attrs`` each row's (our markup, never data)."""
    heads = "".join(f"<th{' class=n' if right else ''}>{escape(name)}</th>" for name, right in head)
    opens = [("<td class=n>" if right else "<td>") for _, right in head]
    plain = all(o == "<td>" for o in opens)  # the fleet's 500 rows: one join per row
    body = []
    for index, row in enumerate(rows):
        extra = row_attrs[index] if row_attrs is not None else ""
        if plain:
            cells = "</td><td>".join(map(_cell, row))
            body.append(f"<tr{extra}><td>{cells}</td></tr>" if row else f"<tr{extra}></tr>")
            continue
        tds = "".join(
            f"{opens[i] if i < len(opens) else '<td>'}{_cell(cell)}</td>"
            for i, cell in enumerate(row)
        )
        body.append(f"<tr{extra}>{tds}</tr>")
    header = f"<thead><tr>{heads}</tr></thead>" if head else ""
    return Markup(f"<table{attrs}>{header}<tbody>{''.join(body)}</tbody></table>")


# -- values as text ----------------------------------------------------------------------


def finite(value: Any) -> float | None:
    """A finite JSON number, or None (null, missing, bool, anything else)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def fmt_bytes(value: Any) -> str:
    """``1536`` -> ``"1.5 KiB"``; not a number -> ``"-"``."""
    number = finite(value)
    if number is None:
        return "-"
    name, size = byte_unit(abs(number))
    scaled = number / size
    text = f"{scaled:.0f}" if name == "B" or abs(scaled) >= 100 else f"{scaled:.1f}"
    return f"{text} {name}"


def fmt_percent(value: Any) -> str:
    number = finite(value)
    return "-" if number is None else f"{number:.0f} %"


def fmt_clock(seconds: Any) -> str:
    """Unix seconds -> local ``HH:MM`` (the kernel's time zone, as the charts' axes)."""
    number = finite(seconds)
    if number is None:
        return "-"
    try:
        return time.strftime("%H:%M", time.localtime(number))
    except (OverflowError, OSError, ValueError):  # beyond what this platform's clock holds
        return "-"


def fmt_idle(seconds: float | None) -> str:
    """A coarse duration (minutes at best), so the text changes at most once a minute."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return "< 1 min"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def as_text(value: Any, default: str = "-") -> str:
    """A field shown as text: a string or a number as it is, anything else ``default``."""
    if isinstance(value, str):
        return value
    return default if finite(value) is None else str(value)


def byte_unit(peak: float) -> tuple[str, float]:
    """The binary unit (and its size in bytes) that shows ``peak`` as a short number."""
    for name, size in _BINARY_UNITS:
        if peak >= size:
            return name, size
    return "B", 1.0


def objects(group: Any, *keys: str) -> list[dict[str, Any]]:
    """The objects in the list under the first of ``keys`` that holds one (no keys:
    ``group`` is the list); a sample that bypassed decode may hold anything there."""
    value = group
    if keys:
        if not isinstance(group, Mapping):
            return []
        value = next((group[k] for k in keys if isinstance(group.get(k), list)), None)
    return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []
