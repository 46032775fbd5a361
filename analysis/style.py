"""The look every figure shares (analysis/plots.py, the benchmark's bench.png): the Agg
backend, colours, rc style, number formats, and how a figure is saved (PNG, 120 dpi)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120
SIZE = (9, 5.5)
# Okabe-Ito: distinguishable for colour-blind readers, and in greyscale print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9",
           "#F0E442", "#000000")
# Stages get their own muted colours so they never read as runs.
STAGE_PALETTE = ("#7F6BB0", "#4BA3A3", "#A0A0A0", "#B8862E", "#D47FA6", "#5E7CA0")
STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 13,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.framealpha": 0.92,
    "grid.color": "#d0d0d0",
    "grid.linewidth": 0.7,
    "font.size": 10,
    "axes.axisbelow": True,
}


def colour(i: int) -> str:
    if i < len(PALETTE):
        return PALETTE[i]
    return matplotlib.colormaps["tab20"](i % 20)


def fmt_ms(value: float) -> str:
    """Compact milliseconds: 0.42, 4.2, 42, 420, 4,200."""
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def plain_number(value, _pos=None) -> str:
    """A log axis' tick label: 0.5, 2, 1,000 (nothing at or below 0)."""
    if value <= 0:
        return ""
    if value >= 1:
        return f"{value:,.0f}"
    return f"{value:g}"


def save(fig, out_path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out_path
