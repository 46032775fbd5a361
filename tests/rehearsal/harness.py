"""The cloud-less rehearsal of the Chameleon deployment: Docker engine, "VM" image, test
network, wheelhouse server, per-run SSH key, fake openstack.cloud collection and fake
`openstack` CLI (Blazar), and the environment an ansible-playbook run needs.

    sudo .venv/bin/python -m tests.rehearsal.harness up          # prints `export ...` lines
    eval "$(.venv/bin/python -m tests.rehearsal.harness env)"
    ansible-playbook playbook_master.yaml -e @"$IOT_REHEARSAL_EXTRA_VARS"
    .venv/bin/python -m tests.rehearsal.harness services --kafka iot-pipeline-kafka --mongodb iot-pipeline-mongodb
    .venv/bin/python -m tests.rehearsal.harness teardown
    .venv/bin/python -m tests.rehearsal.harness smoke             # self-test of every piece, timed

See tests/rehearsal/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # python tests/rehearsal/harness.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from common.settings import RehearsalSettings  # noqa: E402
from tests.rehearsal import docker, image, services, wheelhouse  # noqa: E402

log = logging.getLogger("rehearsal")

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "rehearsal"
COLLECTIONS = HERE / "collections"
BIN = HERE / "bin"
FAKE_CLOUD = COLLECTIONS / "ansible_collections/openstack/cloud/plugins/module_utils/fake_cloud.py"
DEFAULT_RUN_DIR = Path(RehearsalSettings().iot_rehearsal_run_dir)


@dataclasses.dataclass
class Settings:
    run_dir: str = str(DEFAULT_RUN_DIR)
    network: str = "iot-rehearsal"          # Docker network
    subnet: str = "172.30.0.0/24"
    gateway: str = "172.30.0.1"             # the host's address on it
    wheel_port: int = 8765
    cloud: str = "rehearsal"                # the only cloud name the fakes answer to
    image_name: str = "rehearsal-bookworm"  # provision_image
    network_name: str = "sharednet1"        # provision_network (the fake's private network)
    floating_network: str = "public"        # provision_floating_network
    flavor: str = "m1.medium"               # provision_flavor
    requirements: list = dataclasses.field(default_factory=lambda: ["requirements.txt"])
    cap_add: list = dataclasses.field(default_factory=lambda: ["NET_ADMIN", "SYS_ADMIN"])
    blazar_pending_shows: int = 0
    # The fake Blazar ends each lease at its Nth `lease show` (0: never) with this status.
    blazar_end_at_show: int = 0
    blazar_end_status: str = "ERROR"
    # The clouds.yaml's application credential: unrestricted, as Blazar needs (lease create
    # makes a trust); --restricted-credential makes the fake refuse leases like Chameleon.
    credential_unrestricted: bool = True
    run_id: str = ""

    @property
    def dir(self) -> Path:
        return Path(self.run_dir)

    @property
    def state_file(self) -> Path:
        return self.dir / "fake-cloud.json"

    @property
    def key_file(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def extra_vars_file(self) -> Path:
        return self.dir / "extra-vars.yml"

    @property
    def wheel_url(self) -> str:
        return f"http://{self.gateway}:{self.wheel_port}/"

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "harness.json").write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, run_dir: Path) -> Settings | None:
        path = run_dir / "harness.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


def load_fake_cloud():
    spec = importlib.util.spec_from_file_location("iot_fake_cloud", FAKE_CLOUD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_collection() -> str:
    """The installed openstack.cloud (IOT_FAKE_CLOUD_REAL_COLLECTION if set, else found on
    this Python's path), whose argument specs the fakes validate against."""
    return load_fake_cloud().real_collection_dir()


class Timer:
    def __init__(self):
        self.steps: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.monotonic()
        log.info("== %s", name)
        try:
            yield
        finally:
            self.steps.append((name, time.monotonic() - t0))
            log.info("== %s: %.1fs", name, self.steps[-1][1])

    def report(self) -> str:
        width = max((len(n) for n, _ in self.steps), default=10)
        lines = [f"{n.ljust(width)}  {s:7.1f}s" for n, s in self.steps]
        lines.append(f"{'total'.ljust(width)}  {sum(s for _, s in self.steps):7.1f}s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- up
def up(s: Settings, timer: Timer | None = None, fresh: bool = False) -> dict:
    """Everything a playbook run needs; idempotent (a second `up` reuses what exists)."""
    timer = timer or Timer()
    if not s.run_id:
        s.run_id = time.strftime("%Y%m%d%H%M%S")
    s.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(s.dir, 0o700)
    with timer.step("docker engine"):
        docker.ensure_engine()
    with timer.step("VM image"):
        tag = image.ensure_image()
    with timer.step("network"):
        docker.ensure_network(s.network, s.subnet, s.gateway)
    with timer.step("wheelhouse download"):
        wheelhouse.download([ROOT / r for r in s.requirements], extra=wheel_extra())
    with timer.step("wheelhouse server"):
        wheelhouse.serve(wheelhouse.WHEELHOUSE, s.gateway, s.wheel_port, s.dir)
    with timer.step("ssh key, fake cloud state, vars"):
        if not s.key_file.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"iot-rehearsal-{s.run_id}",
                            "-f", str(s.key_file)], check=True)
        fake = load_fake_cloud()
        if fresh or not s.state_file.exists():
            config = {
                "cloud": s.cloud, "docker_network": s.network, "subnet_cidr": s.subnet, "gateway": s.gateway,
                "network_name": s.network_name, "floating_network": s.floating_network,
                "image_name": s.image_name, "run_id": s.run_id, "cap_add": list(s.cap_add),
                "ip_counter_file": str(docker.CACHE_DIR / f"ip-counter-{s.network}"),
                "pool_first": 10, "pool_last": 250, "quota_instances": 10, "quota_floating_ips": 2,
                "blazar_pending_shows": s.blazar_pending_shows, "blazar_max_lease_days": 7,
                "blazar_end_at_show": s.blazar_end_at_show, "blazar_end_status": s.blazar_end_status,
                "blazar_max_amount": 10, "flavor_limits": False, "docker_run_args": [],
                "wheelhouse_url": s.wheel_url, "cgroup_args": cgroup_args(),
                "credential_unrestricted": s.credential_unrestricted,
            }
            s.state_file.write_text(json.dumps(fake.new_state(config, tag), indent=1, sort_keys=True))
        else:  # keep the resources, follow a rebuilt image
            st = json.loads(s.state_file.read_text())
            for img in st["catalog"]["images"]:
                img["_docker_image"] = tag
            s.state_file.write_text(json.dumps(st, indent=1, sort_keys=True))
        write_clouds_yaml(s)
        write_extra_vars(s)
        s.save()
        (s.dir / "env.sh").write_text(render_env(s, "sh"))
    return environment(s)


def cgroup_args() -> list[str]:
    """systemd as PID 1 needs the cgroup tree: cgroup v1 (this project's CI) bind-mounts it
    read-only (verified); on a cgroup v2 host the usual recipe shares the host's cgroup
    namespace read-write (not verified here)."""
    if subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True,
                      text=True).stdout.strip() == "cgroup2fs":
        return ["--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    return ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]


def wheel_extra() -> list[str]:
    """Beyond the requirement files: pip/setuptools/wheel and the embedded servers."""
    return [*wheelhouse.EXTRA, *services.PACKAGES.values()]


def write_clouds_yaml(s: Settings) -> None:
    """A clouds.yaml naming the fake cloud (nothing listens there: a real SDK call fails fast),
    with the fake cloud's application credential, as the site's download has it."""
    cred_id = (json.loads(s.state_file.read_text()).get("application_credential") or {}).get("id", "rehearsal")
    (s.dir / "clouds.yaml").write_text(
        "# Rehearsal: the fake openstack.cloud modules and `openstack` CLI answer to this name.\n"
        f"clouds:\n  {s.cloud}:\n    auth:\n      auth_url: http://127.0.0.1:9/identity/v3\n"
        f"      application_credential_id: {cred_id}\n      application_credential_secret: rehearsal\n"
        "    auth_type: v3applicationcredential\n    region_name: rehearsal\n    interface: public\n"
        "    identity_api_version: 3\n")


def write_extra_vars(s: Settings) -> None:
    values = {
        "iot_cloud": s.cloud, "provision_cloud": s.cloud,
        "provision_image": s.image_name, "provision_flavor": s.flavor,
        "provision_network": s.network_name, "provision_floating_network": s.floating_network,
        "provision_boot_volume_size": 0, "provision_server_timeout": 300,
        "iot_operator_cidr": f"{s.gateway}/32",
        "iot_ssh_user": "cc", "iot_ssh_private_key_file": str(s.key_file),
        "provision_private_key_file": str(s.key_file), "provision_public_key_file": f"{s.key_file}.pub",
        # roles/provision runs the `openstack` next to ansible_playbook_python by default
        "provision_openstack_cli": str(BIN / "openstack"),
        # pip ignores a plain-http find-links host unless it is trusted.
        "iot_app_pip_index_args": ["--no-index", "--find-links", s.wheel_url, "--trusted-host", s.gateway],
        # The controller's artefacts of the rehearsal (inventory, ssh_config, bundle, results)
        # in their own root: a real deployment's .deploy/hosts.yml and .deploy/<prefix>/ (PKI,
        # known_hosts) are never read, overwritten or deleted (ANSIBLE_INVENTORY below).
        "iot_deploy_root": str(deploy_root()),
        # nx-27017 has no authentication: MONGO_URI without credentials (README.md).
        "iot_app_mongodb_auth": False,
        # tansu speaks PLAINTEXT only (no SASL users, no ACLs): the explicit switch off the
        # secure default, whose warning run.py checks.  The inference token, Grafana's
        # password and the loopback-only web UIs stay as a user gets them.
        "iot_kafka_security_enabled": False,
        # No internet on the test network: a model with random weights (no ImageNet
        # download) and synthetic images (no CIFAR download).
        "inference_model_weights": "random",
        "producer_dataset": "synthetic",
    }
    # Secrets of the rehearsal only (no vault needed): every key of vault.yml.example.
    values.update({key: "rehearsal-" + key.removeprefix("vault_").replace("_", "-") for key in vault_keys()})
    lines = ["---", "# Written by tests/rehearsal/harness.py: the provision_* values the fakes answer to.",
             "# ansible-playbook ... -e @<this file>"]
    lines += [f"{k}: {json.dumps(v)}" for k, v in values.items()]
    s.extra_vars_file.write_text("\n".join(lines) + "\n")


def deploy_root() -> Path:
    """iot_deploy_root of the rehearsal: .deploy/rehearsal/ (git-ignored), beside a real
    deployment's .deploy/<prefix>/ and .deploy/hosts.yml, which it never touches."""
    return ROOT / ".deploy" / "rehearsal"


def vault_keys() -> list[str]:
    import yaml

    example = ROOT / "inventory" / "group_vars" / "all" / "vault.yml.example"
    return sorted(yaml.safe_load(example.read_text()) or {})


def environment(s: Settings) -> dict:
    default_paths = ["~/.ansible/collections", "/usr/share/ansible/collections"]
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if not path.startswith(str(BIN) + os.pathsep):
        path = f"{BIN}{os.pathsep}{path}"
    return {
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join([str(COLLECTIONS), *[os.path.expanduser(p)
                                                                         for p in default_paths]]),
        "PATH": path,
        # The project's inventory/ (groups, group_vars) and the rehearsal's generated hosts,
        # instead of ansible.cfg's inventory/,.deploy/hosts.yml.
        "ANSIBLE_INVENTORY": f"{ROOT / 'inventory'},{deploy_root() / 'hosts.yml'}",
        "IOT_FAKE_CLOUD_STATE": str(s.state_file),
        "IOT_FAKE_CLOUD_REAL_COLLECTION": real_collection(),
        "OS_CLIENT_CONFIG_FILE": str(s.dir / "clouds.yaml"),
        "IOT_REHEARSAL_RUN_DIR": str(s.dir),
        "IOT_REHEARSAL_EXTRA_VARS": str(s.extra_vars_file),
        "IOT_REHEARSAL_SSH_KEY": str(s.key_file),
        "IOT_REHEARSAL_WHEELHOUSE_URL": s.wheel_url,
        "IOT_REHEARSAL_NETWORK": s.network,
    }


def render_env(s: Settings, fmt: str) -> str:
    env = environment(s)
    if fmt == "json":
        return json.dumps(env, indent=1) + "\n"
    if fmt == "dotenv":  # e.g. >> "$GITHUB_ENV"
        return "".join(f"{k}={v}\n" for k, v in env.items())
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


# --------------------------------------------------------------------------- teardown
def teardown(s: Settings, stop_engine: bool = False, purge_cache: bool = False) -> list[str]:
    done = []
    if docker.engine_running():
        names = set()
        if s.run_id:
            names |= set(docker.containers_with_label(f"iot-rehearsal.run={s.run_id}"))
        names |= set(docker.containers_with_label("iot-rehearsal=server"))
        if s.state_file.exists():
            with contextlib.suppress(Exception):
                st = json.loads(s.state_file.read_text())
                names |= {rec["_container"] for rec in st.get("servers", {}).values()}
        for name in sorted(names):
            if docker.remove_container(name):
                done.append(f"container {name}")
        info = docker.network_inspect(s.network)
        if info is not None:
            if info.get("Containers"):
                done.append(f"network {s.network} kept: still used by {list(info['Containers'])}")
            else:
                docker.remove_network(s.network)
                done.append(f"network {s.network}")
    if wheelhouse.stop(s.dir):
        done.append("wheelhouse server")
    if s.dir.exists():
        shutil.rmtree(s.dir)
        done.append(f"run dir {s.dir} (state, key, vars)")
    if purge_cache and docker.engine_running():
        for tag in docker.docker("images", image.REPO, "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
            docker.docker("rmi", tag, check=False)
            done.append(f"image {tag}")
    if purge_cache:
        shutil.rmtree(docker.CACHE_DIR / "images", ignore_errors=True)
        shutil.rmtree(wheelhouse.WHEELHOUSE, ignore_errors=True)
        done.append("cache (images, wheelhouse)")
    if stop_engine and docker.stop_engine():
        done.append("dockerd")
    return done


def status(s: Settings) -> dict:
    out: dict = {"engine": docker.engine_running(), "run_dir": str(s.dir), "state": s.state_file.exists()}
    if out["engine"]:
        out["network"] = docker.network_inspect(s.network) is not None
        out["containers"] = docker.containers_with_label("iot-rehearsal=server")
    if s.state_file.exists():
        st = json.loads(s.state_file.read_text())
        out["servers"] = {r["name"]: r["_ip"] for r in st.get("servers", {}).values()}
        out["leases"] = {x["name"]: x["status"] for x in st.get("leases", {}).values()}
        out["keypairs"] = list(st.get("keypairs", {}))
        out["security_groups"] = [g["name"] for g in st.get("security_groups", {}).values()]
        out["floating_ips"] = [f["floating_ip_address"] for f in st.get("floating_ips", {}).values()]
        out["calls"] = len(st.get("calls", []))
    return out


# --------------------------------------------------------------------------- packages check
def role_apt_packages() -> dict[str, list[str]]:
    """Best effort: the apt package names the roles' defaults list (rendered where simple)."""
    import yaml

    found: dict[str, list[str]] = {}
    defaults = {}
    for path in sorted((ROOT / "roles").glob("*/defaults/main.yml")):
        defaults.update(yaml.safe_load(path.read_text()) or {})
    for path in sorted((ROOT / "roles").glob("*/tasks/*.yml")):
        for task in yaml.safe_load(path.read_text()) or []:
            for t in [task, *task.get("block", [])] if isinstance(task, dict) else []:
                apt = t.get("ansible.builtin.apt") or t.get("apt")
                if not isinstance(apt, dict) or "name" not in apt:
                    continue
                names = apt["name"]
                if isinstance(names, str):
                    var = names.strip("{} ").split("|")[0].strip()
                    names = defaults.get(var, [names]) if names.startswith("{{") else [names]
                if isinstance(names, str):
                    names = [names]
                rendered = []
                for n in names:
                    n = str(n)
                    while "{{" in n:
                        var = n[n.index("{{") + 2:n.index("}}")].strip()
                        if var not in defaults or "{{" in str(defaults[var]):
                            break
                        n = n.replace(n[n.index("{{"):n.index("}}") + 2], str(defaults[var]))
                    rendered.append(n)
                found.setdefault(str(path.relative_to(ROOT)), []).extend(rendered)
    return found


NOT_IN_DEBIAN = {"mongodb-org", "mongodb-org-server", "mongodb-mongosh", "mongodb-database-tools", "grafana",
                 "couchdb"}  # Debian's couchdb is not Apache's 3.x: the couchdb role runs in check mode only


def check_packages(strict: bool = False) -> int:
    """Lists the roles' apt packages against vm-packages.txt; with strict, exit 1 when one
    that Debian has is missing (templated names cannot be checked and are listed)."""
    baked = set(image.read_packages())
    missing = []
    for path, names in role_apt_packages().items():
        for n in names:
            mark = "ok" if n in baked else ("SKIP (templated)" if "{{" in n else
                                            "not in Debian" if n in NOT_IN_DEBIAN else "MISSING")
            if mark == "MISSING":
                missing.append(n)
            print(f"{mark:17} {n:32} {path}")
    print(f"\n{len(missing)} package(s) the roles install are not baked into the image: "
          f"{' '.join(missing) or '-'} (add them to tests/rehearsal/vm-packages.txt)")
    return 1 if strict and missing else 0


# --------------------------------------------------------------------------- smoke
def run_playbook(playbook: Path, s: Settings, extra: list[str] | None = None) -> None:
    env = {**os.environ, **environment(s), "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"}
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), str(playbook), "-e", f"@{s.extra_vars_file}",
           "-e", f"rehearsal_state_file={s.state_file}", *(extra or [])]
    log.info("+ %s", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{playbook.name} failed ({proc.returncode})")


def host_checks(s: Settings, timer: Timer) -> None:
    """From the host: tansu with kafka-python, nx-27017 with pymongo (and its missing auth)."""
    st = json.loads(s.state_file.read_text())
    by_name = {r["name"]: r for r in st["servers"].values()}
    kafka = by_name["iot-pipeline-kafka"]["_container"]
    mongo = by_name["iot-pipeline-mongodb"]["_container"]
    with timer.step("tansu on the kafka container"):
        bootstrap = services.start_tansu(kafka, s.network, s.wheel_url)
    with timer.step("nx-27017 on the mongodb container"):
        mongo_uri = services.start_nx27017(mongo, s.network, s.wheel_url)
    with timer.step("kafka-python -> tansu"):
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
        with contextlib.suppress(Exception):
            admin.create_topics([NewTopic("rehearsal-smoke", num_partitions=3, replication_factor=1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for i in range(10):
            producer.send("rehearsal-smoke", f"hello {i}".encode())
        producer.flush(30)
        producer.close()
        # Partitions assigned by hand: tansu holds a first JoinGroup for ~20 s (rebalance delay).
        from kafka import TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                 consumer_timeout_ms=20000)
        consumer.assign([TopicPartition("rehearsal-smoke", p) for p in range(3)])
        got = []
        for msg in consumer:
            got.append(msg.value)
            if len(got) == 10:
                break
        consumer.close()
        assert len(got) == 10, f"kafka round trip: {len(got)}/10 messages"
        log.info("tansu at %s: 10 messages produced and consumed", bootstrap)
    with timer.step("pymongo -> nx-27017"):
        import pymongo

        client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=10000)
        client.admin.command("ping")
        coll = client.iot.rehearsal_smoke
        coll.insert_many([{"i": i} for i in range(5)])
        assert coll.count_documents({}) >= 5
        client.close()
        # SCRAM: nx-27017 answers saslStart with {"ok": 1, "result": []} and pymongo fails.
        ip_port = mongo_uri.split("//", 1)[1].rstrip("/")
        auth = pymongo.MongoClient(f"mongodb://iot-app:secret@{ip_port}/iot?authSource=iot",
                                   serverSelectionTimeoutMS=5000)
        try:
            auth.iot.rehearsal_smoke.find_one()
            log.warning("nx-27017 accepted a SCRAM login (unexpected for 0.8.1)")
        except KeyError as exc:
            log.info("nx-27017 + credentials: pymongo raised KeyError(%s) during SCRAM (no auth support)", exc)
        finally:
            auth.close()
    with timer.step("units survive a restart"):
        docker.docker("exec", kafka, "systemctl", "restart", "tansu.service")
        docker.docker("exec", mongo, "systemctl", "restart", "nx-27017.service")
        services.wait_port(bootstrap.split(":")[0], 9092)
        services.wait_port(ip_port.split(":")[0], 27017)
        assert services.unit_active(kafka, "tansu") == "active"
        assert services.unit_active(mongo, "nx-27017") == "active"


def smoke(s: Settings, keep: bool = False, timings_file: Path | None = None) -> int:
    timer = Timer()
    t0 = time.monotonic()
    try:
        up(s, timer, fresh=True)
        with timer.step("playbook smoke.yml (fake cloud, 4 servers, ssh)"):
            run_playbook(HERE / "smoke.yml", s)
        host_checks(s, timer)
        with timer.step("playbook smoke-teardown.yml"):
            run_playbook(HERE / "smoke-teardown.yml", s)
    finally:
        if not keep:
            with timer.step("harness teardown"):
                teardown(s)
        report = timer.report()
        print("\nrehearsal smoke timings\n" + report)
        if timings_file:
            timings_file.write_text(json.dumps({"steps": timer.steps, "total_s": time.monotonic() - t0}, indent=1))
    return 0


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.rehearsal.harness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", default=str(DEFAULT_RUN_DIR), help="per-run files (default %(default)s)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p_up = sub.add_parser("up", help="engine, image, network, wheelhouse, key, fake cloud; prints the env")
    p_up.add_argument("--requirements", nargs="+", default=None,
                      help="VM-side requirement files to download (default: requirements.txt)")
    p_up.add_argument("--subnet", default=None)
    p_up.add_argument("--gateway", default=None)
    p_up.add_argument("--network", default=None, help="Docker network name")
    p_up.add_argument("--wheel-port", type=int, default=None)
    p_up.add_argument("--cloud", default=None, help="cloud name the fakes answer to")
    p_up.add_argument("--blazar-pending-shows", type=int, default=None)
    p_up.add_argument("--blazar-end-at-show", type=int, default=None,
                      help="the fake Blazar ends each lease at its Nth show (e.g. while the deployment waits)")
    p_up.add_argument("--blazar-end-status", choices=["ERROR", "TERMINATED"], default=None)
    p_up.add_argument("--restricted-credential", action="store_true",
                      help="the application credential is restricted: lease create fails (403) as on Chameleon")
    p_up.add_argument("--no-sys-admin", action="store_true",
                      help="no CAP_SYS_ADMIN: /etc/hosts etc. stay Docker bind mounts")
    p_up.add_argument("--fresh", action="store_true", help="reset the fake cloud state")
    p_up.add_argument("--format", choices=["sh", "dotenv", "json"], default="sh")

    p_env = sub.add_parser("env", help="print the environment of a playbook run")
    p_env.add_argument("--format", choices=["sh", "dotenv", "json"], default="sh")

    p_down = sub.add_parser("teardown", aliases=["down"], help="remove containers, network, server, state")
    p_down.add_argument("--stop-engine", action="store_true", help="also stop a dockerd the harness started")
    p_down.add_argument("--purge-cache", action="store_true", help="also delete the cached image and wheels")

    sub.add_parser("status", help="what exists")

    p_svc = sub.add_parser("services", help="tansu / nx-27017 as systemd units on containers")
    p_svc.add_argument("--kafka", help="container (= server name) that gets tansu on :9092")
    p_svc.add_argument("--mongodb", help="container (= server name) that gets nx-27017 on :27017")

    p_img = sub.add_parser("image", help="build (or reuse) the VM image only")
    p_img.add_argument("--rebuild", action="store_true")
    p_img.add_argument("--prune", action="store_true", help="remove images of other package lists")

    p_wh = sub.add_parser("wheelhouse", help="download the wheelhouse only")
    p_wh.add_argument("--requirements", nargs="+", default=["requirements.txt"])
    p_wh.add_argument("--force", action="store_true")

    p_pk = sub.add_parser("packages", help="compare vm-packages.txt with the roles' apt packages")
    p_pk.add_argument("--check", action="store_true")

    p_smoke = sub.add_parser("smoke", help="prove every piece: fake cloud, 4 servers, ssh, wheelhouse, "
                                           "tansu, nx-27017; timed; tears down unless --keep")
    p_smoke.add_argument("--keep", action="store_true")
    p_smoke.add_argument("--timings", type=Path, help="write the step timings (JSON) here")
    p_smoke.add_argument("--requirements", nargs="+", default=None)

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    run_dir = Path(args.run_dir)
    s = Settings.load(run_dir) or Settings(run_dir=str(run_dir))

    if args.cmd in ("up", "smoke"):
        if getattr(args, "requirements", None):
            s.requirements = args.requirements
        for field in ("subnet", "gateway", "network", "wheel_port", "cloud", "blazar_pending_shows",
                      "blazar_end_at_show", "blazar_end_status"):
            value = getattr(args, field, None)
            if value is not None:
                setattr(s, field, value)
        if getattr(args, "no_sys_admin", False):
            s.cap_add = ["NET_ADMIN"]
        if args.cmd == "up":
            s.credential_unrestricted = not args.restricted_credential
    if args.cmd == "up":
        up(s, fresh=args.fresh)
        sys.stdout.write(render_env(s, args.format))
        return 0
    if args.cmd == "env":
        if not (run_dir / "harness.json").exists():
            ap.error(f"no rehearsal in {run_dir}: run `up` first")
        sys.stdout.write(render_env(s, args.format))
        return 0
    if args.cmd in ("teardown", "down"):
        for line in teardown(s, stop_engine=args.stop_engine, purge_cache=args.purge_cache):
            print("removed", line)
        return 0
    if args.cmd == "status":
        print(json.dumps(status(s), indent=1))
        return 0
    if args.cmd == "services":
        if args.kafka:
            print("KAFKA_BOOTSTRAP_SERVERS=" + services.start_tansu(args.kafka, s.network, s.wheel_url))
        if args.mongodb:
            print("MONGO_URI=" + services.start_nx27017(args.mongodb, s.network, s.wheel_url))
        return 0
    if args.cmd == "image":
        docker.ensure_engine()
        tag = image.ensure_image(rebuild=args.rebuild)
        print(tag)
        if args.prune:
            for removed in image.remove_stale(tag):
                print("removed", removed)
        return 0
    if args.cmd == "wheelhouse":
        print(wheelhouse.download([ROOT / r for r in args.requirements], extra=wheel_extra(), force=args.force))
        return 0
    if args.cmd == "packages":
        return check_packages(strict=args.check)
    if args.cmd == "smoke":
        return smoke(s, keep=args.keep, timings_file=args.timings)
    return 2


if __name__ == "__main__":
    sys.exit(main())
