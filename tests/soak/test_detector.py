"""The soak's leak detector on synthetic series (tests/soak/detector.py): a process that
grows by a few KB per image is flagged, a flat or merely noisy one and one whose memory
only grows while it warms up are not, a lifetime too short is not judged."""

from __future__ import annotations

import random

import pytest

from tests.soak.detector import BOUND_B_PER_IMAGE, MIN_SPAN_S, WARMUP_S, Images, Lifetime, judge, least_squares

RATE = 40.0  # images/s stored while the synthetic process lives
EVERY = 2.0


def series(seconds: float, per_image_b: float, *, noise_b: float = 0.0, warmup_mib: float = 0.0,
           seed: int = 0) -> tuple[Lifetime, Images]:
    rng = random.Random(seed)
    base = 200 * 2**20
    samples = []
    t = 1000.0
    while t <= 1000.0 + seconds:
        age = t - 1000.0
        warm = warmup_mib * 2**20 * min(1.0, age / 20)  # the first 20 s: imports, arenas
        samples.append((t, int(base + warm + per_image_b * RATE * age + rng.gauss(0, noise_b))))
        t += EVERY
    stored = [1000.0 + i / RATE for i in range(int(seconds * RATE) + 1)]
    return Lifetime("db-consumer", "main", 4242, samples), Images(stored)


def test_least_squares_recovers_a_line():
    slope, intercept = least_squares([(x, 3.0 * x + 7) for x in range(10)])
    assert slope == pytest.approx(3.0)
    assert intercept == pytest.approx(7.0)


def test_a_leak_of_4_kb_per_image_is_flagged():
    life, images = series(90, 4096, noise_b=2 * 2**20)
    row = judge(life, images)
    assert row["verdict"] == "grows"
    assert row["slope_b_per_image"] == pytest.approx(4096, rel=0.35)


def test_a_flat_noisy_process_passes():
    for seed in range(20):
        life, images = series(90, 0, noise_b=2 * 2**20, seed=seed)
        assert judge(life, images)["verdict"] == "flat", seed


def test_growth_during_warm_up_only_is_not_a_leak():
    life, images = series(120, 0, warmup_mib=40, noise_b=2**20)
    row = judge(life, images)
    assert row["verdict"] == "flat"
    # ... whereas without the warm-up excluded the same lifetime would read as a leak
    assert judge(life, images, warmup_s=0, skip_fraction=0)["slope_b_per_image"] > BOUND_B_PER_IMAGE


def test_judged_only_after_the_component_serves_again():
    # 60 MiB loaded over the first 100 s (a model on a busy host), flat afterwards
    life, images = series(300, 0, noise_b=2**20)
    life.samples = [(t, rss + int(60 * 2**20 * min(1.0, (t - 1000.0) / 100))) for t, rss in life.samples]
    assert judge(life, images, skip_fraction=0)["slope_b_per_image"] > BOUND_B_PER_IMAGE
    assert judge(life, images, skip_fraction=0, ready_at=1100.0)["verdict"] == "flat"


def test_growth_that_slows_down_is_not_a_leak():
    # buffers filling: 30 MiB approached exponentially (time constant 60 s), not linearly
    import math

    life, images = series(240, 0, noise_b=2**19)
    life.samples = [(t, rss + int(30 * 2**20 * (1 - math.exp(-(t - 1000.0) / 60)))) for t, rss in life.samples]
    row = judge(life, images, skip_fraction=0, warmup_s=0)
    assert row["slope_b_per_image"] > BOUND_B_PER_IMAGE  # over the whole lifetime it would read as a leak
    assert row["verdict"] == "flat"  # but its last half has all but stopped


def test_the_bound_sits_between_noise_and_the_deliberate_leak():
    assert 0 < BOUND_B_PER_IMAGE < 4096
    life, images = series(90, BOUND_B_PER_IMAGE * 2)
    assert judge(life, images)["verdict"] == "grows"
    life, images = series(90, BOUND_B_PER_IMAGE / 2)
    assert judge(life, images)["verdict"] == "flat"


def test_a_short_lifetime_is_not_judged():
    life, images = series(WARMUP_S + MIN_SPAN_S - 10, 100_000)
    assert judge(life, images)["verdict"] == "too short"


def test_no_image_stored_is_not_judged_per_image():
    life, _ = series(120, 4096)
    row = judge(life, Images([]))
    assert row["verdict"] == "too short"
    assert row["slope_b_s"] > 0


def test_images_between_counts_inclusive():
    images = Images([3.0, 1.0, 2.0, 5.0])
    assert images.between(1.0, 3.0) == 3
    assert images.between(4.0, 4.5) == 0


def test_the_exit_sample_does_not_hide_a_leak():
    life, images = series(90, 4096, noise_b=2**20)
    life.samples.append((life.samples[-1][0] + EVERY, 0))  # psutil reads 0 from a process exiting
    assert judge(life, images)["verdict"] == "grows"


def test_too_few_images_for_the_bound_to_show_are_not_judged():
    """A broker back after a restart grew 1.3 MiB in steps over 403 images (its clients'
    buffers): 3.4 KB/image, yet under 1 MiB at the bound, which so few images cannot show."""
    from tests.soak.detector import MIN_RESOLVED_B

    life = Lifetime("kafka", "main", 7, [(1000.0 + 2 * i, 20 * 2**20 + i * 40_000) for i in range(60)])
    few = [1000.0 + 120.0 * i / 400 for i in range(400)]
    row = judge(life, Images(few))
    assert row["slope_b_per_image"] > BOUND_B_PER_IMAGE
    assert row["verdict"] == "too short" and "MiB at the bound" in row["why_too_short"]
    # the same growth with enough images in the judged window to resolve the bound: flagged
    enough = int(1.6 * MIN_RESOLVED_B / BOUND_B_PER_IMAGE)
    assert judge(life, Images([1000.0 + 120.0 * i / enough for i in range(enough)]))["verdict"] == "grows"


def test_a_restarted_consumer_is_judged_from_when_the_lag_was_back_not_from_its_start():
    from tests.soak.memory import ready_times

    record = {"store": "mongodb", "events": [
        {"what": "db-consumer", "t": 100.0, "ready_after_s": 7.0, "recovered_after_s": 95.0},
        {"what": "inference-consumer", "t": 200.0, "ready_after_s": 14.0, "recovered_after_s": 3.0},
        {"what": "inference", "t": 300.0, "ready_after_s": 35.0, "recovered_after_s": None},
        {"what": "rolling-upgrade", "t": 400.0, "recovered_after_s": 120.0,
         "steps": [{"component": "db-consumer", "t": 401.0, "ready_after_s": 6.0}]}]}
    assert ready_times(record) == [("db-consumer", 195.0), ("inference-consumer", 214.0), ("inference", 335.0),
                                   ("db-consumer", 520.0)]


def test_a_high_water_mark_that_stops_is_not_a_leak():
    """Run 11's Gunicorn worker: flat, then 90 MiB in steps while it served alone during its
    sibling's restart and the backlogs after kills, then flat to its end.  Its whole judged
    span and its last half read above the bound; its last quarter does not, as a leak's would."""
    life, images = series(240, 0, noise_b=2**19)
    steps = [(1090.0, 15), (1120.0, 45), (1150.0, 20), (1170.0, 10)]  # (from when, MiB)
    life.samples = [(t, rss + sum(int(m * 2**20) for at, m in steps if t >= at)) for t, rss in life.samples]
    row = judge(life, images, skip_fraction=0, warmup_s=0)
    assert min(row["slope_b_per_image"], row["late_slope_b_per_image"]) > BOUND_B_PER_IMAGE
    assert row["last_slope_b_per_image"] < BOUND_B_PER_IMAGE
    assert row["verdict"] == "flat"
    # the same lifetime still growing through its last quarter is flagged
    life.samples = [(t, rss + (int(4096 * RATE * (t - 1180.0)) if t > 1180.0 else 0)) for t, rss in life.samples]
    assert judge(life, images, skip_fraction=0, warmup_s=0)["verdict"] == "grows"
