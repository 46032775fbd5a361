"""The CDF figure (analysis/cdf_plot.py): its band is the tables' intervals, and its p50/p95/p99
labels never overlap, even when the percentiles are 1 ms apart."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.text import Text

from analysis.cdf_plot import cdf_figure, plot_cdf
from analysis.intervals import BAND, percentile_intervals


def one_ms_apart(base: float) -> list[float]:
    """p50 = base, p95 = base + 1, p99 = base + 2 (nearest rank over 100 values)."""
    return [base] * 50 + [base + 1] * 45 + [base + 2] * 5


def label_boxes(fig, labels):
    """Each label's text extent as the renderer draws it."""
    renderer = fig.canvas.get_renderer()
    boxes = []
    for label in labels:
        label.update_positions(renderer)
        boxes.append(Text.get_window_extent(label, renderer))
    return boxes


@pytest.mark.parametrize("runs", [
    [("one", one_ms_apart(100.0))],
    [("one", one_ms_apart(100.0)), ("two", one_ms_apart(101.0))],
    [("one", one_ms_apart(1.0)), ("two", one_ms_apart(2.0))],
])
@pytest.mark.parametrize("log_x", [False, True])
def test_percentile_labels_never_overlap(runs, log_x):
    fig, ax, labels = cdf_figure(runs, log_x=log_x)
    try:
        assert [lab.get_text().split()[0] for lab in labels] == ["p50", "p95", "p99"] * len(runs)
        boxes = label_boxes(fig, labels)
        for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes), 2):
            assert not box_a.overlaps(box_b), (a.get_text(), box_a, b.get_text(), box_b)
        frame = ax.get_window_extent(fig.canvas.get_renderer())
        assert all(frame.y0 <= box.y0 and box.y1 <= frame.y1 for box in boxes)
    finally:
        plt.close(fig)


def test_a_moved_label_is_joined_to_its_mark():
    fig, _ax, labels = cdf_figure([("one", one_ms_apart(100.0)), ("two", one_ms_apart(101.0))])
    try:
        moved = [lab for lab in labels if lab.arrow_patch.get_visible()]
        kept = [lab for lab in labels if not lab.arrow_patch.get_visible()]
        assert moved and kept
        assert all(lab.xyann in ((9, -11), (-9, 0)) for lab in kept)
    finally:
        plt.close(fig)


def test_the_band_spans_the_tables_intervals(tmp_path):
    rng = np.random.default_rng(2)
    trials = [rng.lognormal(4.5, 0.3, 150) for _ in range(3)]
    band = percentile_intervals(trials, BAND)
    fig, ax, _labels = cdf_figure([("run", np.concatenate(trials).tolist())], bands=[band])
    try:
        (poly,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
        vertices = poly.get_paths()[0].vertices
        at95 = vertices[np.isclose(vertices[:, 1], 0.95)][:, 0]
        assert min(at95) == pytest.approx(band[95.0].low) and max(at95) == pytest.approx(band[95.0].high)
        assert "95 % confidence band" in [t.get_text() for t in ax.get_legend().get_texts()]
    finally:
        plt.close(fig)
    assert plot_cdf([("run", np.concatenate(trials).tolist())], tmp_path / "cdf.png", bands=[band]).stat().st_size
