"""Line charts as inline SVG, drawn in Python: the HTML report needs no script or network.

`chart()` draws any number of lines over a shared x axis (run time, or any
transformed axis with explicit tick labels) with nice ticks, an optional log
y axis, shaded labelled bands (phases) and a legend. Points carry <title>s,
so hovering shows values in any browser. Coordinates live in a fixed viewBox;
the page scales the SVG to its width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH, HEIGHT = 1100, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 30, 40
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#475569")
_BAND_FILL = ("#f1f5f9", "#e2e8f0")
_MAX_TITLED = 600  # beyond this many points, no per-point hover titles


@dataclass
class Line:
    label: str
    points: Sequence[tuple[float, float | None]]  # None breaks the line
    color: str = ""
    dashed: bool = False
    step: bool = False  # a value per interval [x, x + step_width)
    width: float = 2.0


@dataclass
class Band:
    x0: float
    x1: float
    label: str


@dataclass
class Axis:
    lo: float
    hi: float
    log: bool = False
    ticks: list[tuple[float, str]] = field(default_factory=list)

    def scale(self, v: float, a: float, b: float) -> float:
        if self.log:
            lo, hi, v = math.log10(self.lo), math.log10(self.hi), math.log10(max(v, self.lo))
        else:
            lo, hi = self.lo, self.hi
        return a + (v - lo) / (hi - lo) * (b - a) if hi > lo else (a + b) / 2


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = magnitude
    for m in (1, 2, 2.5, 5, 10):
        step = m * magnitude
        if step >= raw:
            break
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    decades = math.log10(hi / lo)
    steps = (1,) if decades > 3 else (1, 2, 5)
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in steps:
            v = m * 10.0**e
            if lo <= v <= hi:
                out.append(v)
    return out


def y_axis(lines: Sequence[Line], log: bool, floor: float | None = 0.0) -> Axis:
    values = [y for line in lines for _, y in line.points if y is not None and math.isfinite(y)]
    if log:
        positive = [v for v in values if v > 0] or [1.0]
        lo = 10 ** math.floor(math.log10(min(positive)))
        hi = 10 ** math.ceil(math.log10(max(positive)))
        if hi <= lo:
            hi = lo * 10
        return Axis(lo, hi, True, [(v, fmt(v)) for v in log_ticks(lo, hi)])
    lo = min(values, default=0.0) if floor is None else min(floor, *values) if values else floor
    hi = max(values, default=1.0)
    if hi <= lo:
        hi = lo + 1.0
    ticks = nice_ticks(lo, hi * 1.05)
    return Axis(lo, max(ticks[-1], hi), False, [(v, fmt(v)) for v in ticks])


LOG_SPAN = 50.0  # values spread wider than this factor read better on a log y axis


def wants_log_y(lines: Sequence[Line]) -> bool:
    """Whether the lines' non-zero values spread more than LOG_SPAN× (then use `log_y`)."""
    values = [v for line in lines for _, v in line.points if v]
    return bool(values) and max(values) / max(min(values), 1e-6) > LOG_SPAN


def chart(
    chart_id: str,
    title: str,
    lines: Sequence[Line],
    *,
    x_label: str = "run time (s)",
    y_label: str = "",
    log_y: bool = False,
    bands: Sequence[Band] = (),
    x_axis: Axis | None = None,
    step_width: float = 0.0,
    hlines: Sequence[tuple[float, str]] = (),
) -> str:
    """An <svg> element (a string); 'no data' when every line is empty."""
    xs = [x for line in lines for x, y in line.points if y is not None]
    has_data = bool(xs)
    if x_axis is None:
        lo = min([*xs, *(b.x0 for b in bands)], default=0.0)
        hi = max([*(x + step_width for x in xs), *(b.x1 for b in bands)], default=1.0)
        ticks = nice_ticks(lo, hi, 8)
        x_axis = Axis(lo, hi if hi > lo else lo + 1, False, [(v, fmt(v)) for v in ticks])
    y = y_axis([*lines, Line("", [(0, v) for v, _ in hlines])], log_y)
    x0, x1, y0, y1 = _LEFT, WIDTH - _RIGHT, HEIGHT - _BOTTOM, _TOP

    def px(v: float) -> float:
        return x_axis.scale(v, x0, x1)

    def py(v: float) -> float:
        return y.scale(v, y0, y1)

    out = [
        f'<svg class="chart" data-chart="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
    ]
    for i, band in enumerate(bands):
        a, b = px(max(band.x0, x_axis.lo)), px(min(band.x1, x_axis.hi))
        if b - a < 0.5:
            continue
        out.append(
            f'<rect x="{a:.1f}" y="{y1}" width="{b - a:.1f}" height="{y0 - y1}" '
            f'fill="{_BAND_FILL[i % 2]}"><title>{escape(band.label)}</title></rect>'
        )
        out.append(f'<text x="{a + 4:.1f}" y="{y1 + 12}" class="band">{escape(band.label)}</text>')
    for v, label in y.ticks:
        yy = py(v)
        out.append(f'<line x1="{x0}" x2="{x1}" y1="{yy:.1f}" y2="{yy:.1f}" class="grid"/>')
        out.append(
            f'<text x="{x0 - 6}" y="{yy + 4:.1f}" class="tick" text-anchor="end">{label}</text>'
        )
    for v, label in x_axis.ticks:
        xx = px(v)
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{y0}" y2="{y0 + 4}" class="axis"/>')
        out.append(
            f'<text x="{xx:.1f}" y="{y0 + 16}" class="tick" text-anchor="middle">{label}</text>'
        )
    out.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" class="axis"/>')
    out.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" class="axis"/>')
    for v, label in hlines:
        yy = py(v)
        out.append(
            f'<line x1="{x0}" x2="{x1}" y1="{yy:.1f}" y2="{yy:.1f}" class="hline">'
            f"<title>{escape(label)}</title></line>"
        )
    titled = sum(len(line.points) for line in lines) <= _MAX_TITLED
    legend_x = x0 + 4.0
    for i, line in enumerate(lines):
        color = line.color or PALETTE[i % len(PALETTE)]
        out.extend(_polyline(line, color, px, py, step_width))
        if titled:
            for px_x, value in line.points:
                if value is not None:
                    out.append(
                        f'<circle cx="{px(px_x + (step_width / 2 if line.step else 0)):.1f}" '
                        f'cy="{py(value):.1f}" r="3" fill="{color}" fill-opacity="0">'
                        f"<title>{escape(line.label)} at {fmt(px_x)}: {fmt(value)}</title></circle>"
                    )
        dash = ' stroke-dasharray="6 4"' if line.dashed else ""
        out.append(
            f'<line x1="{legend_x:.0f}" x2="{legend_x + 18:.0f}" y1="14" y2="14" '
            f'stroke="{color}" stroke-width="3"{dash}/>'
            f'<text x="{legend_x + 22:.0f}" y="18" class="legend">{escape(line.label)}</text>'
        )
        legend_x += 34 + 7 * len(line.label)
    out.append(
        f'<text x="{WIDTH - _RIGHT}" y="18" class="title" text-anchor="end">{escape(title)}</text>'
    )
    out.append(
        f'<text x="{(x0 + x1) / 2:.0f}" y="{HEIGHT - 6}" class="label" '
        f'text-anchor="middle">{escape(x_label)}</text>'
    )
    if y_label:
        out.append(
            f'<text transform="translate(14 {(y0 + y1) / 2:.0f}) rotate(-90)" class="label" '
            f'text-anchor="middle">{escape(y_label)}</text>'
        )
    if not has_data:
        out.append(
            f'<text x="{(x0 + x1) / 2:.0f}" y="{(y0 + y1) / 2:.0f}" class="nodata" '
            'text-anchor="middle">no data</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _polyline(
    line: Line, color: str, px: Callable[[float], float], py: Callable[[float], float], step: float
) -> list[str]:
    out = []
    segment: list[str] = []
    dash = ' stroke-dasharray="6 4"' if line.dashed else ""

    def flush() -> None:
        if len(segment) >= 2:
            out.append(
                f'<polyline points="{" ".join(segment)}" fill="none" stroke="{color}" '
                f'stroke-width="{line.width}" stroke-linejoin="round"{dash}/>'
            )
        elif len(segment) == 1:
            x, y = segment[0].split(",")
            out.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
        segment.clear()

    for x, v in line.points:
        if v is None or not math.isfinite(v):
            flush()
            continue
        if line.step and step > 0:
            segment.append(f"{px(x):.1f},{py(v):.1f}")
            segment.append(f"{px(x + step):.1f},{py(v):.1f}")
        else:
            segment.append(f"{px(x):.1f},{py(v):.1f}")
    flush()
    return out
