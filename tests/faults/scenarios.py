"""The fault suite's parts: its stack, the faults it injects and how it measures.

tests/faults/run.py drives them (one producer per scenario, checks, report).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from common.settings import DatasetSettings, SuiteSettings, mask_uris
from stack.control import LocalStack
from stack.supervisor import child_pids
from tests.support import HANG_GUARD_S, ROOT

SAMPLE = ROOT.parent / "shared" / "data" / "cifar-10-python-sample.tar.gz"
PY = sys.executable
# The harness's own store clients: a hang guard, not a latency.  On a busy host nx-27017
# took 6 s to answer a scenario's createIndexes (CI beside a soak), past the 3 s it had.
STORE_TIMEOUT_S = 30


def say(msg: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


children = child_pids  # Gunicorn's workers


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, step: float = 0.2) -> float:
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(step)
    return time.monotonic() - start


def http_ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


# ------------------------------------------------------------------ the stack

class Stack(LocalStack):
    """The embedded local stack in a temporary directory, on free ports, with random
    32x32 weights (stack.control.LocalStack), plus what the scenarios need."""

    def __init__(self, directory: Path, extra_env: dict | None = None):
        # MODEL_WARMUP_S=0: each service start as the scenarios' recovery times were measured
        # (one image and a full batch); the soak, which judges memory, warms every size.
        env = {"MODEL_WEIGHTS": "random", "PREDICT_BATCH_WAIT_MS": "20", "LOG_LEVEL": "INFO", "MODEL_WARMUP_S": "0",
               "GUNICORN_WORKERS": str(SuiteSettings().faults_gunicorn_workers)}
        if not DatasetSettings().dataset_source:
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
        store = {"postgres": "POSTGRES_DSN", "couchdb": "COUCHDB_URL"}.get(self.env.get("STORE"), "MONGO_URI")
        store = self.env[store]
        say(f"stack up in {time.monotonic() - t0:.0f} s: {self.env['KAFKA_BOOTSTRAP_SERVERS']}, "
            f"{mask_uris(store)}, {self.env.get('INFERENCE_URL') or 'the model in the inference consumer'}")

    def down(self) -> None:
        self.stop()

    def collection(self):
        from tests.support import mongo_connect as connect, mongo_images as images_collection
        from common.settings import MongoSettings

        mongo = MongoSettings(mongo_uri=self.env["MONGO_URI"], mongo_timeout_ms=STORE_TIMEOUT_S * 1000)
        return images_collection(connect(mongo), mongo)

    def store(self):
        """The store reader closing a run goes through (the loss check reads the store itself:
        tests/faults/stores.py)."""
        from common.settings import MongoSettings, PostgresSettings
        from common.store import open_reader

        if self.env.get("STORE") == "couchdb":
            from common.store.opening import couch_settings_of

            return open_reader(store="couchdb", couchdb=couch_settings_of(self.env, couchdb_connect_timeout_s=STORE_TIMEOUT_S))
        if self.env.get("STORE") == "postgres":
            return open_reader(store="postgres", postgres=PostgresSettings(postgres_dsn=self.env["POSTGRES_DSN"],
                                                                           postgres_connect_timeout_s=STORE_TIMEOUT_S))
        return open_reader(MongoSettings(mongo_uri=self.env["MONGO_URI"], mongo_timeout_ms=STORE_TIMEOUT_S * 1000),
                           store="mongodb")

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
    producer_env: dict | None = None  # the scenario's producer's own settings (a small buffer)
    expect_failed: bool = False  # some images are meant to fail at the producer (tests/faults/broker.py)
    # Some images may fail at the producer (counted in its producer.json); the run is then
    # judged on what it acknowledged (tests/faults/broker.py check_failed_counted).
    may_fail: bool = False


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


def inference_401_20s(stack: Stack, note: dict) -> tuple[float, float]:
    """The service answers 401 for 20 s (a token rotated before the consumers got it: the
    playbook restarts the service first): the consumer must keep its batch and retry, not
    dead-letter valid images."""
    port = stack.env["INFERENCE_URL"].rsplit(":", 1)[1]
    t0 = stack.send("inference", signal.SIGTERM, keep_down=True)
    wait_for(lambda: not http_ready(stack.env["INFERENCE_URL"]), HANG_GUARD_S, "inference service stopped")
    glog = open(stack.dir / "logs" / "inference-401.log", "ab")
    gunicorn = subprocess.Popen(
        [PY, "-m", "gunicorn", "-c", "inference/gunicorn.conf.py", "inference:create_app()"], cwd=ROOT,
        env={**stack.env, "INFERENCE_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1",
             "INFERENCE_TOKEN": "rotated-" + uuid.uuid4().hex},
        stdout=glog, stderr=glog, stdin=subprocess.DEVNULL, start_new_session=True)
    glog.close()
    try:
        wait_for(lambda: requests.get(stack.env["INFERENCE_URL"] + "/v1/model", timeout=2).status_code == 401
                 if http_ready(stack.env["INFERENCE_URL"]) else False, HANG_GUARD_S, "service answering 401")
        note["answering_401_after_s"] = round(time.time() - t0, 2)
        time.sleep(20)
    finally:
        os.killpg(gunicorn.pid, signal.SIGTERM)
        gunicorn.wait(60)
    t1 = time.time()
    stack.stack("resume", "inference")
    wait_for(lambda: http_ready(stack.env["INFERENCE_URL"]), HANG_GUARD_S, "inference service back")
    return t0, t1


def _extra_consumer(stack: Stack, note: dict, stop_signal: int) -> tuple[float, float]:
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
        # SIGTERM: finish the batch, commit, leave the group; SIGKILL: gone mid-batch, its
        # uncommitted records are redelivered to the other consumer after the session timeout.
        proc.send_signal(stop_signal)
        proc.wait(60)
    t1 = time.time()
    note["extra_consumer_exit"] = proc.returncode
    return t0, t1


def rebalance(stack: Stack, note: dict) -> tuple[float, float]:
    return _extra_consumer(stack, note, signal.SIGTERM)


def rebalance_kill(stack: Stack, note: dict) -> tuple[float, float]:
    return _extra_consumer(stack, note, signal.SIGKILL)


def mongo_rejects_one(stack: Stack, note: dict) -> tuple[float, float]:
    """MongoDB refuses one document of a bulk while the run's images stream through the DB
    consumer: a unique index on (producer_id, seq) (one the pipeline never creates) and two
    valid images of another producer with the same seq under two image ids.  The server
    answers the second one's writes with E11000 inside a bulk_write of the run's documents:
    the DB consumer must dead-letter exactly that record (with the server's reason), store
    everything else of the batch and go on, never retry it for ever."""
    from common.deadletter import read_dead_letter
    from common.kafka_io import client_config, make_producer
    from common.schema import dumps
    from kafka import KafkaConsumer, TopicPartition
    from pymongo import ASCENDING
    from tests.hostile import valid_message

    settings = stack.kafka()
    tag = f"mongo-reject-{uuid.uuid4().hex[:6]}"
    col = stack.collection()
    # (seq, producer_id): the pipeline's own index is the non-unique (producer_id, seq), and
    # nx-27017 names indexes after their keys, ignoring ``name``.
    keys = [("seq", ASCENDING), ("producer_id", ASCENDING)]
    col.create_index(keys, unique=True, name="fault_unique_seq_producer")
    index = next(name for name, info in col.index_information().items()
                 if info.get("unique") and [k for k, _ in info["key"]] == [k for k, _ in keys])
    dlq = KafkaConsumer(**client_config(settings), group_id=None, enable_auto_commit=False,
                        auto_offset_reset="latest", fetch_max_wait_ms=200)
    tps = [TopicPartition(settings.dlq_topic, p) for p in dlq.partitions_for_topic(settings.dlq_topic)]
    dlq.assign(tps)
    for tp in tps:
        dlq.position(tp)  # pin "latest" before anything is sent
    first, second = (valid_message(tag, 7, seed=s, device=f"{tag}-cam") for s in (1, 2))
    ids = {first["image_id"], second["image_id"]}
    t0 = time.time()
    producer = make_producer(settings)
    try:
        for msg in (first, second):  # one key: one partition, in this order
            producer.send(settings.images_topic, key=msg["device_id"].encode(), value=dumps(msg))
        producer.flush()
        letters: list = []

        def rejected() -> bool:
            for batch in dlq.poll(timeout_ms=200).values():
                letters.extend(d for d in map(read_dead_letter, batch) if d.image_id() in ids)
            stored = col.count_documents({"_id": {"$in": sorted(ids)}, "prediction": {"$exists": True}})
            return stored == 1 and any("11000" in d.reason for d in letters)

        wait_for(rejected, HANG_GUARD_S, "one of the two images stored, the other dead-lettered (E11000)")
        t1 = time.time()
        winner = col.find_one({"_id": {"$in": sorted(ids)}}, {"_id": 1})["_id"]
        note.update(stored=winner, dead_lettered=sorted(ids - {winner}),
                    dead_letters=[{"topic": d.source_topic, "partition": d.source_partition,
                                   "offset": d.source_offset, "reason": d.reason[:160]} for d in letters])
        # Both records of the refused image (the image and its result) go to the DLQ; the
        # stored one never does.
        assert {d.image_id() for d in letters} == ids - {winner}, note
    finally:
        producer.close()
        dlq.close()
        try:
            col.drop_index(index)
        except Exception as exc:  # noqa: BLE001 - it only refuses (seq, producer_id) twins
            say(f"could not drop the index {index}: {exc}")
        col.database.client.close()
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
    Fault("rebalance-kill", "a second inference consumer joins the group, works, then is SIGKILLed mid-batch",
          "results", rebalance_kill),
    Fault("mongo-rejects-one", "MongoDB refuses one document of a bulk (E11000 on a unique index)",
          "storage", mongo_rejects_one),
    Fault("inference-401-20s", "the service answers 401 for 20 s (a rotated token), then is back",
          "results", inference_401_20s),
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


def check_documents(docs: list[dict], sent_ids: set[str]) -> dict:
    """One producer's stored images (``image_id`` and the fields of tests/faults/stores.py's
    Rows) against the image ids it sent: duplicated, missing, half-written."""
    ids = [d["image_id"] for d in docs]
    half = [d["image_id"] for d in docs if not d.get("image") or not d.get("prediction")
            or d.get("confidence") is None or not d.get("model")]
    return {"documents": len(docs), "distinct_ids": len(set(ids)),
            "duplicated_documents": len(ids) - len(set(ids)) + len(set(ids) - sent_ids),
            "missing_documents": len(sent_ids - set(ids)), "half_written": len(half),
            "half_written_ids": half[:5],
            "stored_times": [d["prediction_stored_at"] for d in docs if d.get("prediction_stored_at")]}
