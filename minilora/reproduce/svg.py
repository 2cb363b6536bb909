"""Two small plots as self-contained SVG text (no plotting library needed): a heatmap and a bar
chart with error bars. Each returns a string to write to a ``.svg`` file."""
from __future__ import annotations

from html import escape


def _color(v: float) -> str:
    """0 → pale yellow, 1 → dark blue (a sequential scale; values outside [0, 1] are clipped)."""
    t = min(1.0, max(0.0, v))
    lo, hi = (255, 247, 188), (8, 48, 107)
    r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi))
    return f"rgb({r},{g},{b})"


def heatmap(grid, title: str, xlabel: str, ylabel: str, cell: int = 0) -> str:
    """``grid[i][j]`` in [0, 1] as coloured cells, row i = 1 at the top; the value is in each
    cell's tooltip and, when there is room, written in it."""
    n_i, n_j = len(grid), len(grid[0])
    cell = cell or max(6, min(40, 480 // max(n_i, n_j)))
    left, top = 60, 40
    w, h = left + n_j * cell + 90, top + n_i * cell + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="13">{escape(title)}</text>']
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            x, y = left + j * cell, top + i * cell
            out.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{_color(v)}">'
                       f'<title>i={i + 1}, j={j + 1}: {v:.3f}</title></rect>')
            if cell >= 28:
                ink = "white" if v > 0.55 else "black"
                out.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                           f'fill="{ink}" font-size="9">{v:.2f}</text>')
    for j in range(n_j):
        if n_j <= 16 or (j + 1) % 8 == 0 or j == 0:
            out.append(f'<text x="{left + j * cell + cell / 2}" y="{top + n_i * cell + 14}" text-anchor="middle">{j + 1}</text>')
    for i in range(n_i):
        if n_i <= 16 or (i + 1) % 8 == 0 or i == 0:
            out.append(f'<text x="{left - 6}" y="{top + i * cell + cell / 2 + 4}" text-anchor="end">{i + 1}</text>')
    out.append(f'<text x="{left + n_j * cell / 2}" y="{top + n_i * cell + 34}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="16" y="{top + n_i * cell / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + n_i * cell / 2})">{escape(ylabel)}</text>')
    bx = left + n_j * cell + 20  # the colour bar, 0 at the bottom
    for k in range(20):
        out.append(f'<rect x="{bx}" y="{top + k * 8}" width="14" height="8" fill="{_color(1 - k / 19)}"/>')
    out.append(f'<text x="{bx + 18}" y="{top + 8}">1</text><text x="{bx + 18}" y="{top + 160}">0</text>')
    out.append("</svg>")
    return "\n".join(out)


def bars(labels, means, sds, title: str, ylabel: str, reference: float | None = None,
         reference_label: str = "") -> str:
    """One bar per label (height ``means[k]``, error bar ± ``sds[k]``), the axis starting just
    below the smallest bar so differences show; an optional dashed reference line."""
    lows = [m - s for m, s in zip(means, sds)] + ([reference] if reference is not None else [])
    highs = [m + s for m, s in zip(means, sds)] + ([reference] if reference is not None else [])
    lo, hi = min(lows), max(highs)
    pad = 0.1 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    left, top, plot_h, bw = 60, 40, 220, 56
    w, h = left + len(labels) * (bw + 14) + 20, top + plot_h + 60

    def y(v):
        return top + plot_h * (hi - v) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="13">{escape(title)}</text>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
           f'<text x="14" y="{top + plot_h / 2}" text-anchor="middle" transform="rotate(-90 14 {top + plot_h / 2})">{escape(ylabel)}</text>']
    for v in (lo + pad, (lo + hi) / 2, hi - pad):
        out.append(f'<text x="{left - 4}" y="{y(v) + 4}" text-anchor="end">{v:.3f}</text>')
    for k, (lab, m, s) in enumerate(zip(labels, means, sds)):
        x = left + 10 + k * (bw + 14)
        out.append(f'<rect x="{x}" y="{y(m)}" width="{bw}" height="{top + plot_h - y(m)}" fill="rgb(66,146,198)">'
                   f'<title>{escape(lab)}: {m:.4f} ± {s:.4f}</title></rect>')
        if s > 0:
            cx = x + bw / 2
            out.append(f'<line x1="{cx}" y1="{y(m - s)}" x2="{cx}" y2="{y(m + s)}" stroke="black"/>')
        out.append(f'<text x="{x + bw / 2}" y="{top + plot_h + 14}" text-anchor="middle">{escape(lab)}</text>')
    if reference is not None:
        out.append(f'<line x1="{left}" y1="{y(reference)}" x2="{w - 10}" y2="{y(reference)}" stroke="red" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{w - 12}" y="{y(reference) - 4}" text-anchor="end" fill="red">{escape(reference_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)
