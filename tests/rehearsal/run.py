"""`make deploy-rehearsal`: the whole Chameleon deployment, for real, against the cloud-less
rehearsal (tests/rehearsal/README.md), checked end to end.

    sudo .venv/bin/python -m tests.rehearsal.run [--keep] [--skip-upgrade]

1. `harness up --fresh`: Docker engine, VM image, network, wheelhouse, fake cloud.
2. Run 1 (cold), playbook_master.yaml as a user runs it, in two halves around the stages
   the rehearsal cannot run (no route to Apache's and MongoDB's downloads):
   provision, base, app -> [kafka, mongodb: `harness services` starts tansu and nx-27017
   on the kafka and mongodb servers, opens their ports in the host firewall like the
   roles do, creates the topics; the kafka, mongodb and monitoring plays run in --check
   mode] -> inference, consumers, monitoring (for real: Prometheus from the image, whose
   promtool validates the configuration; Grafana's repository is out of reach, so the
   stage fails, must say so and must not stop the later stages), producer, experiment
   (a short sweep), analyze.  Then every image the experiment's producers sent must be
   stored with a prediction (queried on nx-27017 from here) and report/latency_cdf.png
   must exist.  A client on another VM without credentials must be refused by what runs
   for real: the inference API (401 without its token), Prometheus (loopback only); the
   stand-in broker runs with the PLAINTEXT switch, whose warning must be printed.
3. Run 2 (warm): the whole playbook again (--skip-tags experiment,analyze and the two
   servers' tags): every role must report changed=0 (the changed tasks are listed).
4. Run 3 (upgrade): a comment added to common/__init__.py of the shipped code changes
   the bundle; a producer sends images on the producer VM during the whole run; the
   services must restart on the new release and every image sent must be stored with
   a prediction.
5. Run 4 (lease ended): the fake Blazar ends the lease (its servers deleted, the floating
   IP left allocated); provision and base again must replace the lease, boot new servers,
   attach the recorded floating IP to the new jump host (no second one) and reach them.
6. playbooks/teardown.yaml (the fake Blazar must report the lease deleted), a second
   teardown (nothing left: it must succeed), then `harness teardown` (unless --keep).

Before run 1, a preflight on the empty fake cloud: a restricted application credential
must stop provisioning before anything is created, and a provision that fails half-way
(an unknown flavor) must be torn down, twice.  Run 1's provision runs with the controller
in TZ=America/Chicago and the lease task alone in TZ=Asia/Tokyo: the lease window the
fake Blazar receives must start now and last the hours asked.

The shipped code comes from a snapshot of the project's bundle files taken at the start
(iot_app_local_source_dir), so that edits made in the checkout while the rehearsal runs
do not count as code changes and run 3's change never touches the checkout.

Writes results/rehearsal/summary.json (timings per stage, recaps, changed tasks, checks)
and results/rehearsal/logs/ (each ansible-playbook's output and its events).  Needs root
(Docker, debootstrap) and the project's .venv.  Exit status 0 when every check passed.

One module of about 800 lines on purpose: the steps share one state (the harness's
settings, the generated inventory, the stand-ins, the summary) and read top to bottom
in the order they run; `Playbook` (one ansible-playbook run, its recap and its events)
is the part tests/rehearsal/test_rehearsal.py checks on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # python tests/rehearsal/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import yaml  # noqa: E402

from common.settings import RehearsalSettings  # noqa: E402
from common.untar import extract_all  # noqa: E402
from tests.rehearsal import docker, harness, services  # noqa: E402

log = logging.getLogger("rehearsal.run")

ROOT = harness.ROOT
HERE = harness.HERE
RESULTS = ROOT / "results" / "rehearsal"
LOGS = RESULTS / "logs"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
STAGES = ["provision", "base", "app", "kafka", "store", "inference", "consumers", "monitoring", "producer",
          "experiment", "analyze"]
# The tags of the plays that install the real Kafka, MongoDB and CouchDB servers, Prometheus
# and Grafana: out of reach here (PostgreSQL, the distribution's package, is not).
SERVER_TAGS = "kafka_server,mongodb_server,couchdb_server,monitoring_server"
# The stores the rehearsal can run (--store): MongoDB's stand-in nx-27017, or the real
# PostgreSQL of the VM image (roles/postgresql for real).  CouchDB: check mode only.
STORES = ("mongodb", "postgres")
MIRROR_PORT = 8766
# The lease length run 1 asks for, on the command line (-e: a string).
LEASE_HOURS = 48
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+"
                   r"skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)", re.M)


class Failed(AssertionError):
    pass


# --------------------------------------------------------------------------- helpers
def group_defaults() -> dict:
    return yaml.safe_load((ROOT / "inventory/group_vars/all/main.yml").read_text()) or {}


def role_defaults(role: str) -> dict:
    return yaml.safe_load((ROOT / "roles" / role / "defaults/main.yml").read_text()) or {}


def play_stages() -> dict[str, str]:
    """The name of every play of the master playbook -> its stage."""
    out = {}
    for stage in STAGES:
        for play in yaml.safe_load((ROOT / "playbooks" / f"{stage}.yaml").read_text()) or []:
            out[play["name"].strip()] = stage
    return out


def parse_recap(text: str) -> dict[str, dict]:
    keys = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
    tail = text[text.rfind("PLAY RECAP"):] if "PLAY RECAP" in text else ""
    return {m.group(1): dict(zip(keys, map(int, m.groups()[1:]))) for m in RECAP.finditer(tail)}


class Playbook:
    """One ansible-playbook run: output streamed to the console and to logs/<label>.log,
    events (tests/rehearsal/callback_plugins) to logs/<label>.events.jsonl, stopped after
    timeout_s (hang guard)."""

    def __init__(self, label: str, argv: list[str], env: dict, timeout_s: float):
        self.label, self.argv, self.env, self.timeout_s = label, argv, env, timeout_s
        self.log = LOGS / f"{label}.log"
        self.events_file = LOGS / f"{label}.events.jsonl"
        self.rc: int | None = None
        self.timed_out = False
        self.seconds = 0.0
        self.text = ""
        self.started = 0.0

    def run(self) -> Playbook:
        self.events_file.unlink(missing_ok=True)
        env = {**self.env, "IOT_REHEARSAL_EVENTS": str(self.events_file)}
        log.info("[%s] + %s", self.label, " ".join(self.argv))
        self.started = time.time()
        t0 = time.monotonic()
        proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True, errors="replace")
        done = threading.Event()

        def guard():
            if done.wait(self.timeout_s):
                return
            self.timed_out = True
            log.error("[%s] still running after %.0fs: stopping it", self.label, self.timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            if not done.wait(30):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        threading.Thread(target=guard, daemon=True).start()
        chunks = []
        try:
            with open(self.log, "w") as out:
                for line in proc.stdout:
                    out.write(line)
                    out.flush()
                    chunks.append(line)
                    sys.stdout.write(f"[{self.label}] {line}")
                    sys.stdout.flush()
            self.rc = proc.wait()
        finally:
            done.set()
        self.seconds = time.monotonic() - t0
        self.text = "".join(chunks)
        log.info("[%s] exit %s after %.0fs", self.label, self.rc, self.seconds)
        return self

    @property
    def recap(self) -> dict[str, dict]:
        return parse_recap(self.text)

    @property
    def events(self) -> list[dict]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line.strip()]

    def stage_times(self) -> dict[str, float]:
        """Seconds per stage: from a stage's first play start to the next stage's (or the end)."""
        stages = play_stages()
        plays: list[list] = []  # [stage, start, ran a task]
        for e in self.events:
            if e["event"] == "play":
                plays.append([stages.get(e["play"], e["play"]), e["t"], False])
            elif e["event"] == "result" and plays and e["task"] != "Gathering Facts" \
                    and "Validating arguments against arg spec" not in e["task"]:
                plays[-1][2] = True
        end = self.started + self.seconds
        out: dict[str, float] = {}
        for i, (stage, t, ran) in enumerate(plays):
            if ran:  # plays whose tasks the tags left out are not stages of this run
                nxt = plays[i + 1][1] if i + 1 < len(plays) else end
                out[stage] = round(out.get(stage, 0.0) + nxt - t, 1)
        return out

    def results(self) -> list[dict]:
        return [e for e in self.events if e["event"] == "result"]

    def changed_tasks(self) -> list[dict]:
        return [{"role": e["role"] or f"play: {e['play']}", "task": e["task"], "host": e["host"],
                 "handler": e["handler"], "items": e["changed_items"], "play": e["play"]}
                for e in self.results() if e["changed"] and e["status"] == "ok"]

    def summary(self) -> dict:
        return {"rc": self.rc, "timed_out": self.timed_out, "seconds": round(self.seconds, 1),
                "stages_s": self.stage_times(), "recap": self.recap, "log": str(self.log.relative_to(ROOT))}

    def check(self) -> None:
        if self.timed_out:
            raise Failed(f"{self.label}: ansible-playbook did not finish within {self.timeout_s:.0f}s "
                         f"(see {self.log})")
        bad = {h: r for h, r in self.recap.items() if r["failed"] or r["unreachable"]}
        if self.rc != 0 or bad or not self.recap:
            failed = [f"{e['host']}: {e['role'] or e['play']} / {e['task']}: {e['msg']}"
                      for e in self.results() if e["status"] in ("failed", "unreachable")]
            raise Failed(f"{self.label}: ansible-playbook exit {self.rc}, recap {bad or self.recap}; "
                         f"failed tasks: {failed or '-'} (see {self.log})")


# --------------------------------------------------------------------------- the rehearsal
class Rehearsal:
    # Paths on the VMs: the roles' defaults (iot_app_dir, iot_app_venv, producer_output_dir,
    # iot_app_config_dir) and the services whose restart an upgrade must show.
    APP_DIR = "/opt/iot-pipeline/app"
    VENV = "/opt/iot-pipeline/venv"
    PRODUCER_OUT = "/var/lib/iot-pipeline/producer"
    PRODUCER_ENV = "/etc/iot-pipeline/iot-producer.env"
    UNITS = {"inference": ["iot-inference"], "consumers": ["iot-inference-consumer", "iot-db-consumer"]}

    def __init__(self, args):
        self.args = args
        run_dir = Path(args.run_dir)
        self.s = harness.Settings.load(run_dir) or harness.Settings(run_dir=str(run_dir))
        self.prefix = group_defaults().get("iot_name_prefix", "iot-pipeline")
        self.deploy_root = harness.deploy_root()
        self.deploy_dir = self.deploy_root / self.prefix
        self.source = self.s.dir / "source"
        self.mirror: subprocess.Popen | None = None
        self.stand_in: dict = {}
        self.results_before: set[Path] = set()
        self.summary: dict = {"ok": False, "failures": [], "timings_s": {}, "started_at": time.time(),
                              "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
                              "settings": {k: v for k, v in vars(args).items()}}
        self.timings = self.summary["timings_s"]

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.monotonic()
        log.info("==== %s", name)
        try:
            yield
        finally:
            self.timings[name] = round(time.monotonic() - t0, 1)
            log.info("==== %s: %.0fs", name, self.timings[name])

    def env(self) -> dict:
        env = {**os.environ, **harness.environment(self.s)}
        env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", ANSIBLE_RETRY_FILES_ENABLED="0",
                   ANSIBLE_CALLBACK_PLUGINS=str(HERE / "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="rehearsal_events", PYTHONUNBUFFERED="1")
        return env

    def run_vars(self) -> Path:
        """The rehearsal's own settings, beside the harness's extra-vars.yml."""
        path = self.s.dir / "run-vars.yml"
        values = {
            # The snapshot the bundle is made from (see the module docstring).
            "iot_app_local_source_dir": str(self.source),
            # A short sweep.
            "experiment_producers": self.args.producers,
            "experiment_images": self.args.images,
            "experiment_rate": self.args.rate,
            "experiment_poll": 10,
            # The store of every run (stage store, the clients' settings).
            "iot_store": self.args.store,
        }
        path.write_text("---\n# Written by tests/rehearsal/run.py\n"
                        + "".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
        return path

    def playbook(self, label: str, args: list[str], timeout_s: float,
                 playbook: str = "playbook_master.yaml", env: dict | None = None) -> Playbook:
        argv = [str(ANSIBLE_PLAYBOOK), playbook, "-e", f"@{self.s.extra_vars_file}", "-e", f"@{self.run_vars()}",
                *args]
        return Playbook(label, argv, {**self.env(), **(env or {})}, timeout_s * self.args.timeout_factor).run()

    def openstack(self, *args: str) -> subprocess.CompletedProcess:
        """The fake `openstack` CLI, as the roles call it."""
        return subprocess.run([sys.executable, str(harness.BIN / "openstack"), "--os-cloud", self.s.cloud, *args],
                              env=self.env(), capture_output=True, text=True, timeout=60)

    def lease_window(self, name: str, hours: int, before: float, after: float) -> dict:
        """The window the fake Blazar received for lease `name`: it must start now (between
        `before` and `after`, epoch seconds) and last `hours` (to the minute: --end-date has
        no seconds)."""
        st = json.loads(self.s.state_file.read_text())
        lease = next((x for x in st.get("leases", {}).values() if x["name"] == name), None)
        if lease is None:
            raise Failed(f"lease window: the fake Blazar has no lease {name}")
        utc = datetime.timezone.utc
        start, end = (datetime.datetime.strptime(lease[k], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=utc).timestamp()
                      for k in ("start_date", "end_date"))
        out = {"lease": name, "start_date": lease["start_date"], "end_date": lease["end_date"],
               "hours": round((end - start) / 3600, 3), "asked_hours": hours,
               "start_after_run_began_s": round(start - before, 1)}
        if not before - 60 <= start <= after + 60:
            raise Failed(f"lease window: {name} starts at {lease['start_date']} UTC, not now ({out})")
        if not hours * 3600 - 120 <= end - start <= hours * 3600:
            raise Failed(f"lease window: {name} lasts {out['hours']} h, not the {hours} h asked ({out})")
        return out

    def lease_in_time_zone(self, tz: str, hours: int = 48) -> dict:
        """The provision role's real lease task with the controller in time zone `tz` and the
        hours as -e passes them (a string); the lease is deleted afterwards."""
        name = f"{self.prefix}-tz-{tz.replace('/', '-').lower()}"
        before = time.time()
        pb = self.playbook(f"lease-window-{tz.replace('/', '-')}", [
            "-e", "provision_reservation=create", "-e", f"provision_lease={name}",
            "-e", f"provision_lease_hours={hours}"], timeout_s=600, playbook="tests/rehearsal/lease-window.yml",
            env={"TZ": tz})
        pb.check()
        try:
            return {"tz": tz, **self.lease_window(name, hours, before, time.time())}
        finally:
            self.openstack("reservation", "lease", "delete", name)

    def inventory(self) -> dict:
        inv = yaml.safe_load((self.deploy_root / "hosts.yml").read_text())
        groups = {g: sorted((v or {}).get("hosts") or {}) for g, v in inv["all"]["children"].items()}
        return {"groups": groups, "vars": inv["all"]["vars"]}

    def container(self, server: str) -> str:
        """The container of a server (the fake cloud's record)."""
        st = json.loads(self.s.state_file.read_text())
        for rec in st.get("servers", {}).values():
            if rec["name"] == server:
                return rec["_container"]
        raise Failed(f"server {server} is not in the fake cloud")

    def vm(self, server: str, script: str, timeout: float = 120, check: bool = True) -> str:
        proc = docker.docker("exec", "-i", self.container(server), "bash", "-euo", "pipefail", "-s",
                             input=script, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            raise Failed(f"on {server}: {script.strip()[:200]!r} failed ({proc.returncode}): {proc.stderr[-1500:]}")
        return proc.stdout

    def ssh(self, server: str, command: str, timeout: float = 120, input: str | None = None) -> str:
        """Through the deployment's own ssh_config, as `make ssh` does."""
        proc = subprocess.run(["ssh", "-F", str(self.deploy_dir / "ssh_config"), "-o", "BatchMode=yes", server,
                               command], capture_output=True, text=True, timeout=timeout, input=input)
        if proc.returncode != 0:
            raise Failed(f"ssh {server} {command[:160]!r} failed ({proc.returncode}): {proc.stderr[-1500:]}")
        return proc.stdout

    def results_root(self) -> Path:
        return self.deploy_dir / "results"

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        with self.step("harness up"):
            harness.up(self.s, fresh=True)
        # Controller artefacts of an earlier rehearsal (its results stay).
        for stale in (self.deploy_root / "hosts.yml", self.deploy_dir / "ssh_config",
                      self.deploy_dir / "known_hosts", self.deploy_dir / "bundle"):
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink(missing_ok=True)
        # The snapshot of the project the bundle is made from: scripts/bundle.py's own files.
        sys.path.insert(0, str(ROOT / "scripts"))
        import bundle

        shutil.rmtree(self.source, ignore_errors=True)
        for rel in [*bundle.members(ROOT), Path("scripts/bundle.py")]:
            (self.source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, self.source / rel)
        self.results_before = set(self.results_root().glob("cloud-*"))

    def stand_ins(self) -> dict:
        """What the kafka and (with --store mongodb) store stages would leave: a broker with
        the topics and a database, each on its server's private IP, reachable through the
        host firewall.  With --store postgres the store stage runs for real (run1)."""
        inv = self.inventory()
        kafka = inv["groups"]["kafka"][0]
        mongodb = inv["groups"]["mongodb"][0]
        cidr = inv["vars"]["iot_private_cidr"]
        # The kafka and mongodb roles open their client ports to the private network (base
        # enabled ufw with incoming traffic denied).
        opened = [(kafka, 9092, "kafka")] + ([(mongodb, 27017, "mongodb")] if self.args.store == "mongodb" else [])
        for server, port, comment in opened:
            self.vm(server, f"ufw allow from {cidr} to any port {port} proto tcp comment {comment}")
        bootstrap = services.start_tansu(self.container(kafka), self.s.network, self.s.wheel_url)
        mongo_uri = (services.start_nx27017(self.container(mongodb), self.s.network, self.s.wheel_url)
                     if self.args.store == "mongodb" else None)
        from common.kafka_io import ensure_topics
        from common.settings import KafkaSettings

        g = group_defaults()
        settings = KafkaSettings(kafka_bootstrap_servers=bootstrap, images_topic=g["iot_images_topic"],
                                 results_topic=g["iot_results_topic"], dlq_topic=g["iot_dlq_topic"],
                                 images_partitions=g["iot_images_partitions"],
                                 results_partitions=g["iot_results_partitions"])
        created = ensure_topics(settings, timeout_s=120)
        return {"kafka": kafka, "mongodb": mongodb, "bootstrap": bootstrap, "mongo_uri": mongo_uri,
                "topics_created": created}

    def start_mirror(self) -> str:
        """Stand-ins for the downloads the kafka, mongodb and couchdb roles make in check mode
        (Apache's archive, which get_url only HEADs there: the role pins its SHA-512;
        MongoDB's and CouchDB's signing keys), served on the gateway."""
        mirror = self.s.dir / "mirror"
        k, m = role_defaults("kafka"), role_defaults("mongodb")
        name = f"kafka_{k['kafka_scala_version']}-{k['kafka_version']}.tgz"
        archive = mirror / "kafka" / str(k["kafka_version"]) / name
        archive.parent.mkdir(parents=True, exist_ok=True)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = b"Stand-in for the Kafka release archive (rehearsal, check mode only).\n"
            info = tarfile.TarInfo(f"{name[:-4]}/README.rehearsal")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        archive.write_bytes(raw.getvalue())
        for key in (mirror / "mongodb" / f"server-{m['mongodb_version']}.asc", mirror / "couchdb" / "keys.asc"):
            key.parent.mkdir(parents=True, exist_ok=True)
            key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n(rehearsal stand-in)\n"
                           "-----END PGP PUBLIC KEY BLOCK-----\n")
        if self.mirror is None:
            self.mirror = subprocess.Popen([sys.executable, "-m", "http.server", str(MIRROR_PORT), "--bind",
                                            self.s.gateway, "--directory", str(mirror)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
            services.wait_port(self.s.gateway, MIRROR_PORT, 20)
        return f"http://{self.s.gateway}:{MIRROR_PORT}"

    def check_server_plays(self) -> Playbook:
        """The kafka, store and monitoring plays in --check mode, MongoDB as the store (whatever
        --store is: check mode changes nothing on the store VM), then the store play again
        with CouchDB, whose repository is out of reach too."""
        base = self.start_mirror()
        version = role_defaults("mongodb")["mongodb_version"]
        pb = self.playbook("run1-check-kafka-mongodb", [
            "--check", "--tags", "kafka,store,monitoring", "-e", "iot_store=mongodb",
            # kafka_mirror is the kafka role's input for a mirror; mongodb_apt_key_url is
            # computed in the mongodb role's vars/main.yml: overridden for this check only.
            "-e", f"kafka_mirror={base}/kafka",
            "-e", f"mongodb_apt_key_url={base}/mongodb/server-{version}.asc"], timeout_s=1800)
        pb.check()
        couch = self.playbook("run1-check-couchdb", [
            "--check", "--tags", "store", "-e", "iot_store=couchdb",
            "-e", f"couchdb_apt_key_url={base}/couchdb/keys.asc"], timeout_s=1800)
        couch.check()
        played = {e["play"] for p in (pb, couch) for e in p.events if e["event"] == "play"}
        for want in ("Install Kafka", "Install MongoDB", "Install CouchDB", "Install Prometheus and Grafana"):
            if want not in played:
                raise Failed(f"check mode: play {want!r} did not run (plays: {sorted(played)})")
        ran = {e["role"] for p in (pb, couch) for e in p.results() if e["role"] and e["status"] != "skipped"}
        if not {"mongodb", "couchdb"} <= ran:
            raise Failed(f"check mode: the mongodb or couchdb role ran no task (roles that ran: {sorted(ran)})")
        # The monitoring role rescues its own failures: in check mode there must be none.
        rescued = [f"{e['task']}: {e['msg']}" for p in (pb, couch) for e in p.results() if e["status"] == "failed"]
        if rescued:
            raise Failed(f"check mode: tasks failed (rescued): {rescued}")
        return pb

    def store_play(self) -> Playbook:
        """--store postgres: the store stage for real (roles/postgresql: the image's Debian
        package, the cluster's settings, pg_hba, the role and the database)."""
        inv = self.inventory()
        host = inv["groups"]["mongodb"][0]
        pb = self.playbook("run1-store-postgresql", ["--tags", "store"], timeout_s=1800)
        pb.check()
        if not any(e["role"] == "postgresql" and e["status"] == "ok" for e in pb.results()):
            raise Failed(f"store: the postgresql role did not run on {host} (see {pb.log})")
        # Listening on the private IP, for the application role only, with a password.
        listening = self.vm(host, "ss -Hltn '( sport = :5432 )'")
        ip = self.private_ip(host)
        if f"{ip}:5432" not in listening or "0.0.0.0:5432" in listening or "*:5432" in listening:
            raise Failed(f"store: PostgreSQL does not listen on {ip}:5432 only: {listening}")
        return pb

    def private_ip(self, server: str) -> str:
        inv = yaml.safe_load((self.deploy_root / "hosts.yml").read_text())
        for group in inv["all"]["children"].values():
            if server in ((group or {}).get("hosts") or {}):
                return group["hosts"][server]["iot_private_ip"]
        raise Failed(f"{server} is not in the generated inventory")

    # ------------------------------------------------------------------ MongoDB checks
    def stored(self, ids: list[str], timeout_s: float) -> tuple[int, list[str]]:
        """(ids stored with a prediction, the missing ones), polled until all are there or timeout."""
        if self.args.store == "postgres":
            return self.stored_in_postgres(ids, timeout_s)
        import pymongo

        client = pymongo.MongoClient(self.stand_in["mongo_uri"], serverSelectionTimeoutMS=10000)
        try:
            coll = client[group_defaults().get("iot_mongodb_database", "iot")]["images"]
            deadline = time.monotonic() + timeout_s
            while True:
                complete = set()
                for i in range(0, len(ids), 500):
                    for doc in coll.find({"_id": {"$in": ids[i:i + 500]}}, {"_id": 1, "prediction": 1, "image": 1}):
                        if doc.get("prediction") and doc.get("image"):
                            complete.add(doc["_id"])
                missing = [i for i in ids if i not in complete]
                if not missing or time.monotonic() > deadline:
                    return len(complete), missing
                time.sleep(3)
        finally:
            client.close()

    def stored_in_postgres(self, ids: list[str], timeout_s: float) -> tuple[int, list[str]]:
        """The same in PostgreSQL's iot_image_data, asked with psql on the store VM (as the
        cluster's superuser, through its Unix socket)."""
        host = self.inventory()["groups"]["mongodb"][0]
        database = group_defaults().get("iot_postgresql_database", "iot")
        deadline = time.monotonic() + timeout_s
        while True:
            complete = set()
            for i in range(0, len(ids), 500):
                values = ",".join("'" + x.replace("'", "''") + "'" for x in ids[i:i + 500])
                query = (f"SELECT image_id FROM iot_image_data WHERE image_id IN ({values}) "
                         f"AND prediction IS NOT NULL AND prediction <> '' AND image IS NOT NULL")
                out = self.vm(host, f"runuser -u postgres -- psql -X -q -At -v ON_ERROR_STOP=1 -d {database} <<'SQL'\n"
                                    f"{query};\nSQL\n", check=False)
                complete.update(line.strip() for line in out.splitlines() if line.strip())
            missing = [i for i in ids if i not in complete]
            if not missing or time.monotonic() > deadline:
                return len(complete), missing
            time.sleep(3)

    def producers_report(self, root: Path, timeout_s: float) -> dict:
        """Every producer run under root (a producer.json and its latencies.csv): each image it
        sent (acknowledged by the broker) must be in MongoDB with a prediction."""
        out = {"producers": 0, "attempted": 0, "acknowledged": 0, "failed": 0}
        ids: list[str] = []
        sent_at: list[float] = []
        for d in sorted(p.parent for p in root.rglob("producer.json")):
            record = json.loads((d / "producer.json").read_text())
            with open(d / "latencies.csv", newline="") as fh:
                rows = list(csv.DictReader(fh))
            failed = set(record.get("failed_images") or {})
            out["producers"] += 1
            out["attempted"] += int(record.get("attempted", len(rows)))
            out["acknowledged"] += int(record.get("acknowledged", len(rows) - len(failed)))
            out["failed"] += len(failed)
            ids += [r["image_id"] for r in rows if r["image_id"] not in failed]
            sent_at += [float(r["sent_at"]) for r in rows if r.get("sent_at")]
        out["images_sent"] = len(ids)
        out["first_sent_at"], out["last_sent_at"] = (min(sent_at), max(sent_at)) if sent_at else (None, None)
        complete, missing = self.stored(ids, timeout_s)
        out["stored_with_prediction"] = complete
        out["missing_count"] = len(missing)
        out["missing"] = missing[:50]
        self.sent_at = sent_at
        return out

    # ------------------------------------------------------------------ preflight
    def set_credential(self, unrestricted: bool) -> None:
        """Ticks (or unticks) "Unrestricted" on the fake cloud's application credential."""
        fake = harness.load_fake_cloud()
        with fake.State(str(self.s.state_file)) as st:
            fake.application_credential(st)["unrestricted"] = unrestricted
            st.save()

    def cloud_resources(self) -> dict:
        st = json.loads(self.s.state_file.read_text())
        return {k: sorted(v.get("name", i) for i, v in st.get(k, {}).items())
                for k in ("keypairs", "security_groups", "servers", "floating_ips", "leases")}

    def preflight(self) -> None:
        """On the empty fake cloud, before run 1: a restricted application credential stops
        provisioning before anything is created; a provision that fails after the key pair
        and the security group (a flavor the site lacks) is torn down, and a second teardown,
        with nothing left, succeeds too (no lease: blazarclient's "Unable to find resource")."""
        pre = self.summary["preflight"] = {}
        self.set_credential(unrestricted=False)
        try:
            with self.step("preflight: provision with a restricted application credential"):
                pb = self.playbook("preflight-restricted-credential", ["--tags", "provision"], timeout_s=900)
        finally:
            self.set_credential(unrestricted=True)
        left = self.cloud_resources()
        pre["restricted_credential"] = {"rc": pb.rc, "created": left}
        if pb.rc == 0 or "is restricted, and Blazar cannot create a lease with it" not in pb.text:
            raise Failed(f"preflight: a restricted credential did not stop provisioning (exit {pb.rc}, see {pb.log})")
        if any(left.values()):
            raise Failed(f"preflight: a restricted credential stopped provisioning only after creating {left}")
        with self.step("preflight: a provision that fails (flavor m9.nowhere), then teardown twice"):
            pb = self.playbook("preflight-failed-provision", ["--tags", "provision", "-e", "provision_flavor=m9.nowhere"],
                               timeout_s=900)
            created = self.cloud_resources()
            teardowns = [self.playbook(f"preflight-teardown-{i}", [], timeout_s=900, playbook="playbooks/teardown.yaml")
                         for i in (1, 2)]
        pre["failed_provision"] = {"rc": pb.rc, "created": created, "teardowns": [t.summary() for t in teardowns],
                                   "left": self.cloud_resources()}
        if pb.rc == 0 or "does not exist on this site" not in pb.text or not created["security_groups"]:
            raise Failed(f"preflight: the provision with flavor m9.nowhere did not fail at the flavor check "
                         f"after creating the security group (exit {pb.rc}, {created}, see {pb.log})")
        for t in teardowns:
            t.check()
        if any(self.cloud_resources().values()):
            raise Failed(f"preflight: teardown left {self.cloud_resources()}")

    # ------------------------------------------------------------------ run 1
    def run1(self) -> None:
        r1 = self.summary["run1"] = {}
        # The controller in Chicago (UTC-6) and the hours as -e passes them: a string.
        before = time.time()
        with self.step("run 1 (cold): provision, base, app (controller TZ=America/Chicago)"):
            a = self.playbook("run1-provision-base-app", ["--tags", "provision,base,app",
                                                          "-e", f"provision_lease_hours={LEASE_HOURS}"],
                              timeout_s=5400, env={"TZ": "America/Chicago"})
        r1["provision_base_app"] = a.summary()
        self.timings.update({f"run 1 stage: {k}": v for k, v in a.stage_times().items()})
        a.check()
        r1["lease_window"] = [{"tz": "America/Chicago", **self.lease_window(f"{self.prefix}-lease", LEASE_HOURS,
                                                                             before, time.time())}]
        with self.step("run 1: the lease task with the controller in Tokyo (UTC+9)"):
            r1["lease_window"].append(self.lease_in_time_zone("Asia/Tokyo"))
        with self.step(f"run 1 (cold): stand-ins for kafka{', mongodb' * (self.args.store == 'mongodb')} "
                       f"(harness services, ports, topics)"):
            self.stand_in = self.stand_ins()
        r1["stand_ins"] = self.stand_in
        if self.args.store == "postgres":
            with self.step("run 1 (cold): store stage (PostgreSQL) for real"):
                p = self.store_play()
            r1["store"] = p.summary()
            self.timings.update({f"run 1 stage: {k}": v for k, v in p.stage_times().items()})
        with self.step("run 1 (cold): kafka, store (MongoDB, CouchDB), monitoring plays in --check mode"):
            c = self.check_server_plays()
        r1["check_mode"] = c.summary()
        with self.step("run 1 (cold): inference, consumers, monitoring, producer, experiment, analyze"):
            b = self.playbook("run1-inference-to-analyze",
                              ["--tags", "inference,consumers,monitoring,producer,experiment,analyze"],
                              timeout_s=5400)
        r1["inference_to_analyze"] = b.summary()
        self.timings.update({f"run 1 stage: {k}": v for k, v in b.stage_times().items()})
        b.check()
        with self.step("run 1: monitoring checked"):
            r1["monitoring"] = self.verify_monitoring(b)
        with self.step("run 1: clients without credentials refused"):
            r1["refusals"] = self.verify_refusals(a.text + c.text)
        with self.step(f"run 1: images checked in the store ({self.args.store})"):
            self.verify_run1()

    def ports_not_in_security_group(self, ports: list[int]) -> list[int]:
        """Of `ports`, those no ingress rule of the deployment's security group opens to the
        group's own members (remote group)."""
        st = json.loads(self.s.state_file.read_text())
        sg = next((g for g in st.get("security_groups", {}).values() if g["name"] == f"{self.prefix}-sg"), None)
        if sg is None:
            return ports
        rules = [r for r in sg["security_group_rules"] if r["direction"] == "ingress" and r.get("protocol") == "tcp"
                 and r.get("remote_group_id") == sg["id"]]
        return [p for p in ports if not any(r["port_range_min"] <= p <= r["port_range_max"] for r in rules)]

    def prometheus_targets(self, host: str, timeout_s: float = 60) -> dict:
        """Each scrape job's health on the monitoring VM's Prometheus (all up, or the state
        after timeout_s); jobs with several targets report the worst."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.vm(host, "curl -sf http://127.0.0.1:9090/api/v1/targets || true", check=False)
            jobs: dict = {}
            with contextlib.suppress(ValueError, KeyError):
                for t in json.loads(text)["data"]["activeTargets"]:
                    job = jobs.setdefault(t["labels"]["job"], {"health": "up", "errors": []})
                    if t["health"] != "up":
                        job["health"] = t["health"]
                        job["errors"].append(f"{t['scrapeUrl']}: {t.get('lastError', '')}"[:200])
            if (jobs and all(j["health"] == "up" for name, j in jobs.items() if name != "producer")) \
                    or time.monotonic() > deadline:
                return jobs
            time.sleep(5)

    def verify_monitoring(self, pb: Playbook) -> dict:
        """The monitoring stage ran for real: Prometheus (the image's package) configured by
        the role, its configuration accepted by the VM's own promtool, running; Grafana's
        repository is out of reach here, so the stage's failure must have been reported
        (by the role's rescue and again by the analyze stage) without stopping the stages
        after it, which the experiment's results (verify_run1) show."""
        host = self.inventory()["groups"]["mongodb"][0]
        results = [e for e in pb.results() if e["role"] == "monitoring"]
        failed = [{"task": e["task"], "msg": e["msg"]} for e in results if e["status"] == "failed"]
        rescued = any(e["task"] == "Remember what failed" and e["status"] == "ok" for e in results)
        state = self.vm(host, "systemctl is-active prometheus || true").strip()
        config = self.vm(host, "cat /etc/prometheus/prometheus.yml", check=False)
        out = {"host": host, "failed": failed, "rescued": rescued, "prometheus": state,
               "reported_at_the_end": "MONITORING FAILED" in pb.text.split("PLAY [Analyse the latest cloud run]")[-1]}
        problems = []
        if not any(e["task"] == "Write Prometheus's scrape configuration" and e["status"] == "ok" for e in results):
            problems.append("the scrape configuration was not written (promtool on the VM refused it?)")
        if "job_name: inference" not in config:
            problems.append("/etc/prometheus/prometheus.yml is not the role's")
        if state != "active":
            problems.append(f"prometheus is {state!r} on {host}")
        if failed and not (rescued and out["reported_at_the_end"]):
            problems.append(f"monitoring failed ({failed}) without being reported by the rescue and at the end")
        # What may fail here is the way out (Grafana's repository), not the VM: a module whose
        # library the base stage did not install (deb822_repository needs python3-debian).
        missing = [f for f in failed if re.search(r"(?i)failed to import|python3?-debian|no module named", f["msg"])]
        if missing:
            problems.append(f"a module lacks its library on the VM: {missing}")
        # Every port Prometheus scrapes on another VM must be open in the security group to
        # its members (the fake records the rules, Neutron would enforce them) ...
        targets = sorted({t for t in re.findall(r"[\d.]+:(\d+)", re.sub(r"127\.0\.0\.1:\d+", "", config))})
        out["scraped_ports_outside_the_group"] = self.ports_not_in_security_group([int(t) for t in targets])
        if out["scraped_ports_outside_the_group"]:
            problems.append(f"Prometheus scrapes ports the security group does not open to its members: "
                            f"{out['scraped_ports_outside_the_group']}")
        # ... and ufw (enforced in the containers) must let the scrapes through.
        out["targets"] = health = self.prometheus_targets(host) if state == "active" else {}
        down = {job: h for job, h in health.items() if job in ("inference", "inference-consumer", "db-consumer")
                and h["health"] != "up"}
        if down:
            problems.append(f"Prometheus cannot scrape {down}")
        if problems:
            raise Failed("monitoring: " + "; ".join(problems))
        return out

    def http_status(self, server: str, url: str, token: str | None = None) -> str:
        """The HTTP status of a GET from `server` ("000 rc=7": the connection was refused).
        The token goes through the script on stdin, never a command line."""
        header = f"-H 'Authorization: Bearer {token}' " if token is not None else ""
        return self.vm(server, f"curl -s -o /dev/null --max-time 10 -w '%{{http_code}}' {header}'{url}' "
                               f"|| echo \" rc=$?\"", check=False).strip()

    def verify_refusals(self, run1_text: str) -> dict:
        """The secure default, as far as the rehearsal runs the real servers: a client on
        another VM of the private network (the producer VM, in the place of another tenant
        past the security group) without credentials is refused by each service that runs
        for real here.  What the stand-ins cannot show is recorded under "not_proven"."""
        inv = self.inventory()["groups"]
        client, inference, monitoring = inv["producers"][0], inv["inference"][0], inv["mongodb"][0]
        token = (yaml.safe_load(self.s.extra_vars_file.read_text()) or {}).get("vault_inference_token")
        url = f"http://{self.private_ip(inference)}:{role_defaults('inference')['inference_port']}/v1/model"
        prom_port = role_defaults("monitoring")["monitoring_prometheus_port"]
        out = {"client": client, "inference": {
            "url": url, "without_token": self.http_status(client, url),
            "wrong_token": self.http_status(client, url, "not-the-token"),
            "with_token": self.http_status(client, url, token) if token else "no vault_inference_token"}}
        # Prometheus has no login: it listens on the monitoring VM's loopback only (from another VM
        # the connection is refused, or dropped by ufw: curl's 000 either way).
        prom = f"http://{self.private_ip(monitoring)}:{prom_port}/-/ready"
        out["prometheus"] = {"url": prom, "from_another_vm": self.http_status(client, prom),
                             "on_its_vm_loopback": self.http_status(monitoring, f"http://127.0.0.1:{prom_port}/-/ready"),
                             "listening": self.vm(monitoring, f"ss -Hltn 'sport = :{prom_port}' | awk '{{print $4}}'",
                                                  check=False).split()}
        # The switch for a benchmark without TLS (the stand-in broker's case) must warn.
        out["plaintext_warnings"] = {
            "kafka role": "WARNING: iot_kafka_security_enabled is false" in run1_text,
            "clients (iot_app)": "the Kafka clients use PLAINTEXT (iot_kafka_security_enabled false)" in run1_text}
        out["not_proven"] = {
            "kafka": "tansu (the stand-in broker) speaks PLAINTEXT only, without SASL users or ACLs: the deployment "
                     "runs with iot_kafka_security_enabled false here; the secure broker is checked offline "
                     "(tests/deploy/test_kafka_security.py) and in check mode",
            "mongodb": "nx-27017 has no authentication (iot_app_mongodb_auth false here); the mongodb role, which "
                       "turns authorization on, runs in check mode only",
            "grafana": "Grafana's repository is out of reach, so Grafana is not installed; its settings "
                       "(loopback, no anonymous access, the vault's password) are checked offline",
            "dashboard": "not deployed on the VMs"}
        problems = []
        i = out["inference"]
        if i["without_token"] != "401" or i["wrong_token"] != "401":
            problems.append(f"the inference API answered {i['without_token']} without a token and "
                            f"{i['wrong_token']} with a wrong one (401 expected) at {url}")
        if i["with_token"] != "200":
            problems.append(f"the inference API answered {i['with_token']} with the vault's token (200 expected)")
        p = out["prometheus"]
        if not p["from_another_vm"].startswith("000"):
            problems.append(f"Prometheus answered {p['from_another_vm']} from {client} at {prom}: it must listen "
                            f"on loopback only (listening on {p['listening']})")
        if p["on_its_vm_loopback"] != "200":
            problems.append(f"Prometheus does not answer on its VM's loopback ({p['on_its_vm_loopback']})")
        # ufw drops the connection too: the binding itself must be loopback only.
        if not p["listening"] or any(not a.startswith(("127.", "[::1]")) for a in p["listening"]):
            problems.append(f"Prometheus listens on {p['listening']}, not on loopback only")
        missing = [k for k, seen in out["plaintext_warnings"].items() if not seen]
        if missing:
            problems.append(f"Kafka runs PLAINTEXT here without the warning of: {missing}")
        if problems:
            raise Failed("security: " + "; ".join(problems))
        return out

    def verify_run1(self) -> None:
        new = sorted(set(self.results_root().glob("cloud-*")) - self.results_before)
        if len(new) != 1:
            raise Failed(f"expected one new cloud-* run in {self.results_root()}, found {new}")
        run = new[0]
        cdf = run / "report" / "latency_cdf.png"
        record = json.loads((run / "experiment.json").read_text())
        report = self.producers_report(run, timeout_s=120)
        self.summary["run1"]["experiment"] = {
            "dir": str(run.relative_to(ROOT)), "latency_cdf": str(cdf.relative_to(ROOT)),
            "latency_cdf_exists": cdf.is_file() and cdf.stat().st_size > 0,
            "runs": [{"producers": r["producers"],
                      **{k: r["summary"].get(k) for k in ("sent", "results", "stored_with_prediction", "lost",
                                                          "duplicate_documents", "model")},
                      "e2e_p50_ms": (r["summary"].get("e2e_ms") or {}).get("p50"),
                      "e2e_p95_ms": (r["summary"].get("e2e_ms") or {}).get("p95")} for r in record["runs"]],
            "images": report}
        if not cdf.is_file() or cdf.stat().st_size == 0:
            raise Failed(f"no {cdf}")
        # The analyze stage's report: one row per configuration, like the experiment's own.
        with open(run / "report" / "percentiles.csv", newline="") as fh:
            rows = sorted(r["run"] for r in csv.DictReader(fh))
        self.summary["run1"]["experiment"]["report_runs"] = rows
        if rows != sorted(r["dir"] for r in record["runs"]):
            raise Failed(f"analyze: report/percentiles.csv has {rows}, not the configurations "
                         f"{[r['dir'] for r in record['runs']]}")
        want = sum(self.args.producers) * self.args.images
        if report["producers"] != sum(self.args.producers) or report["images_sent"] != want:
            raise Failed(f"experiment: {report['producers']} producer runs sent {report['images_sent']} images; "
                         f"expected {sum(self.args.producers)} runs and {want} images")
        if report["missing_count"] or report["failed"]:
            raise Failed(f"experiment: {report['missing_count']} image(s) sent but not stored with a "
                         f"prediction ({report['missing'][:10]}), {report['failed']} not acknowledged")
        shutil.copy2(cdf, RESULTS / "latency_cdf.png")

    # ------------------------------------------------------------------ run 2
    def whole_playbook(self, label: str) -> Playbook:
        # With --store postgres the postgresql play (tag postgresql_server) is in: run 2 must
        # find it changes nothing either.
        return self.playbook(label, ["--skip-tags", f"experiment,analyze,{SERVER_TAGS}"], timeout_s=3600)

    def run2(self) -> None:
        with self.step("run 2 (warm): whole playbook"):
            pb = self.whole_playbook("run2-idempotence")
        self.timings.update({f"run 2 stage: {k}": v for k, v in pb.stage_times().items()})
        ran = sorted({e["role"] for e in pb.results() if e["role"] and e["status"] != "skipped"})
        changed = pb.changed_tasks()
        by_role = {r: 0 for r in ran}
        for c in changed:
            by_role[c["role"]] = by_role.get(c["role"], 0) + 1
        self.summary["run2"] = {**pb.summary(), "roles_ran": ran, "changed_by_role": by_role,
                                "changed_tasks": changed}
        pb.check()
        recap_changed = {h: r["changed"] for h, r in pb.recap.items() if r["changed"]}
        if changed or recap_changed:
            raise Failed("run 2 is not idempotent: " + "; ".join(
                f"{c['role']} / {c['task']} on {c['host']}" + (f" {c['items']}" if c["items"] else "")
                for c in changed) + f" (recap: changed {recap_changed})")

    # ------------------------------------------------------------------ run 3
    def services_state(self) -> dict:
        """Per service: MainPID, state, the directory it runs from and the release the code
        directory points at."""
        inv = self.inventory()
        out = {}
        for group, units in self.UNITS.items():
            for host in inv["groups"][group]:
                for unit in units:
                    text = self.vm(host, f"""
pid=$(systemctl show -p MainPID --value {unit})
echo "pid=$pid"
echo "active=$(systemctl is-active {unit} || true)"
echo "cwd=$(runuser -u iot -- readlink -f /proc/$pid/cwd || true)"
echo "release=$(readlink -f {self.APP_DIR})"
echo "unit_release=$(systemctl show -p Environment --value {unit} | tr ' ' '\\n' | sed -n 's/^IOT_APP_RELEASE=//p')"
""")
                    out[f"{host}/{unit}"] = dict(line.split("=", 1) for line in text.split())
        return out

    def start_upgrade_producer(self, tag: str, server: str) -> None:
        """Producer batches in a loop (a transient unit with the producer role's environment),
        until a STOP file appears: each batch sends, then waits for all its results."""
        d = f"{self.PRODUCER_OUT}/{tag}"
        script = f"""#!/bin/bash
# Written by tests/rehearsal/run.py: producer batches across the upgrade.
i=0
while [ ! -e {d}/STOP ]; do
  i=$((i + 1))
  out={d}/batch-$(printf %03d "$i")
  mkdir -p "$out"
  {self.VENV}/bin/python -m producer --count {self.args.upgrade_batch} --rate {self.args.upgrade_rate} \\
    --devices 2 --producer-id {tag}-$i --out "$out" --result-timeout 1200 --no-progress > "$out/producer.log" 2>&1
  echo "$i $?" >> {d}/status
done
echo done >> {d}/status
"""
        self.ssh(server, f"sudo install -d -o iot -g iot -m 0750 {d} && sudo tee {d}/loop.sh > /dev/null", input=script)
        self.ssh(server, f"sudo systemd-run --unit={tag} --description='rehearsal: producer across the upgrade' "
                         f"--uid=iot --gid=iot --working-directory={self.APP_DIR} "
                         f"--property=EnvironmentFile={self.PRODUCER_ENV} --property=SyslogIdentifier=iot-producer "
                         f"--setenv=PYTHONUNBUFFERED=1 --remain-after-exit -- /bin/bash {d}/loop.sh")

    def stop_upgrade_producer(self, tag: str, server: str, timeout_s: float = 1800) -> Path:
        d = f"{self.PRODUCER_OUT}/{tag}"
        self.ssh(server, f"sudo touch {d}/STOP")
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.vm(server, f"systemctl show -p SubState --value {tag}.service", check=False).strip()
            if state in ("exited", "failed", "dead", ""):
                break
            if time.monotonic() > deadline:
                raise Failed(f"the upgrade producer {tag} did not finish within {timeout_s:.0f}s")
            time.sleep(5)
        self.vm(server, f"systemctl stop {tag}.service; systemctl reset-failed {tag}.service", check=False)
        local = RESULTS / "upgrade-producer"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        proc = subprocess.run([docker.docker_bin(), "exec", self.container(server), "tar", "-C", d, "-cf", "-", "."],
                              capture_output=True, timeout=300, check=True)
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            extract_all(tar, local)
        return local

    def run3(self) -> None:
        producer = self.inventory()["groups"]["producers"][0]
        before = self.services_state()
        tag = f"rehearsal-upgrade-{self.s.run_id}"
        marker = self.source / "common" / "__init__.py"
        original = marker.read_text()
        line = f"# rehearsal upgrade {time.strftime('%Y-%m-%dT%H:%M:%S')}: a harmless code change\n"
        r3 = self.summary["run3"] = {"code_change": f"common/__init__.py of the shipped snapshot: + {line.strip()}"}
        pb = None
        producing = False
        try:
            marker.write_text(original + ("" if original.endswith("\n") or not original else "\n") + line)
            with self.step("run 3 (upgrade): producer started on the producer VM"):
                self.start_upgrade_producer(tag, producer)
                producing = True
                time.sleep(15)  # images on their way before the playbook starts
            with self.step("run 3 (upgrade): whole playbook with a code change"):
                pb = self.whole_playbook("run3-upgrade")
            self.timings.update({f"run 3 stage: {k}": v for k, v in pb.stage_times().items()})
            r3.update(pb.summary())
            time.sleep(15)  # and some after it ended
        finally:
            marker.write_text(original)
            if producing:
                with self.step("run 3 (upgrade): producer stopped"):
                    local = self.stop_upgrade_producer(tag, producer)
        pb.check()
        after = self.services_state()
        handlers = [e for e in pb.results() if e["handler"]]
        r3["handlers"] = [{k: e[k] for k in ("role", "task", "host", "status", "changed")} for e in handlers]
        r3["services_before"], r3["services_after"] = before, after
        status = local / "status"
        r3["producer_batches"] = [ln for ln in status.read_text().splitlines() if ln.strip()] if status.exists() else []
        with self.step(f"run 3 (upgrade): images checked in the store ({self.args.store})"):
            report = r3["producer"] = self.producers_report(local, timeout_s=900)
        # When the services restarted, and how many images were sent before, during, after.
        windows = {}
        for role, restart, ready in (("inference", "Restart iot-inference", "Wait until the model is loaded (/readyz)"),
                                     ("consumers", "Restart the consumers", "Check that the consumers stay active")):
            starts = [e["t"] for e in pb.events if e["event"] == "task" and e["handler"] and e["role"] == role
                      and e["task"] == restart]
            ends = [e["t"] for e in pb.results() if e["role"] == role and e["task"] == ready and e["status"] == "ok"]
            if starts and ends:
                t0, t1 = min(starts), max(ends)
                windows[role] = {"restart_to_ready_s": round(t1 - t0, 1),
                                 "images_sent_before": sum(1 for t in self.sent_at if t < t0),
                                 "images_sent_during": sum(1 for t in self.sent_at if t0 <= t <= t1),
                                 "images_sent_after": sum(1 for t in self.sent_at if t > t1)}
        r3["restart_windows"] = windows
        # What changed in the service stages (the app stage switched the code): the unit files,
        # which name the release, are what restart the services there.
        r3["changed_in_service_stages"] = [f"{c['role']} / {c['task']} on {c['host']}" for c in pb.changed_tasks()
                                           if play_stages().get(c.get("play", "")) in ("inference", "consumers")]
        problems = []
        for role, restart in (("inference", "Restart iot-inference"), ("consumers", "Restart the consumers")):
            if not any(e["role"] == role and e["task"] == restart and e["status"] == "ok" for e in handlers):
                problems.append(f"handler {role} / {restart} did not run")
        for name, st in after.items():
            old = before.get(name, {})
            if st.get("active") != "active":
                problems.append(f"{name} is {st.get('active')} after the upgrade")
            if st.get("pid") == old.get("pid"):
                problems.append(f"{name} was not restarted (MainPID {st.get('pid')})")
            if st.get("release") == old.get("release"):
                problems.append(f"{name}: the code directory still points at {st.get('release')}")
            if st.get("cwd") != st.get("release"):
                problems.append(f"{name} runs from {st.get('cwd')}, not the new release {st.get('release')}")
        bad = [ln for ln in r3["producer_batches"] if ln != "done" and not ln.endswith(" 0")]
        if bad:
            problems.append(f"producer batches exited non-zero (batch exit): {bad}")
        if report["missing_count"] or report["failed"] or not report["images_sent"]:
            problems.append(f"producer: {report['images_sent']} images sent, {report['missing_count']} not stored "
                            f"with a prediction ({report['missing'][:10]}), {report['failed']} not acknowledged")
        for role in ("inference", "consumers"):
            w = windows.get(role)
            if not w or not w["images_sent_before"] or not w["images_sent_after"]:
                problems.append(f"the producer did not send across the {role} restart: {w}")
        if problems:
            raise Failed("run 3: " + "; ".join(problems))

    # ------------------------------------------------------------------ run 4
    def run4(self) -> None:
        """The lease ends (the fake Blazar deletes its servers as Chameleon does; the jump
        host's floating IP stays allocated, detached), then `make deploy` again (provision
        and base): the ended lease is replaced, new servers boot, the recorded floating IP
        is attached to the new jump host (none allocated, the record unchanged), and every
        new VM answers through it (the address's old host key forgotten)."""
        record_file = self.deploy_dir / "floating_ip.json"
        record = json.loads(record_file.read_text())
        fake = harness.load_fake_cloud()
        with self.step("run 4: the lease ends (fake Blazar)"):
            with fake.State(str(self.s.state_file)) as st:
                gone = fake.end_lease(st, fake.find_lease(st, f"{self.prefix}-lease"))
                st.save()
        r4 = self.summary["run4"] = {"servers_deleted_by_the_lease_end": gone, "floating_ip_before": record}
        with self.step("run 4: provision and base again after the lease ended"):
            # Its own ssh control sockets: the masters of runs 1-3 lead to the deleted servers.
            pb = self.playbook("run4-lease-ended", ["--tags", "provision,base"], timeout_s=3600,
                               env={"ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.s.dir / "cp-run4")})
        r4.update(pb.summary())
        pb.check()
        st = json.loads(self.s.state_file.read_text())
        fips = st.get("floating_ips", {})
        jump = next(r for r in st["servers"].values() if r["name"] == self.inventory()["groups"]["producers"][0])
        after = json.loads(record_file.read_text()) if record_file.exists() else None
        r4.update(floating_ips=[{"id": i, "address": f["floating_ip_address"], "server": f.get("_server_id")}
                                for i, f in fips.items()], floating_ip_after=after,
                  lease=fake.lease_public(next(x for x in st["leases"].values()))["status"] if st.get("leases") else None)
        problems = []
        if not gone:
            problems.append("the lease end deleted no server")
        if list(fips) != [record["id"]]:
            problems.append(f"floating IPs {r4['floating_ips']}: expected only the recorded {record}")
        elif fips[record["id"]].get("_server_id") != jump["id"]:
            problems.append(f"the recorded floating IP is not on the new jump host {jump['name']}")
        if after != record:
            problems.append(f"floating_ip.json changed: {record} -> {after}")
        if problems:
            raise Failed("run 4: " + "; ".join(problems))

    # ------------------------------------------------------------------ teardown
    def teardown(self) -> None:
        lease = f"{self.prefix}-lease"
        with self.step("teardown: playbooks/teardown.yaml"):
            # -v: the lease delete's output (blazarclient's "Deleted lease: <name>") is printed.
            pb = self.playbook("teardown", ["-v"], timeout_s=1200, playbook="playbooks/teardown.yaml")
        st = json.loads(self.s.state_file.read_text())
        deletes = [c for c in st.get("calls", []) if c.get("name") == "reservation lease delete"
                   and lease in c.get("params", {}).get("argv", [])]
        show = subprocess.run([sys.executable, str(harness.BIN / "openstack"), "--os-cloud", self.s.cloud,
                               "reservation", "lease", "show", lease, "-f", "json"], env=self.env(),
                              capture_output=True, text=True, timeout=60)
        left = docker.containers_with_label("iot-rehearsal=server")
        td = self.summary["teardown"] = {
            **pb.summary(), "deleted_lease_line": next((ln.strip() for ln in pb.text.splitlines() if "Deleted lease:" in ln
                                                        and "stdout_lines" not in ln), None),
            "lease_delete_calls": [{"rc": c.get("rc"), "error": c.get("error")} for c in deletes],
            "lease_show_after": (show.stdout + show.stderr).strip()[:300], "leases_left": list(st.get("leases", {})),
            "servers_left": [r["name"] for r in st.get("servers", {}).values()], "containers_left": left}
        pb.check()
        problems = []
        if not any(c.get("rc") == 0 for c in deletes):
            problems.append(f"the fake Blazar recorded no successful lease delete ({deletes})")
        if st.get("leases") or show.returncode == 0:
            problems.append(f"lease {lease} still exists: {td['lease_show_after']}")
        if st.get("servers") or left:
            problems.append(f"servers left: {td['servers_left']}, containers {left}")
        # Twice: nothing left to delete, no lease (blazarclient: "Unable to find resource ...").
        with self.step("teardown again: playbooks/teardown.yaml"):
            again = self.playbook("teardown-again", [], timeout_s=1200, playbook="playbooks/teardown.yaml")
        td["again"] = again.summary()
        if again.rc != 0:
            problems.append(f"a second teardown failed (exit {again.rc}, see {again.log})")
        if problems:
            raise Failed("teardown: " + "; ".join(problems))

    # ------------------------------------------------------------------ main
    def main(self) -> int:
        RESULTS.mkdir(parents=True, exist_ok=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        for old in LOGS.glob("*"):
            old.unlink()
        t0 = time.monotonic()
        started = False
        try:
            started = True
            self.prepare()
            self.preflight()
            self.run1()
            self.run2()
            if not self.args.skip_upgrade:
                self.run3()
            self.run4()
        except Failed as exc:
            self.summary["failures"].append(str(exc))
            log.error("FAILED: %s", exc)
        except Exception as exc:  # noqa: BLE001 - recorded; the teardown still runs
            self.summary["failures"].append(f"{type(exc).__name__}: {exc}")
            log.exception("error")
        finally:
            if started and not self.args.keep and self.s.state_file.exists():
                try:
                    self.teardown()
                except Exception as exc:  # noqa: BLE001
                    self.summary["failures"].append(f"teardown: {exc}")
                    log.error("teardown: %s", exc)
            if self.mirror is not None:
                self.mirror.terminate()
                self.mirror.wait(10)
            if not self.args.keep:
                with self.step("harness teardown"):
                    for line in harness.teardown(self.s):
                        log.info("removed %s", line)
            self.summary["total_s"] = round(time.monotonic() - t0, 1)
            self.summary["finished_at"] = time.time()
            self.summary["ok"] = not self.summary["failures"]
            (RESULTS / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str) + "\n")
            print(render(self.summary))
        return 0 if self.summary["ok"] else 1


def render(s: dict) -> str:
    """The summary for people (the JSON has everything)."""
    lines = ["", "=" * 78, f"deploy rehearsal: {'PASSED' if s['ok'] else 'FAILED'}  (total "
             f"{s.get('total_s', 0) / 60:.1f} min, results/rehearsal/summary.json)", "-" * 78, "timings:"]
    width = max((len(k) for k in s["timings_s"]), default=10)
    lines += [f"  {k.ljust(width)}  {v:8.1f} s" for k, v in s["timings_s"].items()]
    r1 = s.get("run1", {})
    if "store" in r1:
        lines.append(f"run 1: store stage (PostgreSQL) for real: exit {r1['store']['rc']}, recap {r1['store']['recap']}")
    if "check_mode" in r1:
        lines.append(f"run 1: kafka + store (MongoDB, CouchDB) + monitoring plays in --check mode: exit "
                     f"{r1['check_mode']['rc']}, recap {r1['check_mode']['recap']}")
    for w in r1.get("lease_window", []):
        lines.append(f"run 1: lease {w['lease']} (controller TZ={w['tz']}): {w['start_date']} -> {w['end_date']} UTC, "
                     f"{w['hours']} h for {w['asked_hours']} h asked")
    if "monitoring" in r1:
        m = r1["monitoring"]
        lines.append(f"run 1: monitoring on {m['host']}: prometheus {m['prometheus']}; failed (reported, not fatal): "
                     f"{[f['task'] for f in m['failed']] or 'nothing'}")
    if "refusals" in r1:
        i, p = r1["refusals"]["inference"], r1["refusals"]["prometheus"]
        lines.append(f"run 1: without credentials: inference API {i['without_token']} (wrong token "
                     f"{i['wrong_token']}, the vault's {i['with_token']}); Prometheus from another VM "
                     f"{p['from_another_vm']} (its loopback {p['on_its_vm_loopback']}); not proven here: "
                     f"{', '.join(r1['refusals']['not_proven'])}")
    if "experiment" in r1:
        e = r1["experiment"]
        lines.append(f"run 1: experiment {e['dir']}: images sent {e['images']['images_sent']}, stored with a "
                     f"prediction {e['images']['stored_with_prediction']}; report/latency_cdf.png "
                     f"{'present' if e['latency_cdf_exists'] else 'MISSING'}")
    if "run2" in s:
        lines.append(f"run 2: changed tasks per role {s['run2']['changed_by_role']}")
        lines += [f"  changed: {c['role']} / {c['task']} on {c['host']}" for c in s["run2"]["changed_tasks"]]
    r3 = s.get("run3", {})
    if "handlers" in r3:
        restarts = sorted({f"{h['role']}: {h['task']}" for h in r3["handlers"] if "Restart" in h["task"]})
        lines.append(f"run 3: handlers {restarts}")
    if "producer" in r3:
        p = r3["producer"]
        lines.append(f"run 3: producer across the upgrade: {p['images_sent']} images sent, "
                     f"{p['stored_with_prediction']} stored with a prediction, {p['missing_count']} missing")
        for role, w in r3.get("restart_windows", {}).items():
            lines.append(f"  {role} restart ({w['restart_to_ready_s']} s to ready): images sent before "
                         f"{w['images_sent_before']}, during {w['images_sent_during']}, after {w['images_sent_after']}")
    for name, p in s.get("preflight", {}).items():
        lines.append(f"preflight {name}: provision exit {p['rc']}, created {p['created']}"
                     + (f", left after two teardowns {p['left']}" if "left" in p else ""))
    r4 = s.get("run4", {})
    if "floating_ips" in r4:
        lines.append(f"run 4 (lease ended, deployed again): servers deleted by the end {r4['servers_deleted_by_the_lease_end']}; "
                     f"floating IPs {r4['floating_ips']} (recorded {r4['floating_ip_before']})")
    if "teardown" in s:
        lines.append(f"teardown: {s['teardown'].get('deleted_lease_line')}; leases left "
                     f"{s['teardown']['leases_left']}, servers left {s['teardown']['servers_left']}")
    lines += [f"FAILURE: {f}" for f in s["failures"]]
    lines.append("=" * 78)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.rehearsal.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=str(harness.DEFAULT_RUN_DIR), help="the harness's run dir")
    ap.add_argument("--keep", action="store_true", help="no teardown at the end (inspect the containers)")
    ap.add_argument("--skip-upgrade", action="store_true", help="no third run")
    ap.add_argument("--store", choices=STORES, default="mongodb",
                    help="iot_store of every run: mongodb (nx-27017 stands in for the store stage) or postgres "
                         "(the store stage for real, on the image's PostgreSQL; run 2 must change nothing there "
                         "either)")
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 2], help="experiment_producers (default 1 2)")
    ap.add_argument("--images", type=int, default=20, help="experiment_images (default 20)")
    ap.add_argument("--rate", type=float, default=5, help="experiment_rate (default 5)")
    ap.add_argument("--upgrade-batch", type=int, default=40, help="images per producer batch in run 3 (default 40)")
    ap.add_argument("--upgrade-rate", type=float, default=4, help="images/s of the producer in run 3 (default 4)")
    ap.add_argument("--timeout-factor", type=float, default=RehearsalSettings().iot_rehearsal_timeout_factor,
                    help="multiplies each ansible-playbook's hang guard (default 1: 90 min for the first run's "
                         "halves, 60 min for the others)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print("deploy rehearsal: run it as root (Docker, debootstrap): sudo make deploy-rehearsal", file=sys.stderr)
        return 2
    if not ANSIBLE_PLAYBOOK.exists():
        print(f"deploy rehearsal: {ANSIBLE_PLAYBOOK} not found: run `make venv`", file=sys.stderr)
        return 2
    return Rehearsal(args).main()


if __name__ == "__main__":
    sys.exit(main())
