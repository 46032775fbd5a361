"""The rehearsal's fakes without Docker: the fake `openstack` CLI (Blazar leases) and the
fake openstack.cloud modules that need no container (key pair, network lookups, security
groups, flavors), driven through ansible-playbook like the roles do.

The whole rehearsal (engine, image, four containers, SSH, wheelhouse, tansu, nx-27017) is
`python -m tests.rehearsal.harness smoke`; as a test it runs only with IOT_REHEARSAL_SMOKE=1
(root, Docker, debootstrap: scripts/install-system-packages.sh)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.settings import RehearsalSettings
from tests.binaries import venv_tool
from tests.rehearsal import harness

BIN = harness.BIN / "openstack"
# Chameleon (and the fake) limit a lease to 7 days.
END = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)).strftime("%Y-%m-%d %H:%M")


@pytest.fixture
def cloud(tmp_path):
    fake = harness.load_fake_cloud()
    config = {"cloud": "rehearsal", "docker_network": "none", "subnet_cidr": "172.30.0.0/24",
              "gateway": "172.30.0.1", "network_name": "sharednet1", "floating_network": "public",
              "image_name": "rehearsal-bookworm", "run_id": "test"}
    state = tmp_path / "fake-cloud.json"
    state.write_text(json.dumps(fake.new_state(config, "no-image:test")))
    env = {**os.environ, "IOT_FAKE_CLOUD_STATE": str(state),
           "IOT_FAKE_CLOUD_REAL_COLLECTION": harness.real_collection(),
           "ANSIBLE_COLLECTIONS_PATH": str(harness.COLLECTIONS),
           "PATH": f"{harness.BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("OS_CLOUD", None)
    return {"state": state, "env": env, "dir": tmp_path}


def openstack(cloud, *args):
    return subprocess.run([sys.executable, str(BIN), *args], env=cloud["env"], capture_output=True, text=True,
                          timeout=60)


def state(cloud) -> dict:
    return json.loads(cloud["state"].read_text())


def test_version():
    out = subprocess.run([sys.executable, str(BIN), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "openstack 8.0.0"


def test_lease_lifecycle_matches_blazarclient_output(cloud):
    create = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "create",
                       "--reservation", "resource_type=flavor:instance,flavor_id=3,amount=4",
                       "--end-date", END, "--start-date", "now", "lease-1", "-f", "json")
    # blazarclient prints this line before the formatter's output, -f json included
    assert create.returncode == 0, create.stderr
    first, rest = create.stdout.split("\n", 1)
    assert first == "Created a new lease:"
    created = json.loads(rest)
    assert created["status"] == "PENDING" and created["name"] == "lease-1"
    assert set(created) == {"created_at", "degraded", "end_date", "events", "id", "name", "project_id",
                            "reservations", "start_date", "status", "trust_id", "updated_at", "user_id"}
    assert created["updated_at"] == ""  # None -> "" (format_output_data)

    show = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "show", "lease-1", "-f", "json")
    lease = json.loads(show.stdout)
    assert lease["status"] == "ACTIVE"
    # lists become newline-joined JSON objects (strings), not JSON lists
    assert isinstance(lease["reservations"], str)
    reservation = json.loads(lease["reservations"])
    assert reservation["resource_type"] == "flavor:instance" and reservation["amount"] == 4
    assert reservation["status"] == "active" and reservation["flavor_id"] == reservation["id"]
    assert json.loads(reservation["resource_properties"])["name"] == "m1.medium"
    assert len(lease["events"].split("}\n{")) == 3

    value = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "show", lease["id"],
                      "-f", "value", "-c", "status")
    assert value.stdout == "ACTIVE\n"
    listed = json.loads(openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "list",
                                  "-f", "json").stdout)
    assert listed == [{"id": lease["id"], "name": "lease-1", "start_date": lease["start_date"],
                       "end_date": lease["end_date"]}]

    # the reserved flavor exists while the lease is active
    flavors = [f["id"] for f in harness.load_fake_cloud().flavors(_state_obj(cloud))]
    assert reservation["id"] in flavors

    delete = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "delete", "lease-1")
    assert delete.returncode == 0 and delete.stdout == "Deleted lease: lease-1\n"
    assert json.loads(openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "list",
                                "-f", "json").stdout) == []
    calls = [c for c in state(cloud)["calls"] if c["tool"] == "cli"]
    assert [c["name"] for c in calls] == ["reservation lease " + a for a in
                                          ("create", "show", "show", "list", "delete", "list")]
    assert "amount=4" in " ".join(calls[0]["params"]["argv"])


def _state_obj(cloud):
    fake = harness.load_fake_cloud()
    st = fake.State(str(cloud["state"]))
    st.data = state(cloud)
    return st


@pytest.mark.parametrize("args, message", [
    (["--os-cloud", "chameleon"], "Cloud chameleon was not found."),
    ([], "Missing value auth-url required for auth plugin password"),
    (["--os-cloud", "rehearsal", "--reservation", "resource_type=flavor:instance,flavor_id=m1.medium,amount=1"],
     "Flavor m1.medium could not be found."),
    (["--os-cloud", "rehearsal", "--reservation", "resource_type=flavor:instance,flavor_id=3,amount=0"],
     "Invalid amount 0"),
    (["--os-cloud", "rehearsal", "--start-date", "2099-01-02 00:00"], "The lease parameters are incorrect."),
    (["--os-cloud", "rehearsal", "--end-date", "2099-01-01"], "The lease parameters are incorrect."),
])
def test_lease_create_errors(cloud, args, message):
    cloud_args = [a for a in args if a in ("--os-cloud", "chameleon", "rehearsal")]
    rest = [a for a in args if a not in cloud_args]
    if "--reservation" not in rest:
        rest += ["--reservation", "resource_type=flavor:instance,flavor_id=3,amount=1"]
    if "--end-date" not in rest:
        rest += ["--end-date", END]
    out = openstack(cloud, *cloud_args, "reservation", "lease", "create", *rest, "x", "-f", "json")
    assert out.returncode != 0
    assert message in out.stderr
    assert state(cloud)["leases"] == {}


def test_lease_duplicate_name_and_unknown_lease(cloud):
    args = ["--os-cloud", "rehearsal", "reservation", "lease", "create", "--reservation",
            "resource_type=flavor:instance,flavor_id=3,amount=1", "--end-date", END, "dup"]
    assert openstack(cloud, *args).returncode == 0
    again = openstack(cloud, *args)
    assert again.returncode == 1 and "The lease with name: dup already exists" in again.stderr
    missing = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "show", "nope")
    assert missing.returncode == 1 and "Unable to find resource with name 'nope'" in missing.stderr


PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: key pair
      openstack.cloud.keypair: {cloud: rehearsal, name: k, public_key: "PUBKEY"}
      register: kp
    - name: key pair again
      openstack.cloud.keypair: {cloud: rehearsal, name: k, public_key: "PUBKEY"}
      register: kp2
    - name: other key under the same name
      openstack.cloud.keypair: {cloud: rehearsal, name: k, public_key: "OTHERKEY"}
      register: kp3
      ignore_errors: true
    - name: wrong argument (validated against the real module's spec)
      openstack.cloud.server: {cloud: rehearsal, name: s, image: i, flavor: m1.medium, netwrok: x}
      register: bad
      ignore_errors: true
    - name: wrong choice
      openstack.cloud.security_group_rule: {cloud: rehearsal, security_group: g, direction: inbound}
      register: bad_choice
      ignore_errors: true
    - name: mutually exclusive (real module_kwargs)
      openstack.cloud.security_group_rule: {cloud: rehearsal, security_group: g, remote_group: g,
                                            remote_ip_prefix: 10.0.0.0/8}
      register: bad_exclusive
      ignore_errors: true
    - openstack.cloud.networks_info: {cloud: rehearsal, name: sharednet1}
      register: nets
    - openstack.cloud.subnets_info: {cloud: rehearsal, filters: {network_id: "{{ nets.networks[0].id }}", ip_version: 4}}
      register: subnets
    - openstack.cloud.subnets_info: {cloud: rehearsal, filters: {colour: blue}}
      register: bad_filter
      ignore_errors: true
    - openstack.cloud.compute_flavor_info: {cloud: rehearsal, ram: ">=4096", vcpus: "2"}
      register: flavors
    - openstack.cloud.security_group: {cloud: rehearsal, name: g, description: test}
      register: sg
    - openstack.cloud.security_group_rule: {cloud: rehearsal, security_group: g, protocol: tcp,
                                            port_range_min: 22, port_range_max: 22, remote_ip_prefix: 10.1.2.3/32}
      register: r1
    - openstack.cloud.security_group_rule: {cloud: rehearsal, security_group: g, protocol: tcp,
                                            port_range_min: 22, port_range_max: 22, remote_ip_prefix: 10.1.2.3/32}
      register: r2
    - openstack.cloud.security_group_rule: {cloud: rehearsal, security_group: g, protocol: tcp,
                                            port_range_min: 22, port_range_max: 22, remote_ip_prefix: "::/0"}
      register: r_conflict
      ignore_errors: true
    - openstack.cloud.server: {cloud: rehearsal, name: s, image: rehearsal-bookworm, flavor: m9.huge,
                               network: sharednet1}
      register: no_flavor
      ignore_errors: true
    - openstack.cloud.server: {cloud: rehearsal, name: s, image: CC-Ubuntu22.04, flavor: m1.medium,
                               network: sharednet1}
      register: no_image
      ignore_errors: true
    - openstack.cloud.server: {cloud: rehearsal, name: s, image: rehearsal-bookworm, flavor: m1.medium,
                               network: sharednet1, state: present, metadata: {n: 1}, key_name: k}
      register: bad_metadata
      ignore_errors: true
    - openstack.cloud.server: {cloud: rehearsal, name: s, state: absent}
      register: absent
    - openstack.cloud.server_info: {cloud: rehearsal}
      register: servers
    - openstack.cloud.security_group: {cloud: rehearsal, name: g, state: absent}
      register: sg_gone
    - openstack.cloud.keypair: {cloud: rehearsal, name: k, state: absent}
      register: kp_gone
    - ansible.builtin.copy:
        dest: "{{ out }}"
        content: "{{ {'kp': kp, 'kp2': kp2, 'kp3': kp3, 'bad': bad, 'bad_choice': bad_choice,
                      'bad_exclusive': bad_exclusive, 'nets': nets, 'subnets': subnets, 'bad_filter': bad_filter,
                      'flavors': flavors, 'sg': sg, 'r1': r1, 'r2': r2, 'r_conflict': r_conflict,
                      'no_flavor': no_flavor, 'no_image': no_image, 'bad_metadata': bad_metadata,
                      'absent': absent, 'servers': servers, 'sg_gone': sg_gone, 'kp_gone': kp_gone} | to_json }}"
        mode: "0644"
"""


def test_fake_modules_through_ansible(cloud):
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhJ0B5fYzdd1m7qyo2P8pXhR9o5w7Uq2hJ5n6Tq8p3a test"
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFq3cH4y0m3Jq4vQmW1pQ2mTqzQxqZlKk2m3VhYwGq1b other"
    book = cloud["dir"] / "fakes.yml"
    book.write_text(PLAYBOOK.replace("PUBKEY", key).replace("OTHERKEY", other))
    out = cloud["dir"] / "results.json"
    proc = subprocess.run([venv_tool("ansible-playbook"), str(book), "-e", f"out={out}"], cwd=cloud["dir"],
                          env=cloud["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["kp"]["changed"] and not r["kp2"]["changed"]
    assert r["kp"]["keypair"]["public_key"] == key
    assert "key hash not the same" in r["kp3"]["msg"]
    assert "Unsupported parameters" in r["bad"]["msg"] and "netwrok" in r["bad"]["msg"]
    assert "value of direction must be one of: egress, ingress" in r["bad_choice"]["msg"]
    assert "mutually exclusive" in r["bad_exclusive"]["msg"]
    assert [n["name"] for n in r["nets"]["networks"]] == ["sharednet1"]
    assert r["subnets"]["subnets"][0]["cidr"] == "172.30.0.0/24"
    assert "Invalid query params: colour" in r["bad_filter"]["msg"]
    assert [f["name"] for f in r["flavors"]["flavors"]] == ["m1.medium"]
    assert r["sg"]["changed"] and len(r["sg"]["security_group"]["security_group_rules"]) == 2
    assert r["r1"]["changed"] and not r["r2"]["changed"]
    assert r["r1"]["rule"]["ether_type"] == "IPv4" and r["r1"]["rule"]["remote_ip_prefix"] == "10.1.2.3/32"
    assert "Conflicting value ethertype IPv4" in r["r_conflict"]["msg"]
    assert "No Flavor found for m9.huge" in r["no_flavor"]["msg"]
    assert "Could not find image CC-Ubuntu22.04" in r["no_image"]["msg"]
    assert "is not of type 'string'" in r["bad_metadata"]["msg"]
    assert not r["absent"]["changed"] and r["servers"]["servers"] == []
    assert r["sg_gone"]["changed"] and r["kp_gone"]["changed"]
    st = state(cloud)
    assert st["security_groups"] == {} and st["keypairs"] == {} and st["servers"] == {}
    modules = [c["name"] for c in st["calls"]]
    # r1, r2 and the ethertype conflict; the wrong choice and the mutually exclusive pair
    # failed in AnsibleModule's validation before the fake ran
    assert modules.count("security_group_rule") == 3
    assert [c.get("error", "")[:29] for c in st["calls"] if c["name"] == "security_group_rule"] == [
        "", "", "Conflicting value ethertype I"]
    assert all(c["params"].get("cloud") == "rehearsal" for c in st["calls"])


@pytest.mark.skipif(not RehearsalSettings().iot_rehearsal_smoke,
                    reason="the whole rehearsal (Docker, root): set IOT_REHEARSAL_SMOKE=1")
def test_rehearsal_smoke(tmp_path):
    assert shutil.which("docker") and shutil.which("debootstrap"), "run scripts/install-system-packages.sh"
    proc = subprocess.run([sys.executable, "-m", "tests.rehearsal.harness", "--run-dir", str(tmp_path / "run"),
                           "smoke", "--timings", str(tmp_path / "timings.json")], cwd=harness.ROOT,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


def test_teardown_releases_the_floating_ip_a_lease_end_left(cloud):
    """When a lease ends, Blazar deletes its servers and the jump host's floating IP stays
    allocated, with no server to delete it through: playbooks/teardown.yaml releases it by
    the id provisioning recorded, and is still fine when it is already gone."""
    fake = harness.load_fake_cloud()
    deploy_dir = cloud["dir"] / "deploy" / "iot-pipeline"
    deploy_dir.mkdir(parents=True)
    st = state(cloud)
    fip = {"id": fake.new_id(), "floating_ip_address": "172.30.0.50", "fixed_ip_address": None, "port_id": None,
           "status": "DOWN", "_server_id": None}
    other = {"id": fake.new_id(), "floating_ip_address": "172.30.0.51", "fixed_ip_address": None, "port_id": None,
             "status": "DOWN", "_server_id": None}
    st["floating_ips"] = {fip["id"]: fip, other["id"]: other}  # another project member's address
    cloud["state"].write_text(json.dumps(st))
    record = deploy_dir / "floating_ip.json"

    def teardown():
        record.write_text(json.dumps({"id": fip["id"], "address": fip["floating_ip_address"]}))
        env = {**cloud["env"], "ANSIBLE_INVENTORY": f"{harness.ROOT / 'inventory'},{cloud['dir'] / 'hosts.yml'}"}
        proc = subprocess.run(
            [venv_tool("ansible-playbook"), "playbooks/teardown.yaml", "-e", "provision_cloud=rehearsal",
             "-e", f"provision_openstack_cli={BIN}", "-e", f"iot_deploy_dir={deploy_dir}",
             "-e", "provision_reservation=none"],
            cwd=harness.ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return state(cloud)

    after = teardown()
    assert list(after["floating_ips"]) == [other["id"]]  # ours released, nothing else touched
    assert not record.exists()
    again = teardown()  # the address is gone already (deleted with its server, or by hand)
    assert list(again["floating_ips"]) == [other["id"]]
    deletes = [c for c in again["calls"] if c["name"] == "floating ip delete"]
    assert [c["rc"] for c in deletes] == [0, 1]
    assert "No FloatingIP found for " + fip["id"] in deletes[1]["error"]


# --------------------------------------------------------------------------- the provision role
# against the fakes: tasks that need no container (credential check, lease, teardown)

def _set_state(cloud, **changes) -> None:
    st = state(cloud)
    for path, value in changes.items():
        node = st
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    cloud["state"].write_text(json.dumps(st))


def provision(cloud, body: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """ansible-playbook from the repository root (ansible.cfg: roles/) with the settings the
    rehearsal passes; `body` is a playbook path or the tasks of a play on localhost."""
    deploy_dir = cloud["dir"] / "deploy" / "iot-pipeline"
    if body.endswith(".yaml"):
        book = body
    else:
        book = str(cloud["dir"] / "book.yml")
        Path(book).write_text("- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
                              + textwrap.indent(textwrap.dedent(body), "    "))
    run_env = {**cloud["env"], "ANSIBLE_INVENTORY": f"{harness.ROOT / 'inventory'},{cloud['dir'] / 'hosts.yml'}",
               "ANSIBLE_NOCOLOR": "1", **(env or {})}
    return subprocess.run(
        [venv_tool("ansible-playbook"), book, "-e", "provision_cloud=rehearsal", "-e", f"provision_openstack_cli={BIN}",
         "-e", f"iot_deploy_dir={deploy_dir}", "-e", "iot_operator_cidr=172.30.0.1/32", *extra],
        cwd=harness.ROOT, env=run_env, capture_output=True, text=True, timeout=600)


def role_tasks(tasks_from: str) -> str:
    return (f"- ansible.builtin.include_role:\n    name: provision\n    tasks_from: {tasks_from}\n")


def test_the_fake_keystone_shows_the_credential_and_blazar_needs_it_unrestricted(cloud):
    config = openstack(cloud, "--os-cloud", "rehearsal", "configuration", "show", "-f", "json")
    assert config.returncode == 0, config.stderr
    settings = json.loads(config.stdout)
    assert settings["auth_type"] == "v3applicationcredential"
    assert settings["auth.application_credential_secret"] == "<redacted>"
    cred_id = settings["auth.application_credential_id"]
    shown = json.loads(openstack(cloud, "--os-cloud", "rehearsal", "application", "credential", "show", cred_id,
                                 "-f", "json").stdout)
    assert shown["ID"] == cred_id and shown["Unrestricted"] is True
    _set_state(cloud, application_credential__unrestricted=False)
    shown = json.loads(openstack(cloud, "--os-cloud", "rehearsal", "application", "credential", "show", cred_id,
                                 "-f", "json").stdout)
    assert shown["Unrestricted"] is False
    # every read still works with a restricted credential; lease create does not (Blazar's trust)
    assert openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "list").returncode == 0
    create = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "create", "--reservation",
                       "resource_type=flavor:instance,flavor_id=3,amount=1", "--end-date", END, "l", "-f", "json")
    assert create.returncode == 1
    assert "not allowed for managing trusts. (HTTP 403)" in create.stderr
    assert state(cloud)["leases"] == {}


def test_a_restricted_credential_stops_provisioning_before_anything_is_created(cloud):
    _set_state(cloud, application_credential__unrestricted=False)
    proc = provision(cloud, "playbooks/provision.yaml")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "is restricted, and Blazar cannot create a lease with it" in out, out[-3000:]
    assert '"Unrestricted (dangerous)" ticked' in out
    st = state(cloud)
    assert st["keypairs"] == {} and st["security_groups"] == {} and st["leases"] == {} and st["servers"] == {}
    assert [c["name"] for c in st["calls"]] == ["configuration show", "application credential show"]


def test_an_unrestricted_credential_passes_and_a_blazar_403_says_what_to_tick(cloud):
    ok = provision(cloud, role_tasks("credential.yml"))
    assert ok.returncode == 0, ok.stdout[-3000:]
    # The credential restricted after the check: lease create's 403 explained, not just echoed.
    _set_state(cloud, application_credential__unrestricted=False)
    proc = provision(cloud, role_tasks("lease.yml"), "-e", "provision_reservation=create")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Blazar could not create a trust" in out and '"Unrestricted (dangerous)" ticked' in out, out[-3000:]
    assert "not allowed for managing trusts" in out  # the client's own words follow


def lease_window(cloud, name: str) -> tuple[datetime.datetime, datetime.datetime]:
    lease = next(x for x in state(cloud)["leases"].values() if x["name"] == name)
    parse = [datetime.datetime.strptime(lease[k], "%Y-%m-%dT%H:%M:%S.%f") for k in ("start_date", "end_date")]
    return parse[0], parse[1]


@pytest.mark.parametrize("tz", ["America/Chicago", "Asia/Tokyo", "UTC"])
def test_the_lease_lasts_what_was_asked_whatever_the_controllers_time_zone(cloud, tz):
    """now(utc=true).timestamp() read a naive UTC time as local time: the lease was off by the
    controller's UTC offset (Chicago: 6 h longer; Tokyo: 9 h shorter).  -e passes the hours as
    a string, which `*` repeated."""
    before = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    proc = provision(cloud, role_tasks("lease.yml"), "-e", "provision_reservation=create",
                     "-e", "provision_lease=tz-lease", "-e", "provision_lease_hours=48", env={"TZ": tz})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    start, end = lease_window(cloud, "tz-lease")
    assert abs((start - before).total_seconds()) < 120, (start, before)
    # --end-date has minutes: up to one minute short of 48 h, never longer
    assert datetime.timedelta(hours=48, minutes=-2) <= end - start <= datetime.timedelta(hours=48), end - start
    argv = next(c for c in state(cloud)["calls"] if c["name"] == "reservation lease create")["params"]["argv"]
    assert argv[argv.index("--start-date") + 1] == "now"


def teardown(cloud, *extra: str) -> subprocess.CompletedProcess:
    return provision(cloud, "playbooks/teardown.yaml", "-e", "provision_reservation=create", *extra)


def test_teardown_without_a_lease_succeeds_twice_and_after_a_failed_provision(cloud):
    """blazarclient says "Unable to find resource with name ..." for a missing lease; the
    teardown tolerated only "not found" and failed when there was no lease."""
    key = cloud["dir"] / "id_test"
    key.with_suffix(".pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhJ0B5fYzdd1m7qyo2P8pXhR9o5w7Uq2hJ5n6Tq8p3a test\n")
    # A provision that fails after the key pair and the security group, before the lease.
    failed = provision(cloud, "playbooks/provision.yaml", "-e", "provision_flavor=m9.nowhere",
                       "-e", f"iot_ssh_private_key_file={key}")
    assert failed.returncode != 0 and "Flavor m9.nowhere does not exist" in failed.stdout, failed.stdout[-3000:]
    st = state(cloud)
    assert st["keypairs"] and st["security_groups"] and not st["leases"]
    for run in (1, 2):
        proc = teardown(cloud)
        assert proc.returncode == 0, (run, proc.stdout[-3000:])
        st = state(cloud)
        assert st["keypairs"] == {} and st["security_groups"] == {} and st["leases"] == {}
    deletes = [c for c in st["calls"] if c["name"] == "reservation lease delete"]
    assert [c["rc"] for c in deletes] == [1, 1]
    assert all("Unable to find resource with name 'iot-pipeline-lease'" in c["error"] for c in deletes)


def _server(fake, name: str, ip: str) -> dict:
    """A server record of the fake cloud without a container (the floating IP tasks only
    need its addresses)."""
    return {"id": fake.new_id(), "name": name, "_container": "no-such-container-" + name, "_ip": ip,
            "_mac": "fa:16:3e:00:00:%02x" % int(ip.split(".")[-1]), "_network": "sharednet1",
            "_security_groups": ["iot-pipeline-sg"], "_flavor_id": "3"}


def test_a_redeploy_after_the_lease_ended_takes_back_the_recorded_floating_ip(cloud):
    """The lease ended: Blazar deleted the servers, the jump host's address stayed allocated.
    The redeploy allocated a second address and overwrote the record of the first (leaked).
    Now the recorded one is attached to the new jump host; one that is gone, or attached to
    someone else's server, is left alone."""
    fake = harness.load_fake_cloud()
    deploy_dir = cloud["dir"] / "deploy" / "iot-pipeline"
    deploy_dir.mkdir(parents=True)
    record = deploy_dir / "floating_ip.json"
    st = state(cloud)
    old = _server(fake, "iot-pipeline-producer", "172.30.0.40")
    st["servers"] = {old["id"]: old}
    cloud["state"].write_text(json.dumps(st))
    tasks = role_tasks("floating_ip.yml")
    args = ["-e", '{"provision_jump_server": {"name": "producer"}, "provision_server_results": {"results": []}}']

    first = provision(cloud, tasks, *args)
    assert first.returncode == 0, first.stdout[-3000:]
    fip = json.loads(record.read_text())
    assert list(state(cloud)["floating_ips"]) == [fip["id"]]
    again = provision(cloud, tasks, *args)  # an ordinary rerun: nothing changes
    assert again.returncode == 0 and json.loads(record.read_text()) == fip
    assert list(state(cloud)["floating_ips"]) == [fip["id"]]

    # The lease ends: the server goes, its address stays allocated, detached.
    st = state(cloud)
    del st["servers"][old["id"]]
    st["floating_ips"][fip["id"]].update(port_id=None, fixed_ip_address=None, status="DOWN", port_details=None,
                                         _server_id=None)
    new = _server(fake, "iot-pipeline-producer", "172.30.0.41")
    st["servers"] = {new["id"]: new}
    cloud["state"].write_text(json.dumps(st))
    redeploy = provision(cloud, tasks, *args)
    assert redeploy.returncode == 0, redeploy.stdout[-3000:]
    after = state(cloud)["floating_ips"]
    assert list(after) == [fip["id"]], after                     # taken back, none allocated
    assert after[fip["id"]]["_server_id"] == new["id"] and after[fip["id"]]["fixed_ip_address"] == "172.30.0.41"
    assert json.loads(record.read_text()) == fip

    # Recorded, but now attached to another server (not ours any more): a new address.
    st = state(cloud)
    other = _server(fake, "someone-else", "172.30.0.42")
    st["servers"][other["id"]] = other
    st["floating_ips"][fip["id"]].update(_server_id=other["id"], fixed_ip_address=other["_ip"], port_id="p")
    newest = _server(fake, "iot-pipeline-producer", "172.30.0.43")
    del st["servers"][new["id"]]
    st["servers"][newest["id"]] = newest
    cloud["state"].write_text(json.dumps(st))
    moved = provision(cloud, tasks, *args)
    assert moved.returncode == 0, moved.stdout[-3000:]
    fips = state(cloud)["floating_ips"]
    assert len(fips) == 2 and fips[fip["id"]]["_server_id"] == other["id"]
    assert json.loads(record.read_text())["id"] != fip["id"]


@pytest.mark.parametrize("status", ["ERROR", "TERMINATED"])
def test_the_wait_for_active_stops_at_once_when_the_lease_ends_mid_wait(cloud, status):
    """A lease in ERROR or TERMINATED never becomes ACTIVE: the wait kept polling for
    provision_lease_wait_s (15 minutes) before failing."""
    _set_state(cloud, config__blazar_pending_shows=50, config__blazar_end_at_show=2, config__blazar_end_status=status)
    t0 = time.monotonic()
    proc = provision(cloud, role_tasks("lease.yml"), "-e", "provision_reservation=create",
                     "-e", "provision_lease_wait_s=600")
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"Lease iot-pipeline-lease is {status}" in out and "will never" in out, out[-3000:]
    shows = [c for c in state(cloud)["calls"] if c["name"] == "reservation lease show"]
    assert len(shows) == 3, [c.get("error") for c in shows]  # the lookup, then PENDING, then the end
    assert elapsed < 120, elapsed


def test_the_servers_boot_with_the_reservations_flavor_id(cloud):
    """Blazar names the flavor to boot with in the reservation's flavor_id; that it equals
    the reservation's id is Blazar's current habit, not its contract."""
    create = openstack(cloud, "--os-cloud", "rehearsal", "reservation", "lease", "create", "--reservation",
                       "resource_type=flavor:instance,flavor_id=3,amount=4", "--end-date", END, "mine")
    assert create.returncode == 0, create.stderr
    st = state(cloud)
    reservation = next(iter(st["leases"].values()))["reservations"][0]
    reservation["flavor_id"] = reservation["_flavor"]["id"] = "f1a2b3c4-0000-4000-8000-00000000f1a0"
    cloud["state"].write_text(json.dumps(st))
    proc = provision(cloud, role_tasks("lease.yml"), "-e", "provision_reservation=existing", "-e", "provision_lease=mine")
    assert proc.returncode == 0, proc.stdout[-3000:]
    said = " ".join(proc.stdout.split())
    assert "with its flavor f1a2b3c4-0000-4000-8000-00000000f1a0" in said, said[-1500:]
    assert reservation["id"] not in said.split("with its flavor")[1][:60]
