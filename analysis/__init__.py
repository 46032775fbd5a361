"""Latency analysis: percentiles, CDF plots and reports over run directories.

``python -m analysis RUN_DIR... --out OUT_DIR`` (analysis/cli.py) writes the report.
Percentiles are exact nearest-rank (analysis/stats.py).  ``plot_cdf`` is importable
from here; matplotlib is only loaded when it is first used.
"""


def __getattr__(name):
    if name in ("plot_cdf", "plot_stages", "plot_throughput", "plot_confusion"):
        from analysis import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
