"""The dead-letter format (common/deadletter.py) and the pure parts of ``python -m consumers.dlq``."""

from __future__ import annotations

import os

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from common.deadletter import (MAX_REASON_CHARS, REPLAY_OF, SCHEMA, NotADeadLetter, read_dead_letter,
                               record_size, replay_headers, to_dead_letter)


def record(key, value, headers=(), *, topic="iot-images", partition=2, offset=41, timestamp=1_700_000_000_123):
    return ConsumerRecord(topic, partition, -1, offset, timestamp, 0, key, value, list(headers), None,
                          -1 if key is None else len(key), -1 if value is None else len(value), -1)


def through_the_dlq(original, reason, offset=7, **kwargs):
    """What a consumer of the DLQ topic gets back for ``original`` dead-lettered with ``reason``."""
    key, value, headers = to_dead_letter(original, reason, **kwargs)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)  # kafka-python sends it
    assert key is not None or value is not None
    return record(key, value, headers, topic="iot-dlq", partition=0, offset=offset)


BINARY = bytes(range(256)) * 20 + b"\xff\xfe\xc3("  # 5 KiB, not UTF-8 anywhere near


def test_binary_value_over_4_kib_with_a_null_key_comes_back_byte_for_byte():
    original = record(None, BINARY, [("trace", b"\x00\x01"), ("trace", b""), ("dlq.reason", b"forged")])
    dead = read_dead_letter(through_the_dlq(original, "invalid JSON: expected value at line 1 column 1"))
    assert dead.key is None and dead.value == BINARY
    # every original header, in order, duplicates and a forged dlq.* one included
    assert dead.headers == [("trace", b"\x00\x01"), ("trace", b""), ("dlq.reason", b"forged")]
    assert dead.reason == "invalid JSON: expected value at line 1 column 1"
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == ("iot-images", 2, 41)
    assert dead.source_timestamp_ms == 1_700_000_000_123
    assert dead.failed_at > 0 and dead.schema == SCHEMA and dead.kept and dead.replayable
    assert dead.value_size == len(BINARY)
    assert (dead.dlq_topic, dead.dlq_partition, dead.dlq_offset, dead.ref) == ("iot-dlq", 0, 7, "iot-dlq:0:7")


def test_the_dlq_record_is_the_original_plus_dlq_headers():
    original = record(b"cam-1", b'{"schema": 1}', [("h", b"v")])
    key, value, headers = to_dead_letter(original, "r", now=1234.5)
    assert (key, value) == (b"cam-1", b'{"schema": 1}')
    assert headers[0] == ("h", b"v")
    block = dict(headers[1:])
    assert block == {"dlq.schema": b"2", "dlq.reason": b"r", "dlq.source_topic": b"iot-images",
                     "dlq.partition": b"2", "dlq.offset": b"41", "dlq.source_timestamp": b"1700000000123",
                     "dlq.failed_at": b"1234.5"}
    # a few hundred bytes more than the original at most
    assert record_size(key, value, headers) - record_size(original.key, original.value, original.headers) < 300


def test_null_header_values_and_a_record_with_neither_key_nor_value():
    dead = read_dead_letter(through_the_dlq(record(None, None, [("a", None), ("b", b"x")]), "empty message"))
    assert dead.key is None and dead.value is None and dead.value_size is None
    assert dead.headers == [("a", None), ("b", b"x")]
    tombstone = read_dead_letter(through_the_dlq(record(b"k", None), "empty message (null value)"))
    assert tombstone.key == b"k" and tombstone.value is None
    empty = read_dead_letter(through_the_dlq(record(b"", b""), "invalid JSON"))
    assert empty.key == b"" and empty.value == b""


def test_a_reason_is_any_text_and_bounded():
    dead = read_dead_letter(through_the_dlq(record(b"k", b"v"), "bad \ud800 id"))
    assert dead.reason == "bad \\ud800 id"
    long = read_dead_letter(through_the_dlq(record(b"k", b"v"), "é" * 5000))
    assert long.reason == "é" * MAX_REASON_CHARS


def test_a_dead_letter_of_a_dead_letter_keeps_the_first_one_as_original_headers():
    first = through_the_dlq(record(b"k", b"v", [("h", b"1")]), "first")
    replayed = record(b"k", b"v", replay_headers(read_dead_letter(first)), offset=99)
    second = read_dead_letter(through_the_dlq(replayed, "second", offset=8))
    assert second.reason == "second" and second.source_offset == 99
    assert second.headers == [("h", b"1"), (REPLAY_OF, b"iot-dlq:0:7")]
    # replaying it again names the newest dead letter only
    assert replay_headers(second) == [("h", b"1"), (REPLAY_OF, b"iot-dlq:0:8")]


def test_over_the_size_limit_only_the_dlq_headers_are_sent():
    big = os.urandom(300_000)
    original = record(b"k", big, [("h", b"v")])
    reason = "message is 300000 bytes, over the 262144-byte limit"
    full = to_dead_letter(original, reason, now=1234.5)  # the same failed_at: the same size
    assert record_size(*full) > 300_000
    key, value, headers = to_dead_letter(original, reason, max_bytes=record_size(*full) - 1, now=1234.5)
    assert record_size(key, value, headers) < 1000
    dead = read_dead_letter(record(key, value, headers, topic="iot-dlq"))
    assert not dead.kept and not dead.replayable and "too large" in dead.why_not_kept
    assert dead.value_size == 300_000 and dead.reason == reason and dead.source_offset == 41
    # at the limit exactly, everything is kept
    assert read_dead_letter(record(*to_dead_letter(original, reason, max_bytes=record_size(*full), now=1234.5),
                                   topic="iot-dlq")).value == big


@pytest.mark.parametrize("headers, value", [
    ([], b"not a dead letter"),
    ([], b'{"schema": 1, "source_topic": "iot-images", "partition": 1, "offset": 5, "reason": "r"}'),
    ([("dlq.schema", b"3")], b"x"),
    ([("dlq.schema", b"2"), ("dlq.failed_at", b"1.0"), ("dlq.offset", b"1")], b"x"),  # no partition
    ([("dlq.schema", b"2"), ("dlq.failed_at", b"soon"), ("dlq.partition", b"0"), ("dlq.offset", b"1")], b"x"),
])
def test_records_that_are_no_dead_letter_are_named(headers, value):
    with pytest.raises(NotADeadLetter):
        read_dead_letter(record(None, value, headers, topic="iot-dlq"))


def test_image_id_of_the_original_value():
    def image_id(value):
        return read_dead_letter(through_the_dlq(record(b"k", value), "r")).image_id()

    assert image_id(b'{"image_id": "abc", "schema": 99}') == "abc"
    assert image_id(b'{"image_id": "\\ud800"}') is None
    assert image_id(b'{"image_id": 3}') is None
    assert image_id(b"[" * 50_000) is None
    assert image_id(BINARY) is None and image_id(None) is None


def test_fingerprint_tells_dead_letters_at_the_same_offset_apart():
    def at_offset_7(value, now=1234.5):
        return read_dead_letter(through_the_dlq(record(b"k", value), "r", offset=7, now=now)).fingerprint()

    assert at_offset_7(b"v") == at_offset_7(b"v")  # the same dead letter read twice
    assert at_offset_7(b"v") != at_offset_7(b"w")  # another record
    assert at_offset_7(b"v") != at_offset_7(b"v", now=1235.5)  # the same record dead-lettered again


# ---------------------------------------------------------------- python -m consumers.dlq, pure parts

def test_cli_helpers():
    from consumers.dlq import Entry, parse_ref, parse_since, preview, select

    assert parse_ref("12") == (0, 12) and parse_ref("1:12") == (1, 12)
    with pytest.raises(ValueError):
        parse_ref("x")
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2023-11-14T22:13:20") == 1_700_000_000.0
    assert parse_since("2023-11-15T00:13:20+02:00") == 1_700_000_000.0
    with pytest.raises(ValueError, match="not a time"):
        parse_since("yesterday")
    assert preview(b"hello", 100) == "(text, 5 bytes) hello"
    assert preview(b"\xff\x00abc", 100).startswith("(binary, 5 bytes)\n  00000000  ff 00 61 62 63")
    assert preview(None, 10) == "(null)" and "more bytes" in preview(b"x" * 20, 10)
    dead = [read_dead_letter(through_the_dlq(record(b"k", b"v", topic=t), r, offset=i))
            for i, (t, r) in enumerate([("iot-images", "invalid JSON"), ("iot-inference", "field 'x'")])]
    entries = [Entry(0, d.dlq_offset, d) for d in dead] + [Entry(0, 9, None, "junk")]
    assert select(entries) == entries
    assert [e.offset for e in select(entries, reason="JSON")] == [0]
    assert [e.offset for e in select(entries, source_topic="iot-inference")] == [1]
    assert select(entries, since=dead[1].failed_at + 1) == []


def test_cli_usage_errors_exit_2(capsys):
    from consumers.dlq import main

    for argv, text in [(["replay"], "say which dead letters"), (["replay", "1", "--all"], "say which"),
                       (["list", "--since", "soon"], "not a time"), (["show", "x"], "not a dead-letter offset"),
                       (["list", "--idle-ms", "0"], "invalid setting: DLQ_READ_IDLE_MS=0")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and text in capsys.readouterr().err, argv
