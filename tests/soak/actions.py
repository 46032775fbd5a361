"""What the soak does to the running stack: kill one component (the fault suite's own
kills, tests/faults/scenarios.py), roll the service (a handover) and the consumers onto
another checkout one at a time, and send the bad inputs the dead-letter topic must hold."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import psutil

from stack.control import no_restart, run_from
from stack.handover import handover
from common.schema import dumps
from tests.faults.scenarios import HANG_GUARD_S, http_ready, kill_component, kill_gunicorn_worker, wait_for
from tests.hostile import b64, valid_message
from tests.soak.schedule import TARGETS

STORE_COMPONENT = {"mongodb": "mongo", "postgres": "postgres", "couchdb": "couchdb"}
BAD_EVERY_S = 15.0  # one bad input this often


def component_of(target: str, store: str) -> str | None:
    """The stack component a kill target names (None: not a stack component)."""
    return {"store": STORE_COMPONENT[store], "broker": "kafka", "gunicorn-worker": "inference"}.get(
        target, None if target == "producer" else target)


def kill_list(stack, store: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The targets this stack allows, and why each left out is (the supervisor does not
    restart a component whose death would lose data: components.json's no_restart)."""
    reasons = no_restart(stack.dir)
    skipped = {}
    for target in TARGETS:
        name = component_of(target, store)
        if name is not None and reasons.get(name):
            skipped[target] = f"{name} is not restarted by the supervisor: {reasons[name]}"
        elif name is not None and name not in stack.pids():
            skipped[target] = f"{name} is not a component of this stack (an external server?)"
    return tuple(t for t in TARGETS if t not in skipped), skipped


def kill(target: str, stack, producers, store: str, rng: random.Random) -> dict:
    """Kill ``target``; returns when the supervisor (or the soak, for a producer) has
    started its replacement: ``{"t": unix time of the kill, ...notes}``."""
    if target == "producer":
        return {**producers.kill_one(rng), "ready_after_s": 0.0}
    note: dict = {}
    name = component_of(target, store)
    inject = kill_gunicorn_worker if target == "gunicorn-worker" else kill_component(name)
    t, _ = inject(stack, note)
    if target != "gunicorn-worker":  # the master forked its replacement: the other worker served meanwhile
        wait_for(lambda: ready(stack, name), HANG_GUARD_S, f"{name} ready again")
    return {"t": t, "ready_after_s": round(time.time() - t, 2), **note}


def ready(stack, name: str) -> bool:
    """``name`` serves again: the service answers /readyz, a consumer joined its group, a
    server answers its clients."""
    if name == "inference":
        return http_ready(stack.env["INFERENCE_URL"])
    if name.endswith("consumer") or name.startswith("inference-consumer"):
        return stack.joined(name)
    if name == "kafka":
        from common.kafka_io import ensure_topics

        try:
            ensure_topics(stack.kafka(), timeout_s=2)
            return True
        except Exception:  # noqa: BLE001 - not back yet
            return False
    try:
        store = stack.store()
        try:
            store.ping()
        finally:
            store.close()
        return True
    except Exception:  # noqa: BLE001 - not back yet
        return False


def restart_from(stack, name: str, checkout: Path | None) -> dict:
    """Run ``name`` from ``checkout`` from now on; returns once the new one serves.  The
    service is handed over (a new one beside the old one, which stops once the new one is
    ready: stack/handover.py); a consumer is stopped cleanly (SIGTERM) and started again by
    the supervisor, and serves once it joined its group."""
    run_from(stack.dir, name, checkout)
    old = stack.pid(name)
    t0 = time.time()
    if name == "inference":
        result = handover(stack.dir, name, HANG_GUARD_S)
        if not result["ok"]:
            raise RuntimeError(f"handover of the service failed: {result['reason']}")
    else:
        stack.send(name, signal.SIGTERM)
        wait_for(lambda: stack.restarted(name, old), HANG_GUARD_S, f"{name} restarted")
        wait_for(lambda: stack.joined(name), HANG_GUARD_S, f"{name} joined its group")
    pid = stack.pid(name)
    try:
        cwd = psutil.Process(pid).cwd()
    except psutil.Error:
        cwd = None
    return {"component": name, "t": t0, "ready_after_s": round(time.time() - t0, 2), "pid": pid,
            "runs_from": cwd, "from_checkout": cwd is not None and Path(cwd) == Path(checkout or "").resolve()
            if checkout else None}


def rolling_upgrade(stack, checkout: Path) -> dict:
    """The service, then each consumer, restarted from ``checkout`` one at a time while
    the producers keep sending."""
    names = ["inference", *sorted(n for n in stack.pids() if n.startswith("inference-consumer")), "db-consumer"]
    t0 = time.time()
    steps = [restart_from(stack, name, checkout) for name in names]
    return {"t": t0, "checkout": str(checkout), "steps": steps, "took_s": round(time.time() - t0, 2),
            "ok": all(s["from_checkout"] for s in steps)}


def bad_input(n: int, tag: str) -> bytes:
    """The ``n``-th bad image message: in turn not JSON, an image that is no image, an
    unknown schema (each dead-lettered by the inference consumer, whatever the store)."""
    msg = valid_message(tag, n)
    return [b"\x00not json " + str(n).encode(), dumps({**msg, "image": b64(b"not an image %d" % n)}),
            dumps({**msg, "schema": 99})][n % 3]


class BadInputs(threading.Thread):
    """One bad image message every ``BAD_EVERY_S``, keyed ``soak-bad-<n>``: the DLQ must
    hold exactly these."""

    def __init__(self, settings, seed: int):
        super().__init__(name="soak-bad-inputs", daemon=True)
        self.settings = settings
        self.tag = f"soak-bad-{seed}"
        self.attempted: list[str] = []
        self.acknowledged: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        from common.kafka_io import make_producer

        producer = None
        n = 0
        while not self.stop_event.wait(BAD_EVERY_S):
            value = bad_input(n, self.tag)
            key = f"soak-bad-{n}"
            n += 1
            try:
                producer = producer or make_producer(self.settings)
                self.attempted.append(key)
                producer.send(self.settings.images_topic, key=key.encode(), value=value).get(timeout=30)
                self.acknowledged.append(key)
            except Exception:  # noqa: BLE001 - the broker killed: this one may or may not be there
                if producer is not None:
                    producer.close(timeout=1)
                producer = None
        if producer is not None:
            producer.close(timeout=5)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)
