"""What summary.json says about a run (docs/ARCHITECTURE.md, "Run directory"), and closing
a run with it: ``close_run`` waits until MongoDB holds every image, joins ``stored_at`` and
writes summary.json (``common.rundir.RunDir.close``), so a run directory has the same
files wherever it was made (``make demo``, the experiment, the fault suite).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from analysis.report import accuracy_of, weights_of
from analysis.stats import latency_summary
from common.rundir import LatencyRow, RunDir
from common.wire import IMAGE, PREDICTION


def result_rate(results: list[LatencyRow]) -> float | None:
    """(n - 1) / (last result_at - first result_at): images per second delivered."""
    times = sorted(r.result_at for r in results)
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None


def summarize(rows: list[LatencyRow], docs: dict[str, dict] | None, *,
              producer_docs: int | None = None, extra: dict | None = None) -> dict:
    """summary.json's object: counts, model, accuracy, rates and e2e percentiles of ``rows``;
    with ``docs`` (image id -> MongoDB document) what was stored, and then with
    ``producer_docs`` (documents of the run's producers) the duplicates; ``extra`` last."""
    e2e = [r.e2e_ms for r in rows if r.e2e_ms is not None]
    models = sorted({r.model for r in rows if r.model})
    model = models[0] if len(models) == 1 else (",".join(models) or None)
    labelled = [(r.label, r.prediction) for r in rows if r.label]
    results = [r for r in rows if r.result_at is not None]
    span = (max(r.result_at for r in results) - min(r.sent_at for r in rows)) if results else 0
    summary = {
        "sent": len(rows),
        "results": len(results),
        "stored": None, "stored_with_prediction": None, "lost": None,
        "duplicate_documents": None,
        "model": model,
        "untrained_model": bool(model and "untrained" in model),
        # pretrained | trained here | random: what the accuracy below is worth, named with it.
        "weights": weights_of(model),
        # The one accuracy rule (analysis.report.accuracy_of): over every labelled
        # image sent, a missing prediction counting as wrong.
        "accuracy": accuracy_of(labelled)["overall_accuracy"] if labelled else None,
        "throughput_img_s": len(results) / span if span > 0 else None,
        # The rate results came back at, first to last: the offered rate while the pipeline
        # keeps up, its capacity when it does not (the knee's measure; throughput_img_s
        # above also counts one end-to-end latency, which flatters nothing but short runs).
        "result_rate_img_s": result_rate(results),
        "e2e_ms": latency_summary(e2e),
    }
    if docs is not None:
        complete = sum(1 for d in docs.values() if d.get(PREDICTION) and d.get(IMAGE))
        summary.update(stored=sum(1 for d in docs.values() if d.get(IMAGE)),
                       stored_with_prediction=complete, lost=len(rows) - complete)
        if producer_docs is not None:
            summary["duplicate_documents"] = max(0, producer_docs - len(rows))
    summary.update(extra or {})
    return summary


# Counts of a pooled configuration: each the sum of its trials' (None when a trial has none).
POOLED_COUNTS = ("sent", "results", "stored", "stored_with_prediction", "lost", "duplicate_documents")
# Rates: one per trial, so the pool says their mean (a rate over the pooled span would count
# the settle between trials as time the pipeline had to deliver in).
POOLED_RATES = ("throughput_img_s", "result_rate_img_s")


def pool(trials: list[dict], rows: list[LatencyRow]) -> dict:
    """summary.json of a configuration's pooled view (common.trials): ``trials`` are the
    trials' summaries, ``rows`` the pooled latencies.csv's.  Counts are summed, rates are the
    mean of the trials' (each trial's in ``per_trial``), model, accuracy and percentiles are
    those of the pooled rows, and the settings are the trials' (the first one's keys)."""
    pooled = summarize(rows, None)
    for key in POOLED_COUNTS:
        values = [t.get(key) for t in trials]
        pooled[key] = None if any(v is None for v in values) else sum(values)
    for key in POOLED_RATES:
        values = [t.get(key) for t in trials]
        pooled[key] = None if any(v is None for v in values) else sum(values) / len(values)
    computed = set(pooled) | set(POOLED_COUNTS) | set(POOLED_RATES)
    pooled.update({k: v for k, v in trials[0].items() if k not in computed})
    pooled["trials"] = len(trials)
    pooled["per_trial"] = {key: [t.get(key) for t in trials] for key in POOLED_RATES + ("sent", "lost")}
    return pooled


def close_run(run_dir: Path | RunDir, store, *, timeout_s: float = 60.0, extra: dict | None = None,
              progress=None) -> dict:
    """Wait for MongoDB, write summary.json (``extra`` added to it) and stored_at into
    stages.csv; return the summary.  ``store`` (a common.store.StoreReader) None: no store, its fields None."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    return run.close(store, partial(summarize, extra=extra), timeout_s=timeout_s, progress=progress)


def format_table(summary: dict) -> str:
    e2e = summary.get("e2e_ms") or {}
    acc = summary.get("accuracy")
    rows = [
        ("images sent", summary["sent"]),
        ("results received", summary["results"]),
        (f"stored in {summary.get('store') or 'MongoDB'}", summary["stored"]),  # runs before STORE: MongoDB
        ("stored with prediction", summary["stored_with_prediction"]),
        ("lost", summary["lost"]),
        ("model", summary["model"] + ("  (UNTRAINED: labels are not meaningful)"
                                      if summary.get("untrained_model") else "")
         if summary["model"] else None),
        ("accuracy", f"{acc:.1%} ({summary['model']}, weights {summary.get('weights') or weights_of(summary['model'])})"
         if acc is not None else "n/a (no labels)"),
        ("throughput", f"{summary['throughput_img_s']:.1f} images/s"
         if summary.get("throughput_img_s") else None),
    ]
    for key in ("p50", "p90", "p95", "p99", "max"):
        if key in e2e:
            rows.append((f"end-to-end {key}", f"{e2e[key]:.1f} ms"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {'-' if v is None else v}" for k, v in rows)
