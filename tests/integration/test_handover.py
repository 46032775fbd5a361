"""``python -m stack handover inference`` on the real stack: a second Gunicorn master on
the same port, from another checkout, takes over before the first one stops; a client
sending predictions meanwhile never finds the service gone (stack/handover.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from analysis.summary import close_run
from common.settings import InferenceClientSettings
from consumers.predict_client import InferenceClient, ServiceUnavailable
from stack.component import pid_alive
from stack.control import run_from
from tests.integration.test_pipeline import run_producer, store
from tests.soak.builds import copy_checkout
from tests.support import HANG_GUARD_S, ROOT, eventually

pytestmark = pytest.mark.integration


def stack_cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=2 * HANG_GUARD_S)


class Client(threading.Thread):
    """Sends a batch of two images to /v1/predict as the inference consumer does (its own
    client), again and again: each try's time and outcome ("ok" or the failure's cause).
    ``fresh``: a new connection for every try (a consumer keeps its own; a new one, or one
    after an error, connects again, and the kernel picks which service gets it)."""

    def __init__(self, url: str, fresh: bool):
        super().__init__(daemon=True)
        self.fresh = fresh
        self.client = InferenceClient(InferenceClientSettings(inference_url=url, inference_timeout_s=30))
        self.instances = [{"image_id": f"handover-{i}", "image": png} for i, png in enumerate(two_images())]
        self.tries: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.predict(self.instances)
                outcome = "ok"
            except ServiceUnavailable as exc:
                outcome = f"{exc.cause} {exc.status or ''}".strip()
                if exc.cause == "connection":  # nobody listening, or a kept connection closed
                    outcome += " refused" if "refused" in exc.detail.lower() else " closed"
            self.tries.append((time.monotonic(), outcome))
            if self.fresh:
                self.client.session.close()
            self.stop.wait(0.05)

    def longest_gap_s(self) -> float:
        ok = [t for t, outcome in self.tries if outcome == "ok"]
        return max(b - a for a, b in zip(ok, ok[1:]))


def two_images() -> list[str]:
    import base64

    import numpy as np

    from common.schema import encode_png

    return [base64.b64encode(encode_png(np.full((32, 32, 3), v, dtype=np.uint8))).decode() for v in (40, 200)]


def test_the_service_is_handed_over_to_another_checkout_without_a_moment_down(local_stack, tmp_path):
    env, d = local_stack["env"], local_stack["dir"]
    old = int((d / "pids" / "inference.pid").read_text())
    upgrade = copy_checkout(tmp_path / "upgrade", "handover test")
    clients = [Client(env["INFERENCE_URL"], fresh) for fresh in (False, True)]
    for client in clients:
        client.start()
    try:
        eventually(lambda: all(any(o == "ok" for _, o in client.tries) for client in clients))
        out = stack_cli(env, "handover", "inference", "--from", str(upgrade))
        time.sleep(1.0)  # a few answers of the new one alone
    finally:
        for client in clients:
            client.stop.set()
            client.join(HANG_GUARD_S)
        try:
            assert out.returncode == 0, out.stdout + out.stderr
            result = json.loads((d / "handover" / "inference.json").read_text())
            new = int((d / "pids" / "inference.pid").read_text())
            new_cwd = psutil.Process(new).cwd()
        finally:
            run_from(d, "inference", None)  # later tests: the service of this tree again
            back = stack_cli(env, "handover", "inference")
    assert back.returncode == 0, back.stdout + back.stderr

    assert result["ok"] and result["old_pid"] == old and result["pid"] == new != old, result
    assert Path(result["runs_from"]) == upgrade.resolve() == Path(new_cwd), (result, new_cwd)
    assert "serves from" in out.stdout
    # the old master stopped
    assert eventually(lambda: not pid_alive(old)), f"the old service (pid {old}) still runs"
    for client in clients:
        outcomes = [o for _, o in client.tries]
        seen = {o: outcomes.count(o) for o in set(outcomes)}
        # While the new one loads it answers 503 (the client then connects again, and the
        # kernel may give the connection to either).  No try found nobody listening; a kept
        # connection may be closed by the old one as it stops (HTTP/1.1's keep-alive race:
        # the consumer tries again, as after any connection error).
        assert set(seen) <= {"ok", "server error 503", "connection closed"}, (client.fresh, seen)
        assert seen["ok"] > 10, (client.fresh, seen)
        # Answers kept coming while the new one loaded: the longest wait between two is
        # shorter than the time the new service took to be ready (a restart is down so long).
        assert client.longest_gap_s() < result["took_s"], (client.fresh, client.longest_gap_s(), result, seen)


def test_a_handover_whose_new_instance_fails_leaves_the_old_one_serving(local_stack, tmp_path):
    env, d = local_stack["env"], local_stack["dir"]
    old = int((d / "pids" / "inference.pid").read_text())
    broken = copy_checkout(tmp_path / "broken", "a service that cannot start")
    (broken / "inference" / "gunicorn.conf.py").write_text("import sys\nsys.exit('this build cannot start')\n")
    try:
        out = stack_cli(env, "handover", "inference", "--from", str(broken))
    finally:
        run_from(d, "inference", None)
    assert out.returncode == 1 and "exited with" in out.stderr, out.stdout + out.stderr
    assert int((d / "pids" / "inference.pid").read_text()) == old and pid_alive(old)
    assert InferenceClient(InferenceClientSettings(inference_url=env["INFERENCE_URL"])).predict(
        [{"image_id": "after-failed-handover", "image": two_images()[0]}])["predictions"]


def test_only_a_component_that_can_run_twice_is_handed_over(local_stack, tmp_path):
    env, d = local_stack["env"], local_stack["dir"]
    old = int((d / "pids" / "db-consumer.pid").read_text())
    out = stack_cli(env, "handover", "db-consumer")
    assert out.returncode == 1 and "cannot be handed over" in out.stderr, out.stdout + out.stderr
    assert int((d / "pids" / "db-consumer.pid").read_text()) == old
    # and the pipeline after the handovers: every image stored once with its prediction
    proc = run_producer(env, tmp_path, "--count", "20", "--rate", "40", "--producer-id", "it-handover")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert close_run(tmp_path, store(env), timeout_s=HANG_GUARD_S)["lost"] == 0
