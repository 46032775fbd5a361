"""Fault injection on the real local stack: crash or stop one part mid-stream, let it
come back, and prove that nothing was lost.

    python -m tests.faults.run                       # every scenario, table + faults.json
    python -m tests.faults.run --scenario mongo-restart --images 1000 --rate 40
    python -m tests.faults.run --store postgres      # the storage scenarios on PostgreSQL
    python -m tests.faults.run --store couchdb       # ... on CouchDB (pouchdb-server, on disk)
    python -m tests.faults.run --embedded            # the inference consumer's scenarios, INFERENCE_MODE=embedded

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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analysis.summary import close_run  # noqa: E402
from experiments.fleet import producer_log_tail, run_fleet  # noqa: E402
from stack.ports import free_port  # noqa: E402
from tests.faults.scenarios import (FAULTS, HANG_GUARD_S, PY, Stack, check_documents,  # noqa: E402
                                    count_result_messages, http_ready, longest_stall,
                                    read_csv, say, wait_for)
from tests.faults.broker import BROKER_FAULTS, BROKER_SCENARIOS, check_failed_counted, producer_counts  # noqa: E402
from tests.faults.broker_storage import BROKER_STORAGE_FAULTS, BROKER_STORAGE_SCENARIOS  # noqa: E402
from tests.faults.stores import ALL_FAULTS, COUCH_SCENARIOS, POSTGRES_SCENARIOS, Rows  # noqa: E402

STORE_SCENARIOS = {"postgres": POSTGRES_SCENARIOS, "couchdb": COUCH_SCENARIOS}
FAULTS_BY_NAME = {**ALL_FAULTS, **BROKER_FAULTS, **BROKER_STORAGE_FAULTS}
# INFERENCE_MODE=embedded (consumers/embedded.py): the model runs in the inference consumer
# (the torch engine: the lighter model), the stack starts no service.  The scenarios of the
# inference consumer hold there too; the service's own (a Gunicorn worker killed, the
# service down or answering 401) have no service to hit, and slow-inference and overload
# slow the consumer's own model down (INFERENCE_SLOWDOWN_S in its environment).
EMBEDDED_ENV = {"INFERENCE_MODE": "embedded", "MODEL_ENGINE": "torch"}
EMBEDDED_SCENARIOS = ["inference-consumer", "rebalance", "rebalance-kill", "slow-inference", "overload"]

# ------------------------------------------------------------------ running

class FaultSuite:
    def __init__(self, out: Path, *, images: int = 1000, rate: float = 40.0, fault_at: float = 0.3,
                 result_timeout_s: float = HANG_GUARD_S, store: str = "mongodb", stack_env: dict | None = None):
        self.out = out
        self.images, self.rate, self.fault_at = images, rate, fault_at
        self.result_timeout_s = result_timeout_s
        # STORE=postgres: the stack's own cluster under out/stack, which the postgres user
        # reaches in a checkout (results/ is not root-only).
        self.stack = Stack(out / "stack", {"STORE": store, **(stack_env or {})})
        self.embedded = (stack_env or {}).get("INFERENCE_MODE") == "embedded"
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
            rows = Rows(self.stack)
            while thread.is_alive():
                try:
                    n = rows.count_with_prediction(producer_id)
                except Exception:  # noqa: BLE001 - the store down: that is the point
                    n = None
                samples.append((time.time(), n))
                thread.join(0.25)
            rows.close()

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

    def _close(self, name: str, run_dir: Path, producer_id: str, box: dict, extra: dict,
               close_timeout_s: float = HANG_GUARD_S) -> dict:
        if "error" in box:
            raise box["error"]
        store = self.stack.store()
        try:
            summary = close_run(run_dir, store, timeout_s=close_timeout_s, extra=extra)
        finally:
            store.close()
        rows = Rows(self.stack)
        sent_ids = {r["image_id"] for r in read_csv(run_dir / "latencies.csv")}
        docs = check_documents(rows.documents(producer_id), sent_ids)
        rows.close()
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

    def _close_with_failures(self, name: str, run_dir: Path, producer_id: str, box: dict,
                             exact: bool = True) -> dict:
        """A run where the producer counted some images as failed: those never reach the store,
        so the run is closed once the acknowledged ones are there, and judged on the counts
        (tests/faults/broker.py, check_failed_counted; ``exact`` off for the broker's storage
        faults, where a failed image may be stored all the same)."""
        counts = producer_counts(run_dir, producer_id)
        rows = Rows(self.stack)
        try:
            wait_for(lambda: rows.count_with_prediction(producer_id) >= counts["acknowledged"], HANG_GUARD_S,
                     "every acknowledged image stored")
        finally:
            rows.close()
        row = self._close(name, run_dir, producer_id, box, {"fault": name}, close_timeout_s=3)
        rows = Rows(self.stack)
        stored = {d["image_id"] for d in rows.documents(producer_id)}
        rows.close()
        sent = {r["image_id"] for r in read_csv(run_dir / "latencies.csv")}
        row["producer_counts"] = check_failed_counted(row, counts, stored, sent, exact)
        row["ok"] = row["producer_counts"]["ok"]
        return row

    def images_of(self, name: str) -> int:
        return getattr(self, "_images", {}).get(name, self.images)

    def run(self, name: str) -> dict:
        if name == "slow-inference":
            return self.run_slow()
        if name == "overload":
            return self.run_overload()
        fault = FAULTS_BY_NAME[name]
        say(f"{name}: {fault.what} ({self.images} images at {self.rate:g}/s, "
            f"fault after {self.fault_at:.0%})")
        run_dir, producer_id, progress, thread, box = self._fleet(name, self.images, self.rate, fault.producer_env)
        wait_for(lambda: self._progress(progress)["sent"] >= self.images * self.fault_at or "error" in box
                 or not thread.is_alive(), HANG_GUARD_S, "producer started")
        p = self._progress(progress)
        note: dict = {}
        t_start, t_end = fault.inject(self.stack, note)
        say(f"{name}: fault injected with {p['sent'] - p['results']} images in flight "
            f"({p['sent']} sent, {p['results']} results); {note}")
        peak = self._watch(thread, box)
        if fault.expect_failed:
            row = self._close_with_failures(name, run_dir, producer_id, box)
        elif fault.may_fail and "error" not in box and producer_counts(run_dir, producer_id)["failed"]:
            row = self._close_with_failures(name, run_dir, producer_id, box, exact=False)
        else:
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
        inference consumer using it in place of the stack's (paused meanwhile); embedded, the
        consumer's own model sleeps (no service).

        The sleep bounds the service's capacity from above by construction
        (``batch / slowdown_s`` images/s whatever the machine), so a producer offered a
        multiple of that is in overload on a fast machine and on a slow one alike."""
        logs = self.stack.dir / "logs"
        gunicorn = None
        if self.embedded:
            url = ""
            consumer_env = {**consumer_env, "INFERENCE_SLOWDOWN_S": str(slowdown_s)}
        else:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
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
            if gunicorn is not None:
                wait_for(lambda: http_ready(url), HANG_GUARD_S, "throttled inference service ready")
            self.stack.stack("pause", "inference-consumer")
            old = self.stack.pid("inference-consumer")
            wait_for(lambda: old is None or not Path(f"/proc/{old}").exists(), HANG_GUARD_S,
                     "stack inference consumer stopped")
            marker = self.stack.dir / "state" / f"{tag}-consumer.joined"
            clog = open(clog_path, "ab")
            consumer = subprocess.Popen(
                [PY, "-m", "consumers.inference"], cwd=ROOT,
                env={**self.stack.env, **({"INFERENCE_URL": url} if url else {}), "READY_FILE": str(marker),
                     **consumer_env},
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
            if gunicorn is not None:
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
                                                "PREDICT_BATCH_IMAGES": "64", "INFERENCE_TIMEOUT_S": "90"}) as clog_path:
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
    p.add_argument("--store", choices=["mongodb", "postgres", "couchdb"], default="mongodb",
                   help="the stack's store (STORE); postgres and couchdb run the storage scenarios on it")
    p.add_argument("--scenario", action="append",
                   choices=list(dict.fromkeys(SCENARIOS + POSTGRES_SCENARIOS + COUCH_SCENARIOS + BROKER_SCENARIOS
                                              + BROKER_STORAGE_SCENARIOS)),
                   help="run only this scenario (repeatable); default: all of the store's")
    p.add_argument("--embedded", action="store_true",
                   help="INFERENCE_MODE=embedded (the torch model in the inference consumer, no service): "
                        "the inference consumer's scenarios")
    p.add_argument("--images", type=int, default=1000, help="images per fault scenario")
    p.add_argument("--rate", type=float, default=40.0, help="images per second")
    p.add_argument("--fault-at", type=float, default=0.3, help="fraction sent before the fault")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "faults" / time.strftime("%Y%m%d-%H%M%S"))
    args = p.parse_args(argv)
    started = time.time()
    suite = FaultSuite(args.out, images=args.images, rate=args.rate, fault_at=args.fault_at, store=args.store,
                       stack_env=EMBEDDED_ENV if args.embedded else None)
    default = EMBEDDED_SCENARIOS if args.embedded else STORE_SCENARIOS.get(args.store, SCENARIOS)
    try:
        with suite:
            for name in args.scenario or default:
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
