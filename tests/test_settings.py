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
