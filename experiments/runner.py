"""Run one measured configuration: N producers at once, then close the run and draw its
CDF (one read of latencies.csv).  Shared by ``make demo`` (one producer) and the
experiment (1..N), so their run directories have the same files.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from analysis.plots import plot_cdf
from analysis.stats import percentile
from analysis.summary import close_run
from common.rundir import RunDir
from common.store.opening import reader_of
from experiments.fleet import producer_log_tail, run_fleet

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    pass


def point_latest(run_dir: Path) -> None:
    """``latest`` beside ``run_dir`` names it (a symlink; a real file or directory of that
    name is left alone)."""
    latest = run_dir.parent / "latest"
    try:
        if latest.is_symlink() or not latest.exists():
            latest.unlink(missing_ok=True)
            latest.symlink_to(run_dir.name)
    except OSError as exc:
        log.warning("%s not pointed at %s: %s", latest, run_dir.name, exc)


def run_configuration(run_dir: Path, env: dict, *, producers: int, count: int, rate: float,
                      desc: str, extra: dict | None = None, run_tag: str = "") -> dict:
    """Run a fleet, close the run against the stack's store, draw its CDF; returns the summary.
    ``run_tag`` names the producers (``<tag>-p<i>``; default the run directory's name)."""
    total = producers * count
    with tqdm(total=total, desc=f"{desc} results", unit="img", mininterval=0.5) as bar:
        def show(p):
            bar.update(p.results - bar.n)
            if p.e2e_ms:
                e2e = sorted(p.e2e_ms)
                bar.set_postfix(sent=p.sent, p50=f"{percentile(e2e, 50):.0f}ms",
                                p95=f"{percentile(e2e, 95):.0f}ms", refresh=False)
        codes = run_fleet(run_dir, producers=producers, count=count, rate=rate, env=env,
                          on_progress=show, run_tag=run_tag)
    if any(codes):
        log.warning("a producer exited with %s:\n%s", codes, producer_log_tail(run_dir))
    run = RunDir(run_dir)
    if not run.sent_anything():
        raise RunFailed(f"no producer sent anything:\n{producer_log_tail(run_dir)}")
    store = reader_of(env)
    try:
        with tqdm(total=total, desc=f"{desc} stored", unit="img") as bar:
            summary = close_run(run, store,
                                extra={"store": store.name, "producers": producers, "rate": rate,
                                       "images_per_producer": count, **(extra or {})},
                                progress=lambda stored, complete: bar.update(complete - bar.n))
    finally:
        store.close()
    e2e = [r.e2e_ms for r in run.latencies() if r.e2e_ms is not None]  # the rows close_run read
    if e2e:
        plot_cdf([(f"{producers} producer{'s' if producers > 1 else ''}", e2e)],
                 run_dir / "latency_cdf.png",
                 title=f"End-to-end latency, {summary['sent']} images at {rate:g} img/s"
                       f" per producer ({summary['model']})")
    return summary
