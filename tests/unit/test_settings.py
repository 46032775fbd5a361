import pytest
from pydantic import SecretStr

from common.settings import KafkaSettings, MongoSettings, describe, mask


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
    with pytest.raises(ValueError, match="predict_batch_images=0"):
        with_flags(InferenceClientSettings, predict_batch_images=0)


@pytest.mark.parametrize("argv, field", [(["consumers.inference", "--batch-size", "0"], "predict_batch_images"),
                                         (["consumers.db", "--max-records", "0"], "db_max_records"),
                                         (["producer", "--rate", "0"], "rate")])
def test_cli_rejects_an_invalid_flag_with_a_clear_error(argv, field):
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", *argv], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"invalid setting: {field}=0" in proc.stderr


def test_settings_env_is_typed_and_checked():
    from common.settings import settings_env

    assert settings_env(predict_batch_images=1, db_max_records=2) == {"PREDICT_BATCH_IMAGES": "1",
                                                                      "DB_MAX_RECORDS": "2"}
    with pytest.raises(ValueError, match="no such setting"):
        settings_env(batch_size=1)
    with pytest.raises(ValueError, match="predict_batch_images=0"):
        settings_env(predict_batch_images=0)


def test_a_renamed_variable_in_the_environment_is_reported(monkeypatch):
    from common.settings import InferenceClientSettings, describe

    monkeypatch.setenv("BATCH_SIZE", "8")
    text = describe(InferenceClientSettings())
    assert "BATCH_SIZE is no longer read: use PREDICT_BATCH_IMAGES" in text


def test_the_client_waits_longer_than_the_service_deadline():
    """The service gives up on a request (503) before the consumer does: otherwise the
    consumer resends a batch the service is still computing, and abandoned work piles up."""
    from common.settings import InferenceClientSettings, ServiceSettings

    client = InferenceClientSettings.model_fields["inference_timeout_s"].default
    service = ServiceSettings.model_fields["inference_request_timeout_s"].default
    assert client > service, (client, service)
