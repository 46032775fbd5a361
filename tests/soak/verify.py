"""The soak's pass conditions, each read from the source of truth: the store itself for
every image a producer counts as acknowledged (tests/faults/stores.py Rows, the store's
own client), the dead-letter topic for what it holds, the lag samples for each kill's
recovery, the detector for every process's memory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from tests.faults.stores import Rows

# A kill's lag is "back to zero" once each group holds no more records than a healthy
# pipeline keeps in flight.  By Little's law that is the offered rate times how long a
# record waits for its group's commit, counted in the group's own records (the DB writer
# reads two per image, the image and its result).  The inference consumer commits an image
# after its batch's inference call; the DB writer commits it only after its result came
# back and both were written, so the image's whole way through inference is in its lag.
# Both waits lie within the image's end-to-end latency, bounded here by IN_FLIGHT_S, the
# producers' p99 of a healthy pipeline at the soak's load on the S3 broker (runs 10-12, the
# 10 s bins after the last kill: median 5.2-6.4 s); plus the clients' fetch wait, what the
# broker may hold a fetch back before it answers (tansu: 40 ms in memory, 1 s on its S3
# storage, stack/broker.py).  With 1 s instead of 5, the DB writer's lag of a healthy
# pipeline left the band in 78 of 247 samples of run 12's tail (docs/RELIABILITY.md).
IN_FLIGHT_S = 5.0
# The bound on each kill's recovery: at half the capacity (the lower of the ramp's and the
# catch-up probe's, tests/soak/catchup.py) the backlog that piles up while a component is
# down (T: from the kill until it serves again) drains at least as fast as it grew, so the lag is back within 2 T, plus LAG_SLACK_S for what follows a restart (the
# group's rebalance after the session timeout, a batch in flight redone, the supervisor's
# backoff).  docs/RELIABILITY.md, "Soak".
LAG_SLACK_S = 60.0


def lag_bound(event: dict) -> float:
    return 2 * float(event.get("ready_after_s", event.get("took_s", 0.0)) or 0.0) + LAG_SLACK_S


def acknowledged(producer_dir: Path) -> tuple[set[str], set[str]] | None:
    """(attempted, acknowledged) image ids of a producer that wrote its run files (one
    SIGKILLed did not: None)."""
    summary, rows = producer_dir / "producer.json", producer_dir / "latencies.csv"
    if not summary.is_file() or not rows.is_file():
        return None
    with open(rows, newline="") as fh:
        attempted = {r["image_id"] for r in csv.DictReader(fh)}
    failed = set(json.loads(summary.read_text()).get("failed_images", {}))
    return attempted, attempted - failed


def check_producer(rows: Rows, entry: dict, producer_dir: Path, progress: dict) -> dict:
    """One producer's images in the store: each acknowledged one stored once, complete.

    A producer that ran to its end wrote the ids the broker acknowledged; one SIGKILLed
    wrote none, only its progress (the count acknowledged so far): for it every stored
    image must be complete and unique, and at least that many stored."""
    docs = rows.documents(entry["producer_id"])
    ids = [d["image_id"] for d in docs]
    complete = {d["image_id"] for d in docs if d.get("image") and d.get("prediction")
                and d.get("confidence") is not None and d.get("model")}
    row = {"producer_id": entry["producer_id"], "killed": entry["killed_at"] is not None,
           "exit_code": entry["proc"].poll(), "stored": len(set(ids)), "duplicated": len(ids) - len(set(ids)),
           "half_written": len(set(ids) - complete)}
    known = acknowledged(producer_dir)
    if known is not None:
        attempted, acked = known
        row.update(attempted=len(attempted), acknowledged=len(acked), missing=len(acked - complete),
                   not_sent=len(set(ids) - attempted))
        row["ok"] = row["missing"] == row["duplicated"] == row["half_written"] == row["not_sent"] == 0
    else:
        acked = progress.get("sent") or 0
        row.update(acknowledged_at_least=acked, missing=max(0, acked - len(complete)))
        row["ok"] = row["missing"] == row["duplicated"] == row["half_written"] == 0
    return row


def check_dlq(settings, attempted: list[str], acked: list[str]) -> dict:
    """The dead-letter topic holds only the bad inputs the soak sent, and each one it sent
    (a duplicate is at-least-once delivery after a kill: counted, allowed)."""
    from consumers.dlq_entries import read_dlq

    entries = read_dlq(settings, idle_ms=5000)
    keys = [(e.dead.key or b"").decode(errors="replace") if e.dead else None for e in entries]
    unexpected = [k for k in keys if k not in set(attempted)]
    missing = sorted(set(acked) - set(keys))
    return {"dead_letters": len(entries), "bad_sent": len(acked), "bad_attempted": len(attempted),
            "unexpected": len(unexpected), "unexpected_keys": unexpected[:10], "missing": len(missing),
            "missing_keys": missing[:10], "duplicates": len(keys) - len(set(keys)),
            "ok": not unexpected and not missing}


def zero_band(rate: float, fetch_wait_s: float = 0.0, records_per_image: int = 1) -> int:
    return max(1, math.ceil(records_per_image * rate * (IN_FLIGHT_S + fetch_wait_s)))


def zero_bands(rate: float, fetch_wait_s: float, groups: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Each consumer group's band, in its records: ``groups`` maps a group to the topics
    it reads, each carrying one record per image."""
    return {group: zero_band(rate, fetch_wait_s, len(topics)) for group, topics in groups.items()}


def recovery(events: list[dict], lag: list[dict], band: int | dict[str, int], until: float = math.inf,
             last_window_s: float = math.inf) -> None:
    """For each event (with its ``t``), ``recovered_after_s``: from the kill to the sample
    that ends the last excursion of the lag (a group above ``band``, or unreadable: the
    broker away) before the next event; 0 when the lag never left the band.  ``lag_ok``:
    recovered, within the event's ``lag_bound``.  The last event's window ends at ``until``
    or after ``last_window_s`` (the kill interval), or its bound if that is longer: it is
    judged over as long as the others, not over the run's tail, where a healthy pipeline's
    lag still leaves the band for a sample now and then (up to 25 records at 5.3 img/s,
    docs/RELIABILITY.md)."""
    timed = [e for e in events if "t" in e]
    for i, ev in enumerate(timed):
        end = timed[i + 1]["t"] if i + 1 < len(timed) else \
            min(until, ev["t"] + max(last_window_s, lag_bound(ev)))
        window = [s for s in lag if ev["t"] <= s["t"] < end]
        out = [j for j, s in enumerate(window) if not in_band(s, band)]
        ev["lag_bound_s"] = round(lag_bound(ev), 1)
        ev["peak_lag"] = max((sum(v for k, v in s.items() if k != "t" and v is not None) for s in window), default=None)
        if not window:
            ev.update(recovered_after_s=None, lag_ok=False)
            continue
        if not out:
            back = ev["t"]
        elif out[-1] + 1 < len(window):
            back = window[out[-1] + 1]["t"]
        else:
            back = None  # still out of the band when the next event came (or the run ended)
        ev["recovered_after_s"] = None if back is None else round(back - ev["t"], 1)
        ev["lag_ok"] = back is not None and back - ev["t"] <= ev["lag_bound_s"]


def in_band(sample: dict, band: int | dict[str, int]) -> bool:
    """Every group's lag in the sample readable and within its band (``band``: one for
    all groups, or each group's)."""
    values = {k: v for k, v in sample.items() if k != "t"}
    limit = band if isinstance(band, dict) else dict.fromkeys(values, band)
    return bool(values) and all(v is not None and v <= limit[k] for k, v in values.items())
