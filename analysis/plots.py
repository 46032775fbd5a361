"""Figures: latency CDF (``analysis.cdf_plot``), where the time goes (stages), throughput,
confusion matrix.

Every function writes one PNG (analysis/style.py: Agg backend, 120 dpi) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator, PercentFormatter

from analysis.cdf_plot import plot_cdf  # noqa: F401 - one import place for every figure
from analysis.stats import find_knee, percentile
from analysis.style import PALETTE, STAGE_PALETTE, STYLE, colour, fmt_ms, save


# ------------------------------------------------------------------ CDF: analysis/cdf_plot.py

# ------------------------------------------------------------------ stages

def _median(values):
    return percentile(sorted(values), 50)


def plot_stages(runs, out_path, stage_order, result_path, title: str | None = None) -> Path:
    """Where the time goes.

    ``runs``: list of ``(label, {stage label: [durations ms]})``.  Top panel: the
    medians of the result-path stages stacked per run; bottom panel: every stage's
    median per run with a whisker up to its p95.
    """
    runs = [(label, data) for label, data in runs if data]
    stages = [s for s in stage_order if any(s in data for _, data in runs)]
    path_stages = [s for s in result_path if s in stages]
    n_runs = len(runs)
    stage_colours = {s: STAGE_PALETTE[i % len(STAGE_PALETTE)] for i, s in enumerate(stage_order)}
    top_h = 0.5 * n_runs + 1.6 if path_stages else 0
    bottom_h = len(stages) * (0.26 * n_runs + 0.4) + 1.3
    with plt.rc_context(STYLE):
        if path_stages:
            fig, (top, bottom) = plt.subplots(
                2, 1, figsize=(10, top_h + bottom_h),
                gridspec_kw={"height_ratios": [top_h, bottom_h]})
        else:
            fig, bottom = plt.subplots(figsize=(10, bottom_h))
            top = None

        if top is not None:
            # Each run's stacked segments (stage, start, median), computed once: the
            # labels need the widest total before they can be placed.
            segments = []
            for _label, data in runs:
                left, row = 0.0, []
                for s in path_stages:
                    if s in data:
                        m = _median(data[s])
                        row.append((s, left, m))
                        left += m
                segments.append(row)
            totals = [sum(m for _s, _left, m in row) for row in segments]
            top_max = max(totals) if totals else 1
            for r, row in enumerate(segments):
                for s, left, m in row:
                    top.barh(r, m, left=left, color=stage_colours[s], height=0.6,
                             edgecolor="white", linewidth=0.8)
                    if m > 0.09 * top_max:
                        top.text(left + m / 2, r, fmt_ms(m), ha="center", va="center",
                                 fontsize=8.5, color="white", fontweight="bold")
                top.text(totals[r] + 0.01 * top_max, r, f"{fmt_ms(totals[r])} ms",
                         va="center", fontsize=9)
            top.set_yticks(range(n_runs), [label for label, _ in runs])
            top.invert_yaxis()
            top.set_xlim(0, top_max * 1.15 if top_max > 0 else 1)
            top.set_xlabel("Median time per stage (ms), result-path stages stacked "
                           "(number at the end = sum of the medians)")
            top.set_title("Result path: producer → inference → producer", fontsize=12,
                          pad=46)
            top.grid(True, axis="x")
            top.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=stage_colours[s])
                                for s in path_stages],
                       labels=path_stages, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                       ncol=2, frameon=False, fontsize=9)

        height = 0.8 / n_runs
        ymax = 0.0
        for r, (label, data) in enumerate(runs):
            c = colour(r) if n_runs > 1 else None
            for si, s in enumerate(stages):
                if s not in data:
                    continue
                ordered = sorted(data[s])
                med, p95 = percentile(ordered, 50), percentile(ordered, 95)
                y = si - 0.4 + height * (r + 0.5)
                bar_colour = c or stage_colours[s]
                bottom.barh(y, med, height=height * 0.9, color=bar_colour, alpha=0.9,
                            label=label if si == 0 or (s == stages[0]) else None)
                bottom.errorbar([med], [y], xerr=[[0], [max(p95 - med, 0)]], fmt="none",
                                ecolor="#333333", elinewidth=1.1, capsize=3)
                bottom.text(p95, y, f"  {fmt_ms(med)} / {fmt_ms(p95)}", va="center",
                            fontsize=8 if n_runs > 2 else 8.5)
                ymax = max(ymax, p95)
        bottom.set_yticks(range(len(stages)), stages)
        bottom.invert_yaxis()
        bottom.set_xlim(0, ymax * 1.25 if ymax > 0 else 1)
        bottom.set_xlabel("Time (ms): bar = median, whisker = p95  (labels: median / p95)")
        bottom.set_title("Each stage: median and p95", fontsize=12)
        bottom.grid(True, axis="x")
        if n_runs > 1:
            handles = [plt.Rectangle((0, 0), 1, 1, color=colour(r)) for r in range(n_runs)]
            bottom.legend(handles, [label for label, _ in runs], loc="lower right")
        fig.suptitle(title or "Where the time goes", fontsize=14, fontweight="bold")
        fig.tight_layout()
        return save(fig, out_path)


# ------------------------------------------------------------------ throughput

def plot_throughput(points, out_path, by_producers: bool, title: str | None = None) -> Path:
    """Achieved throughput and latency per run.

    ``points``: list of dicts with ``x`` (producer count or run name),
    ``throughput`` (img/s or None), ``p50``, ``p95``, ``p99`` (ms or None); optional
    ``offered``, ``capacity`` (img/s) and ``knee_between`` ([low, high] offered img/s: the
    capacity ramp's bracket of the knee), from ``python -m experiments.experiment``.
    """
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
        xs = [p["x"] for p in points]
        pos = xs if by_producers else list(range(len(points)))
        thr = [p["throughput"] for p in points]
        c_thr, c_lat = PALETTE[0], PALETTE[3]

        def _series(values):
            return [np.nan if v is None else v for v in values]

        if by_producers:
            left.plot(pos, _series(thr), marker="o", ms=8, lw=2, color=c_thr, label="stored")
        else:
            left.bar(pos, _series(thr), color=c_thr, width=0.6)
        offered = [p.get("offered") for p in points]
        capacity = {p.get("capacity") for p in points} - {None}
        # the capacity ramp's bracket of the knee, in offered images/s
        brackets = {tuple(p["knee_between"]) for p in points if p.get("knee_between")}
        tops = [v for v in thr + offered + list(capacity) + [high for _low, high in brackets] if v is not None]
        if by_producers and any(v is not None for v in offered):
            left.plot(pos, _series(offered), ls="--", lw=1.3, color="#8c8c8c", marker=".", label="offered")
            # The knee by the rate results came back at (what experiment.json says), drawn
            # on the throughput line.
            knee = find_knee([{"x": x, "offered_img_s": o, "throughput_img_s": p.get("result_rate"), "y": t}
                              for x, o, t, p in zip(pos, offered, thr, points)])
            if knee:
                left.plot([knee["x"]], [knee["y"] or 0], marker="o", ms=16, mfc="none",
                          mec=PALETTE[3], mew=2, ls="none", label="knee (< 95 % of offered stored)")
        if len(capacity) == 1:
            cap = capacity.pop()
            left.axhline(cap, ls=":", lw=1.5, color=PALETTE[2], label=f"measured capacity {cap:,.1f}")
        if len(brackets) == 1:
            low, high = brackets.pop()
            left.axhspan(low, high, color=PALETTE[2], alpha=0.15, lw=0,
                         label=f"ramp's knee: {low:,.1f}-{high:,.1f} offered")
        if by_producers and left.get_legend_handles_labels()[0] and len(left.get_legend_handles_labels()[0]) > 1:
            left.legend(loc="lower right", fontsize=9)
        for x, v in zip(pos, thr):
            if v is not None:
                left.annotate(f"{v:,.1f}", (x, v), xytext=(0, 7), textcoords="offset points",
                              ha="center", fontsize=9)
        left.set_ylabel("Achieved throughput (images/s)")
        left.set_title("Throughput", fontsize=12)
        left.set_ylim(bottom=0, top=max(tops or [1]) * 1.18)

        for key, style, lw, ms in (("p50", "--", 1.2, 5), ("p95", "-", 2.2, 8), ("p99", ":", 1.4, 5)):
            values = _series([p[key] for p in points])
            right.plot(pos, values, ls=style if by_producers else "none",
                       lw=lw, marker="o" if key == "p95" else ("_" if not by_producers else "."),
                       ms=ms if by_producers or key == "p95" else 14, mew=2,
                       color=c_lat if key == "p95" else "#8c8c8c", label=key)
        for x, p in zip(pos, points):
            if p["p95"] is not None:
                right.annotate(fmt_ms(p["p95"]), (x, p["p95"]), xytext=(0, 8),
                               textcoords="offset points", ha="center", fontsize=9, color=c_lat,
                               fontweight="bold", zorder=5,
                               bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none",
                                         alpha=0.85))
        top = max([p[k] for p in points for k in ("p95", "p99") if p[k] is not None] or [1])
        right.set_ylim(bottom=0, top=top * 1.18)
        right.set_ylabel("End-to-end latency (ms)")
        right.set_title("Latency (p95 bold; p50, p99 grey)", fontsize=12)
        right.legend(loc="upper left")

        for ax in (left, right):
            ax.grid(True)
            if by_producers:
                ax.set_xlabel("Concurrent producers")
                if len(set(xs)) <= 12:
                    ax.set_xticks(sorted(set(xs)))
                else:
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                span = max(xs) - min(xs) if xs else 0
                pad = max(0.5, span * 0.08)
                ax.set_xlim(min(xs) - pad, max(xs) + pad)
            else:
                ax.set_xlabel("Run")
                ax.set_xticks(pos, [str(x) for x in xs], rotation=20 if len(xs) > 3 else 0,
                              ha="right" if len(xs) > 3 else "center")
                ax.set_xlim(-0.6, len(xs) - 0.4)
        fig.suptitle(title or ("Throughput and p95 latency vs. number of producers" if by_producers
                               else "Throughput and p95 latency per run"),
                     fontsize=13, fontweight="bold")
        fig.tight_layout()
        return save(fig, out_path)


# ------------------------------------------------------------------ confusion

def plot_confusion(acc: dict, out_path, title: str | None = None) -> Path:
    """Confusion matrix (colour = share of the true class, text = count).

    ``acc`` is an accuracy dict from :func:`analysis.report.accuracy_of` plus
    ``meaningful`` and ``model``.
    """
    classes = acc["classes"]
    matrix = np.array(acc["confusion"], dtype=float)
    row_totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals > 0)
    n = len(classes)
    side = max(6.5, min(11, 0.62 * n + 3.5))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(side + 1.4, side))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                count = int(matrix[i, j])
                if count:
                    ax.text(j, i, f"{count:,}", ha="center", va="center",
                            fontsize=9 if n <= 10 else 7,
                            color="white" if share[i, j] > 0.55 else "#222222")
        for i in range(n):  # outline the diagonal: the correct predictions
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="#333333",
                                       lw=1.2, zorder=3))
        per_class = acc.get("per_class", {})
        ylabels = [f"{c}  ({per_class[c]['accuracy']:.0%})" if c in per_class else c
                   for c in classes]
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), ylabels)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class  (per-class accuracy)")
        ax.spines[:].set_visible(False)
        ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, format=PercentFormatter(1.0))
        cbar.set_label("Share of the true class")
        overall = acc.get("overall_accuracy")
        headline = title or "Confusion matrix"
        weights = f" (weights: {acc['weights']})" if acc.get("weights") else ""
        sub = f"model {acc.get('model') or '?'}{weights} — accuracy {overall:.1%} over {acc['n']:,} images" \
            if overall is not None else f"model {acc.get('model') or '?'}{weights}"
        if not acc.get("meaningful", True):
            ax.set_title(f"{headline}\n{sub}\nNOT MEANINGFUL: untrained model, predictions are arbitrary",
                         color="#B00020", fontsize=12)
        else:
            ax.set_title(f"{headline}\n{sub}", fontsize=12)
        fig.tight_layout()
        return save(fig, out_path)
