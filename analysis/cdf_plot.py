"""The latency CDF figure: each run's pooled empirical CDF, its confidence band, and its
p50/p95/p99 marked, with labels that never overlap.

The band is drawn from the same resampling as the tables' intervals
(``analysis.report.intervals_of``): at height p/100 it spans the p-th percentile's 95 %
interval, so at 95 % it is exactly the p95 interval of percentiles.csv.  Labels are placed
by ``place_labels``: each is tried at its preferred spot, then moved up or down in steps
until its box (the text's extent, as the renderer measures it) overlaps no label placed
before it; a label moved away from its mark gets a thin line to it.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter

from analysis.stats import percentile
from analysis.style import SIZE, STYLE, colour, fmt_ms, plain_number, save

MARKED = ((50, "o"), (95, "s"), (99, "^"))
LABEL_GAP_PX = 3.0  # the least space between two label boxes


def _overlaps(a, b, gap: float) -> bool:
    return a.x0 < b.x1 + gap and b.x0 < a.x1 + gap and a.y0 < b.y1 + gap and b.y0 < a.y1 + gap


def text_box(label, renderer):
    """The extent of an annotation's text alone (without its connecting line), where the
    renderer draws it now."""
    label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def place_labels(fig, labels, gap: float = LABEL_GAP_PX, max_steps: int = 60) -> None:
    """Move each annotation of ``labels`` (in order; the first ones keep their place) up or
    down from its preferred offset until its text box overlaps none placed before it and
    stays inside the axes; a moved label shows its line to the mark."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in labels:
        x0, y0 = label.xyann
        box = text_box(label, renderer)
        step = box.height * 72 / fig.dpi / 2 + gap  # points: half a label's height, and the gap
        for i in range(max_steps):
            # 0, +1, -1, +2, -2 ... steps away from the preferred spot
            dy = (i + 1) // 2 * step * (1 if i % 2 else -1)
            label.xyann = (x0, y0 + dy)
            box = text_box(label, renderer)
            frame = label.axes.get_window_extent(renderer)
            inside = frame.y0 <= box.y0 and box.y1 <= frame.y1  # not over the title or the x axis
            if inside and not any(_overlaps(box, other, gap) for other in placed):
                break
        label.arrow_patch.set_visible(label.xyann != (x0, y0))
        placed.append(box)


def cdf_figure(runs, log_x: bool = False, title: str | None = None, bands=None):
    """The figure of ``plot_cdf`` and its percentile labels (to check their placement)."""
    runs = [(label, sorted(v for v in values if v is not None)) for label, values in runs]
    bands = list(bands) if bands is not None else [None] * len(runs)
    annotate = sum(1 for _, v in runs if v) <= 2
    labels = []
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=SIZE)
        for y, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
            ax.axhline(y, color="#9a9a9a", lw=0.8, ls=":", zorder=1)
            ax.annotate(name, xy=(1, y), xycoords=("axes fraction", "data"),
                        xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=8, color="#707070")
        all_values = [x for _, v in runs for x in v]
        floor = None
        if log_x and all_values:
            positive = [x for x in all_values if x > 0]
            floor = min(positive) / 2 if positive else 0.01
        clip = (lambda x: np.maximum(x, floor)) if floor is not None else (lambda x: x)
        banded = False
        for i, ((label, values), band) in enumerate(zip(runs, bands)):
            c = colour(i)
            if not values:
                ax.plot([], [], color=c, lw=2, label=f"{label} (no results)")
                continue
            n = len(values)
            if band:
                ps = sorted(band)
                ax.fill_betweenx([p / 100 for p in ps], clip(np.array([band[p].low for p in ps])),
                                 clip(np.array([band[p].high for p in ps])), color=c, alpha=0.18, lw=0, zorder=1.5)
                banded = True
            xs = clip(np.array(values, dtype=float))
            ys = np.arange(1, n + 1) / n
            # Start the curve at (first sample, 0) so one sample still draws a step.
            xs = np.concatenate(([xs[0]], xs))
            ys = np.concatenate(([0.0], ys))
            marks = {p: percentile(values, p) for p, _ in MARKED}
            legend = (f"{label}  (n={n:,}: p50 {fmt_ms(marks[50])}, p95 {fmt_ms(marks[95])}, "
                      f"p99 {fmt_ms(marks[99])} ms)")
            ax.step(xs, ys, where="post", color=c, lw=2, label=legend, zorder=2)
            for p, marker in MARKED:
                x = max(marks[p], floor) if floor is not None else marks[p]
                # (x_k, p/100) lies on the vertical jump of the ECDF at the p-th sample.
                ax.plot([x], [p / 100], marker=marker, color=c, mec="white", mew=1.2, ms=9,
                        ls="none", zorder=4)
                if annotate:
                    # p50: below right of the curve; p95/p99: left, where the curve has
                    # already risen past that height (empty space); place_labels resolves clashes.
                    label = ax.annotate(
                        f"p{p} {fmt_ms(marks[p])} ms", xy=(x, p / 100),
                        xytext=(9, -11) if p == 50 else (-9, 0), ha="left" if p == 50 else "right",
                        va="center", textcoords="offset points", fontsize=9, color=c, fontweight="bold",
                        zorder=5, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8),
                        arrowprops=dict(arrowstyle="-", color=c, lw=0.8, shrinkA=0, shrinkB=5,
                                        relpos=(0.0, 0.5) if p == 50 else (1.0, 0.5)))
                    label.arrow_patch.set_visible(False)  # shown only where place_labels moves it
                    labels.append(label)
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        if log_x:
            ax.set_xscale("log")
            lo = min(max(x, floor) for x in all_values) if all_values else 1
            hi = max(all_values) if all_values else 10
            decades = math.log10(hi / lo) if hi > lo > 0 else 0
            subs = ((1.0, 2.0, 3.0, 5.0, 7.0) if decades < 1.2 else
                    (1.0, 2.0, 5.0) if decades < 3 else (1.0,))
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
            ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        elif all_values:
            right = max([max(all_values)] + [b[p].high for b in bands if b for p in b])
            ax.set_xlim(left=0, right=right * 1.12 if right > 0 else 1)
        ax.set_xlabel("End-to-end latency (ms)" + ("  — log scale" if log_x else ""))
        ax.set_ylabel("Images with latency ≤ x")
        # A long title (the experiment's settings) wraps rather than widening the figure.
        ax.set_title("\n".join(textwrap.wrap(title or "End-to-end latency CDF (producer send → result received)", 80)))
        ax.grid(True, which="major")
        handles, names = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker=m, color="#555555", ls="none", ms=7, mec="white")
                    for _, m in MARKED]
        names += [f"p{p}" for p, _ in MARKED]
        if banded:
            handles.append(Patch(color="#555555", alpha=0.18, lw=0))
            names.append("95 % confidence band")
        ax.legend(handles, names, loc="best", ncol=1)
        fig.tight_layout()
        place_labels(fig, labels)
    return fig, ax, labels


def plot_cdf(runs, out_path, log_x: bool = False, title: str | None = None, bands=None) -> Path:
    """One empirical CDF curve of end-to-end latency per run, p50/p95/p99 marked.

    ``runs`` is a list of ``(label, list_of_e2e_ms)``; None values and runs without samples
    are left out (a run with no samples gets "(no results)" in the legend).  ``bands``, one
    per run (or None), maps percentiles to ``analysis.intervals.Interval``: the shaded band.
    """
    fig, _ax, _labels = cdf_figure(runs, log_x=log_x, title=title, bands=bands)
    return save(fig, out_path)
