"""The soak's plan from its seed: which component each kill hits, and when.

The kills are a seeded shuffle of the kill list, repeated (every component is hit once
per round, in a random order), so that a short soak still hits each one and the same
seed, duration and kill list replay the same schedule.  The slot nearest the middle is
the rolling upgrade instead of a kill.
"""

from __future__ import annotations

import random
import re

# What the soak kills (one per event): the two consumers, one Gunicorn worker, the whole
# inference service, the store's server, the broker (only where the supervisor restarts
# it), one of the producers (it restarts with new images).
TARGETS = ("inference-consumer", "db-consumer", "gunicorn-worker", "inference", "store", "broker", "producer")
UPGRADE = "rolling-upgrade"


def parse_duration(text: str) -> float:
    """Seconds from ``30m``, ``90s``, ``1h``, ``2m30s`` or a bare number of seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"not a duration: {text!r} (30m, 90s, 1h, 2m30s)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def plan(seed: int, duration_s: float, every_s: float, targets: tuple[str, ...] = TARGETS) -> list[dict]:
    """The events: ``{"at_s", "what"}`` at every ``every_s`` from the start while one more
    interval fits before the end (each kill gets at least one interval to recover in)."""
    if not targets:
        raise ValueError("nothing to kill")
    rng = random.Random(seed)
    slots = []
    t = every_s
    while t <= duration_s - every_s + 1e-9:
        slots.append(round(t, 3))
        t += every_s
    if not slots:
        return []
    middle = min(range(len(slots)), key=lambda i: abs(slots[i] - duration_s / 2)) if len(slots) > 1 else None
    bag: list[str] = []
    events = []
    for i, at in enumerate(slots):
        if i == middle:
            events.append({"at_s": at, "what": UPGRADE})
            continue
        if not bag:
            bag = list(targets)
            rng.shuffle(bag)
        events.append({"at_s": at, "what": bag.pop()})
    return events
