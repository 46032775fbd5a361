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

import pytest

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


@pytest.mark.skipif(os.environ.get("IOT_REHEARSAL_SMOKE") != "1",
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
