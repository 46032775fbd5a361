"""The embedded local stack: start every component in order, health-checked, and keep
it running the way systemd does on the VMs (a component that dies is restarted).

State lives under the stack directory (``.run/`` by default, ``STACK_DIR`` to move it):

    .run/stack.env          KAFKA_BOOTSTRAP_SERVERS=, STORE=, MONGO_URI= (STORE=mongodb),
                            POSTGRES_DSN= (STORE=postgres) or COUCHDB_URL=, COUCHDB_USER=,
                            COUCHDB_PASSWORD= (STORE=couchdb), INFERENCE_URL= (none with
                            INFERENCE_MODE=embedded: no service is started), the metrics
                            ports (<COMPONENT>_METRICS_PORT=, PRODUCER_METRICS_PORT= for a
                            producer to use), PROMETHEUS_URL= when Prometheus runs,
                            DASHBOARD_URL= (python -m dashboard; STACK_DASHBOARD=0: none),
                            KAFKA_FETCH_MAX_WAIT_MS= with the embedded broker (see
                            EMBEDDED_FETCH_MAX_WAIT_MS; S3_FETCH_MAX_WAIT_MS on s3rver),
                            KAFKA_IDEMPOTENCE=false with it on s3rver (stack/broker.py)
    .run/prometheus/        the generated prometheus.yml (stack/monitoring.py)
    .run/pids/<name>.pid    one per component (rewritten on every restart)
    .run/logs/<name>.log    one per component, appended across restarts
    .run/hold/<name>        present while a component is deliberately kept down
    .run/data/broker/       with STACK_BROKER_STORAGE=s3, the embedded broker's topics, records
                            and committed offsets in s3rver's bucket tansu (kept across
                            restarts; stack/broker.py: its keys file), less the batches every
                            consumer group has read (stack/broker_retention.py)
    .run/checkout/<name>    a directory (another checkout of this repository): the component's
                            next start runs its code from there (a local rolling upgrade)
    .run/components.json    each component's name and, when its death stops the stack, why
                            (``no_restart``; empty: the supervisor restarts it)
    .run/data/mongo.db      the MongoDB server's SQLite file (kept across restarts)
    .run/data/postgres/     with STORE=postgres, the PostgreSQL cluster (kept across restarts;
                            stack/postgres.py: who runs it, its password file)
    .run/data/couchdb/      with STORE=couchdb, pouchdb-server's databases and config.json
                            (kept across restarts; stack/couchdb.py: its admin's password file)

``python -m stack down`` (``make down``) keeps all of it, so the next ``up`` serves the same
stored images; ``python -m stack clean`` (``make clean``) removes the directory, naming each
store's data it removes (stack/control.py ``clean``).

The store is the one STORE names (stack/stores.py).  If ``KAFKA_BOOTSTRAP_SERVERS`` /
``MONGO_URI`` / ``POSTGRES_DSN`` or ``POSTGRES_HOST`` / ``COUCHDB_URL`` / ``INFERENCE_URL`` are set, those
servers are used and the embedded ones are not started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from common.kafka_io import ensure_topics
from common.settings import InferenceClientSettings, KafkaSettings, StackSettings, check_replaced, given, mask_env
from stack import monitoring
from stack.broker import plan_broker
from stack.component import Component, child_pids, pid_alive
from stack.handover import Handovers, Successor
from stack.ports import free_port, pick_port
from stack.private import write_private
from stack.stores import plan_store

__all__ = ["EMBEDDED_FETCH_MAX_WAIT_MS", "ROOT", "Component", "Supervisor", "child_pids", "pid_alive", "stack_dir"]

log = logging.getLogger("stack")

ROOT = Path(__file__).resolve().parent.parent
# The embedded broker (tansu) holds a fetch for about half of its max wait even when
# records arrive meanwhile (measured with kafka-python and librdkafka alike: delivery p50
# 27 ms at a 100 ms wait, 121 ms at 500, 5.5 ms at 20); Apache Kafka answers as soon as
# there is data.  So with the embedded broker every client of the stack gets a shorter
# wait (unless KAFKA_FETCH_MAX_WAIT_MS is set).  At 25 % load a result's way back to its
# producer took 24 ms (p50) at 100 and 6 ms at 20, but at 20 each idle consumer fetches
# ~100 times/s and a producer's result listener cost +0.6 core-ms per image (kafka-python
# spends ~0.5 ms of CPU per fetch); 40 is the middle (docs/PERFORMANCE.md).
EMBEDDED_FETCH_MAX_WAIT_MS = 40


def stack_dir() -> Path:
    return Path(StackSettings().stack_dir or ROOT / ".run").resolve()


class Supervisor:
    def __init__(self, directory: Path | None = None):
        self.dir = directory or stack_dir()
        for sub in ("pids", "logs", "hold", "data", "state"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.components: list[Component] = []
        self.stopping = False
        self.failure = ""
        self.endpoints: dict[str, str] = {}
        self.handovers = Handovers(self)

    # ------------------------------------------------------------ plan
    def plan(self) -> None:
        py = sys.executable
        base_env = {"PYTHONUNBUFFERED": "1"}
        check_replaced()  # this environment goes to every component: no removed name in it
        stack, kafka, inference = StackSettings(), KafkaSettings(), InferenceClientSettings()
        kafka_external = given(kafka, "kafka_bootstrap_servers")
        if kafka_external:
            self.endpoints["KAFKA_BOOTSTRAP_SERVERS"] = kafka_external
            log.info("using external Kafka at %s", kafka_external)
        else:
            port = pick_port("kafka")
            url = f"tcp://127.0.0.1:{port}"
            self.endpoints["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{port}"
            self.components += plan_broker(self.dir / "data", self.dir / "state", url, self._kafka_ready, self.endpoints)
            if given(kafka, "kafka_fetch_max_wait_ms") is None:  # (the S3 storage sets its own)
                self.endpoints.setdefault("KAFKA_FETCH_MAX_WAIT_MS", str(EMBEDDED_FETCH_MAX_WAIT_MS))

        self.components += plan_store(self.dir, self.endpoints)

        # INFERENCE_MODE=embedded: the inference consumers run the model themselves
        # (consumers/embedded.py) and nothing of the stack calls a service, so none is
        # started; a given INFERENCE_URL is still published for whoever wants it.
        embedded = inference.inference_mode == "embedded"
        inference_external = given(inference, "inference_url")
        if inference_external:
            self.endpoints["INFERENCE_URL"] = inference_external
        elif embedded:
            log.info("INFERENCE_MODE=embedded: the inference consumers run the model; no inference service")
        else:
            port = pick_port("inference")
            self.endpoints["INFERENCE_URL"] = f"http://127.0.0.1:{port}"
            argv = [py, "-m", "gunicorn", "-c", "inference/gunicorn.conf.py", "inference:create_app()"]
            self.components.append(Component(
                "inference", argv, ready=self._inference_ready,
                env={"INFERENCE_BIND": f"127.0.0.1:{port}", "GUNICORN_REUSE_PORT": "true"},
                ready_timeout_s=stack.stack_inference_ready_s,
                handover=lambda: self._inference_successor(argv, port)))

        # STACK_INFERENCE_CONSUMERS > 1 adds inference-consumer-2, -3 ... to the same
        # group: while one waits for its /v1/predict answer another gathers and sends,
        # and the service's dynamic batcher merges their requests (docs/PERFORMANCE.md).
        consumers = [("inference-consumer", "consumers.inference")]
        consumers += [(f"inference-consumer-{i}", "consumers.inference")
                      for i in range(2, stack.stack_inference_consumers + 1)]
        # Every consumer serves /metrics on a port of its own (METRICS_PORT), written to
        # stack.env as <NAME>_METRICS_PORT; PRODUCER_METRICS_PORT is kept for a producer
        # run against the stack (the demo, the tests), which Prometheus scrapes too.
        scrape = {"inference": [self.endpoints["INFERENCE_URL"].split("://", 1)[-1].rstrip("/")]
                                } if "INFERENCE_URL" in self.endpoints else {}
        for name, module in (*consumers, ("db-consumer", "consumers.db")):
            marker = self.dir / "state" / f"{name}.joined"
            metrics_port = free_port()
            self.endpoints[f"{name.upper().replace('-', '_')}_METRICS_PORT"] = str(metrics_port)
            scrape.setdefault("db-consumer" if name == "db-consumer" else "inference-consumer", []).append(
                f"127.0.0.1:{metrics_port}")
            # Embedded, an inference consumer loads the model before it joins: the service's wait.
            loads_model = embedded and module == "consumers.inference"
            self.components.append(Component(
                name, [py, "-m", module], ready=marker.exists,
                env={"READY_FILE": str(marker), "METRICS_PORT": str(metrics_port), "METRICS_BIND": "127.0.0.1"},
                **({"ready_timeout_s": stack.stack_inference_ready_s} if loads_model else {})))
        # PRODUCER_METRICS_PORT for a producer started by hand, and a pool for the fleets of
        # make demo / make experiment / the bench, which give their i-th producer the i-th
        # (experiments.fleet): distinct ports, so one's series never continues the other's.
        # A target without a running producer is just down (no alert rule looks at it).
        producer_ports = [free_port() for _ in range(1 + monitoring.PRODUCER_PORTS)]
        self.endpoints["PRODUCER_METRICS_PORT"] = str(producer_ports[0])
        self.endpoints["PRODUCER_METRICS_PORTS"] = ",".join(map(str, producer_ports[1:]))
        scrape["producer"] = [f"127.0.0.1:{port}" for port in producer_ports]
        self.plan_prometheus(scrape, stack)
        self.plan_dashboard(stack)

        for c in self.components:
            c.env = {**os.environ, **base_env, **self.endpoints, **c.env}
        self._kafka = kafka.model_copy(update={"kafka_bootstrap_servers": self.endpoints["KAFKA_BOOTSTRAP_SERVERS"]})

    def plan_prometheus(self, scrape: dict[str, list[str]], stack: StackSettings) -> None:
        """Prometheus on a free loopback port, scraping every component, when installed."""
        binary = monitoring.prometheus_binary()
        if binary is None:
            log.info("prometheus not installed (or STACK_PROMETHEUS=0): the stack runs without it")
            return
        port = stack.stack_prometheus_port or free_port()
        url = f"http://127.0.0.1:{port}"
        scrape["prometheus"] = [f"127.0.0.1:{port}"]
        conf_dir = self.dir / "prometheus"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "prometheus.yml").write_text(monitoring.scrape_config(
            scrape, scrape_interval=stack.stack_scrape_interval))
        self.endpoints["PROMETHEUS_URL"] = url
        self.components.append(Component(
            "prometheus", [binary, f"--config.file={conf_dir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={self.dir / 'data' / 'prometheus'}",
                           "--storage.tsdb.retention.time=2d", f"--web.listen-address=127.0.0.1:{port}"],
            ready=lambda: self._http_ok(url + "/-/ready")))

    def plan_dashboard(self, stack: StackSettings) -> None:
        """The live dashboard (python -m dashboard) on a free loopback port, unless
        STACK_DASHBOARD=0: it reads the stack's store and Prometheus."""
        if not stack.stack_dashboard:
            return
        port = stack.stack_dashboard_port or free_port()
        url = f"http://127.0.0.1:{port}"
        self.endpoints["DASHBOARD_URL"] = url
        env = {"DASHBOARD_BIND": f"127.0.0.1:{port}"}
        if "PROMETHEUS_URL" in self.endpoints:
            env["PROMETHEUS_URL"] = self.endpoints["PROMETHEUS_URL"]
        self.components.append(Component("dashboard", [sys.executable, "-m", "dashboard"], env=env,
                                         ready=lambda: self._http_ok(url + "/healthz")))

    # ------------------------------------------------------------ health checks
    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _kafka_ready(self) -> bool:
        try:
            created = ensure_topics(self._kafka, timeout_s=2)
        except Exception as exc:
            log.debug("kafka not ready: %s", exc)
            return False
        if created:
            log.info("created topics %s", ", ".join(created))
        return True

    def _inference_ready(self) -> bool:
        return self._http_ok(self.endpoints["INFERENCE_URL"] + "/readyz")

    def _inference_successor(self, argv: list[str], port: int) -> Successor:
        """A second service on the same port (both reuse_port) and on a private one, where
        its own /readyz is asked (stack/handover.py).  --bind on the command line replaces
        the configuration's INFERENCE_BIND, so both addresses are named."""
        private = free_port()
        return Successor([*argv, "--bind", f"127.0.0.1:{port}", "--bind", f"127.0.0.1:{private}"],
                         lambda: self._http_ok(f"http://127.0.0.1:{private}/readyz"))

    # ------------------------------------------------------------ processes
    def pid_file(self, c: Component) -> Path:
        return self.dir / "pids" / f"{c.name}.pid"

    def held(self, c: Component) -> bool:
        return (self.dir / "hold" / c.name).exists()

    def checkout(self, c: Component) -> Path:
        """Where ``c`` runs from: this checkout, or the one ``checkout/<name>`` names (its
        ``python -m`` modules and Gunicorn's app are imported from the working directory)."""
        try:
            other = Path((self.dir / "checkout" / c.name).read_text().strip())
        except OSError:
            return ROOT
        return other if other.is_dir() else ROOT

    def write_components(self) -> None:
        """components.json: what a harness needs to know about each component (the soak
        kills only those the supervisor restarts)."""
        (self.dir / "components.json").write_text(json.dumps(
            [{"name": c.name, "no_restart": c.no_restart} for c in self.components], indent=1) + "\n")

    def start(self, c: Component) -> None:
        if "READY_FILE" in c.env:
            Path(c.env["READY_FILE"]).unlink(missing_ok=True)
        if c.before_start is not None:
            c.before_start()
        proc, cwd = self.spawn(c, c.argv, f"starting {c.name}")
        self.adopt(c, proc)
        log.info("started %s (pid %d)%s", c.name, c.proc.pid, f" from {cwd}" if cwd != ROOT else "")

    def spawn(self, c: Component, argv: list[str], note: str) -> tuple[subprocess.Popen, Path]:
        """Run ``argv`` as ``c`` (its environment, its checkout, its log); the process and
        where it runs from."""
        logfile = open(self.dir / "logs" / f"{c.name}.log", "ab", buffering=0)
        logfile.write(f"---- {time.strftime('%Y-%m-%d %H:%M:%S')} {note}\n".encode())
        cwd = self.checkout(c)
        if cwd != ROOT:
            logfile.write(f"---- running from {cwd}\n".encode())
        # Own session: the whole process group (gunicorn workers included) can be signalled.
        proc = subprocess.Popen(argv, cwd=cwd, env=c.env, stdout=logfile, stderr=logfile,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        logfile.close()
        return proc, cwd

    def adopt(self, c: Component, proc: subprocess.Popen) -> None:
        """``proc`` is ``c`` from now on: watched, restarted when it dies, named by the pid file."""
        c.proc, c.started_at, c.next_restart_at = proc, time.monotonic(), 0.0
        self.pid_file(c).write_text(f"{proc.pid}\n")

    def wait_ready(self, c: Component) -> None:
        deadline = time.monotonic() + c.ready_timeout_s
        while not c.ready():
            if c.proc.poll() is not None:
                raise RuntimeError(f"{c.name} exited with {c.proc.returncode} while starting; "
                                   f"see {self.dir / 'logs' / (c.name + '.log')}")
            if time.monotonic() > deadline or self.stopping:
                raise RuntimeError(f"{c.name} not ready after {c.ready_timeout_s:.0f} s; "
                                   f"see {self.dir / 'logs' / (c.name + '.log')}")
            time.sleep(0.3)
        log.info("%s is ready", c.name)

    def stop(self, c: Component) -> None:
        if c.proc is None or c.proc.poll() is not None:
            return
        try:
            os.killpg(c.proc.pid, c.stop_signal)
        except ProcessLookupError:
            return
        try:
            c.proc.wait(c.stop_timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing", c.name, c.stop_timeout_s)
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
        log.info("stopped %s", c.name)

    def write_env(self) -> None:
        """stack.env, readable by its owner only: an external MONGO_URI carries a password."""
        write_private(self.dir / "stack.env", "".join(f"{k}={v}\n" for k, v in self.endpoints.items()))

    # ------------------------------------------------------------ main loop
    def run(self) -> int:
        (self.dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        (self.dir / "ready").unlink(missing_ok=True)
        for f in (self.dir / "hold").iterdir():
            f.unlink()
        for f in (self.dir / "checkout").iterdir() if (self.dir / "checkout").is_dir() else ():
            f.unlink()  # a new stack starts from this checkout
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.plan()
            self.write_env()
            self.write_components()
            for c in self.components:
                self.start(c)
                self.wait_ready(c)
            (self.dir / "ready").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
            log.info("stack is up: %s", ", ".join(mask_env(f"{k}={v}") for k, v in self.endpoints.items()))
            while not self.stopping:
                self.watch()
                time.sleep(0.5)
            if self.failure:
                (self.dir / "failed").write_text(f"{self.failure}\n")
                return 1
            return 0
        except Exception as exc:
            log.error("%s", exc)
            (self.dir / "failed").write_text(f"{exc}\n")
            return 1
        finally:
            self.shutdown()

    def watch(self) -> None:
        self.handovers.step()
        now = time.monotonic()
        for c in self.components:
            if c.proc is None or c.proc.poll() is None or self.held(c):
                continue
            if c.no_restart:
                self.failure = (f"{c.name} (pid {c.proc.pid}) exited with {c.proc.returncode} and is "
                                f"not restarted: {c.no_restart}. The stack stops; start it again "
                                f"with `make up` (python -m stack up).")
                log.error("%s", self.failure)
                self.stopping = True
                return
            if c.next_restart_at == 0.0:
                # Back off if it keeps dying right after start (systemd's RestartSec).
                quick = now - c.started_at < 10
                if not quick:
                    c.backoff.reset()
                delay = c.backoff.next() if quick else 1.0
                c.next_restart_at = now + delay
                log.warning("%s (pid %d) exited with %s; restarting in %.0f s",
                            c.name, c.proc.pid, c.proc.returncode, delay)
            elif now >= c.next_restart_at:
                c.next_restart_at = 0.0
                c.restarts += 1
                self.start(c)

    def _on_signal(self, signum, _frame) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        self.handovers.stop_all()
        # Consumers first, so they commit what they finished; the broker last.
        for c in reversed(self.components):
            self.stop(c)
            self.pid_file(c).unlink(missing_ok=True)
            if "READY_FILE" in c.env:
                Path(c.env["READY_FILE"]).unlink(missing_ok=True)
        for name in ("ready", "supervisor.pid"):
            (self.dir / name).unlink(missing_ok=True)
        log.info("stack is down")
