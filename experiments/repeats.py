"""Repeated trials of an experiment's configurations (``make experiment REPEAT=K``).

Each configuration (a producer count) runs K times, interleaved round by round: 1, 2, 3, 4
producers, then 1, 2, 3, 4 again, and so on.  Whatever drifts on the machine over the
experiment (other jobs, caches, the store growing) then falls on every configuration alike
instead of on the last ones, and trial k of every configuration ran in the same round, close
in time: the pairing the analysis compares configurations by (analysis/intervals.py).
Every trial runs on the same stack, and between two trials the pipeline settles, measured
(experiments/settle.py).

Each trial is a run directory of its own, ``<config>/trial-<k>/``, and after each trial the
configuration's pooled view (``<config>/``: every trial's rows, summary.json pooled,
trials.json) is rewritten, so the experiment directory is whole after any trial
(common/trials.py has the format).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.summary import pool as pool_summary
from common.trials import Pool, trial_dir_name
from experiments.capacity import load_average
from experiments.runner import run_configuration
from experiments.settle import Settler

log = logging.getLogger(__name__)


def config_name(producers: int) -> str:
    """The configuration's directory: ``1-producer``, ``2-producers``."""
    return f"{producers}-producer{'s' if producers > 1 else ''}"


def schedule(producers: list[int], rounds: range) -> list[tuple[int, int]]:
    """(round, producer count) in the order they run: every configuration once per round."""
    return [(r, n) for r in rounds for n in producers]


@dataclass
class Configuration:
    """One configuration's trials so far: trials.json's records and the trials' summaries."""

    producers: int
    records: list[dict] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    pooled: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return config_name(self.producers)


class Trials:
    """The trials of one experiment: run one, settle, rewrite its configuration's pool.  Trial
    k of N producers is run by producers ``<N>-producers-t<k>-<token>-p<i>``."""

    def __init__(self, out: Path, producers: list[int], env: dict, settler: Settler, *, count: int,
                 rate: float, extra: dict | None = None, token: str = ""):
        self.out, self.env, self.settler, self.token = out, env, settler, token
        self.count, self.rate, self.extra = count, rate, extra or {}
        self.configs = {n: Configuration(n) for n in producers}
        self.order = 0

    def run(self, round_no: int, producers: int) -> dict:
        """Trial ``round_no`` of the configuration of ``producers``; returns its record."""
        config = self.configs[producers]
        pool = Pool(self.out / config.name)
        trial = pool.add_trial(round_no)
        # The store outlives an experiment: ``token`` keeps this one's producer ids its own.
        tag = f"{config.name}-t{round_no}" + (f"-{self.token}" if self.token else "")
        self.order += 1
        record = {"trial": round_no, "round": round_no, "order": self.order,
                  "producer_ids": [f"{tag}-p{i + 1}" for i in range(producers)],
                  "load_average_before": load_average(), "started_at": time.time()}
        summary = run_configuration(
            trial.path, self.env, producers=producers, count=self.count, rate=self.rate,
            desc=f"{config.name} trial {round_no}", run_tag=tag,
            extra={"offered_img_s": round(producers * self.rate, 2), **self.extra})
        results = [r.result_at for r in trial.latencies() if r.result_at is not None]
        record["finished_at"] = time.time()
        record["settle"] = self.settler.wait(max(results) if results else record["finished_at"],
                                             stored=summary.get("lost") == 0 if summary.get("lost") is not None
                                             else None)
        config.records.append(record)
        config.summaries.append(summary)
        pool.write(config.records)
        config.pooled = pool_summary(config.summaries, pool.run.latencies())
        pool.run.write_summary(config.pooled)
        e2e = summary.get("e2e_ms") or {}
        log.info("%s trial %d: sent %d, lost %s, p50 %s ms, p95 %s ms, %.1f img/s; settled in %.1f s%s",
                 config.name, round_no, summary["sent"], summary["lost"], _ms(e2e.get("p50")), _ms(e2e.get("p95")),
                 summary.get("throughput_img_s") or 0, record["settle"]["settle_s"],
                 "" if record["settle"]["settled"] else " (NOT settled: " +
                 ", ".join(record["settle"]["still_busy"]) + ")")
        return record

    def runs(self) -> list[dict]:
        """experiment.json's ``runs``: per configuration (in producer order) its pooled summary
        and its trials' records, each with the trial's own summary."""
        return [{"producers": c.producers, "dir": c.name, "summary": c.pooled,
                 "trials": [{**r, "dir": f"{c.name}/{trial_dir_name(r['trial'])}", "summary": s}
                            for r, s in zip(c.records, c.summaries)]}
                for c in sorted(self.configs.values(), key=lambda c: c.producers) if c.records]


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def p95_widths(out: Path, configs: list[str]) -> dict[str, dict]:
    """Each configuration's pooled p95 and its 95 % interval so far (the tables' own,
    analysis.intervals), with the interval's width in per cent of the p95."""
    from analysis.intervals import percentile_intervals
    from analysis.runs import load_run

    found = {}
    for name in configs:
        trials = [t for t in load_run(out / name).trials() if t]
        iv = percentile_intervals(trials, (95,))[95] if trials else None
        found[name] = iv and {"p95_ms": round(iv.estimate, 3), "low_ms": round(iv.low, 3), "high_ms": round(iv.high, 3),
                              "width_pct": round(100 * iv.width / iv.estimate, 2) if iv.estimate > 0 else None}
    return found


def stopping_rule(widths: dict[str, dict], until_pct: float) -> bool:
    """Whether every configuration's p95 interval is narrower than ``until_pct`` % of its p95."""
    return all(w is not None and w["width_pct"] is not None and w["width_pct"] < until_pct for w in widths.values())
