"""Security of a deployed pipeline, the parts that can be checked from the repository.

* no secret in any tracked file (private keys, cloud keys, tokens, passwords
  assigned literal values, credentials inside URIs); ``*.example`` files and
  obvious placeholders are allowed;
* the Kafka clients take SASL/SCRAM over TLS from the same settings as the rest;
* every entry point logs its effective settings with the secrets masked.

The API's bearer token (401 without it) is covered by tests/unit/test_inference_api.py.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import HANG_GUARD_S

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ secret scan

PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"(?i)aws_?secret_?access_?key\W{0,4}[=:]\s*['\"]?([A-Za-z0-9/+=]{40})"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "OpenStack application credential": re.compile(
        r"(?i)application_credential_secret\W{0,4}[=:]\s*['\"]?([A-Za-z0-9_\-]{16,})"),
    "credentials in a URI": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s'\"/]+)@"),
    "password/token assigned a literal": re.compile(
        r"(?i)\b[\w.-]*(?:password|passwd|passphrase|secret|token|api_?key|private_?key)[\w.-]*"
        r"\s*[:=]\s*['\"]([^'\"\s]{4,})['\"]"),
    "password/token in YAML": re.compile(
        r"(?im)^\s*-?\s*[\w.-]*(?:password|passwd|secret|token|api_?key)[\w.-]*\s*:\s*([^\s#'\"{][^\s#]{3,})\s*$"),
}

# Values that are obviously not secrets: templates, variables, placeholders, test values,
# and the names of authentication methods (PostgreSQL's password_encryption = 'scram-sha-256').
PLACEHOLDER = re.compile(
    r"(?ix)^(?: \{\{.*\}\} | \$\{?\w+\}? | <[^>]*> | %\(?\w+\)?s? | \*+ | x+ | \.\.\. | none | null"
    r" | scram-sha-\d+ | md5"
    r" | true | false | change-?me[\w-]* | example\w* | placeholder | redacted | dummy\w* | fake\w*"
    r" | test\w* | s3cret | secret | password | token | your[\w-]* | vault_\w+ | lookup\(.* | env\(.*"
    r" | os\.environ.* )$")
# A Python f-string field ({password}, {self.password()}) is code that fills the URI in, not a value.
PLACEHOLDER_URI_PASSWORD = re.compile(r"(?i)^(?:\*+|\{\{.*\}\}|\{[\w.()\[\]'\"]+\}|\$\{?\w+\}?|\$\(\w+\)|<[^>]*>|"
                                      r"pass(?:word)?|pw|secret|s3cret|"
                                      r"change-?me[\w-]*|example|x+|\\1\*\*\*\\3|\*\*\*)$")


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / p for p in out.stdout.decode().split("\0") if p]


def scan_text(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, excerpt) for every likely secret in ``text``."""
    found = []
    for kind, pattern in PATTERNS.items():
        for m in pattern.finditer(text):
            value = m.group(1) if pattern.groups else m.group(0)
            if kind == "credentials in a URI" and PLACEHOLDER_URI_PASSWORD.match(value):
                continue
            if kind.startswith("password/token") and (PLACEHOLDER.match(value) or "{{" in value
                                                      or value.startswith(("$", "%", "<"))):
                continue
            line = text.count("\n", 0, m.start()) + 1
            found.append((line, kind, m.group(0)[:80]))
    return found


def test_the_scanner_finds_what_it_should():
    # Built at run time so the repository itself never contains them.
    key = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE..."
    aws = "AKIA" + "ABCDEFGHIJKLMNOP"
    cases = [key, f"id = '{aws}'", "mongodb://iot:" + "Hunter2xyz@db:27017",
             "db_password = '" + "Tr0ub4dor&3'", "kafka_sasl_password: " + "n0tAPlaceh0lder",
             "ghp_" + "a" * 36, "INFERENCE_TOKEN=\"" + "9f8e7d6c5b4a" + "\""]
    for text in cases:
        assert scan_text(text), text
    for text in ["password: \"{{ vault_mongo_password }}\"", "token = secret(settings.inference_token)",
                 "mongodb://user:***@host", "MONGO_URI=mongodb://127.0.0.1:27017",
                 "kafka_sasl_password: \"{{ kafka_password }}\"", "password = os.environ['X']",
                 "headers={'Authorization': 'Bearer ' + token}", "token: s3cret",
                 "mongo_password: changeme",
                 # a Kubernetes container env var built from others (deploy/k8s/)
                 "value: mongodb://$(MONGO_USERNAME):$(MONGO_PASSWORD)@mongodb:27017"]:
        assert not scan_text(text), text


def test_no_secret_in_tracked_files():
    findings = []
    for path in tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if path.name.endswith(".example") or rel == "tests/integration/test_security.py" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary
        findings += [f"{rel}:{line}: {kind}: {excerpt}" for line, kind, excerpt in scan_text(text)]
    assert not findings, "possible secrets in tracked files:\n" + "\n".join(findings)


def test_secret_files_are_ignored():
    """Vault files, cloud credentials and generated inventories stay out of git."""
    for name in ("group_vars/all/vault.yml", "x.vault", "clouds.yaml", ".deploy/hosts.yml",
                 ".deploy/iot-pipeline/pki/ca.key", "inventory/group_vars/all/local.yml"):
        out = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT)
        assert out.returncode == 0, f"{name} is not git-ignored"


# ------------------------------------------------------------------ Kafka security from settings

SASL_ENV = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "KAFKA_SASL_USERNAME": "iot", "KAFKA_SASL_PASSWORD": "pw-from-env-123",
            "KAFKA_SSL_CAFILE": "/etc/iot/ca.pem"}


def test_kafka_clients_use_sasl_ssl_from_the_environment(monkeypatch):
    from common import kafka_io
    from common.settings import KafkaSettings

    for k, v in SASL_ENV.items():
        monkeypatch.setenv(k, v)
    s = KafkaSettings()
    cfg = kafka_io.client_config(s)
    assert cfg["security_protocol"] == "SASL_SSL"
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl_plain_username"] == "iot" and cfg["sasl_plain_password"] == "pw-from-env-123"
    assert cfg["ssl_cafile"] == "/etc/iot/ca.pem"

    seen = []
    monkeypatch.setattr(kafka_io, "KafkaProducer", lambda **kw: seen.append(("producer", kw)))
    monkeypatch.setattr(kafka_io, "KafkaConsumer", lambda *t, **kw: seen.append(("consumer", kw)))
    kafka_io.make_producer(s)
    kafka_io.make_consumer(s, "t", group_id="g")
    assert [kind for kind, _kw in seen] == ["producer", "consumer"]
    for _kind, kw in seen:
        assert {k: kw[k] for k in cfg} == cfg  # every client gets the same security options

    plain = kafka_io.client_config(KafkaSettings(kafka_security_protocol="PLAINTEXT"))
    assert "sasl_plain_password" not in plain and "ssl_cafile" not in plain


# ------------------------------------------------------------------ masked settings in the logs

SECRETS = {"KAFKA_SASL_PASSWORD": "kafka-pw-5f3c1a", "MONGO_URI": "mongodb://iot:mongo-pw-8b2d4e@127.0.0.1:1/?authSource=admin",
           "INFERENCE_TOKEN": "token-9c7e2f"}
RAW = ("kafka-pw-5f3c1a", "mongo-pw-8b2d4e", "token-9c7e2f")


def _run_until_settings_logged(module: str, extra_env: dict, timeout_s: float = HANG_GUARD_S) -> str:
    env = {**os.environ, **SECRETS, **extra_env, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "iot",
           "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    deadline = time.monotonic() + timeout_s
    os.set_blocking(proc.stdout.fileno(), False)
    try:
        # Settings first, then a few seconds of trying to connect (with the secrets).
        while time.monotonic() < deadline:
            out += proc.stdout.read() or b""
            if b"effective settings" in out:
                time.sleep(4)
                out += proc.stdout.read() or b""
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
        out += proc.stdout.read() or b""
    return out.decode(errors="replace")


@pytest.mark.parametrize("module,extra", [
    ("consumers.inference", {}),
    ("consumers.db", {}),
    ("producer", {"DATASET": "synthetic", "COUNT": "5"}),
])
def test_entry_points_mask_secrets_in_their_logs(module, extra):
    text = _run_until_settings_logged(module, extra)
    assert "effective settings" in text, text[-2000:]
    for raw in RAW:
        assert raw not in text, f"{module} logged a secret:\n" + \
            "\n".join(line for line in text.splitlines() if raw in line)[:2000]
    assert "***" in text


def test_inference_service_masks_its_token(monkeypatch, caplog):
    from inference import create_app
    from inference.serving import ModelHost

    monkeypatch.setattr(ModelHost, "start", lambda self: self)  # no model: only the startup log
    monkeypatch.setenv("INFERENCE_TOKEN", SECRETS["INFERENCE_TOKEN"])
    with caplog.at_level(logging.INFO):
        create_app({"TESTING": True})
    text = caplog.text
    assert "INFERENCE_TOKEN=***" in text
    assert SECRETS["INFERENCE_TOKEN"] not in text


def test_describe_masks_uri_passwords():
    from common.settings import MongoSettings, describe

    text = describe(MongoSettings(mongo_uri=SECRETS["MONGO_URI"]))
    assert "mongo-pw-8b2d4e" not in text and "mongodb://iot:***@127.0.0.1:1" in text
