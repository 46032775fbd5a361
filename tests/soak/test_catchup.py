"""The catch-up probe's arithmetic (tests/soak/catchup.py) on made-up lag samples: the
rate a backlog cleared at, and an upper bound when it did not clear."""

from __future__ import annotations

from tests.soak.catchup import catch_up_rate

BAND = {"iot-inference": 100, "iot-db-writer": 200}


def samples(points):
    return [{"t": t, "iot-inference": inf, "iot-db-writer": db} for t, inf, db in points]


def test_a_cleared_backlog_gives_the_offered_rate_plus_the_backlog_over_the_time_it_took():
    lag = samples([(0, 50, 100), (10, 1000, 150), (30, 3000, 100),  # paused at 0, resumed at 30
                   (40, 2000, 1500), (60, 500, 900), (80, 90, 150), (81, 40, 100)])
    got = catch_up_rate(lag, t_resume=30, rate=100.0, band=BAND)
    assert got["backlog_images"] == 3000
    assert got["cleared_after_s"] == 50  # the first sample with both groups in their bands
    assert got["catch_up_img_s"] == 100 + 3000 / 50


def test_the_db_writer_still_behind_is_not_cleared():
    lag = samples([(0, 3000, 0), (30, 10, 5000), (60, 10, 300), (70, 10, 150)])
    assert catch_up_rate(lag, t_resume=0, rate=50.0, band=BAND)["cleared_after_s"] == 70


def test_a_backlog_never_cleared_gives_an_upper_bound_and_says_so():
    lag = samples([(0, 4000, 0), (100, 1400, 300), (200, 1300, 250)])
    got = catch_up_rate(lag, t_resume=0, rate=120.0, band=BAND)
    assert got["cleared_after_s"] is None
    assert got["catch_up_img_s"] == 120 + 4000 / 200
    assert "upper bound" in got["note"]


def test_an_unreadable_lag_is_not_in_band():
    lag = [{"t": 0, "iot-inference": 2000, "iot-db-writer": 0}, {"t": 5, "iot-inference": None, "iot-db-writer": None},
           {"t": 20, "iot-inference": 10, "iot-db-writer": 10}]
    assert catch_up_rate(lag, t_resume=0, rate=10.0, band=BAND)["cleared_after_s"] == 20


def test_the_report_says_where_the_load_came_from():
    from tests.soak.report import sizing

    probe = {"catch_up_img_s": 135.16}
    assert sizing({"rate_img_s": 30.0, "capacity": None}) == "30 img/s chosen (--rate)"
    assert "135.16" in sizing({"rate_img_s": 67.58, "capacity": {"img_s": 225.06, "catch_up": probe}})
    assert sizing({"rate_img_s": 100.0, "capacity": {"img_s": 200.0}}) == "half of the lower of the ramp's 200 img/s"
