"""The soak's plan (tests/soak/schedule.py) and its pass rules that need no stack
(tests/soak/verify.py): replayable from the seed, every component hit once a round, the
upgrade mid-run; the lag's recovery after each kill; the leaky build's patch applies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.soak import builds, verify
from tests.soak.schedule import TARGETS, UPGRADE, parse_duration, plan
from tests.soak.verify import recovery


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("90s", 90), ("1h", 3600), ("2m30s", 150), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "3m junk"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_same_seed_replays_the_same_schedule():
    assert plan(11, 1800, 60) == plan(11, 1800, 60)
    assert plan(11, 1800, 60) != plan(12, 1800, 60)


def test_one_event_a_minute_and_one_upgrade_mid_run():
    events = plan(3, 1800, 60)
    assert [e["at_s"] for e in events] == [60.0 * i for i in range(1, 30)]
    upgrades = [e for e in events if e["what"] == UPGRADE]
    assert len(upgrades) == 1 and abs(upgrades[0]["at_s"] - 900) <= 30


def test_every_target_once_a_round():
    kills = [e["what"] for e in plan(5, 1800, 60) if e["what"] != UPGRADE]
    for i in range(0, len(kills) - len(TARGETS) + 1, len(TARGETS)):
        assert sorted(kills[i:i + len(TARGETS)]) == sorted(TARGETS)


def test_a_target_left_out_is_never_killed():
    targets = tuple(t for t in TARGETS if t != "broker")
    assert all(e["what"] in (*targets, UPGRADE) for e in plan(9, 1800, 60, targets))


def test_lag_recovery_after_each_kill(monkeypatch):
    monkeypatch.setattr(verify, "LAG_SLACK_S", 0.0)  # the bound: 2 x the time the component took to be back
    lag = [{"t": float(t), "g": v} for t, v in enumerate([0, 0, 50, 80, 30, 2, 3, 0, 0, 9, 0, 0])]
    events = [{"what": "db-consumer", "t": 1.0, "ready_after_s": 2.5},
              {"what": "inference-consumer", "t": 8.0, "ready_after_s": 1.0}]
    recovery(events, lag, band=5)
    assert events[0]["recovered_after_s"] == 4.0  # t=5: the sample after the last one above 5
    assert events[0]["peak_lag"] == 80 and events[0]["lag_ok"] and events[0]["lag_bound_s"] == 5.0
    assert events[1]["recovered_after_s"] == 2.0 and events[1]["lag_ok"]
    events[0]["ready_after_s"] = 1.0
    recovery(events, lag, band=5)
    assert not events[0]["lag_ok"]


def test_the_last_event_is_judged_over_one_kill_interval_not_the_runs_tail(monkeypatch):
    monkeypatch.setattr(verify, "LAG_SLACK_S", 0.0)
    # back at t=3, then a healthy pipeline's lag steps out of the band once, long after
    lag = [{"t": float(t), "g": v} for t, v in enumerate([0, 30, 9, 0, 0, 0, 0, 0, 0, 12, 0, 0])]
    events = [{"what": "store", "t": 0.5, "ready_after_s": 2.0}]
    recovery(events, lag, band=5, last_window_s=6.0)
    assert events[0]["recovered_after_s"] == 2.5 and events[0]["lag_ok"]
    recovery(events, lag, band=5)  # judged over the whole tail: the late step counts
    assert events[0]["recovered_after_s"] == 9.5 and not events[0]["lag_ok"]


def test_lag_never_back_fails():
    lag = [{"t": float(t), "g": v} for t, v in enumerate([0, 40, 60, 90])]
    events = [{"what": "broker", "t": 0.5}]
    recovery(events, lag, band=5)
    assert events[0]["recovered_after_s"] is None and not events[0]["lag_ok"]


def test_an_unreadable_lag_counts_as_not_back():
    lag = [{"t": 0.0, "g": 0}, {"t": 1.0, "g": None}, {"t": 2.0, "g": 1}]
    events = [{"what": "broker", "t": 0.5}]
    recovery(events, lag, band=5)
    assert events[0]["recovered_after_s"] == 1.5


def test_the_leaky_build_leaks_and_the_tree_does_not(tmp_path):
    leaky = builds.leaky_checkout(tmp_path / "leaky")
    probe = ("import consumers, tracemalloc; from consumers.db import image_upsert; "
             "tracemalloc.start(); before = tracemalloc.get_traced_memory()[0]; "
             "kept = [image_upsert({'image_id': str(i), 'sent_at': 1.0}, b'x', 1.0) for i in range(100)]; "
             "print(tracemalloc.get_traced_memory()[0] - before)")
    leaked = int(subprocess.run([sys.executable, "-c", probe], cwd=leaky, check=True, capture_output=True,
                                text=True).stdout)
    assert leaked >= 100 * builds.LEAK_BYTES_PER_IMAGE
    clean = int(subprocess.run([sys.executable, "-c", probe], cwd=builds.ROOT, check=True, capture_output=True,
                               text=True).stdout)
    assert clean < 100 * builds.LEAK_BYTES_PER_IMAGE / 4  # the documents themselves
    assert "leaky build" in (leaky / builds.MARKER).read_text()
    assert not (builds.ROOT / builds.MARKER).exists()


def test_the_zero_band_holds_what_a_healthy_pipeline_keeps_in_flight():
    # Little's law: the offered rate times the end-to-end p99 (5 s), plus the clients'
    # fetch wait (tansu answers a fetch up to its wait late): 40 ms in memory, 1 s on S3.
    assert verify.zero_band(13.6) == 68
    assert verify.zero_band(13.6, 0.04) == 69
    assert verify.zero_band(13.6, 1.0) == 82
    assert verify.zero_band(0.1) == 1


def test_a_healthy_db_writer_is_in_its_band_and_a_backlog_is_not():
    # run 12's tail, 89 img/s on the S3 broker, nothing killed: the DB writer's lag at most
    # 810 records (its images wait for their results); after the DB writer's kill at
    # t+1,047 s it held 4,276.
    from tests.soak.sampler import GROUPS

    bands = verify.zero_bands(88.96, 1.0, GROUPS)
    assert verify.in_band({"t": 0.0, "iot-inference": 232, "iot-db-writer": 810}, bands)
    assert not verify.in_band({"t": 0.0, "iot-inference": 40, "iot-db-writer": 4276}, bands)
    assert not verify.in_band({"t": 0.0, "iot-inference": 3971, "iot-db-writer": 0}, bands)


def test_the_detector_phases_hold_the_images_the_bound_needs():
    from tests.soak.detector import BOUND_B_PER_IMAGE, MIN_RESOLVED_B
    from tests.soak.run import detector_phase_s

    assert detector_phase_s(40.0) == 120.0  # a fast pipeline: the 2 minutes suffice
    for rate in (5.3, 10.0, 13.6):
        judged_images = rate * detector_phase_s(rate) * 2 / 3
        assert judged_images >= MIN_RESOLVED_B / BOUND_B_PER_IMAGE, rate


def test_each_group_has_its_band_in_its_own_records():
    # the DB writer reads the image and its result: at the same delay its lag is twice
    # the inference consumer's (run 11: its healthy lag left a one-record-per-image band)
    from tests.soak.sampler import GROUPS

    bands = verify.zero_bands(30.0, 1.0, GROUPS)
    assert bands == {"iot-inference": 180, "iot-db-writer": 360}
    assert verify.in_band({"t": 0.0, "iot-inference": 180, "iot-db-writer": 300}, bands)
    assert not verify.in_band({"t": 0.0, "iot-inference": 181, "iot-db-writer": 300}, bands)
    assert not verify.in_band({"t": 0.0, "iot-inference": 0, "iot-db-writer": 361}, bands)
    assert not verify.in_band({"t": 0.0, "iot-inference": 0, "iot-db-writer": None}, bands)
