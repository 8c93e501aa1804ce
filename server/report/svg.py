"""Line charts as inline SVG, rendered on the server: no JavaScript, no CDN, nothing to fetch.

The run report and the dashboard draw every chart through :func:`line_chart`, so a shared
``report.html`` and the live page look the same and both open offline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

# Colour-blind-safe (Okabe-Ito), cycled by series order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
Point = tuple[float, float]


def nice_ticks(low: float, high: float, *, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values covering ``[low, high]`` (steps of 1, 2 or 5 times a power of ten).

    Parameters
    ----------
    low, high : float
        The data range; ``high == low`` gives ticks around that one value.
    count : int, default 5
        About how many ticks to return.
    integer : bool, default False
        Steps of at least 1 (rounds are whole numbers).

    Returns
    -------
    list of float
        Increasing tick values, the first ``<= low`` and the last ``>= high``.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range [{low}, {high}] is not finite")
    if high < low:
        low, high = high, low
    if high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(count - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 5.0, 10.0) if m * power >= raw)
    if integer:
        step = max(step, 1.0)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - 1e-12 * step:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.1e}"
    if magnitude >= 1e3:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    x_label: str = "round",
    y_label: str = "",
    width: int = 560,
    height: int = 260,
) -> str:
    """One SVG line chart: a line and markers per series, axes with round ticks, a legend.

    Parameters
    ----------
    series : mapping of str to sequence of (x, y)
        Name -> points; points with a non-finite ``y`` are left out (a gap, not a zero).
    title, x_label, y_label : str
        Text drawn on the chart (escaped).
    width, height : int
        Size in pixels.

    Returns
    -------
    str
        An ``<svg>`` element with ``role="img"`` and a ``<title>``; an empty chart says "no data".
    """
    clean = {
        name: [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        for name, pts in series.items()
    }
    points = [p for pts in clean.values() for p in pts]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="chart"><title>{escape(title)}</title>'
        f'<text x="8" y="16" class="chart-title">{escape(title)}</text>'
    )
    if not points:
        return (
            head
            + f'<text x="{width // 2}" y="{height // 2}" text-anchor="middle">no data</text></svg>'
        )
    left, right, top, bottom = 60, 170, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = nice_ticks(min(x for x, _ in points), max(x for x, _ in points), integer=True)
    ys = nice_ticks(min(y for _, y in points), max(y for _, y in points))

    def sx(x: float) -> float:
        return left + (x - xs[0]) / ((xs[-1] - xs[0]) or 1.0) * plot_w

    def sy(y: float) -> float:
        return top + plot_h - (y - ys[0]) / ((ys[-1] - ys[0]) or 1.0) * plot_h

    parts = [head, '<g class="axes" stroke="#999" stroke-width="1">']
    for y in ys:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
            'stroke="#eee"/>'
        )
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>'
    )
    parts.append("</g>")
    for y in ys:
        parts.append(
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_label(y)}</text>'
        )
    for x in xs:
        parts.append(
            f'<text x="{sx(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_label(x)}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    if y_label:
        parts.append(
            f'<text x="12" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
            f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{escape(y_label)}</text>'
        )
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        parts.append(f'<g class="series" data-name="{escape(name)}">')
        if len(pts) > 1:
            parts.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>'
            )
        for x, y in pts:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}">'
                f"<title>{escape(name)}: round {_label(x)}, {y:.4g}</title></circle>"
            )
        legend_y = top + 14 * i + 6
        parts.append(
            f'<rect x="{left + plot_w + 12}" y="{legend_y - 8}" width="10" height="10" '
            f'fill="{colour}"/><text x="{left + plot_w + 26}" y="{legend_y + 1}">'
            f"{escape(name[:22])}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
