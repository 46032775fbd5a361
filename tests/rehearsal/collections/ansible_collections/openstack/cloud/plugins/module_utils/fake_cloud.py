# -*- coding: utf-8 -*-
# Rehearsal stand-in for openstack.cloud (tests/rehearsal/README.md).
# GNU General Public License v3.0+ (like the collection it shadows).
"""The fake cloud behind the rehearsal's openstack.cloud modules and `openstack` CLI.

State lives in one JSON file (IOT_FAKE_CLOUD_STATE) written by the harness: the catalog
(images, flavors, networks, subnets) and the configuration (which Docker network and VM
image back the servers), then every resource the modules create, the Blazar leases and a
log of every call.  Servers are systemd containers on the harness's Docker network.

Only the standard library is imported at module level: the harness and the fake
`openstack` CLI load this file by path as well.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import datetime
import fcntl
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

STATE_ENV = "IOT_FAKE_CLOUD_STATE"
REAL_ENV = "IOT_FAKE_CLOUD_REAL_COLLECTION"
PROJECT_ID = "a1b2c3d4e5f6478f9a0b1c2d3e4f5a6b"
USER_ID = "0f1e2d3c4b5a49687766554433221100"

# Parameters of openstack_full_argument_spec that are never logged.
SECRET_PARAMS = ("auth", "client_key", "password")


class CloudError(Exception):
    """An error the real cloud (or SDK) would raise; becomes fail_json / `ERROR: ...`."""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def iso(ts: datetime.datetime | None = None) -> str:
    return (ts or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- real specs
def real_collection_dir() -> str:
    """The installed (real) openstack.cloud collection the fakes validate against."""
    candidates = []
    if os.environ.get(REAL_ENV):
        candidates.append(os.environ[REAL_ENV])
    paths = list(sys.path)
    try:
        import site
        paths += site.getsitepackages()
    except Exception:  # virtualenvs without site.getsitepackages
        pass
    for p in paths:
        if p and os.path.isdir(p):
            candidates.append(os.path.join(p, "ansible_collections", "openstack", "cloud"))
    mine = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    for c in candidates:
        if os.path.isfile(os.path.join(c, "plugins", "modules", "server.py")) \
                and os.path.realpath(c) != mine and "/rehearsal/collections/" not in os.path.realpath(c):
            return c
    raise CloudError("fake openstack.cloud: cannot find the real openstack.cloud collection to read "
                     "the argument specs from; set %s to its directory" % REAL_ENV)


def _literal(node):
    """ast -> value for the literal subset argument specs are written in (dict(...) calls)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_literal(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("dict", "list", "tuple"):
        if node.func.id == "dict":
            value = dict(_literal(node.args[0])) if node.args else {}
            value.update({kw.arg: _literal(kw.value) for kw in node.keywords})
            return value
        items = _literal(node.args[0]) if node.args else []
        return tuple(items) if node.func.id == "tuple" else list(items)
    raise ValueError("not a literal: %s" % ast.dump(node)[:200])


def _class_attrs(path: str) -> dict:
    tree = ast.parse(open(path).read(), path)
    attrs = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 \
                        and isinstance(stmt.targets[0], ast.Name) \
                        and stmt.targets[0].id in ("argument_spec", "module_kwargs"):
                    attrs[stmt.targets[0].id] = _literal(stmt.value)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("DOCUMENTATION", "RETURN") and isinstance(node.value, ast.Constant):
            attrs[node.targets[0].id] = node.value.value
    return attrs


def _common_spec(real: str) -> tuple[dict, list]:
    """openstack_full_argument_spec()'s common options and CUSTOM_VAR_PARAMS, read from the
    real module_utils/openstack.py."""
    path = os.path.join(real, "plugins", "module_utils", "openstack.py")
    tree = ast.parse(open(path).read(), path)
    spec, custom = None, ["min_ver", "max_ver"]
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id == "CUSTOM_VAR_PARAMS":
            custom = _literal(node.value)
        if isinstance(node, ast.FunctionDef) and node.name == "openstack_full_argument_spec":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name) \
                        and stmt.targets[0].id == "spec":
                    spec = _literal(stmt.value)
                    break
    if spec is None:
        raise CloudError("cannot read openstack_full_argument_spec from %s" % path)
    return spec, custom


def real_module_spec(name: str) -> tuple[dict, dict, dict]:
    """(argument_spec, AnsibleModule kwargs, info) exactly as the real module builds them."""
    real = real_collection_dir()
    path = os.path.join(real, "plugins", "modules", name + ".py")
    if not os.path.isfile(path):
        raise CloudError("the real openstack.cloud has no module %s (%s)" % (name, path))
    attrs = _class_attrs(path)
    if "argument_spec" not in attrs:
        raise CloudError("cannot read the argument_spec of %s" % path)
    spec, custom = _common_spec(real)
    own = copy.deepcopy(attrs["argument_spec"])
    for option in own.values():
        for key in custom:
            option.pop(key, None)
    spec.update(own)
    version = "?"
    with contextlib.suppress(Exception):
        version = json.load(open(os.path.join(real, "MANIFEST.json")))["collection_info"]["version"]
    info = {"path": path, "version": version, "RETURN": attrs.get("RETURN", "")}
    return spec, dict(attrs.get("module_kwargs", {})), info


def documented(return_doc: str, key: str, values: dict | None, element: bool = False) -> dict | None:
    """`values` padded to exactly the keys the real module's RETURN documents under `key`
    (missing ones get None / [] / {}); an undocumented key is a bug in the fake."""
    if values is None:
        return None
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - ansible-core needs PyYAML anyway
        raise CloudError("PyYAML is needed to read the RETURN documentation: %s" % exc) from exc
    doc = yaml.safe_load(return_doc) or {}
    contains = (doc.get(key) or {}).get("contains") or {}
    extra = set(values) - set(contains)
    if extra:
        raise CloudError("fake returns undocumented keys under %s: %s" % (key, sorted(extra)))
    defaults = {"list": [], "dict": {}}
    return {k: values[k] if k in values else copy.deepcopy(defaults.get(v.get("type"))) for k, v in contains.items()}


# --------------------------------------------------------------------------- state
class State:
    """The state file, locked for the lifetime of the `with` block."""

    def __init__(self, path: str | None = None):
        self.path = path or os.environ.get(STATE_ENV, "")
        if not self.path:
            raise CloudError("%s is not set: run the rehearsal harness (python -m tests.rehearsal.harness up) "
                             "and export its environment" % STATE_ENV)
        if not os.path.isfile(self.path):
            raise CloudError("fake cloud state %s does not exist (harness up not run, or torn down)" % self.path)
        self.data: dict = {}
        self._lock = None

    def __enter__(self) -> State:
        self._lock = open(self.path + ".lock", "a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        with open(self.path) as f:
            self.data = json.load(f)
        return self

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def __exit__(self, *exc) -> None:
        if self._lock:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- helpers
    @property
    def config(self) -> dict:
        return self.data["config"]

    @property
    def catalog(self) -> dict:
        return self.data["catalog"]

    def log_call(self, tool: str, name: str, params: dict, changed: bool | None, error: str | None = None,
                 **extra) -> None:
        clean = {k: ("********" if k in SECRET_PARAMS and v is not None else v) for k, v in (params or {}).items()}
        entry = {"time": iso(), "tool": tool, "name": name, "params": clean, "changed": changed}
        if error:
            entry["error"] = error
        entry.update(extra)
        self.data.setdefault("calls", []).append(entry)

    def check_cloud(self, cloud) -> None:
        expected = self.config["cloud"]
        if isinstance(cloud, dict):
            raise CloudError("fake cloud: pass the cloud by name (%r), not an auth dict" % expected)
        name = cloud or os.environ.get("OS_CLOUD")
        if name != expected:
            # openstack.config's message for an unknown clouds.yaml entry
            raise CloudError("Cloud %s was not found." % name)


# --------------------------------------------------------------------------- lookups
def _find(items, name_or_id: str, kind: str, ignore_missing: bool = True):
    matches = [i for i in items if i.get("id") == name_or_id]
    if not matches:
        matches = [i for i in items if i.get("name") == name_or_id]
    if len(matches) > 1:
        raise CloudError("More than one %s exists with the name '%s'." % (kind, name_or_id))
    if not matches:
        if ignore_missing:
            return None
        raise CloudError("No %s found for %s" % (kind, name_or_id))
    return matches[0]


def flavors(st: State) -> list:
    """The catalog's flavors plus those of ACTIVE Blazar flavor reservations."""
    out = list(st.catalog["flavors"])
    for lease in st.data.get("leases", {}).values():
        refresh_lease(st, lease, count_show=False)
        if lease["status"] == "ACTIVE":
            out.extend(r["_flavor"] for r in lease["reservations"] if r.get("_flavor"))
    return out


def find_flavor(st: State, name_or_id: str, ignore_missing=True):
    return _find(flavors(st), name_or_id, "Flavor", ignore_missing)


def find_network(st: State, name_or_id: str, ignore_missing=True):
    return _find(st.catalog["networks"], name_or_id, "Network", ignore_missing)


def find_security_group(st: State, name_or_id: str, ignore_missing=True):
    return _find(list(st.data.setdefault("security_groups", {}).values()), name_or_id, "SecurityGroup",
                 ignore_missing)


def find_server(st: State, name_or_id: str):
    return _find(list(st.data.setdefault("servers", {}).values()), name_or_id, "Server")


# --------------------------------------------------------------------------- resources
def keypair_view(kp: dict) -> dict:
    return {k: kp.get(k) for k in ("created_at", "fingerprint", "id", "is_deleted", "name", "public_key",
                                    "type", "user_id")}


def fingerprint(public_key: str) -> str:
    import base64
    import hashlib
    try:
        blob = base64.b64decode(public_key.split()[1])
    except Exception as exc:
        raise CloudError("Keypair data is invalid: failed to generate fingerprint") from exc
    digest = hashlib.md5(blob).hexdigest()  # nova's fingerprint format
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def create_keypair(st: State, name: str, public_key: str) -> dict:
    if not public_key:
        raise CloudError("fake cloud: generating key pairs is not supported; pass public_key")
    if not re.match(r"^[a-zA-Z0-9 _.@-]+$", name):
        raise CloudError("Keypair data is invalid: Keypair name contains unsafe characters")
    key_type = public_key.split()[0] if public_key.split() else ""
    if key_type not in ("ssh-rsa", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                        "ecdsa-sha2-nistp521", "ssh-dss"):
        raise CloudError("Keypair data is invalid: failed to generate fingerprint")
    kp = {"created_at": iso(), "fingerprint": fingerprint(public_key), "id": name, "is_deleted": False,
          "name": name, "public_key": public_key, "type": "ssh", "user_id": USER_ID}
    st.data.setdefault("keypairs", {})[name] = kp
    return kp


def security_group_view(sg: dict) -> dict:
    view = {k: copy.deepcopy(sg.get(k)) for k in ("created_at", "description", "id", "name", "project_id",
                                                   "revision_number", "tenant_id", "security_group_rules",
                                                   "stateful", "tags", "updated_at")}
    return view


def _default_rules(sg_id: str) -> list:
    rules = []
    for ether in ("IPv4", "IPv6"):
        rules.append(_rule_record(sg_id, {"direction": "egress", "ethertype": ether}))
    return rules


def _rule_record(sg_id: str, proto: dict) -> dict:
    ts = iso()
    rule = {"id": new_id(), "security_group_id": sg_id, "project_id": PROJECT_ID, "tenant_id": PROJECT_ID,
            "direction": proto.get("direction", "ingress"), "ethertype": proto.get("ethertype", "IPv4"),
            "protocol": proto.get("protocol"), "port_range_min": proto.get("port_range_min"),
            "port_range_max": proto.get("port_range_max"), "remote_ip_prefix": proto.get("remote_ip_prefix"),
            "remote_group_id": proto.get("remote_group_id"), "remote_address_group_id": None,
            "description": proto.get("description", ""), "normalized_cidr": None, "belongs_to_default_sg": False,
            "revision_number": 0, "tags": [], "created_at": ts, "updated_at": ts, "name": None}
    if rule["remote_ip_prefix"]:
        rule["normalized_cidr"] = str(ipaddress.ip_network(rule["remote_ip_prefix"], strict=False))
    return rule


def create_security_group(st: State, name: str, description: str | None, stateful) -> dict:
    ts = iso()
    sg_id = new_id()
    sg = {"id": sg_id, "name": name, "description": description or "", "project_id": PROJECT_ID,
          "tenant_id": PROJECT_ID, "revision_number": 1, "stateful": True if stateful is None else stateful,
          "tags": [], "created_at": ts, "updated_at": ts, "security_group_rules": _default_rules(sg_id)}
    st.data.setdefault("security_groups", {})[sg_id] = sg
    return sg


def delete_security_group(st: State, sg: dict) -> None:
    users = [s["name"] for s in st.data.get("servers", {}).values()
             if sg["name"] in s.get("_security_groups", []) or sg["id"] in s.get("_security_groups", [])]
    if users:
        # Neutron: 409 SecurityGroupInUse
        raise CloudError("Security Group %s in use. (servers: %s)" % (sg["id"], ", ".join(users)))
    others = [g["name"] for g in st.data["security_groups"].values() if g["id"] != sg["id"] and any(
        r.get("remote_group_id") == sg["id"] for r in g["security_group_rules"])]
    if others:
        raise CloudError("Security Group %s in use. (remote group of rules in %s)" % (sg["id"], others))
    del st.data["security_groups"][sg["id"]]


def add_rule(st: State, sg: dict, proto: dict) -> dict:
    """Neutron's checks on a new rule, then the rule (prototype keys as the module sends them)."""
    p = dict(proto)
    if "ether_type" in p:
        p["ethertype"] = p.pop("ether_type")
    p.setdefault("ethertype", "IPv4")
    prefix = p.get("remote_ip_prefix")
    if prefix:
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError as exc:
            raise CloudError("Invalid input for remote_ip_prefix. Reason: '%s' is not a valid IP subnet."
                             % prefix) from exc
        if (net.version == 4) != (p["ethertype"] == "IPv4"):
            raise CloudError("Conflicting value ethertype %s for CIDR %s" % (p["ethertype"], prefix))
    proto_name = p.get("protocol")
    if proto_name in ("tcp", "udp"):
        lo, hi = p.get("port_range_min"), p.get("port_range_max")
        if lo is not None and hi is not None and lo > hi:
            raise CloudError("For TCP/UDP protocols, port_range_min must be <= port_range_max")
        for v in (lo, hi):
            if v is not None and not 0 <= v <= 65535:
                raise CloudError("Invalid value for port %s." % v)
    for r in sg["security_group_rules"]:
        same = all((r.get(k) or None) == (p.get(k) or None) for k in (
            "direction", "ethertype", "protocol", "port_range_min", "port_range_max", "remote_group_id"))
        same = same and (r.get("normalized_cidr") == (str(ipaddress.ip_network(prefix, strict=False))
                                                      if prefix else None))
        if same:
            # Neutron compares normalized CIDRs: 10.0.0.5/24 and 10.0.0.0/24 are the same rule.
            raise CloudError("Security group rule already exists. Rule id is %s." % r["id"])
    rule = _rule_record(sg["id"], p)
    if prefix:
        rule["remote_ip_prefix"] = str(ipaddress.ip_network(prefix, strict=False))
    sg["security_group_rules"].append(rule)
    sg["revision_number"] += 1
    sg["updated_at"] = iso()
    return rule


def rule_view(rule: dict) -> dict:
    view = {k: copy.deepcopy(rule.get(k)) for k in (
        "created_at", "description", "direction", "id", "name", "port_range_max", "port_range_min",
        "project_id", "protocol", "remote_address_group_id", "remote_group_id", "remote_ip_prefix",
        "revision_number", "security_group_id", "tags", "tenant_id", "updated_at")}
    view["ether_type"] = rule.get("ethertype")
    return view


# --------------------------------------------------------------------------- servers (containers)
def docker(*args: str, check: bool = True, input: str | None = None, timeout: float = 300):
    try:
        proc = subprocess.run(["docker", *args], input=input, text=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CloudError("fake cloud: docker %s: %s (is the rehearsal's engine up? harness up)"
                         % (" ".join(args[:2]), exc)) from exc
    if check and proc.returncode != 0:
        raise CloudError("docker %s failed: %s" % (" ".join(args[:3]), proc.stderr.strip()[-1500:]))
    return proc


def container_state(cname: str) -> str | None:
    proc = docker("container", "inspect", "--format", "{{.State.Status}}", cname, check=False, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _allocate_ip(st: State) -> str:
    cfg = st.config
    net = ipaddress.ip_network(cfg["subnet_cidr"])
    used = {s["_ip"] for s in st.data.get("servers", {}).values()}
    # A floating IP's address was its first server's: never a new container's own address.
    used |= {f["floating_ip_address"] for f in st.data.get("floating_ips", {}).values()}
    used.add(cfg["gateway"])
    first, last = cfg.get("pool_first", 10), min(net.num_addresses - 2, cfg.get("pool_last", 250))
    counter_file = cfg.get("ip_counter_file")
    counter = first
    if counter_file and os.path.exists(counter_file):
        with contextlib.suppress(ValueError):
            counter = int(open(counter_file).read().strip())
    # Addresses rotate across runs (like a cloud recycling them slowly): a fresh container
    # rarely gets the address of the previous run's, whose host key ~/.ssh/known_hosts holds.
    span = last - first + 1
    for i in range(span):
        host = first + (counter - first + i) % span
        ip = str(net.network_address + host)
        if ip not in used:
            if counter_file:
                with open(counter_file, "w") as f:
                    f.write(str(host + 1))
            return ip
    raise CloudError("No more IP addresses available on network %s." % cfg["network_name"])


def _forget_host_key(st: State, ip: str) -> None:
    """Removes the address from the known_hosts files named in the config (none by default;
    addresses rotate across runs anyway)."""
    for known in st.config.get("known_hosts_files", []):
        known = os.path.expanduser(known)
        if os.path.exists(known):
            subprocess.run(["ssh-keygen", "-R", ip, "-f", known], capture_output=True, check=False)


def wait_ssh(ip: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, 22), timeout=3) as s:
                s.settimeout(3)
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def _hostname(name: str) -> str:
    host = re.sub(r"[^a-zA-Z0-9-]", "-", name).strip("-")[:63] or "server"
    return host


def _container_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", name) if re.match(r"^[a-zA-Z0-9]", name) else "srv-" + name


def create_server(st: State, p: dict) -> dict:
    cfg = st.config
    count = len(st.data.get("servers", {}))
    if count >= cfg.get("quota_instances", 10):
        raise CloudError("Quota exceeded for instances: Requested 1, but already used %d of %d instances"
                         % (count, cfg.get("quota_instances", 10)))
    image = None
    if p.get("boot_volume"):
        raise CloudError("fake cloud: boot_volume (an existing volume) is not supported")
    image = _find(st.catalog["images"], p["image"], "Image")
    if image is None:
        raise CloudError("Could not find image {0} with exclude {1}".format(p["image"], p.get("image_exclude")))
    if p.get("flavor"):
        flavor = find_flavor(st, p["flavor"], ignore_missing=False)
    else:
        cands = [f for f in flavors(st) if f["ram"] >= p["flavor_ram"]]
        if not cands:
            raise CloudError("Could not find any matching flavor")
        flavor = min(cands, key=lambda f: f["ram"])
    # network / nics
    net_name = p.get("network")
    for nic in p.get("nics") or []:
        if isinstance(nic, dict):
            net_name = net_name or nic.get("net-name") or nic.get("net-id")
        elif isinstance(nic, str):
            kv = dict(part.split("=", 1) for part in nic.split(",") if "=" in part)
            net_name = net_name or kv.get("net-name") or kv.get("net-id")
    if net_name is None:
        nets = [n for n in st.catalog["networks"] if not n["is_router_external"]]
        if len(nets) != 1:
            raise CloudError("Multiple possible networks found, use a Network ID to be more specific.")
        network = nets[0]
    else:
        network = find_network(st, net_name)
        if network is None:
            raise CloudError("Network %s is not a valid network in %s" % (net_name, cfg["cloud"]))
    if network["is_router_external"]:
        raise CloudError("fake cloud: network %s is the external (floating IP) network; boot on %s"
                         % (network["name"], cfg["network_name"]))
    key_pub = None
    if p.get("key_name"):
        kp = st.data.get("keypairs", {}).get(p["key_name"])
        if kp is None:
            raise CloudError("Invalid key_name provided.")
        key_pub = kp["public_key"]
    sgs = p.get("security_groups") or ["default"]
    for sg in sgs:
        if sg != "default" and find_security_group(st, sg) is None:
            raise CloudError("Security group %s not found for project %s." % (sg, PROJECT_ID))
    metadata = parse_metadata(p.get("metadata"))
    server_id = new_id()
    ip = _allocate_ip(st)
    cname = _container_name(p["name"])
    mac = "fa:16:3e:%02x:%02x:%02x" % tuple(int(x) for x in ip.split(".")[1:])
    # A leftover container of the same name (earlier run killed hard) is replaced.
    if container_state(cname) is not None:
        docker("rm", "-f", "-v", cname, timeout=120)
    run = ["run", "-d", "--name", cname, "--hostname", _hostname(p["name"]),
           "--network", cfg["docker_network"], "--ip", ip,
           "--tmpfs", "/run", "--tmpfs", "/run/lock",
           *cfg.get("cgroup_args", ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]),
           "--stop-signal", "SIGRTMIN+3", "-e", "container=docker",
           "--label", "iot-rehearsal=server", "--label", "iot-rehearsal.run=%s" % cfg.get("run_id", ""),
           "--label", "iot-rehearsal.server-id=%s" % server_id]
    for cap in cfg.get("cap_add", ["NET_ADMIN"]):
        run += ["--cap-add", cap]
    if cfg.get("flavor_limits"):
        run += ["--memory", "%dm" % flavor["ram"], "--cpus", str(flavor["vcpus"])]
    run += list(cfg.get("docker_run_args", []))
    run += [image["_docker_image"], "/sbin/init"]
    docker(*run, timeout=300)
    _forget_host_key(st, ip)
    if key_pub:
        docker("exec", "-i", cname, "sh", "-c",
               "cat > /home/cc/.ssh/authorized_keys && chown cc:cc /home/cc/.ssh/authorized_keys "
               "&& chmod 600 /home/cc/.ssh/authorized_keys", input=key_pub.strip() + "\n", timeout=120)
    status = "ACTIVE"
    if p.get("wait", True):
        if not wait_ssh(ip, float(p.get("timeout") or 180)):
            logs = docker("logs", "--tail", "30", cname, check=False).stdout
            raise CloudError("Timeout waiting for the server to come up (fake cloud: sshd on %s did not "
                             "answer within %ss). Container log:\n%s" % (ip, p.get("timeout"), logs))
    else:
        status = "BUILD"
    ts = iso()
    rec = {
        "id": server_id, "name": p["name"], "_container": cname, "_ip": ip, "_mac": mac,
        "_network": network["name"], "_security_groups": list(sgs), "_flavor_id": flavor["id"],
        "_flavor": {k: flavor.get(k) for k in ("ram", "vcpus", "disk", "ephemeral", "swap", "extra_specs",
                                                  "description")} | {"original_name": flavor["name"]},
        "image_id": image["id"], "key_name": p.get("key_name"), "metadata": metadata,
        "availability_zone": p.get("availability_zone") or "nova", "created_at": ts, "updated_at": ts,
        "launched_at": ts, "description": p.get("description") or p["name"], "tags": list(p.get("tags") or []),
        "scheduler_hints": p.get("scheduler_hints"), "user_data": p.get("userdata"),
        "config_drive": p.get("config_drive"), "boot_from_volume": p.get("boot_from_volume"),
        "volume_size": p.get("volume_size"), "terminate_volume": p.get("terminate_volume"),
    }
    st.data.setdefault("servers", {})[server_id] = rec
    if p.get("auto_ip") and not (p.get("floating_ips") or p.get("floating_ip_pools")):
        # openstacksdk's auto_ip: a floating IP for a server on a private network.
        create_floating_ip(st, rec, _external_network(st))
    for addr in p.get("floating_ips") or []:
        raise CloudError("fake cloud: specific floating_ips (%s) are not supported" % addr)
    for pool in p.get("floating_ip_pools") or []:
        create_floating_ip(st, rec, find_network(st, pool, ignore_missing=False))
    view = server_view(st, rec)
    view["status"] = status
    return view


def parse_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if isinstance(metadata, str):
        metadata = dict(kv.split("=", 1) for kv in metadata.split(",") if "=" in kv)
    if not isinstance(metadata, dict):
        raise CloudError("Invalid input for field/attribute metadata. Value: %r. is not of type 'object'"
                         % (metadata,))
    for k, v in metadata.items():
        if not isinstance(v, str):
            # Nova's schema: metadata values are strings of at most 255 characters
            raise CloudError("Invalid input for field/attribute metadata. Value: %r. %r is not of type 'string'"
                             % (metadata, v))
        if len(k) > 255 or len(v) > 255:
            raise CloudError("Invalid input for field/attribute metadata: longer than 255 characters")
    return dict(metadata)


def delete_server(st: State, rec: dict, delete_ips: bool) -> None:
    docker("rm", "-f", "-v", rec["_container"], check=False, timeout=180)
    for fip in list(st.data.get("floating_ips", {}).values()):
        if fip.get("_server_id") == rec["id"]:
            if delete_ips:
                del st.data["floating_ips"][fip["id"]]
            else:
                # the address stays allocated to the project, detached
                fip.update(port_id=None, fixed_ip_address=None, status="DOWN", port_details=None,
                           _server_id=None, updated_at=iso())
    del st.data["servers"][rec["id"]]


def server_status(rec: dict) -> str:
    state = container_state(rec["_container"])
    return {"running": "ACTIVE", "exited": "SHUTOFF", "paused": "PAUSED", "created": "BUILD",
            "restarting": "REBOOT"}.get(state or "", "ERROR")


def server_view(st: State, rec: dict) -> dict:
    net = rec["_network"]
    addresses = {net: [{"OS-EXT-IPS-MAC:mac_addr": rec["_mac"], "OS-EXT-IPS:type": "fixed",
                        "addr": rec["_ip"], "version": 4}]}
    for fip in st.data.get("floating_ips", {}).values():
        if fip.get("_server_id") == rec["id"]:
            addresses[net].append({"OS-EXT-IPS-MAC:mac_addr": rec["_mac"], "OS-EXT-IPS:type": "floating",
                                   "addr": fip["floating_ip_address"], "version": 4})
    status = server_status(rec)
    flavor = dict(rec["_flavor"])
    flavor.setdefault("name", rec["_flavor"]["original_name"])
    return {
        "access_ipv4": "", "access_ipv6": "", "addresses": addresses, "admin_password": None,
        "attached_volumes": [], "availability_zone": rec["availability_zone"],
        "block_device_mapping": None, "compute_host": None, "config_drive": "True" if rec.get("config_drive") else "",
        "created_at": rec["created_at"], "description": rec.get("description"), "disk_config": "MANUAL",
        "flavor": flavor, "flavor_id": None, "has_config_drive": bool(rec.get("config_drive")),
        "host_id": "f" * 56, "host_status": None, "hostname": _hostname(rec["name"]),
        "hypervisor_hostname": None, "id": rec["id"], "image": {"id": rec["image_id"]},
        "image_id": rec["image_id"], "instance_name": None, "is_locked": False, "kernel_id": None,
        "key_name": rec.get("key_name"), "launch_index": 0, "launched_at": rec["launched_at"],
        "links": [], "max_count": None, "metadata": dict(rec.get("metadata") or {}), "min_count": None,
        "name": rec["name"], "networks": None,
        "power_state": 1 if status == "ACTIVE" else 4, "progress": 0, "project_id": PROJECT_ID,
        "ramdisk_id": None, "reservation_id": "r-" + rec["id"][:8], "root_device_name": None,
        "scheduler_hints": rec.get("scheduler_hints"),
        "security_groups": [{"name": n} for n in rec["_security_groups"]], "server_groups": [],
        "status": status, "tags": list(rec.get("tags") or []), "task_state": None, "terminated_at": None,
        "trusted_image_certificates": None, "updated_at": rec["updated_at"], "user_data": rec.get("user_data"),
        "user_id": USER_ID, "vm_state": "active" if status == "ACTIVE" else status.lower(), "volumes": [],
    }


def server_update(st: State, rec: dict, p: dict) -> bool:
    """The real module's _build_update/_update for what the fake supports; True if changed."""
    status = server_status(rec)
    if status not in ("ACTIVE", "SHUTOFF", "PAUSED", "SUSPENDED"):
        raise CloudError("The instance is available but not active state: {0}".format(status))
    changed = False
    # floating ips (auto_ip): attach one when requested and none is attached
    has_fip = any(f.get("_server_id") == rec["id"] for f in st.data.get("floating_ips", {}).values())
    if (p.get("auto_ip") or p.get("floating_ip_pools")) and not has_fip:
        pool = (p.get("floating_ip_pools") or [None])[0]
        create_floating_ip(st, rec, find_network(st, pool, False) if pool else _external_network(st))
        changed = True
    wanted = list(p.get("security_groups") or [])
    for sg in wanted:
        if find_security_group(st, sg) is None and sg != "default":
            raise CloudError("No SecurityGroup found for %s" % sg)
    if wanted and sorted(wanted) != sorted(rec["_security_groups"]):
        rec["_security_groups"] = wanted
        changed = True
    required = parse_metadata(p.get("metadata"))
    if p.get("metadata") is not None and required != rec.get("metadata"):
        rec["metadata"] = required
        changed = True
    if p.get("description") is not None and p["description"] != rec.get("description"):
        rec["description"] = p["description"]
        changed = True
    if p.get("tags") and sorted(p["tags"]) != sorted(rec.get("tags") or []):
        rec["tags"] = list(p["tags"])
        changed = True
    if changed:
        rec["updated_at"] = iso()
    return changed


# --------------------------------------------------------------------------- floating ips
def _external_network(st: State) -> dict:
    ext = [n for n in st.catalog["networks"] if n["is_router_external"]]
    if not ext:
        raise CloudError("Unable to find an external network in this cloud which makes getting a floating IP "
                         "impossible")
    return ext[0]


def create_floating_ip(st: State, rec: dict, network: dict) -> dict:
    if not network.get("is_router_external"):
        raise CloudError("Bad floatingip request: Network %s is not a valid external network." % network["id"])
    quota = st.config.get("quota_floating_ips", 2)
    if len(st.data.get("floating_ips", {})) >= quota:
        raise CloudError("Quota exceeded for resources: ['floatingip'].")
    ts = iso()
    fip_id = new_id()
    # The host reaches every container directly: the "floating" address is the fixed one.
    fip = {"id": fip_id, "name": rec["_ip"], "floating_ip_address": rec["_ip"], "fixed_ip_address": rec["_ip"],
           "floating_network_id": network["id"], "port_id": new_id(), "router_id": new_id(),
           "project_id": PROJECT_ID, "status": "ACTIVE", "description": "", "dns_domain": "", "dns_name": "",
           "qos_policy_id": None, "revision_number": 1, "subnet_id": None, "tags": [], "created_at": ts,
           "updated_at": ts, "_server_id": rec["id"],
           "port_details": {"admin_state_up": True, "device_id": rec["id"], "device_owner": "compute:nova",
                            "mac_address": rec["_mac"], "name": "", "network_id": find_network(
                                st, rec["_network"])["id"], "status": "ACTIVE"}}
    st.data.setdefault("floating_ips", {})[fip_id] = fip
    return fip


def attach_floating_ip(st: State, fip: dict, rec: dict) -> None:
    """A detached floating IP attached to another server (the new jump host after a lease
    ended): like Neutron's NAT, the address then reaches that server's container, which
    gets it as a second address (CAP_NET_ADMIN; the host's ARP finds it on the bridge)."""
    fip.update(_server_id=rec["id"], fixed_ip_address=rec["_ip"], port_id=new_id(), status="ACTIVE",
               updated_at=iso(), revision_number=fip.get("revision_number", 1) + 1,
               port_details={"admin_state_up": True, "device_id": rec["id"], "device_owner": "compute:nova",
                             "mac_address": rec["_mac"], "name": "", "network_id": find_network(
                                 st, rec["_network"])["id"], "status": "ACTIVE"})
    if fip["floating_ip_address"] != rec["_ip"] and container_state(rec["_container"]) == "running":
        docker("exec", rec["_container"], "ip", "addr", "replace", fip["floating_ip_address"] + "/32",
               "dev", "eth0", timeout=60)
        _forget_host_key(st, fip["floating_ip_address"])


def floating_ip_view(fip: dict | None) -> dict | None:
    if fip is None:
        return None
    return {k: copy.deepcopy(v) for k, v in fip.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- filters
def match_filters(item: dict, filters: dict | None, strict_keys: bool = False) -> bool:
    for k, v in (filters or {}).items():
        if k not in item:
            if strict_keys:
                raise CloudError("Invalid query params: %s" % k)
            return False
        if isinstance(v, dict) and isinstance(item[k], dict):
            if not match_filters(item[k], v):
                return False
        elif str(item[k]) != str(v) and item[k] != v:
            return False
    return True


def range_search(items: list, filters: dict) -> list:
    """openstacksdk's range_search: MIN, MAX, <, >, <=, >= or an exact value."""
    out = list(items)
    for key, spec in filters.items():
        spec = str(spec)
        values = [int(i[key]) for i in out if i.get(key) is not None]
        if spec == "MIN":
            out = [i for i in out if values and int(i[key]) == min(values)]
            continue
        if spec == "MAX":
            out = [i for i in out if values and int(i[key]) == max(values)]
            continue
        m = re.match(r"^(<=|>=|<|>)?(\d+)$", spec)
        if not m:
            raise CloudError("Invalid range value: %s" % spec)
        op, num = m.group(1) or "==", int(m.group(2))
        import operator
        cmp = {"==": operator.eq, "<": operator.lt, ">": operator.gt, "<=": operator.le, ">=": operator.ge}[op]
        out = [i for i in out if i.get(key) is not None and cmp(int(i[key]), num)]
    return out


def public_flavor(f: dict) -> dict:
    return {k: copy.deepcopy(f.get(k)) for k in ("description", "disk", "ephemeral", "extra_specs", "id",
                                                  "is_disabled", "is_public", "name", "original_name", "ram",
                                                  "rxtx_factor", "swap", "vcpus")}


def public(item: dict) -> dict:
    return {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- Blazar
LEASE_DATE = "%Y-%m-%d %H:%M"
BLAZAR_TS = "%Y-%m-%dT%H:%M:%S.000000"
DB_TS = "%Y-%m-%d %H:%M:%S"


def _parse_blazar_date(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, BLAZAR_TS)


def refresh_lease(st: State, lease: dict, count_show: bool) -> None:
    """PENDING -> ACTIVE once the start date has passed and `blazar_pending_shows` shows were
    made (default 0: the first show after create is ACTIVE); TERMINATED after the end date;
    with `blazar_end_at_show` N, ended at the Nth show with `blazar_end_status` (ERROR)."""
    t = now()
    if count_show:
        lease["_all_shows"] = lease.get("_all_shows", 0) + 1
        # Told to end the lease at its Nth show (blazar_end_at_show): it fails (ERROR) or
        # ends (TERMINATED) while the deployment waits for it to become ACTIVE.
        end_at = int(st.config.get("blazar_end_at_show", 0) or 0)
        if end_at and lease["_all_shows"] >= end_at and lease["status"] in ("PENDING", "ACTIVE"):
            end_lease(st, lease, st.config.get("blazar_end_status", "ERROR"))
            return
    if lease["status"] == "PENDING" and _parse_blazar_date(lease["start_date"]) <= t:
        if count_show:
            lease["_shows"] = lease.get("_shows", 0) + 1
        if lease.get("_shows", 0) > int(st.config.get("blazar_pending_shows", 0)):
            lease["status"] = "ACTIVE"
            lease["updated_at"] = t.strftime(DB_TS)
            for r in lease["reservations"]:
                r["status"] = "active"
                r["updated_at"] = t.strftime(DB_TS)
            for e in lease["events"]:
                if e["event_type"] == "start_lease":
                    e["status"] = "DONE"
                    e["updated_at"] = t.strftime(DB_TS)
    if lease["status"] == "ACTIVE" and _parse_blazar_date(lease["end_date"]) <= t:
        end_lease(st, lease)


def end_lease(st: State, lease: dict, status: str = "TERMINATED") -> list:
    """The lease ends now (its end date, or `status` ERROR: it failed): like Blazar's flavor
    plugin, the servers booted on its reserved flavors are deleted; their floating IPs stay
    allocated to the project, detached.  Returns the deleted servers' names."""
    lease["status"] = status
    lease["updated_at"] = now().strftime(DB_TS)
    flavor_ids = {r["id"] for r in lease["reservations"]}
    for r in lease["reservations"]:
        r["status"] = "deleted" if status == "TERMINATED" else "error"
    for e in lease["events"]:
        if e["event_type"] == "end_lease" and status == "TERMINATED":
            e["status"] = "DONE"
    gone = []
    for rec in list(st.data.get("servers", {}).values()):
        if rec["_flavor_id"] in flavor_ids:
            delete_server(st, rec, delete_ips=False)
            gone.append(rec["name"])
    return gone


def lease_public(lease: dict) -> dict:
    out = public(lease)
    out["reservations"] = [public(r) for r in lease["reservations"]]
    out["events"] = [public(e) for e in lease["events"]]
    return out


# --------------------------------------------------------------------------- Keystone
# Blazar creates a Keystone trust with every lease (it acts for the user when the lease
# starts and ends), and Keystone refuses a trust to a restricted application credential
# (keystone/api/trusts.py _check_unrestricted), which Blazar passes on.  Every other call
# the deployment makes works with a restricted one.
TRUST_FORBIDDEN = ("ERROR: You are not authorized to perform the requested action: Using method "
                   "'application_credential' is not allowed for managing trusts. (HTTP 403)")


def application_credential(st: State) -> dict:
    """The application credential of the harness's clouds.yaml entry (one per fake cloud);
    `unrestricted` is the box ticked (or not) when it was created."""
    return st.data.setdefault("application_credential", new_application_credential(True))


def new_application_credential(unrestricted: bool) -> dict:
    return {"id": uuid.uuid4().hex, "name": "iot-rehearsal", "description": "rehearsal",
            "project_id": PROJECT_ID, "roles": [{"id": uuid.uuid4().hex, "name": "member", "domain_id": None}],
            "unrestricted": bool(unrestricted), "access_rules": [], "expires_at": None}


def require_trust(st: State) -> None:
    """What Blazar's lease create needs of the caller's credential."""
    if not application_credential(st)["unrestricted"]:
        raise CloudError(TRUST_FORBIDDEN)


def find_lease(st: State, name_or_id: str) -> dict:
    leases = st.data.setdefault("leases", {})
    uuid_re = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
    if re.match(uuid_re, name_or_id):
        if name_or_id not in leases:
            raise CloudError("Object with id %s not found" % name_or_id)
        return leases[name_or_id]
    named = [lease for lease in leases.values() if lease["name"] == name_or_id]
    if len(named) > 1:
        raise CloudError("There are more than one appropriate resources for the name '%s' and type 'lease'"
                         % name_or_id)
    if not named:
        raise CloudError("Unable to find resource with name '%s'" % name_or_id)
    return named[0]


def create_lease(st: State, name: str, start: str, end: str, reservations: list, events: list,
                 before_end: str | None) -> dict:
    leases = st.data.setdefault("leases", {})
    if any(lease["name"] == name for lease in leases.values()):
        raise CloudError("The lease with name: %s already exists" % name)
    t = now()
    start_dt = t if start == "now" else datetime.datetime.strptime(start, LEASE_DATE)
    end_dt = datetime.datetime.strptime(end, LEASE_DATE)
    if start != "now" and start_dt < t.replace(second=0, microsecond=0):
        raise CloudError("Start date must be later than current date")
    if end_dt <= start_dt:
        raise CloudError("End date must be later than start date.")
    max_days = st.config.get("blazar_max_lease_days", 7)
    if end_dt - start_dt > datetime.timedelta(days=max_days):
        raise CloudError("Lease duration must not exceed %d days (Chameleon policy, fake)" % max_days)
    lease_id = new_id()
    ts = t.strftime(DB_TS)
    recs = []
    for res in reservations:
        rtype = res.get("resource_type")
        if rtype != "flavor:instance":
            raise CloudError("fake Blazar: only resource_type=flavor:instance is emulated (got %s)" % rtype)
        flavor = _find(st.catalog["flavors"], str(res.get("flavor_id", "")), "Flavor")
        if flavor is None or flavor["id"] != str(res.get("flavor_id")):
            raise CloudError("Flavor %s could not be found." % res.get("flavor_id"))
        amount = res.get("amount")
        if not isinstance(amount, int) or amount < 1:
            raise CloudError("Invalid amount %r: it must be a positive integer." % (amount,))
        if amount > st.config.get("blazar_max_amount", 10):
            raise CloudError("Not enough resources available with query %s" % json.dumps(res))
        unknown = set(res) - {"resource_type", "flavor_id", "amount", "affinity"}
        if unknown:
            raise CloudError("Invalid input for reservation: unexpected %s" % sorted(unknown))
        rid = new_id()
        props = {"id": flavor["id"], "name": flavor["name"], "ram": flavor["ram"], "disk": flavor["disk"],
                 "swap": "", "OS-FLV-EXT-DATA:ephemeral": flavor.get("ephemeral", 0),
                 "OS-FLV-DISABLED:disabled": False, "vcpus": flavor["vcpus"], "os-flavor-access:is_public": True,
                 "rxtx_factor": 1.0, "extra_specs": flavor.get("extra_specs") or {}}
        rflavor = dict(flavor)
        rflavor.update(id=rid, name="reservation:%s" % rid, is_public=False, original_name="reservation:%s" % rid)
        affinity = res.get("affinity")
        recs.append({
            "id": rid, "lease_id": lease_id, "resource_id": new_id(), "resource_type": rtype,
            "status": "pending", "missing_resources": False, "resources_changed": False,
            "created_at": ts, "updated_at": ts, "vcpus": flavor["vcpus"], "memory_mb": flavor["ram"],
            "disk_gb": flavor["disk"], "amount": amount,
            "affinity": None if affinity in (None, "None") else affinity,
            "resource_properties": json.dumps(props), "flavor_id": rid, "aggregate_id": 6,
            "server_group_id": None, "_flavor": rflavor, "_requested_flavor_id": flavor["id"]})
    if not recs:
        raise CloudError("The lease parameters are incorrect.")
    events_out = []
    for etype, when in (("start_lease", start_dt), ("before_end_lease", end_dt - datetime.timedelta(hours=1)),
                        ("end_lease", end_dt)):
        events_out.append({"id": new_id(), "lease_id": lease_id, "event_type": etype,
                           "time": when.strftime(BLAZAR_TS), "status": "UNDONE", "created_at": ts,
                           "updated_at": None})
    lease = {"id": lease_id, "name": name, "project_id": PROJECT_ID, "user_id": USER_ID,
             "trust_id": uuid.uuid4().hex, "created_at": ts, "updated_at": None, "degraded": False,
             "start_date": start_dt.replace(second=0, microsecond=0).strftime(BLAZAR_TS) if start != "now"
             else start_dt.replace(microsecond=0).strftime(BLAZAR_TS),
             "end_date": end_dt.strftime(BLAZAR_TS), "status": "PENDING",
             "reservations": recs, "events": events_out, "_shows": 0}
    leases[lease_id] = lease
    return lease


def delete_lease(st: State, lease: dict) -> list:
    """Deletes the lease; like Blazar's flavor plugin, the servers booted on its reservation
    flavors are deleted with it.  Returns their names."""
    flavor_ids = {r["id"] for r in lease["reservations"]}
    gone = []
    for rec in list(st.data.get("servers", {}).values()):
        if rec["_flavor_id"] in flavor_ids:
            delete_server(st, rec, delete_ips=False)
            gone.append(rec["name"])
    del st.data["leases"][lease["id"]]
    return gone


# --------------------------------------------------------------------------- harness side
def new_state(config: dict, docker_image: str) -> dict:
    """The initial state: catalog and configuration (written by the harness)."""
    net_id, ext_id, subnet_id = new_id(), new_id(), new_id()
    ts = iso()
    cidr = ipaddress.ip_network(config["subnet_cidr"])
    flavors_ = []
    for fid, name, vcpus, ram, disk in (("1", "m1.tiny", 1, 512, 1), ("2", "m1.small", 1, 2048, 20),
                                        ("3", "m1.medium", 2, 4096, 40), ("4", "m1.large", 4, 8192, 40),
                                        ("5", "m1.xlarge", 8, 16384, 40)):
        flavors_.append({"id": fid, "name": name, "original_name": name, "vcpus": vcpus, "ram": ram, "disk": disk,
                         "ephemeral": 0, "swap": 0, "rxtx_factor": 1.0, "is_public": True, "is_disabled": False,
                         "description": None, "extra_specs": {}})
    net_common = {"availability_zone_hints": [], "availability_zones": ["nova"], "created_at": ts,
                  "description": "", "dns_domain": "", "ipv4_address_scope_id": None,
                  "ipv6_address_scope_id": None, "is_admin_state_up": True, "is_default": None,
                  "is_port_security_enabled": True, "is_shared": True, "is_vlan_transparent": None,
                  "mtu": 1500, "project_id": "0" * 32, "provider_network_type": None,
                  "provider_physical_network": None, "provider_segmentation_id": None, "qos_policy_id": None,
                  "revision_number": 3, "segments": None, "status": "ACTIVE", "tags": [], "updated_at": ts}
    networks = [
        dict(net_common, id=net_id, name=config["network_name"], is_router_external=False, subnet_ids=[subnet_id]),
        dict(net_common, id=ext_id, name=config["floating_network"], is_router_external=True, subnet_ids=[]),
    ]
    hosts = list(cidr.hosts())
    subnets = [{"id": subnet_id, "name": config["network_name"] + "-subnet", "description": "",
                "network_id": net_id, "cidr": str(cidr), "gateway_ip": config["gateway"],
                "is_dhcp_enabled": True, "ip_version": 4, "dns_nameservers": [],
                "allocation_pools": [{"start": str(hosts[1]), "end": str(hosts[-1])}], "created_at": ts,
                "updated_at": ts, "dns_publish_fixed_ip": None, "host_routes": [], "ipv6_address_mode": None,
                "ipv6_ra_mode": None, "project_id": "0" * 32, "revision_number": 0, "segment_id": None,
                "service_types": [], "subnet_pool_id": None, "tags": [], "prefix_length": None,
                "use_default_subnet_pool": None}]
    images = [{"id": new_id(), "name": config["image_name"], "_docker_image": docker_image}]
    return {"version": 1, "config": config,
            "catalog": {"images": images, "flavors": flavors_, "networks": networks, "subnets": subnets},
            "keypairs": {}, "security_groups": {}, "servers": {}, "floating_ips": {}, "leases": {}, "calls": [],
            "application_credential": new_application_credential(config.get("credential_unrestricted", True))}


# --------------------------------------------------------------------------- the modules
def run_module(name: str) -> None:
    """Entry point of every fake module: the real module's argument spec and AnsibleModule
    kwargs (so a wrong argument fails exactly as it would), then the fake's handler."""
    from ansible.module_utils.basic import AnsibleModule

    try:
        spec, kwargs, info = real_module_spec(name)
    except (CloudError, OSError, ValueError, SyntaxError) as exc:
        print(json.dumps({"failed": True, "msg": "fake openstack.cloud.%s: %s" % (name, exc)}))
        sys.exit(1)
    module = AnsibleModule(argument_spec=spec, **kwargs)
    try:
        state = State()
    except CloudError as exc:
        module.fail_json(msg=str(exc))
    result: dict = {}
    with state:
        try:
            state.check_cloud(module.params.get("cloud"))
            changed, result = HANDLERS[name](module, state, info)
        except CloudError as exc:
            state.log_call("module", name, module.params, None, error=str(exc), check_mode=module.check_mode)
            state.save()
            module.fail_json(msg=str(exc))
        state.log_call("module", name, module.params, changed, check_mode=module.check_mode)
        state.save()
    module.exit_json(changed=changed, **result)


def _keypair(m, st: State, info: dict):
    p = m.params
    public_key = p["public_key"]
    if p["public_key_file"]:
        try:
            with open(os.path.expanduser(p["public_key_file"])) as fh:
                public_key = fh.read()
        except OSError as exc:
            raise CloudError(str(exc)) from exc
    keypairs = st.data.setdefault("keypairs", {})
    kp = keypairs.get(p["name"])
    if m.check_mode:
        return (p["state"] == "present" and not kp) or (p["state"] == "absent" and bool(kp)), {}
    if p["state"] in ("present", "replace"):
        changed = False
        if kp:
            if public_key and public_key != kp["public_key"]:
                if p["state"] == "present":
                    raise CloudError("Key name %s present but key hash not the same as offered. Delete key first."
                                     % p["name"])
                del keypairs[p["name"]]
                kp = create_keypair(st, p["name"], public_key)
                changed = True
        else:
            kp = create_keypair(st, p["name"], public_key)
            changed = True
        return changed, {"keypair": documented(info["RETURN"], "keypair", keypair_view(kp))}
    if kp:
        del keypairs[p["name"]]
        return True, {}
    return False, {}


def _networks_info(m, st: State, info: dict):
    p = m.params
    nets = st.catalog["networks"]
    if p["name"]:
        nets = [n for n in nets if p["name"] in (n["id"], n["name"])]
    nets = [n for n in nets if match_filters(n, p["filters"])]
    return False, {"networks": [documented(info["RETURN"], "networks", public(n)) for n in nets]}


def _subnets_info(m, st: State, info: dict):
    p = m.params
    subnets = st.catalog["subnets"]
    if p["name"]:
        by_id = [s for s in subnets if s["id"] == p["name"]]
        if by_id:
            return False, {"subnets": [documented(info["RETURN"], "subnets", public(by_id[0]))]}
        subnets = [s for s in subnets if s["name"] == p["name"]]
    subnets = [s for s in subnets if match_filters(s, p["filters"], strict_keys=True)]
    return False, {"subnets": [documented(info["RETURN"], "subnets", public(s)) for s in subnets]}


def _no_project(p: dict) -> None:
    if p.get("project") is not None:
        raise CloudError("fake cloud: the project option is not emulated (one project only)")


def _sg_prototype(st: State, sg: dict | None, params: dict, cache: dict) -> dict:
    """The prototype the real modules build from the rule options (keys as sent to Neutron)."""
    proto = {k: params[k] for k in ("description", "direction", "remote_ip_prefix") if params.get(k) is not None}
    if params.get("remote_group") is not None:
        rg = cache.get(params["remote_group"]) or find_security_group(st, params["remote_group"],
                                                                      ignore_missing=False)
        proto["remote_group_id"] = rg["id"]
    if params.get("ether_type") is not None:
        proto["ether_type"] = params["ether_type"]
    protocol = params.get("protocol")
    if protocol is not None and protocol not in ("any", "0"):
        proto["protocol"] = protocol
    pmax, pmin = params.get("port_range_max"), params.get("port_range_min")
    if protocol in ("icmp", "ipv6-icmp", "tcp", "udp"):
        if pmax is not None and int(pmax) != -1:
            proto["port_range_max"] = int(pmax)
        if pmin is not None and int(pmin) != -1:
            proto["port_range_min"] = int(pmin)
    elif protocol not in ("any", "0"):
        if pmax is not None:
            proto["port_range_max"] = int(pmax)
        if pmin is not None:
            proto["port_range_min"] = int(pmin)
    return proto


def _rule_matches(proto: dict, rule: dict) -> bool:
    """security_group_rule._find_matches: equality on every key the prototype has."""
    p = dict(proto)
    if "ether_type" in p:
        p["ethertype"] = p.pop("ether_type")
    if p.get("protocol") in ("tcp", "udp"):
        if p.get("port_range_max") in (-1, 65535):
            p.pop("port_range_max")
        if p.get("port_range_min") in (-1, 1):
            p.pop("port_range_min")
    return all(rule.get(k) == v for k, v in p.items())


def _security_group(m, st: State, info: dict):
    p = m.params
    _no_project(p)
    sg = find_security_group(st, p["name"])
    if m.check_mode:
        return (p["state"] == "present") != bool(sg) or (p["state"] == "present" and sg is not None and (
            p["description"] is not None and p["description"] != sg["description"])), {}
    if p["state"] == "absent":
        if sg:
            delete_security_group(st, sg)
            return True, {}
        return False, {}
    changed = False
    if sg is None:
        sg = create_security_group(st, p["name"], p["description"], p["stateful"])
        changed = True
    elif p["description"] is not None and p["description"] != sg["description"]:
        sg["description"] = p["description"]
        sg["revision_number"] += 1
        changed = True
    if p["security_group_rules"] is not None:
        cache = {sg["name"]: sg, sg["id"]: sg}
        keep, create = set(), []
        for params in p["security_group_rules"]:
            proto = _sg_prototype(st, sg, params, cache)
            matches = [r for r in sg["security_group_rules"] if _rule_matches(proto, r)]
            if len(matches) > 1:
                raise CloudError("Found more a single matching security group rule which match the given "
                                 "parameters.")
            if matches:
                keep.add(matches[0]["id"])
            else:
                create.append(proto)
        for rule in list(sg["security_group_rules"]):
            if rule["id"] not in keep:
                sg["security_group_rules"].remove(rule)
                changed = True
        for proto in create:
            add_rule(st, sg, proto)
            changed = True
    return changed, {"security_group": documented(info["RETURN"], "security_group", security_group_view(sg))}


def _security_group_rule(m, st: State, info: dict):
    p = m.params
    _no_project(p)
    sg = find_security_group(st, p["security_group"], ignore_missing=False)
    proto = _sg_prototype(st, sg, p, {})
    matches = [r for r in sg["security_group_rules"] if _rule_matches(proto, r)]
    if len(matches) > 1:
        raise CloudError("Found more a single matching security group rule which match the given parameters.")
    rule = matches[0] if matches else None
    if m.check_mode:
        return (p["state"] == "present") != bool(rule), {}
    if p["state"] == "present":
        if rule:
            return False, {"rule": documented(info["RETURN"], "rule", rule_view(rule))}
        rule = add_rule(st, sg, proto)
        return True, {"rule": documented(info["RETURN"], "rule", rule_view(rule))}
    if rule:
        sg["security_group_rules"].remove(rule)
        return True, {}
    return False, {}


def _server(m, st: State, info: dict):
    p = m.params
    rec = find_server(st, p["name"])
    if m.check_mode:
        if p["state"] == "absent":
            return rec is not None, {}
        if rec is None:
            return True, {}
        return bool(p.get("metadata") is not None and parse_metadata(p["metadata"]) != rec.get("metadata")), {}
    if p["state"] == "present":
        if rec is None:
            return True, {"server": documented(info["RETURN"], "server", create_server(st, p))}
        changed = server_update(st, rec, p)
        return changed, {"server": documented(info["RETURN"], "server", server_view(st, rec))}
    if rec is None:
        return False, {}
    delete_server(st, rec, bool(p["delete_ips"]))
    return True, {}


def _floating_ip(m, st: State, info: dict):
    p = m.params
    rec = find_server(st, p["server"])
    if rec is None:
        raise CloudError("No Server found for %s" % p["server"])
    network = find_network(st, p["network"], ignore_missing=False) if p["network"] else None
    fips = st.data.setdefault("floating_ips", {})
    if p["floating_ip_address"]:
        ips = [f for f in fips.values() if f["floating_ip_address"] == p["floating_ip_address"]]
    else:
        if p["nat_destination"] and not p["fixed_address"]:
            find_network(st, p["nat_destination"], ignore_missing=False)
        ips = [f for f in fips.values() if f.get("_server_id") == rec["id"]
               and (network is None or f["floating_network_id"] == network["id"])
               and (not p["fixed_address"] or f["fixed_ip_address"] == p["fixed_address"])]
    if p["state"] == "present":
        changed = False
        if p["floating_ip_address"]:
            if not ips:
                raise CloudError("fake cloud: a specific floating_ip_address (%s) is not emulated"
                                 % p["floating_ip_address"])
            ip = ips[0]
            if ip.get("_server_id") not in (None, rec["id"]):
                raise CloudError("Floating ip {0} has been attached to different server".format(
                    p["floating_ip_address"]))
            if ip.get("_server_id") is None:
                # the real module: add_ip_list(server, [address])
                attach_floating_ip(st, ip, rec)
                changed = True
        elif not ips:
            pool = network or _external_network(st)
            free = [f for f in fips.values() if f.get("_server_id") is None
                    and f["floating_network_id"] == pool["id"]] if p["reuse"] else []
            if free:
                raise CloudError("fake cloud: reusing a detached floating IP is not emulated")
            ips = [create_floating_ip(st, rec, pool)]
            changed = True
        return changed, {"floating_ip": documented(info["RETURN"], "floating_ip", floating_ip_view(ips[0]))}
    # absent
    if not ips:
        return False, {}
    changed = False
    for ip in ips:
        if ip.get("fixed_ip_address"):
            ip.update(port_id=None, fixed_ip_address=None, status="DOWN", port_details=None, _server_id=None)
            changed = True
        if p["purge"]:
            del fips[ip["id"]]
            changed = True
    return changed, {}


def _floating_ip_info(m, st: State, info: dict):
    p = m.params
    fips = list(st.data.get("floating_ips", {}).values())
    for key in ("description", "fixed_ip_address", "floating_ip_address"):
        if p[key] is not None:
            fips = [f for f in fips if f.get(key) == p[key]]
    if p["floating_network"]:
        network = find_network(st, p["floating_network"], ignore_missing=False)
        fips = [f for f in fips if f["floating_network_id"] == network["id"]]
    if p["status"]:
        fips = [f for f in fips if f.get("status", "").lower() == p["status"]]
    for key in ("port", "router", "project"):
        if p[key]:
            raise CloudError("fake cloud: floating_ip_info by %s is not emulated" % key)
    return False, {"floating_ips": [documented(info["RETURN"], "floating_ips", floating_ip_view(f)) for f in fips]}


def _compute_flavor_info(m, st: State, info: dict):
    p = m.params
    if p["name"]:
        f = find_flavor(st, p["name"])
        items = [f] if f else []
    else:
        items = flavors(st)
    filters = {k: p[k] for k in ("ephemeral", "ram", "vcpus") if p[k] is not None}
    if filters:
        items = range_search(items, filters)
    if p["limit"] is not None:
        items = items[:p["limit"]]
    return False, {"flavors": [documented(info["RETURN"], "flavors", public_flavor(f)) for f in items]}


def _server_info(m, st: State, info: dict):
    import fnmatch
    p = m.params
    recs = list(st.data.get("servers", {}).values())
    if p["name"]:
        recs = [r for r in recs if r["id"] == p["name"] or fnmatch.fnmatchcase(r["name"], p["name"])]
    views = [server_view(st, r) for r in recs]
    views = [v for v in views if match_filters(v, p["filters"])]
    return False, {"servers": [documented(info["RETURN"], "servers", v) for v in views]}


HANDLERS = {
    "keypair": _keypair,
    "networks_info": _networks_info,
    "subnets_info": _subnets_info,
    "security_group": _security_group,
    "security_group_rule": _security_group_rule,
    "server": _server,
    "floating_ip": _floating_ip,
    "floating_ip_info": _floating_ip_info,
    "compute_flavor_info": _compute_flavor_info,
    "server_info": _server_info,
}
