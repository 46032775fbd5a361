"""The deploy rehearsal (tests/rehearsal/run.py, `make deploy-rehearsal`).

Without Docker, in `make test` (a few seconds): the event callback and the recap parsing
the rehearsal judges the runs with, on a small local playbook.  The rehearsal itself (root,
Docker, about an hour on two busy cores) runs only with IOT_REHEARSAL=1:

    sudo IOT_REHEARSAL=1 .venv/bin/python -m pytest -q tests/rehearsal/test_rehearsal.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from common.settings import RehearsalSettings
from tests.binaries import required_binary, venv_tool
from tests.rehearsal import run



@pytest.fixture
def local_playbook(tmp_path):
    """A two-play playbook on localhost with a changed task, an unchanged one, a skipped
    one, a looped one and a handler; its output and events as the rehearsal reads them."""
    book = tmp_path / "book.yml"
    book.write_text(textwrap.dedent(f"""\
        - name: First play
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Change something
              ansible.builtin.copy:
                content: "x\\n"
                dest: {tmp_path}/file
                mode: "0644"
              notify: Say it
            - name: Change nothing
              ansible.builtin.command: "true"
              changed_when: false
            - name: Skip
              ansible.builtin.command: "true"
              when: false
            - name: Loop
              ansible.builtin.command: echo {{{{ item }}}}
              changed_when: item == 'b'
              loop: [a, b]
          handlers:
            - name: Say it
              ansible.builtin.debug:
                msg: changed
        - name: Second play
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Nothing
              ansible.builtin.debug:
                msg: hi
        """))
    env = {**os.environ, "ANSIBLE_CALLBACK_PLUGINS": str(run.HERE / "callback_plugins"),
           "ANSIBLE_CALLBACKS_ENABLED": "rehearsal_events", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0"}
    pb = run.Playbook("test-callback", [venv_tool("ansible-playbook"), "-i", "localhost,", str(book)], env, 300)
    pb.log = tmp_path / "book.log"
    pb.events_file = tmp_path / "book.events.jsonl"
    return pb.run()


def test_events_and_recap(local_playbook):
    pb = local_playbook
    assert pb.rc == 0 and not pb.timed_out
    assert pb.recap == {"localhost": {"ok": 5, "changed": 2, "unreachable": 0, "failed": 0, "skipped": 1,
                                      "rescued": 0, "ignored": 0}}
    changed = pb.changed_tasks()
    assert [(c["task"], c["handler"], c["items"]) for c in changed] == [
        ("Change something", False, []), ("Loop", False, ["b"])]
    assert [e["task"] for e in pb.results() if e["handler"]] == ["Say it"]
    assert [e["play"] for e in pb.events if e["event"] == "play"] == ["First play", "Second play"]
    stages = pb.stage_times()
    assert list(stages) == ["First play", "Second play"] and all(v >= 0 for v in stages.values())
    assert json.loads(pb.events_file.read_text().splitlines()[-1])["event"] == "stats"
    pb.check()


def test_recap_of_a_failure():
    text = ("PLAY RECAP ****\nh1   : ok=3    changed=1    unreachable=0    failed=1    skipped=0    "
            "rescued=0    ignored=0\nlocalhost : ok=1 changed=0 unreachable=0 failed=0 skipped=2 rescued=0 "
            "ignored=0\n")
    recap = run.parse_recap(text)
    assert recap["h1"]["failed"] == 1 and recap["localhost"]["skipped"] == 2


def test_every_play_of_the_master_playbook_has_a_stage():
    stages = run.play_stages()
    assert set(stages.values()) == set(run.STAGES)
    assert stages["Install Kafka"] == "kafka"
    assert stages["Install MongoDB"] == stages["Install PostgreSQL"] == stages["Install CouchDB"] == "store"


def test_the_store_plays_and_the_rehearsal_agree():
    """run.py's skip list holds the server plays out of reach here and leaves PostgreSQL's
    (run for real with --store postgres) in; every store play is tagged as run.py assumes."""
    import yaml

    plays = {p["name"]: p for p in yaml.safe_load((run.ROOT / "playbooks/store.yaml").read_text())}
    tags = {name: p.get("tags") for name, p in plays.items()}
    assert tags["Install MongoDB"] == ["mongodb_server"] and tags["Install CouchDB"] == ["couchdb_server"]
    assert tags["Install PostgreSQL"] == ["postgresql_server"]
    skipped = run.SERVER_TAGS.split(",")
    assert {"mongodb_server", "couchdb_server"} <= set(skipped) and "postgresql_server" not in skipped
    assert {p["hosts"] for n, p in plays.items() if n.startswith("Install")} == {f"store_{s}" for s in
                                                                               ("mongodb", "postgres", "couchdb")}
    assert set(run.STORES) == {"mongodb", "postgres"}


@pytest.mark.skipif(not RehearsalSettings().iot_rehearsal,
                    reason="the whole deploy rehearsal (root, Docker, ~1 h): set IOT_REHEARSAL=1")
def test_deploy_rehearsal():
    assert shutil.which("docker") and shutil.which("debootstrap"), "run scripts/install-system-packages.sh"
    proc = subprocess.run([sys.executable, "-m", "tests.rehearsal.run"], cwd=run.ROOT, timeout=4 * 3600)
    summary = json.loads((run.RESULTS / "summary.json").read_text())
    assert proc.returncode == 0 and summary["ok"], summary["failures"]


class _Server:
    """A local HTTP server standing in for one of the deployment's services: `status(path,
    authorization)` gives each answer."""

    def __init__(self, status):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the stdlib's name
                self.send_response(status(self.path, self.headers.get("Authorization")))
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


TOKEN = "test_inference_token"  # the rehearsal's vault value stands in


def _token_api(path, authorization):
    return 200 if authorization == f"Bearer {TOKEN}" else 401


def _open_api(path, authorization):
    return 200


def _refusals(tmp_path, api, prometheus_from_other_vms: bool, warned: bool = True,
              listening: str = "127.0.0.1:9090") -> dict:
    """run.Rehearsal.verify_refusals against local stand-ins: `vm` runs each script here
    with curl, the VMs' addresses rewritten to the stand-ins' ports."""
    inference, prometheus = _Server(api), _Server(lambda path, auth: 200)
    closed = _Server(lambda path, auth: 200)
    closed.close()  # a port where nothing listens: what a loopback-only Prometheus looks like
    extra = tmp_path / "extra-vars.yml"
    extra.write_text(f"vault_inference_token: {json.dumps(TOKEN)}\n")
    ips = {"iot-producer": "10.9.0.1", "iot-inference": "10.9.0.2", "iot-mongodb": "10.9.0.4"}
    other = prometheus.port if prometheus_from_other_vms else closed.port

    def vm(server, script, timeout=120, check=True):
        script = (script.replace("10.9.0.2:8000", f"127.0.0.1:{inference.port}")
                  .replace("10.9.0.4:9090", f"127.0.0.1:{other}")
                  .replace("127.0.0.1:9090", f"127.0.0.1:{prometheus.port}"))
        if script.startswith("ss "):
            return listening + "\n"
        return subprocess.run(["bash", "-euo", "pipefail", "-s"], input=script, capture_output=True, text=True,
                              timeout=timeout).stdout

    r = object.__new__(run.Rehearsal)
    r.s = type("S", (), {"extra_vars_file": extra})()
    r.inventory = lambda: {"groups": {"producers": ["iot-producer"], "inference": ["iot-inference"],
                                      "mongodb": ["iot-mongodb"]}}
    r.private_ip = ips.__getitem__
    r.vm = vm
    text = ("WARNING: iot_kafka_security_enabled is false: Kafka on ...\n"
            "WARNING: the Kafka clients use PLAINTEXT (iot_kafka_security_enabled false)\n") if warned else ""
    try:
        return r.verify_refusals(text)
    finally:
        inference.close()
        prometheus.close()


def test_the_rehearsal_wants_clients_without_credentials_refused(tmp_path):
    """verify_refusals passes for the secure default (401 without or with a wrong token, 200
    with the vault's; Prometheus unreachable from another VM) and fails for each opening."""
    required_binary("curl", "curl")  # the VMs' client, run here by the stand-in `vm`
    out = _refusals(tmp_path, _token_api, prometheus_from_other_vms=False)
    assert (out["inference"]["without_token"], out["inference"]["wrong_token"],
            out["inference"]["with_token"]) == ("401", "401", "200")
    assert out["prometheus"]["from_another_vm"].startswith("000")
    assert out["prometheus"]["on_its_vm_loopback"] == "200"
    assert set(out["not_proven"]) == {"kafka", "mongodb", "grafana", "dashboard"}
    with pytest.raises(run.Failed, match="inference API answered 200 without a token"):
        _refusals(tmp_path, _open_api, prometheus_from_other_vms=False)
    with pytest.raises(run.Failed, match="Prometheus answered 200 from iot-producer"):
        _refusals(tmp_path, _token_api, prometheus_from_other_vms=True)
    with pytest.raises(run.Failed, match=r"Prometheus listens on \['0.0.0.0:9090'\], not on loopback only"):
        _refusals(tmp_path, _token_api, prometheus_from_other_vms=False, listening="0.0.0.0:9090")
    with pytest.raises(run.Failed, match="Kafka runs PLAINTEXT here without the warning"):
        _refusals(tmp_path, _token_api, prometheus_from_other_vms=False, warned=False)
