"""How often the 95 % intervals of ``analysis.intervals`` cover the truth, measured on
simulated experiments whose true percentiles are known.

The model of one simulated experiment: K trials of n images each; in trial k the log
latency of the t-th image sent is ``log(median) + d_k + x_t``, where

- ``x`` is an AR(1) process in send order (lag-1 correlation ``rho``, stationary standard
  deviation ``sigma``): neighbouring images share the pipeline's state, as measured ones do;
- ``d_k`` ~ N(0, ``tau``²) shifts a whole trial: drift between trials (the machine is a
  slightly different machine from one trial to the next).

The truth is the percentile of the latency over all of that (the marginal distribution,
log-normal): ``median · exp(z_p · √(sigma² + tau²))``.  The throughput of a trial is
``rate · (1 + N(0, tau²))``, its truth ``rate``.  Each experiment's intervals are computed
exactly as a report's are, and coverage is the share of experiments whose interval holds
the truth.  The defaults are the project's runs on the local stack: p99 ≈ 2.5 × p50
(sigma 0.4), strongly correlated neighbours (rho 0.8), trials a few per cent apart (tau).

    python -m analysis.coverage                          # the table of docs/USAGE.md
    python -m analysis.coverage --trials 5 --tau 0.1     # other settings
"""

from __future__ import annotations

import argparse
import math
import sys
from statistics import NormalDist

import numpy as np

from analysis.intervals import LEVEL, percentile_intervals, throughput_interval
from analysis.stats import REPORTED

DEFAULTS = {"experiments": 500, "trials": 3, "images": 200, "rho": 0.8, "sigma": 0.4, "tau": 0.05,
            "replicates": 400, "seed": 1}
MEDIAN_MS, RATE = 100.0, 20.0


def simulate_latencies(rng, experiments: int, trials: int, images: int, rho: float, sigma: float,
                       tau: float) -> np.ndarray:
    """(experiments, trials, images) latencies in ms, in send order (the module's model)."""
    shape = (experiments, trials)
    x = np.empty(shape + (images,))
    x[..., 0] = rng.standard_normal(shape) * sigma
    noise = rng.standard_normal(shape + (images,)) * sigma * math.sqrt(1 - rho ** 2)
    for t in range(1, images):
        x[..., t] = rho * x[..., t - 1] + noise[..., t]
    shift = rng.standard_normal(shape)[..., None] * tau
    return MEDIAN_MS * np.exp(x + shift)


def true_percentiles(sigma: float, tau: float, ps=REPORTED) -> np.ndarray:
    z = np.array([NormalDist().inv_cdf(p / 100) for p in ps])
    return MEDIAN_MS * np.exp(z * math.sqrt(sigma ** 2 + tau ** 2))


def coverage(experiments: int = DEFAULTS["experiments"], trials: int = DEFAULTS["trials"],
             images: int = DEFAULTS["images"], rho: float = DEFAULTS["rho"], sigma: float = DEFAULTS["sigma"],
             tau: float = DEFAULTS["tau"], replicates: int = DEFAULTS["replicates"],
             seed: int = DEFAULTS["seed"], level: float = LEVEL) -> dict:
    """Coverage of each reported percentile's interval and of the throughput's, and the
    intervals' mean width (per cent of the estimate), over ``experiments`` simulated ones."""
    rng = np.random.default_rng(seed)
    latencies = simulate_latencies(rng, experiments, trials, images, rho, sigma, tau)
    rates = RATE * (1 + tau * rng.standard_normal((experiments, trials)))
    truth = true_percentiles(sigma, tau)
    covered = np.zeros(len(REPORTED))
    width = np.zeros(len(REPORTED))
    rate_covered = 0
    for e in range(experiments):
        found = percentile_intervals(list(latencies[e]), replicates=replicates, level=level,
                                     seed=int(rng.integers(2 ** 31)))
        for i, p in enumerate(REPORTED):
            iv = found[p]
            covered[i] += iv.low <= truth[i] <= iv.high
            width[i] += iv.width / iv.estimate
        if trials > 1:
            t = throughput_interval(list(rates[e]), level)
            rate_covered += t.low <= RATE <= t.high
    out = {f"p{p}": round(covered[i] / experiments, 3) for i, p in enumerate(REPORTED)}
    out["throughput"] = round(rate_covered / experiments, 3) if trials > 1 else None
    out["width_pct"] = {f"p{p}": round(100 * width[i] / experiments, 1) for i, p in enumerate(REPORTED)}
    out["settings"] = {"experiments": experiments, "trials": trials, "images": images, "rho": rho,
                       "sigma": sigma, "tau": tau, "replicates": replicates, "seed": seed, "level": level}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.coverage", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in DEFAULTS.items():
        p.add_argument(f"--{name}", type=type(value), default=value, help=f"default {value}")
    p.add_argument("--sweep-tau", type=float, nargs="*", default=None, metavar="TAU",
                   help="one row per drift between trials (e.g. 0 0.05 0.1 0.2)")
    args = vars(p.parse_args(argv))
    taus = args.pop("sweep_tau") or [args["tau"]]
    print("| trials | images | rho | tau | p50 | p90 | p95 | p99 | throughput | width p95 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for tau in taus:
        c = coverage(**{**args, "tau": tau})
        s = c["settings"]
        thr = "–" if c["throughput"] is None else f"{100 * c['throughput']:.1f} %"
        print(f"| {s['trials']} | {s['images']} | {s['rho']:g} | {tau:g} | " +
              " | ".join(f"{100 * c[f'p{q}']:.1f} %" for q in REPORTED) + f" | {thr} | ±{c['width_pct']['p95'] / 2:.0f} % |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
