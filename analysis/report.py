"""Tables: per-run percentiles (CSV + Markdown) and accuracy / confusion data."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from analysis.runs import Run
from analysis.stats import latency_summary
from common.labels import CIFAR10_CLASSES

PERCENTILE_COLUMNS = ("run", "count", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms",
                      "throughput_img_s")


def percentile_row(run: Run) -> dict:
    """One row of percentiles.csv (latency fields None when the run has no results)."""
    values = run.latencies_ms
    summary = latency_summary(values) or {}
    return {
        "run": run.name,
        "count": len(values),
        "p50_ms": summary.get("p50"),
        "p90_ms": summary.get("p90"),
        "p95_ms": summary.get("p95"),
        "p99_ms": summary.get("p99"),
        "max_ms": summary.get("max"),
        "throughput_img_s": run.throughput(),
    }


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
        return repr(round(value, 3 if column == "throughput_img_s" else 6))
    return str(value)


def write_percentiles_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PERCENTILE_COLUMNS)
        for row in rows:
            writer.writerow([_csv_value(c, row[c]) for c in PERCENTILE_COLUMNS])


def markdown_table(rows: list[dict]) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(PERCENTILE_COLUMNS) + " |\n")
    out.write("|" + "|".join(["---"] + ["---:"] * (len(PERCENTILE_COLUMNS) - 1)) + "|\n")
    for row in rows:
        cells = [str(row["run"]).replace("|", "\\|"), str(row["count"])]
        cells += [_fmt(row[c], 1) if row[c] is not None else "–" for c in PERCENTILE_COLUMNS[2:]]
        out.write("| " + " | ".join(cells) + " |\n")
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


def labelled_pairs(run: Run) -> list[tuple[str, str | None]]:
    return [(r.label, r.prediction) for r in run.rows if r.label]


def run_accuracy(run: Run) -> dict | None:
    pairs = labelled_pairs(run)
    if not pairs:
        return None
    out = {"model": run.model, "meaningful": not run.untrained}
    if run.untrained:
        out["note"] = "untrained model: predictions are arbitrary, accuracy is NOT meaningful"
    out.update(accuracy_of(pairs))
    return out
