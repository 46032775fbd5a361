"""Tables: per-run percentiles with their confidence intervals (CSV + Markdown) and
accuracy / confusion data."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from analysis.intervals import BAND, LEVEL, Interval, percentile_intervals, throughput_interval
from analysis.runs import Run
from analysis.stats import REPORTED
from common.labels import CIFAR10_CLASSES

PERCENTILE_COLUMNS = (("run", "trials", "count")
                      + tuple(c for p in REPORTED for c in (f"p{p}_ms", f"p{p}_ci_low_ms", f"p{p}_ci_high_ms"))
                      + ("max_ms", "throughput_img_s", "throughput_ci_low_img_s", "throughput_ci_high_img_s"))
# What the intervals are, under every table that shows them (analysis/intervals.py; the
# coverage figures are analysis.coverage's, checked by tests/unit/test_intervals.py).
P99_COVERAGE = 0.86
INTERVAL_NOTE = (f"[low, high]: {100 * LEVEL:.0f} % confidence intervals; percentiles by resampling trials, then blocks of "
                 "consecutive images within each (analysis/intervals.py), throughput by Student's t over the "
                 f"trials (none with one trial). In simulation with 3 trials they cover p50, p90 and p95 90-99 % "
                 f"of the time, p99 only about {100 * P99_COVERAGE:.0f} %: read p99's as a rough range. With one trial "
                 "an interval leaves out the spread between trials.")


def intervals_of(run: Run) -> dict:
    """``percentiles``: reported percentile -> Interval; ``band``: every percentile of the CDF
    band -> Interval (the same resampling, so the band at p95 is the table's p95);
    ``throughput``: Interval or None."""
    trials = [t for t in run.trials() if t]
    band = percentile_intervals(trials, BAND) if trials else {}
    return {"percentiles": {p: band[float(p)] for p in REPORTED} if band else {}, "band": band,
            "throughput": throughput_interval(run.trial_throughputs or [run.throughput()])}


def percentile_row(run: Run, found: dict | None = None) -> dict:
    """One row of percentiles.csv (latency fields None when the run has no results); ``found``:
    ``intervals_of(run)``, computed when not given."""
    found = found if found is not None else intervals_of(run)
    values = run.latencies_ms
    row = {"run": run.name, "trials": max(1, len(run.trial_rows)), "count": len(values)}
    for p in REPORTED:
        iv = found["percentiles"].get(p)
        row.update({f"p{p}_ms": iv and iv.estimate, f"p{p}_ci_low_ms": iv and iv.low,
                    f"p{p}_ci_high_ms": iv and iv.high})
    row["max_ms"] = max(values) if values else None
    thr: Interval | None = found["throughput"]
    row.update(throughput_img_s=run.throughput(), throughput_ci_low_img_s=thr and thr.low,
               throughput_ci_high_img_s=thr and thr.high)
    return row


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _csv_value(column: str, value) -> str:
    """Latencies as measured (to the microsecond of a ms), throughput to 3 decimals."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(round(value, 3 if column.startswith("throughput") else 6))
    return str(value)


def write_percentiles_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PERCENTILE_COLUMNS)
        for row in rows:
            writer.writerow([_csv_value(c, row[c]) for c in PERCENTILE_COLUMNS])


def with_interval(value, low, high, digits: int = 1) -> str:
    """``147.4 [140.2, 155.0]``; the value alone without an interval; – without a value."""
    if value is None:
        return "–"
    text = _fmt(float(value), digits)
    return text if low is None else f"{text} [{_fmt(float(low), digits)}, {_fmt(float(high), digits)}]"


MARKDOWN_HEADER = ("run", "trials", "count") + tuple(f"p{p} ms" for p in REPORTED) + ("max ms", "images/s")


def markdown_table(rows: list[dict], note: bool = True) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(MARKDOWN_HEADER) + " |\n")
    out.write("|" + "|".join(["---"] + ["---:"] * (len(MARKDOWN_HEADER) - 1)) + "|\n")
    for row in rows:
        cells = [str(row["run"]).replace("|", "\\|"), str(row["trials"]), str(row["count"])]
        cells += [with_interval(row[f"p{p}_ms"], row[f"p{p}_ci_low_ms"], row[f"p{p}_ci_high_ms"]) for p in REPORTED]
        cells.append(with_interval(row["max_ms"], None, None))
        cells.append(with_interval(row["throughput_img_s"], row["throughput_ci_low_img_s"],
                                   row["throughput_ci_high_img_s"]))
        out.write("| " + " | ".join(cells) + " |\n")
    if note:
        out.write(f"\n{INTERVAL_NOTE}\n")
    return out.getvalue()


# ------------------------------------------------------------------ accuracy

def class_order(names) -> list[str]:
    """CIFAR-10 order when every class is a CIFAR-10 class, else sorted."""
    names = set(names)
    if names <= set(CIFAR10_CLASSES):
        return [c for c in CIFAR10_CLASSES if c in names] if len(names) < 10 else list(CIFAR10_CLASSES)
    return sorted(names)


def accuracy_of(pairs: list[tuple[str, str | None]]) -> dict:
    """Accuracy from (label, prediction) pairs; a missing prediction counts as wrong."""
    labels = [lab for lab, _ in pairs]
    classes = class_order(set(labels) | {p for _, p in pairs if p is not None})
    index = {c: i for i, c in enumerate(classes)}
    matrix = [[0] * len(classes) for _ in classes]
    no_prediction = 0
    for label, prediction in pairs:
        if prediction is None:
            no_prediction += 1
            continue
        matrix[index[label]][index[prediction]] += 1
    per_class = {}
    for c in classes:
        total = sum(1 for lab in labels if lab == c)
        if total:
            correct = matrix[index[c]][index[c]]
            per_class[c] = {"n": total, "correct": correct, "accuracy": correct / total}
    correct = sum(matrix[i][i] for i in range(len(classes)))
    return {
        "n": len(pairs),
        "correct": correct,
        "no_prediction": no_prediction,
        "overall_accuracy": correct / len(pairs) if pairs else None,
        "per_class": per_class,
        "classes": classes,
        "confusion": matrix,
        "confusion_axes": "rows = true label, columns = prediction",
    }


def weights_of(model: str | None) -> str | None:
    """Where a model id's weights come from, in the words every accuracy is shown with:
    ``pretrained`` (published weights: Keras' ImageNet ResNet50, chenyaofo's CIFAR ResNets),
    ``random`` (untrained: the labels mean nothing), ``trained here`` (a weights file,
    ``make train``; the id carries its hash).  Several ids (comma-joined): each, joined."""
    if not model:
        return None
    kinds = []
    for one in model.split(","):
        kind = ("random" if "untrained" in one else
                "pretrained" if "-pretrained-" in one or "-imagenet-" in one else "trained here")
        if kind not in kinds:
            kinds.append(kind)
    return ", ".join(kinds)


def labelled_pairs(run: Run) -> list[tuple[str, str | None]]:
    return [(r.label, r.prediction) for r in run.rows if r.label]


def accuracy_report(runs: list[Run]) -> tuple[dict | None, dict | None, str | None]:
    """accuracy.json's object over the labelled runs, the confusion matrix to draw and its
    title (None, None, None without labels)."""
    accuracy = {name: acc for name, acc in ((run.name, run_accuracy(run)) for run in runs) if acc}
    if not accuracy:
        return None, None, None
    labelled = [run for run in runs if run.name in accuracy]
    report = {"meaningful": all(acc["meaningful"] for acc in accuracy.values()), "runs": accuracy}
    if len(labelled) == 1:
        figure = dict(accuracy[labelled[0].name])
        title = f"Confusion matrix — {labelled[0].name}"
    else:
        figure = accuracy_of([p for run in labelled for p in labelled_pairs(run)])
        figure["model"] = ", ".join(sorted({run.model or "?" for run in labelled}))
        figure["weights"] = weights_of(",".join(sorted({run.model for run in labelled if run.model})))
        figure["meaningful"] = report["meaningful"]
        title = f"Confusion matrix — {len(labelled)} runs pooled"
        report["all_runs"] = {k: figure[k] for k in ("n", "correct", "overall_accuracy", "per_class")}
    if not report["meaningful"]:
        report["note"] = "model is untrained: predictions are arbitrary and the accuracy is NOT meaningful"
    return report, figure, title


def run_accuracy(run: Run) -> dict | None:
    pairs = labelled_pairs(run)
    if not pairs:
        return None
    out = {"model": run.model, "weights": weights_of(run.model), "meaningful": not run.untrained}
    if run.untrained:
        out["note"] = "untrained model: predictions are arbitrary, accuracy is NOT meaningful"
    out.update(accuracy_of(pairs))
    return out
