"""Nearest-rank percentiles and the latencies.csv reader (analysis/stats.py, common/rundir.py)."""

from __future__ import annotations

import pytest

from common.rundir import COLUMNS, LatencyFileError, read_latencies, write_latencies
from analysis.stats import latency_summary, percentile


def test_one_to_hundred_ms():
    assert latency_summary(range(1, 101)) == {"p50": 50, "p90": 90, "p95": 95, "p99": 99,
                                              "max": 100}


def test_ten_samples_p95_is_the_tenth():
    values = [float(v) for v in (7, 1, 9, 3, 10, 2, 8, 4, 6, 5)]
    s = latency_summary(values)
    assert s["p95"] == 10.0  # ceil(0.95 * 10) = 10
    assert s["p90"] == 9.0
    assert s["p50"] == 5.0
    assert s["p99"] == s["max"] == 10.0


def test_single_sample_is_every_percentile():
    assert latency_summary([42.5]) == {"p50": 42.5, "p90": 42.5, "p95": 42.5, "p99": 42.5,
                                       "max": 42.5}


def test_no_samples():
    assert latency_summary([]) is None
    with pytest.raises(ValueError):
        percentile([], 50)


def test_percentile_is_always_a_sample():
    values = sorted([0.3, 12.0, 12.0, 15.5, 99.9, 100.0, 250.0])
    for p in range(0, 101):
        assert percentile(values, p) in values
    assert percentile(values, 0) == 0.3
    assert percentile(values, 100) == 250.0


def _row(i, e2e="", **extra):
    row = {"image_id": f"img-{i}", "device_id": "cam-0", "producer_id": "p0", "seq": i,
           "sent_at": 1000.0 + i, "result_at": None if e2e == "" else 1000.0 + i + e2e / 1000,
           "e2e_ms": None if e2e == "" else e2e, "label": None, "prediction": None,
           "model": "m"}
    row.update(extra)
    return row


def test_roundtrip(tmp_path):
    path = tmp_path / "latencies.csv"
    write_latencies(path, [_row(0, 12.5), _row(1)])
    rows = read_latencies(path)
    assert [r.e2e_ms for r in rows] == [12.5, None]
    assert rows[1].result_at is None and rows[0].label is None


@pytest.mark.parametrize("body, line, words", [
    ("img-1,c,p,1,100.0,100.1,abc,,,m\n", 3, "abc"),           # e2e not a number
    ("img-1,c,p,1,100.0,100.1\n", 3, "fields"),                # short row
    ("img-1,c,p,x,100.0,100.1,5,,,m\n", 3, "x"),               # seq not an int
    ("img-1,c,p,1,100.0,100.1,-5,,,m\n", 3, "e2e_ms >= 0"),   # negative latency
    (",c,p,1,100.0,100.1,5,,,m\n", 3, "image_id"),             # no id
])
def test_malformed_row_names_file_and_line(tmp_path, body, line, words):
    path = tmp_path / "latencies.csv"
    path.write_text(",".join(COLUMNS) + "\nimg-0,c,p,0,99.0,99.01,10,,,m\n" + body)
    with pytest.raises(LatencyFileError) as err:
        read_latencies(path)
    assert f"{path}:{line}:" in str(err.value)
    assert words in str(err.value)


def test_bad_header_and_missing_file(tmp_path):
    path = tmp_path / "latencies.csv"
    path.write_text("image_id,sent_at\n")
    with pytest.raises(LatencyFileError, match=r"latencies.csv:1: header lacks"):
        read_latencies(path)
    with pytest.raises(LatencyFileError, match="no such file"):
        read_latencies(tmp_path / "nope" / "latencies.csv")
