import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from common.settings import (REPLACED, SETTINGS_GROUPS, DashboardSettings, KafkaSettings, MongoSettings,
                             ProjectSettings, SettingsError, StackSettings, describe, mask, with_flags)

ROOT = Path(__file__).resolve().parents[2]


def test_environment_and_flags(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("IMAGES_PARTITIONS", "6")
    s = KafkaSettings()
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092" and s.images_partitions == 6
    assert s.model_copy(update={"images_topic": "x"}).images_topic == "x"


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("MONGO_URI", "mongodb://app:s3cret@db:27017/iot")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    text = describe(KafkaSettings(), MongoSettings())
    assert "s3cret" not in text and "hunter2" not in text
    assert "MONGO_URI=mongodb://app:***@db:27017/iot" in text
    assert "KAFKA_SASL_PASSWORD=***" in text
    assert mask(SecretStr("plain")) == "***"


def test_flags_are_validated_like_the_environment():
    from common.settings import InferenceClientSettings, with_flags

    assert with_flags(InferenceClientSettings, predict_batch_images=8, predict_batch_wait_ms=None).predict_batch_images == 8
    with pytest.raises(ValueError, match="invalid setting: PREDICT_BATCH_IMAGES=0"):
        with_flags(InferenceClientSettings, predict_batch_images=0)


@pytest.mark.parametrize("argv, variable", [(["consumers.inference", "--batch-size", "0"], "PREDICT_BATCH_IMAGES"),
                                            (["consumers.db", "--max-records", "0"], "DB_MAX_RECORDS"),
                                            (["producer", "--rate", "0"], "RATE")])
def test_cli_rejects_an_invalid_flag_with_a_clear_error(argv, variable):
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"invalid setting: {variable}=0" in proc.stderr


def test_settings_env_is_typed_and_checked():
    from common.settings import settings_env

    assert settings_env(predict_batch_images=1, db_max_records=2) == {"PREDICT_BATCH_IMAGES": "1",
                                                                      "DB_MAX_RECORDS": "2"}
    with pytest.raises(ValueError, match="no such setting"):
        settings_env(batch_size=1)
    with pytest.raises(ValueError, match="PREDICT_BATCH_IMAGES=0"):
        settings_env(predict_batch_images=0)


@pytest.mark.parametrize("old, new", sorted(REPLACED.items()))
def test_a_removed_name_is_an_error_naming_its_replacement(monkeypatch, tmp_path, old, new):
    """The class that reads the replacement refuses to load, and so does the stack's
    supervisor, which hands its environment to every component; the others do not care."""
    from stack.supervisor import Supervisor

    owner = next(g for g in SETTINGS_GROUPS if new.lower() in g.model_fields)
    for name in (old, old.lower()):  # case-insensitive, like the settings themselves
        monkeypatch.setenv(name, "8")
        with pytest.raises(SettingsError, match=f"{old} is no longer read: set {new} instead"):
            owner()
        with pytest.raises(SettingsError, match=f"{old} is no longer read"):
            Supervisor(tmp_path).plan()
        assert DashboardSettings().dashboard_refresh_ms == 2000 and StackSettings().stack_dir is None
        monkeypatch.delenv(name)


def test_the_stack_refuses_a_removed_name_before_it_starts(tmp_path):
    env = {**os.environ, "MAX_BATCH": "64", "STACK_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "stack", "up"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "MAX_BATCH is no longer read: set MAX_REQUEST_IMAGES instead" in proc.stderr
    assert not (tmp_path / "supervisor.pid").exists()


def test_a_removed_name_stops_a_component_at_start():
    env = {**os.environ, "KAFKA_BATCH_SIZE": "1000"}
    proc = subprocess.run([sys.executable, "-m", "producer", "--count", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "KAFKA_BATCH_SIZE is no longer read: set KAFKA_PRODUCER_BATCH_BYTES instead" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bad_value_names_the_environment_variable(monkeypatch):
    monkeypatch.setenv("IMAGES_PARTITIONS", "many")
    with pytest.raises(SettingsError, match="invalid setting: IMAGES_PARTITIONS='many': Input should be a valid integer"):
        KafkaSettings()
    monkeypatch.delenv("IMAGES_PARTITIONS")
    monkeypatch.setenv("MONGO_WRITE_CONCERN_W", "0")
    with pytest.raises(SettingsError, match=r"MONGO_WRITE_CONCERN_W='0': Input should be 'majority' or .*equal to 1"):
        MongoSettings()


def test_a_secret_is_masked_in_an_error(monkeypatch):
    monkeypatch.setenv("DASHBOARD_REFRESH_MS", "1")
    with pytest.raises(SettingsError) as exc:
        with_flags(DashboardSettings, dashboard_token=["hunter2"])
    assert "hunter2" not in str(exc.value) and "DASHBOARD_TOKEN=***" in str(exc.value)
    assert "DASHBOARD_REFRESH_MS='1'" in str(exc.value)


def test_a_bad_environment_value_exits_cleanly():
    env = {**os.environ, "STACK_INFERENCE_CONSUMERS": "0", "LOG_LEVEL": "info"}
    proc = subprocess.run([sys.executable, "-m", "stack", "status"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "invalid setting: STACK_INFERENCE_CONSUMERS='0'" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "stack", "status"], cwd=ROOT, env={**env, "LOG_LEVEL": "loud"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid setting: LOG_LEVEL='loud'" in proc.stderr, proc.stderr[-2000:]
    # A consumer reads its groups with its parser: usage and status 2.
    proc = subprocess.run([sys.executable, "-m", "consumers.db"], cwd=ROOT, env={**env, "IMAGES_PARTITIONS": "x"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "invalid setting: IMAGES_PARTITIONS='x'" in proc.stderr and "usage:" in proc.stderr
    # A group loaded without a parser: the message alone (common/log.py's hook), status 1.
    code = "from common.log import setup_logging; setup_logging(); from common.settings import KafkaSettings; KafkaSettings()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "IMAGES_PARTITIONS": "x"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "invalid setting: IMAGES_PARTITIONS='x'" in proc.stderr


def test_every_setting_is_described_and_declared_once():
    """Every field tells people what it does; a variable read by several classes means one thing."""
    seen: dict[str, tuple] = {}
    for group in SETTINGS_GROUPS:
        assert issubclass(group, ProjectSettings) and group.__doc__, group
        for name, field in group.model_fields.items():
            assert field.description and len(field.description) > 10, f"{group.__name__}.{name}"
            first = seen.setdefault(name, (group.__name__, field.default))
            assert first[1] == field.default, f"{name}: {first} against {group.__name__}"
    for old, new in REPLACED.items():
        assert old.lower() not in seen and new.lower() in seen, (old, new)


# Where a process composes a child's environment it copies or writes os.environ; reading a
# setting from it is what the settings classes are for.  The cost studies (bench/) are not
# shipped, but the variables they read are the pipeline's settings all the same.
PRODUCT = ("common", "producer", "consumers", "inference", "stack", "analysis", "experiments", "dashboard", "bench")


def _raw_reads(path):
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        text = ast.unparse(node) if isinstance(node, (ast.Call, ast.Subscript)) else ""
        if isinstance(node, ast.Call) and text.startswith(("os.getenv(", "os.environ.get(", "environ.get(")):
            yield node.lineno, text
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and text.startswith("os.environ["):
            yield node.lineno, text


def test_no_product_module_reads_a_setting_from_the_environment():
    found = [f"{path.relative_to(ROOT)}:{line}: {text}"
             for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))
             for line, text in _raw_reads(path)]
    assert not found, "read these through common.settings:\n" + "\n".join(found)


# The test suites' variables are settings too (common/settings_suites.py).  The fake cloud's
# modules and the rehearsal's callback run inside Ansible, without the project on their path:
# they read what the harness set for them (declared in RehearsalSettings).  PATH is the
# system's, read to compose a child's.
UNDER_ANSIBLE = ("tests/rehearsal/collections/", "tests/rehearsal/callback_plugins/")


def test_no_test_reads_a_setting_from_the_environment():
    found = [f"{path.relative_to(ROOT)}:{line}: {text}"
             for path in sorted((ROOT / "tests").rglob("*.py"))
             if not str(path.relative_to(ROOT)).startswith(UNDER_ANSIBLE)
             for line, text in _raw_reads(path) if not re.search(r"""[(\[]['"]PATH['"]""", text)]
    assert not found, "read these through common.settings (SuiteSettings, RehearsalSettings):\n" + "\n".join(found)


def test_the_client_waits_longer_than_the_service_deadline():
    """The service gives up on a request (503) before the consumer does: otherwise the
    consumer resends a batch the service is still computing, and abandoned work piles up."""
    from common.settings import InferenceClientSettings, ServiceSettings

    client = InferenceClientSettings.model_fields["inference_timeout_s"].default
    service = ServiceSettings.model_fields["inference_request_timeout_s"].default
    assert client > service, (client, service)
