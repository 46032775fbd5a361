"""The ``latencies.csv`` file every run directory holds (one row per image)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

COLUMNS = ("image_id", "device_id", "producer_id", "seq", "sent_at", "result_at",
           "e2e_ms", "label", "prediction", "model")


class LatencyFileError(ValueError):
    """A latencies file that cannot be read; the message names the file and line."""


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


def write_latencies(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})


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
