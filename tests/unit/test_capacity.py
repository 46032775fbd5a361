"""The sweep's rate from a measured capacity, and the knee of a sweep."""

import pytest

from analysis.stats import find_knee
from experiments.capacity import PAST_KNEE, choose_rate


def test_the_most_producers_offer_just_past_the_capacity():
    rate = choose_rate(40.0, [1, 2, 3, 4])
    assert rate == round(40.0 * PAST_KNEE / 4, 2)
    assert 1 * rate < 40.0 < 4 * rate


def test_no_capacity_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="no capacity"):
        choose_rate(0.0, [1, 2])


def test_the_knee_is_the_first_load_that_is_not_kept_up_with():
    points = [{"producers": n, "offered_img_s": 10.0 * n, "throughput_img_s": t}
              for n, t in [(3, 25.0), (1, 10.0), (2, 19.5), (4, 26.0)]]
    assert find_knee(points)["producers"] == 3  # 25 < 0.95 x 30; 19.5 >= 0.95 x 20
    assert find_knee(points[1:3]) is None
    assert find_knee([{"offered_img_s": 5.0, "throughput_img_s": None}])["offered_img_s"] == 5.0
