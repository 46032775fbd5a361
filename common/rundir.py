"""The run-directory format, owned here and nowhere else.

A run directory is what one measured run leaves behind, wherever it was made (the
demo, the experiment, the benchmark, the fault suite, a producer VM)::

    <run>/latencies.csv         one row per image sent (COLUMNS); required
    <run>/stages.csv            one row per image: the pipeline's timestamps (STAGE_COLUMNS)
    <run>/summary.json          written when the run is closed against MongoDB
    <run>/producers/<id>/       per-producer files, merged into the two CSVs above

The producer writes the CSVs, the orchestration merges them (``merge_csv``) and joins
MongoDB's ``stored_at`` in (``add_stored_at``), and the analysis reads them
(``read_latencies``, ``read_stages``).  Timestamps are unix seconds (floats).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("image_id", "device_id", "producer_id", "seq", "sent_at", "result_at",
           "e2e_ms", "label", "prediction", "model")
STAGE_COLUMNS = ("image_id", "sent_at", "received_at", "inferred_at", "published_at",
                 "result_at", "stored_at")
# Written by the analysis of a MongoDB pseudo-run, read like the others.
OPTIONAL_STAGE_COLUMNS = ("prediction_stored_at",)


class RunFileError(ValueError):
    """A run file that cannot be read; the message names the file and line."""


LatencyFileError = RunFileError  # the name the analysis reports it under


@dataclass(frozen=True)
class LatencyRow:
    image_id: str
    device_id: str
    producer_id: str
    seq: int
    sent_at: float
    result_at: float | None
    e2e_ms: float | None
    label: str | None
    prediction: str | None
    model: str | None


def _opt(value: str) -> str | None:
    return value if value != "" else None


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """``columns`` of each row (None and missing keys as empty cells; other keys ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def write_latencies(path: Path, rows: list[dict]) -> None:
    _write_csv(path, COLUMNS, rows)


def read_latencies(path: Path) -> list[LatencyRow]:
    """Read and validate a latencies file; malformed rows raise with file and line."""
    path = Path(path)
    if not path.is_file():
        raise LatencyFileError(f"{path}: no such file")
    rows: list[LatencyRow] = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise LatencyFileError(f"{path}:1: empty file (expected header {','.join(COLUMNS)})")
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise LatencyFileError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        index = {name: header.index(name) for name in COLUMNS}
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise LatencyFileError(
                    f"{path}:{line_no}: expected {len(header)} fields, found {len(fields)}")
            get = {name: fields[i] for name, i in index.items()}
            try:
                sent_at = float(get["sent_at"])
                result_at = float(get["result_at"]) if get["result_at"] else None
                e2e_ms = float(get["e2e_ms"]) if get["e2e_ms"] else None
                seq = int(get["seq"])
            except ValueError as exc:
                raise LatencyFileError(f"{path}:{line_no}: {exc}") from None
            if not math.isfinite(sent_at) or (e2e_ms is not None and
                                              (not math.isfinite(e2e_ms) or e2e_ms < 0)):
                raise LatencyFileError(f"{path}:{line_no}: timestamps must be finite, e2e_ms >= 0")
            if not get["image_id"]:
                raise LatencyFileError(f"{path}:{line_no}: empty image_id")
            rows.append(LatencyRow(get["image_id"], get["device_id"], get["producer_id"], seq,
                                   sent_at, result_at, e2e_ms, _opt(get["label"]),
                                   _opt(get["prediction"]), _opt(get["model"])))
    return rows


def write_stages(path: Path, rows: list[dict]) -> None:
    _write_csv(path, STAGE_COLUMNS, rows)


def _float_or_none(text: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise RunFileError(f"{where}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise RunFileError(f"{where}: not a finite number: {text!r}")
    return value


def read_stages(path: Path) -> dict[str, dict[str, float]]:
    """stages.csv -> image id -> {column: unix seconds} (empty cells left out); {} if absent."""
    if not path.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return {}
        if "image_id" not in header:
            raise RunFileError(f"{path}:1: header lacks column image_id")
        known = [c for c in header if c != "image_id" and (c in STAGE_COLUMNS or c in OPTIONAL_STAGE_COLUMNS)]
        for line_no, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise RunFileError(f"{path}:{line_no}: expected {len(header)} fields, found {len(fields)}")
            record = dict(zip(header, fields))
            times = {}
            for col in known:
                value = _float_or_none(record[col], f"{path}:{line_no}: column {col}")
                if value is not None:
                    times[col] = value
            out[record["image_id"]] = times
    return out


def merge_csv(parts: list[Path], out: Path) -> None:
    """Concatenate per-producer CSV files of one kind (same header) into one."""
    header_written = False
    with open(out, "w", newline="") as dst:
        for part in parts:
            if not part.exists():
                continue
            with open(part, newline="") as src:
                lines = src.readlines()
            if not lines:
                continue
            if not header_written:
                dst.write(lines[0])
                header_written = True
            dst.writelines(lines[1:])


def add_stored_at(run_dir: Path, docs: dict[str, dict]) -> None:
    """Fill stages.csv's stored_at column from MongoDB documents (image id -> document)."""
    path = run_dir / "stages.csv"
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    for row in rows:
        doc = docs.get(row["image_id"])
        if doc and doc.get("stored_at"):
            row["stored_at"] = doc["stored_at"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
