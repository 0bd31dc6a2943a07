"""Inline SVG line charts: the page draws its own curves, so it needs no JavaScript and no server."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from raydino.report.markup import esc, fmt

CURVE_POINTS = 400  # points per drawn curve at most
PALETTE = ["#3b6fd8", "#e8793a", "#2a9d8f", "#d64f6a", "#8a63c9", "#b08a2e", "#5a8f3c", "#6b7280"]


@dataclass
class Series:
    label: str
    steps: list[float]
    values: list[float]
    bold: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(title: str, series: list[Series], note: str = "", marks: Sequence[tuple[float, str]] = (),
               hlines: Sequence[tuple[float, str]] = (), xmax: float = 0.0) -> str:
    """A small SVG line chart from step 0 (to ``xmax`` at least), with stage marks and dashed baselines."""
    w, h, left, right, top, bottom = 340, 200, 46, 10, 12, 26
    ys = [y for s in series for y in s.values if math.isfinite(y)] + [v for v, _ in hlines]
    x0, x1 = 0.0, max([xmax, *(x for s in series for x in s.steps)])
    marks = [(x, label) for x, label in marks if x < x1]
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (h - top - bottom)

    parts = [f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" class="plot"/>']
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 5}" y="{py(t) + 3.5:.1f}" class="tick" text-anchor="end">{t:.3g}</text>')
    for t in nice_ticks(x0, x1, 6)[1:]:
        parts.append(f'<text x="{px(t):.1f}" y="{h - bottom + 14}" class="tick" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{left - 5}" y="{h - bottom + 14}" class="tick" text-anchor="end">step</text>')
    for x, label in marks:
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{h - bottom}" class="mark"/>'
                     f'<text x="{px(x) + 3:.1f}" y="{top + 10}" class="marklabel">{esc(label)}</text>')
    for y, label in hlines:
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="base"/>'
                     f'<text x="{w - right - 3}" y="{py(y) - 3:.1f}" class="marklabel" text-anchor="end">'
                     f'{esc(label)} {fmt(y)}</text>')
    legend = []
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        stride = math.ceil(len(s.steps) / CURVE_POINTS)
        keep = [*range(0, len(s.steps) - 1, stride), len(s.steps) - 1]
        pts = " ".join(f"{px(s.steps[j]):.1f},{py(s.values[j]):.1f}" for j in keep if math.isfinite(s.values[j]))
        width = 2.6 if s.bold else 1.6
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{width}" '
                     f'stroke-linejoin="round"><title>{esc(s.label)}: last {fmt(s.values[-1])}</title></polyline>')
        if len(s.steps) <= 12:
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.4" fill="{colour}"/>'
                      for x, y in zip(s.steps, s.values, strict=True) if math.isfinite(y)]
        legend.append(f'<span><i style="background:{colour}"></i>{esc(s.label)} '
                      f'<b>{fmt(s.values[-1])}</b></span>')
    svg = f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{esc(title)}">{"".join(parts)}</svg>'
    note_html = f'<p class="note">{esc(note)}</p>' if note else ""
    return (f'<figure class="chart"><figcaption>{esc(title)}</figcaption>{svg}'
            f'<div class="legend">{"".join(legend)}</div>{note_html}</figure>')
