# Regenerates roles/*/meta/argument_specs.yml from the documented defaults:
#   .venv/bin/python tests/deploy/gen_argument_specs.py   (run from the repository root)
import re
import yaml
import pathlib

roles = pathlib.Path("roles")
SHORT = {
    "provision": "Creates the pipeline VMs on Chameleon (OpenStack) and writes the inventory.",
    "base": "Packages, time sync, logging and host firewall of every VM.",
    "iot_app": "The project's Python code and virtualenv, service user, client settings, log files.",
    "kafka": "Apache Kafka (KRaft) with optional SASL/SCRAM over TLS and the topics.",
    "mongodb": "MongoDB from the official repository, auth on, least-privilege app user.",
    "inference": "The Flask + Gunicorn ResNet50 inference service.",
    "consumers": "The inference consumer and the DB consumer.",
    "producer": "Environment and template unit of the simulated cameras.",
    "experiment": "Runs the latency experiment and analyses it on the controller.",
}
for role in sorted(p.name for p in roles.iterdir()):
    text = (roles / role / "defaults/main.yml").read_text()
    data = yaml.safe_load(text) or {}
    lines = text.splitlines()
    # comments: the block of comment lines just above a key (or a trailing comment)
    opts = {}
    for i, line in enumerate(lines):
        m = re.match(r"^([a-z][a-z0-9_]*):(.*)$", line)
        if not m:
            continue
        name = m.group(1)
        j = i - 1
        com = []
        while j >= 0 and lines[j].startswith("#"):
            com.insert(0, lines[j].lstrip("# ").rstrip())
            j -= 1
        trail = re.search(r"\s#\s*(.*)$", m.group(2))
        desc = " ".join(c for c in com if c and not c.startswith("---")) or (trail.group(1) if trail else "")
        if j >= 0 and lines[j].strip() == "" and not com:
            desc = desc
        if not desc:
            desc = name.replace(role + "_", "").replace("_", " ").capitalize() + "."
        v = data[name]
        if isinstance(v, bool):
            t = "bool"
        elif isinstance(v, int):
            t = "raw" if "rate" in name else "int"
        elif isinstance(v, list):
            t = "list"
        elif isinstance(v, dict):
            t = "dict"
        elif isinstance(v, str) and "{{" not in v and "{%" not in v:
            t = "str"
        else:
            t = "raw"
        o = {"description": desc, "type": t, "required": False}
        if t == "list":
            o["elements"] = "raw"
        opts[name] = o
    spec = {"argument_specs": {"main": {"short_description": SHORT[role], "options": opts}}}
    if role == "provision":
        spec["argument_specs"]["teardown"] = {
            "short_description": "Deletes every resource the main entry point creates (by name).",
            "options": opts,
        }
    if role == "experiment":
        spec["argument_specs"]["analyze"] = {
            "short_description": "Runs python -m analysis over the newest (or the given) cloud run on the controller.",
            "options": opts,
        }
    out = "---\n# Every variable of the role (roles/%s/defaults/main.yml documents the defaults).\n" % role
    out += yaml.safe_dump(spec, sort_keys=False, width=150, default_flow_style=False)
    (roles / role / "meta/argument_specs.yml").write_text(out)
    print(role, len(opts))
