"""Fault injection on the real local stack: crash or stop one part mid-stream, let it
come back, and prove that nothing was lost.

    python -m tests.faults.run                       # every scenario, table + faults.json
    python -m tests.faults.run --scenario mongo-restart --images 1000 --rate 40

The runner starts its own stack (temporary STACK_DIR, free ports, random 32x32
weights), and for each scenario runs one producer (``--images`` at ``--rate``
images/s) and injects the fault once ``--fault-at`` of the images are sent, so
hundreds of images are in flight (sent, no result yet) while it happens.  Then it
closes the run against MongoDB and checks:

* the producer got a result for every image it sent;
* ``summary.json`` says ``lost: 0`` and ``duplicate_documents: 0``;
* MongoDB holds exactly one document per image sent, each complete (image AND
  prediction): no duplicated and no half-written document.

Duplicated *result messages* are allowed (at-least-once) and counted.

Recovery is measured on one host's clock, on the deliveries of the stage the
fault hits: results as the producer receives them (inference-side faults), or the
rises of the run's count of documents with a prediction, polled from MongoDB every
0.25 s (storage-side faults).  ``max_stall_s`` is the longest gap between two
deliveries from the fault's start on; ``recovery_s`` is the time from the end of
the fault (component killed, service released, extra consumer gone) to the end of
that gap, i.e. until the stage delivers again (0 if it never stopped after the
fault ended, or if no gap reached 1 s: the normal cadence of batches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analysis.summary import close_run  # noqa: E402
from experiments.fleet import producer_log_tail, run_fleet  # noqa: E402
from stack.control import LocalStack  # noqa: E402
from stack.supervisor import child_pids  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-python-sample.tar.gz"
PY = sys.executable
# A hang guard, not a performance bound: only a part that never finishes reaches it.
HANG_GUARD_S = float(os.environ.get("HANG_GUARD_S", 600))


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


children = child_pids  # Gunicorn's workers


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, step: float = 0.2) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(step)
    return time.monotonic() - start


def http_ready(url: str) -> bool:
    import requests

    try:
        return requests.get(url + "/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# ------------------------------------------------------------------ the stack

class Stack(LocalStack):
    """The embedded local stack in a temporary directory, on free ports, with random
    32x32 weights (stack.control.LocalStack), plus what the scenarios need."""

    def __init__(self, directory: Path, extra_env: dict | None = None):
        env = {"MODEL_WEIGHTS": "random", "PREDICT_BATCH_WAIT_MS": "20", "LOG_LEVEL": "INFO",
               "GUNICORN_WORKERS": os.environ.get("FAULTS_GUNICORN_WORKERS", "2")}
        if not os.environ.get("DATASET_SOURCE"):
            if SAMPLE.is_file():
                env["DATASET_SOURCE"] = str(SAMPLE)
            else:  # a checkout without ../shared/data: an archive in the official layout
                from tests.support import make_cifar_archive

                directory.mkdir(parents=True, exist_ok=True)
                env["DATASET_SOURCE"] = str(make_cifar_archive(directory / "cifar-10-python.tar.gz"))
        super().__init__(directory, {**env, **(extra_env or {})}, timeout_s=300)

    def stack(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``python -m stack ARGS`` against this stack (the CLI a user would type)."""
        proc = subprocess.run([PY, "-m", "stack", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=HANG_GUARD_S)
        if check and proc.returncode != 0:
            raise RuntimeError(f"python -m stack {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
                               f"\n{self.logs()}")
        return proc

    def up(self) -> None:
        t0 = time.monotonic()
        self.start()
        say(f"stack up in {time.monotonic() - t0:.0f} s: {self.env['KAFKA_BOOTSTRAP_SERVERS']}, "
            f"{self.env['MONGO_URI']}, {self.env['INFERENCE_URL']}")

    def down(self) -> None:
        self.stop()

    def collection(self):
        from common.mongo_io import connect, images_collection
        from common.settings import MongoSettings

        mongo = MongoSettings(mongo_uri=self.env["MONGO_URI"], mongo_timeout_ms=3000)
        return images_collection(connect(mongo), mongo)

    def kafka(self):
        from common.settings import KafkaSettings

        return KafkaSettings(kafka_bootstrap_servers=self.env["KAFKA_BOOTSTRAP_SERVERS"])


# ------------------------------------------------------------------ faults

@dataclass
class Fault:
    name: str
    what: str
    stage: str  # "results" (inference side) or "storage" (MongoDB side)
    inject: Callable[["Stack", dict], tuple[float, float]]  # -> (start, end), unix seconds


def kill_component(name: str):
    def inject(stack: Stack, note: dict) -> tuple[float, float]:
        old = stack.pid(name)
        t = stack.send(name, signal.SIGKILL)  # = python -m stack kill NAME
        wait_for(lambda: stack.restarted(name, old), HANG_GUARD_S, f"{name} restarted")
        note["restarted_after_s"] = round(time.time() - t, 2)
        return t, t
    return inject


def kill_gunicorn_worker(stack: Stack, note: dict) -> tuple[float, float]:
    master = stack.pid("inference")
    workers = children(master)
    if not workers:
        raise RuntimeError(f"gunicorn master {master} has no worker")
    victim = workers[0]
    t = time.time()
    os.kill(victim, signal.SIGKILL)
    note.update(master=master, killed_worker=victim, workers_before=len(workers))
    wait_for(lambda: victim not in children(master) and len(children(master)) == len(workers),
             HANG_GUARD_S, "gunicorn replaced the worker")
    note["master_alive"] = Path(f"/proc/{master}").exists() and stack.pid("inference") == master
    return t, t


def inference_down_20s(stack: Stack, note: dict) -> tuple[float, float]:
    t0 = stack.send("inference", signal.SIGTERM, keep_down=True)  # = python -m stack pause inference
    time.sleep(20)
    t1 = time.time()
    stack.stack("resume", "inference")
    wait_for(lambda: http_ready(stack.env["INFERENCE_URL"]), HANG_GUARD_S, "inference service back")
    note["ready_after_resume_s"] = round(time.time() - t1, 2)
    return t0, t1


def rebalance(stack: Stack, note: dict) -> tuple[float, float]:
    marker = stack.dir / "state" / f"extra-consumer-{uuid.uuid4().hex[:6]}.joined"
    log = open(stack.dir / "logs" / "extra-inference-consumer.log", "ab")
    t0 = time.time()
    proc = subprocess.Popen([PY, "-m", "consumers.inference"], cwd=ROOT,
                            env={**stack.env, "READY_FILE": str(marker)},
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        note["joined_after_s"] = round(wait_for(marker.exists, HANG_GUARD_S, "second consumer joined"), 2)
        time.sleep(5)  # let it own partitions and work for a while
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: finish the batch, commit, leave the group
        proc.wait(60)
    t1 = time.time()
    note["extra_consumer_exit"] = proc.returncode
    return t0, t1


FAULTS = {f.name: f for f in [
    Fault("inference-consumer", "SIGKILL the inference consumer; the supervisor restarts it",
          "results", kill_component("inference-consumer")),
    Fault("db-consumer", "SIGKILL the DB consumer; the supervisor restarts it",
          "storage", kill_component("db-consumer")),
    Fault("gunicorn-worker", "SIGKILL one Gunicorn worker; the master forks a new one",
          "results", kill_gunicorn_worker),
    Fault("inference-down-20s", "stop the whole inference service for 20 s, then start it",
          "results", inference_down_20s),
    Fault("mongo-restart", "SIGKILL the MongoDB server; restarted on the same data file",
          "storage", kill_component("mongo")),
    Fault("rebalance", "a second inference consumer joins the group, works, then leaves",
          "results", rebalance),
]}


# ------------------------------------------------------------------ measuring

def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def count_result_messages(stack: Stack, producer_id: str, settle_s: float = 2.0) -> dict[str, int]:
    """Result messages per image id on the results topic for one producer (read from the
    start until nothing new arrives for ``settle_s``)."""
    from kafka import KafkaConsumer, TopicPartition

    from common.kafka_io import client_config

    s = stack.kafka()
    consumer = KafkaConsumer(**client_config(s), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(s.results_topic, p) for p in consumer.partitions_for_topic(s.results_topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        counts: dict[str, int] = {}
        quiet_since = time.monotonic()
        needle = producer_id.encode()
        while time.monotonic() - quiet_since < settle_s:
            polled = consumer.poll(timeout_ms=300, max_records=5000)
            if polled:
                quiet_since = time.monotonic()
            for batch in polled.values():
                for r in batch:
                    if needle in r.value:
                        msg = json.loads(r.value)
                        if msg.get("producer_id") == producer_id:
                            counts[msg["image_id"]] = counts.get(msg["image_id"], 0) + 1
        return counts
    finally:
        consumer.close()


def longest_stall(times: list[float], start: float) -> tuple[float, float | None]:
    """(length, end) of the longest gap between consecutive deliveries that ends after
    ``start``; a gap straddling ``start`` counts from the delivery before it."""
    ts = sorted(times)
    best, end = 0.0, None
    for a, b in zip(ts, ts[1:]):
        if b > start and b - a > best:
            best, end = b - a, b
    return best, end


def check_documents(collection, producer_id: str, sent_ids: set[str]) -> dict:
    docs = list(collection.find({"producer_id": producer_id},
                                {"_id": 1, "image": 1, "prediction": 1, "confidence": 1,
                                 "model": 1, "stored_at": 1, "prediction_stored_at": 1}))
    ids = [d["_id"] for d in docs]
    half = [d["_id"] for d in docs if not d.get("image") or not d.get("prediction")
            or d.get("confidence") is None or not d.get("model")]
    return {"documents": len(docs), "distinct_ids": len(set(ids)),
            "duplicated_documents": len(ids) - len(set(ids)) + len(set(ids) - sent_ids),
            "missing_documents": len(sent_ids - set(ids)), "half_written": len(half),
            "half_written_ids": half[:5],
            "stored_times": [d["prediction_stored_at"] for d in docs if d.get("prediction_stored_at")]}


# ------------------------------------------------------------------ running

class FaultSuite:
    def __init__(self, out: Path, *, images: int = 1000, rate: float = 40.0, fault_at: float = 0.3,
                 result_timeout_s: float = HANG_GUARD_S):
        self.out = out
        self.images, self.rate, self.fault_at = images, rate, fault_at
        self.result_timeout_s = result_timeout_s
        self.stack = Stack(out / "stack")
        self.results: list[dict] = []

    def __enter__(self) -> "FaultSuite":
        self.out.mkdir(parents=True, exist_ok=True)
        self.stack.up()
        return self

    def __exit__(self, *exc) -> None:
        self.stack.down()

    # ---------------------------------------------------------------- one run
    def _fleet(self, name: str, count: int, rate: float, env: dict | None = None):
        tag = f"f-{name}-{uuid.uuid4().hex[:6]}"
        run_dir = self.out / name
        producer_id = f"{tag}-p1"
        progress = run_dir / "producers" / producer_id / "progress.json"
        box: dict = {}

        def go():
            try:
                box["codes"] = run_fleet(run_dir, producers=1, count=count, rate=rate, devices=8,
                                         env={**self.stack.env, **(env or {})}, run_tag=tag,
                                         result_timeout_s=self.result_timeout_s)
            except BaseException as exc:  # noqa: BLE001 - reported by the caller
                box["error"] = exc

        def watch():  # images in flight (sent, no result yet), sampled twice a second
            box["lag"] = lag = []
            while thread.is_alive():
                p = self._progress(progress)
                lag.append((time.time(), p["sent"] - p["results"]))
                thread.join(0.5)

        def watch_mongo():  # documents of the run stored with a prediction, 4 times a second
            box["stored"] = samples = []
            col = self.stack.collection()
            while thread.is_alive():
                try:
                    n = col.count_documents({"producer_id": producer_id, "prediction": {"$exists": True}})
                except Exception:  # noqa: BLE001 - MongoDB down: that is the point
                    n = None
                samples.append((time.time(), n))
                thread.join(0.25)
            col.database.client.close()

        thread = threading.Thread(target=go, name=f"fleet-{name}", daemon=True)
        thread.start()
        threading.Thread(target=watch, name=f"watch-{name}", daemon=True).start()
        threading.Thread(target=watch_mongo, name=f"mongo-{name}", daemon=True).start()
        return run_dir, producer_id, progress, thread, box

    @staticmethod
    def _watch(thread: threading.Thread, box: dict) -> int:
        """Wait for the fleet; returns the peak number of images in flight."""
        thread.join()
        time.sleep(0.6)  # the watcher's last sample
        return max((n for _t, n in box.get("lag", [])), default=0)

    @staticmethod
    def _progress(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {"sent": 0, "results": 0}

    def _close(self, name: str, run_dir: Path, producer_id: str, box: dict, extra: dict) -> dict:
        if "error" in box:
            raise box["error"]
        col = self.stack.collection()
        summary = close_run(run_dir, col, timeout_s=HANG_GUARD_S, extra=extra)
        sent_ids = {r["image_id"] for r in read_csv(run_dir / "latencies.csv")}
        docs = check_documents(col, producer_id, sent_ids)
        col.database.client.close()
        results = count_result_messages(self.stack, producer_id)
        row = {
            "scenario": name,
            "images": summary["sent"],
            "results": summary["results"],
            "lost": summary["lost"],
            "duplicate_documents": summary["duplicate_documents"],
            "duplicated_documents_checked": docs["duplicated_documents"],
            "half_written_documents": docs["half_written"],
            "missing_documents": docs["missing_documents"],
            "result_messages": sum(results.values()),
            "duplicated_result_messages": sum(n - 1 for n in results.values()),
            "producer_exit_codes": box.get("codes"),
            "e2e_ms": summary["e2e_ms"],
            "throughput_img_s": summary["throughput_img_s"],
            "model": summary["model"],
        }
        row["ok"] = (row["lost"] == 0 and row["results"] == row["images"] == self.images_of(name)
                     and row["duplicate_documents"] == 0 and docs["duplicated_documents"] == 0
                     and docs["half_written"] == 0 and docs["missing_documents"] == 0
                     and box.get("codes") == [0])
        if not row["ok"]:
            row["half_written_ids"] = docs["half_written_ids"]
            row["producer_log"] = producer_log_tail(run_dir)[-3000:]
        row["_stored_times"] = docs["stored_times"]
        return row

    def images_of(self, name: str) -> int:
        return getattr(self, "_images", {}).get(name, self.images)

    def run(self, name: str) -> dict:
        if name == "slow-inference":
            return self.run_slow()
        if name == "overload":
            return self.run_overload()
        fault = FAULTS[name]
        say(f"{name}: {fault.what} ({self.images} images at {self.rate:g}/s, "
            f"fault after {self.fault_at:.0%})")
        run_dir, producer_id, progress, thread, box = self._fleet(name, self.images, self.rate)
        wait_for(lambda: self._progress(progress)["sent"] >= self.images * self.fault_at or "error" in box
                 or not thread.is_alive(), HANG_GUARD_S, "producer started")
        p = self._progress(progress)
        note: dict = {}
        t_start, t_end = fault.inject(self.stack, note)
        say(f"{name}: fault injected with {p['sent'] - p['results']} images in flight "
            f"({p['sent']} sent, {p['results']} results); {note}")
        peak = self._watch(thread, box)
        row = self._close(name, run_dir, producer_id, box, {"fault": name})
        stages = read_csv(run_dir / "stages.csv")
        if fault.stage == "results":  # results as the producer received them
            times = [float(s["result_at"]) for s in stages if s["result_at"]]
        else:
            # MongoDB as seen from outside: the times the run's count of documents with a
            # prediction went up.  (A document's own stored_at is stamped before a write
            # that may be retried, so it would flatter a MongoDB outage.)
            times, last = [], None
            for t, n in box.get("stored", []):
                if n is not None and last is not None and n > last:
                    times.append(t)
                if n is not None:
                    last = n
        stall, stall_end = longest_stall(times, t_start)
        row.update(
            stage=fault.stage, what=fault.what,
            in_flight_at_fault=p["sent"] - p["results"], sent_at_fault=p["sent"], peak_lag=peak,
            fault_window_s=round(t_end - t_start, 2),
            # A stall under 1 s is the normal cadence (batches): the stage never stopped.
            recovery_s=(round(max(0.0, stall_end - t_end), 2) if stall >= 1.0 else 0.0)
            if stall_end else None,
            max_stall_s=round(stall, 2),
            notes=note)
        row.pop("_stored_times")
        self.results.append(row)
        say(f"{name}: {'OK' if row['ok'] else 'FAILED'} lost {row['lost']}, results "
            f"{row['results']}/{row['images']}, duplicated documents {row['duplicate_documents']}, "
            f"half-written {row['half_written_documents']}, duplicated result messages "
            f"{row['duplicated_result_messages']}, recovery {row['recovery_s']} s, "
            f"max stall {row['max_stall_s']} s")
        return row

    # ---------------------------------------------------------------- slow / overload
    @contextlib.contextmanager
    def _throttled(self, tag: str, slowdown_s: float, consumer_env: dict):
        """A second inference service whose model sleeps ``slowdown_s`` per batch, and an
        inference consumer using it in place of the stack's (paused meanwhile).

        The sleep bounds the service's capacity from above by construction
        (``batch / slowdown_s`` images/s whatever the machine), so a producer offered a
        multiple of that is in overload on a fast machine and on a slow one alike."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        logs = self.stack.dir / "logs"
        glog = open(logs / f"{tag}-inference.log", "ab")
        gunicorn = subprocess.Popen(
            [PY, "-m", "gunicorn", "-c", "inference/gunicorn.conf.py", "inference:create_app()"],
            cwd=ROOT, env={**self.stack.env, "INFERENCE_BIND": f"127.0.0.1:{port}",
                           "GUNICORN_WORKERS": "1", "INFERENCE_SLOWDOWN_S": str(slowdown_s)},
            stdout=glog, stderr=glog, stdin=subprocess.DEVNULL, start_new_session=True)
        glog.close()
        consumer = None
        clog_path = logs / f"{tag}-consumer.log"
        try:
            wait_for(lambda: http_ready(url), HANG_GUARD_S, "throttled inference service ready")
            self.stack.stack("pause", "inference-consumer")
            old = self.stack.pid("inference-consumer")
            wait_for(lambda: old is None or not Path(f"/proc/{old}").exists(), HANG_GUARD_S,
                     "stack inference consumer stopped")
            marker = self.stack.dir / "state" / f"{tag}-consumer.joined"
            clog = open(clog_path, "ab")
            consumer = subprocess.Popen(
                [PY, "-m", "consumers.inference"], cwd=ROOT,
                env={**self.stack.env, "INFERENCE_URL": url, "READY_FILE": str(marker), **consumer_env},
                stdout=clog, stderr=clog, stdin=subprocess.DEVNULL)
            clog.close()
            wait_for(marker.exists, HANG_GUARD_S, f"{tag} consumer joined")
            yield clog_path
        finally:
            if consumer is not None:
                consumer.send_signal(signal.SIGTERM)
                try:
                    consumer.wait(60)
                except subprocess.TimeoutExpired:
                    consumer.kill()
            os.killpg(gunicorn.pid, signal.SIGTERM)
            try:
                gunicorn.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(gunicorn.pid, signal.SIGKILL)
            old = self.stack.pid("inference-consumer")
            self.stack.stack("resume", "inference-consumer")
            wait_for(lambda: self.stack.restarted("inference-consumer", old)
                     and self.stack.joined("inference-consumer"), HANG_GUARD_S,
                     "stack inference consumer back")

    def run_slow(self, slowdown_s: float = 7.0, max_poll_ms: int = 5000, count: int = 240,
                 rate: float = 20.0) -> dict:
        """One batch takes longer than max.poll.interval.ms: the consumer must keep its
        group membership (no rebalance loop, no re-processing storm) and drain the lag."""
        name = "slow-inference"
        self._images = {**getattr(self, "_images", {}), name: count}
        say(f"{name}: service sleeps {slowdown_s:g} s per batch, consumer "
            f"KAFKA_MAX_POLL_INTERVAL_MS={max_poll_ms}; {count} images at {rate:g}/s")
        with self._throttled(name, slowdown_s, {"KAFKA_MAX_POLL_INTERVAL_MS": str(max_poll_ms),
                                                "PREDICT_BATCH_IMAGES": "64", "INFERENCE_TIMEOUT_S": "60"}) as clog_path:
            run_dir, producer_id, progress, thread, box = self._fleet(name, count, rate)
            self._watch(thread, box)
            lag = box.get("lag", [])
            row = self._close(name, run_dir, producer_id, box, {"fault": name})
        clog_text = clog_path.read_text(errors="replace")
        peak = max((n for _t, n in lag), default=0)
        row.pop("_stored_times")
        row.update(stage="results", what=f"INFERENCE_SLOWDOWN_S={slowdown_s:g} > "
                   f"KAFKA_MAX_POLL_INTERVAL_MS={max_poll_ms}",
                   peak_lag=peak, final_lag=lag[-1][1] if lag else None,
                   commit_failures=clog_text.count("commit failed"),
                   poll_interval_expiries=clog_text.count("poll timeout")
                   + clog_text.count("Heartbeat poll expired"),
                   recovery_s=None, max_stall_s=None)
        # Not timing: a consumer that keeps its membership never fails a commit, never sees
        # its poll interval expire and never publishes a result twice, however slow the host.
        row["ok"] = (row["ok"] and row["commit_failures"] == 0 and row["poll_interval_expiries"] == 0
                     and row["duplicated_result_messages"] == 0)
        if not row["ok"]:
            row["consumer_log"] = clog_text[-3000:]
        self.results.append(row)
        say(f"{name}: {'OK' if row['ok'] else 'FAILED'} lost {row['lost']}, results "
            f"{row['results']}/{row['images']}, peak lag {peak}, commit failures "
            f"{row['commit_failures']}, poll-interval expiries {row['poll_interval_expiries']}, "
            f"duplicated result messages {row['duplicated_result_messages']}, "
            f"p50 {row['e2e_ms'].get('p50')} ms, max {row['e2e_ms'].get('max')} ms")
        return row

    def run_overload(self, count: int | None = None, batch: int = 16, slowdown_s: float = 0.5) -> dict:
        """The producer offers several times what the pipeline can classify: a backlog forms
        and drains, nothing is lost.

        Overload is created, not assumed: the service sleeps ``slowdown_s`` per batch of at
        most ``batch`` images, so its capacity is at most ``batch / slowdown_s`` (32 img/s by
        default) on any machine, and the producer is offered 4x that.  What is asserted is
        not timing: nothing lost, every result back (backlog drained), no crash.  The latency
        growth and the peak backlog are figures in the report, not conditions."""
        name = "overload"
        count = count or self.images
        ceiling = batch / slowdown_s
        rate = 4 * ceiling
        self._images = {**getattr(self, "_images", {}), name: count}
        say(f"{name}: {count} images at {rate:g}/s to a service throttled to <= {ceiling:g} img/s "
            f"({slowdown_s:g} s per batch of <= {batch})")
        with self._throttled(name, slowdown_s, {"PREDICT_BATCH_IMAGES": str(batch)}):
            run_dir, producer_id, progress, thread, box = self._fleet(name, count, rate)
            peak = self._watch(thread, box)
            row = self._close(name, run_dir, producer_id, box, {"fault": name})
        row.pop("_stored_times")
        lat = sorted((float(r["sent_at"]), float(r["e2e_ms"]))
                     for r in read_csv(run_dir / "latencies.csv") if r["e2e_ms"])
        tenth = max(1, len(lat) // 10)
        first = sorted(e for _s, e in lat[:tenth])[tenth // 2] if lat else None
        last = sorted(e for _s, e in lat[-tenth:])[tenth // 2] if lat else None
        row.update(stage="results", what=f"producer at {rate:g} img/s, service capacity <= {ceiling:g} img/s",
                   peak_lag=peak, capacity_ceiling_img_s=ceiling, offered_img_s=rate,
                   e2e_first_tenth_p50_ms=first and round(first, 1),
                   e2e_last_tenth_p50_ms=last and round(last, 1),
                   recovery_s=None, max_stall_s=None)
        self.results.append(row)
        say(f"{name}: {'OK' if row['ok'] else 'FAILED'} lost {row['lost']}, results "
            f"{row['results']}/{row['images']}, throughput {row['throughput_img_s'] or 0:.1f} img/s "
            f"(offered {rate:g}, ceiling {ceiling:g}), e2e p50 first tenth {first or 0:.0f} ms -> "
            f"last tenth {last or 0:.0f} ms, peak backlog {peak}")
        return row

    # ---------------------------------------------------------------- report
    def table(self) -> str:
        head = ("scenario", "images", "in flight", "peak", "lost", "dup docs", "half-written",
                "dup results", "recovery s", "max stall s", "ok")
        rows = [head]
        for r in self.results:
            rows.append((r["scenario"], r["images"], r.get("in_flight_at_fault", "-"), r.get("peak_lag", "-"),
                         r["lost"], r["duplicate_documents"], r["half_written_documents"],
                         r["duplicated_result_messages"],
                         "-" if r.get("recovery_s") is None else r["recovery_s"],
                         "-" if r.get("max_stall_s") is None else r["max_stall_s"],
                         "yes" if r["ok"] else "NO"))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
        return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows)

    def write(self, started: float) -> Path:
        path = self.out / "faults.json"
        data = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                "duration_s": round(time.time() - started, 1),
                "images_per_scenario": self.images, "rate_img_s": self.rate,
                "fault_at": self.fault_at, "host_cpus": os.cpu_count(),
                "scenarios": self.results,
                "all_ok": bool(self.results) and all(r["ok"] for r in self.results)}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return path


SCENARIOS = [*FAULTS, "slow-inference", "overload"]
LAST_REPORT: list[str] = []  # the table and the faults.json path, for pytest's summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", action="append", choices=SCENARIOS,
                   help="run only this scenario (repeatable); default: all")
    p.add_argument("--images", type=int, default=1000, help="images per fault scenario")
    p.add_argument("--rate", type=float, default=40.0, help="images per second")
    p.add_argument("--fault-at", type=float, default=0.3, help="fraction sent before the fault")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "faults" / time.strftime("%Y%m%d-%H%M%S"))
    args = p.parse_args(argv)
    started = time.time()
    suite = FaultSuite(args.out, images=args.images, rate=args.rate, fault_at=args.fault_at)
    try:
        with suite:
            for name in args.scenario or SCENARIOS:
                try:
                    suite.run(name)
                except Exception as exc:  # noqa: BLE001 - record and go on with the next
                    say(f"{name}: ERROR {type(exc).__name__}: {exc}")
                    suite.results.append({"scenario": name, "images": 0, "lost": None,
                                          "duplicate_documents": None, "half_written_documents": None,
                                          "duplicated_result_messages": None, "ok": False,
                                          "error": f"{type(exc).__name__}: {exc}",
                                          "logs": suite.stack.logs(1500)})
    finally:
        path = suite.write(started)
        print()
        print(suite.table())
        print(f"\nfaults.json: {path}  ({time.time() - started:.0f} s)")
    return 0 if all(r["ok"] for r in suite.results) else 1


if __name__ == "__main__":
    sys.exit(main())
