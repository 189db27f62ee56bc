"""A loss chart as a small SVG: what the Prefect UI shows while a run trains (no plotting library).

``loss_svg(train, val)`` draws the training loss per logged step as a line and the validation
loss as dots, on axes with a few labelled ticks.  ``data_url(svg)`` makes it a ``data:image/svg+xml``
URL, which the Prefect UI (3.x, the default React UI) renders inside a markdown artifact.  The
PNG written at the end of training (``training.metrics.plot_loss_curve``) stays matplotlib's.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from xml.sax.saxutils import escape

Point = tuple[float, float]

WIDTH, HEIGHT = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 36
MAX_POINTS = 600  # a longer series is thinned (every k-th point and the last)


def _thin(points: Sequence[Point]) -> list[Point]:
    pts = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if len(pts) <= MAX_POINTS:
        return pts
    k = -(-len(pts) // MAX_POINTS)
    return pts[::k] + ([pts[-1]] if (len(pts) - 1) % k else [])


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round numbers from ``lo`` to ``hi``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def loss_svg(train: Sequence[Point], val: Sequence[Point] = (), title: str = "loss") -> str:
    """An SVG line chart of ``train`` (step, loss) with ``val`` (step, val_loss) as dots."""
    train, val = _thin(train), _thin(val)
    pts = train + val
    w, h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    if not pts:
        out.append(f'<text x="{LEFT}" y="{TOP + h / 2}">no step logged yet</text></svg>')
        return "".join(out)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return TOP + (y1 - y) / (y1 - y0) * h

    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT}" x2="{LEFT + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e5e7eb"/>'
                   f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" fill="#374151">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{TOP + h + 16}" text-anchor="middle" fill="#374151">{_fmt(t)}</text>')
    out.append(f'<text x="{LEFT + w / 2}" y="{HEIGHT - 4}" text-anchor="middle" fill="#374151">step</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#9ca3af"/>')
    if train:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in train)
        out.append(f'<polyline points="{path}" fill="none" stroke="#2563eb" stroke-width="1.6"/>')
    for x, y in val:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="#ea580c"/>')
    legend = [("#2563eb", "train loss")] + ([("#ea580c", "validation loss")] if val else [])
    for i, (color, name) in enumerate(legend):
        x = LEFT + w - 230 + i * 115
        out.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 14}" y="17">{name}</text>')
    out.append("</svg>")
    return "".join(out)


def data_url(svg: str) -> str:
    """``svg`` as a ``data:image/svg+xml;base64,...`` URL (an image a markdown artifact can show)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
