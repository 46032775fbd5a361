"""The sweep's rate from a measured capacity or knee, the capacity ramp, and the knee of a sweep."""

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


def fake_pipeline(monkeypatch, capacity: float) -> list[float]:
    """``run_step`` of a pipeline that stores everything offered up to ``capacity`` img/s and
    then 0.9 x ``capacity`` (an overloaded pipeline stores less than its capacity: the
    backlog costs); returns the offered rates, in order."""
    from experiments import capacity as cap

    offered = []

    def run_step(out, env, *, rate, duration, tag, per_producer_max, stack=None):
        offered.append(rate)
        stored = rate if rate <= capacity else capacity * 0.9
        return {"offered_img_s": round(rate, 2), "throughput_img_s": round(stored, 2)}

    monkeypatch.setattr(cap, "run_step", run_step)
    return offered


def ramp(tmp_path, **kw):
    from experiments.capacity import ramp as run_ramp

    args = dict(start_rate=100.0, growth=1.6, max_steps=8, step_s=1.0, per_producer_max=400.0, tag="t")
    return run_ramp(tmp_path, {}, **{**args, **kw})


def test_the_ramp_bisects_where_the_knee_lies_and_finds_the_capacity_closer(monkeypatch, tmp_path):
    offered = fake_pipeline(monkeypatch, capacity=380.0)
    best, steps, knee = ramp(tmp_path)
    # 100, 160, 256 kept up with; 409.6 stored 342 (< 0.85 x 409.6: saturated); then
    # sqrt(256 x 409.6) = 323.8 and sqrt(323.8 x 409.6) = 364.2, both kept up with.
    assert [round(r, 1) for r in offered] == [100.0, 160.0, 256.0, 409.6, 323.8, 364.2]
    assert best == pytest.approx(364.2, abs=0.1) and len(steps) == 6
    assert knee == (364.19, 409.6)  # the knee (380) is bracketed within 12 %
    growth_only, _, knee = ramp(tmp_path, refine_steps=0)
    assert knee == (256.0, 409.6)
    assert growth_only == pytest.approx(342.0)
    assert abs(best - 380) < abs(growth_only - 380) / 2  # the capacity found is far closer


def test_the_ramp_does_not_refine_when_no_step_fell_behind(monkeypatch, tmp_path):
    offered = fake_pipeline(monkeypatch, capacity=10_000.0)
    best, steps, knee = ramp(tmp_path, max_steps=3)
    assert offered == [100.0, 160.0, 256.0] and best == 256.0 and knee is None


def test_the_sweep_is_sized_from_the_knee_where_the_ramp_bracketed_it():
    from experiments.capacity import Ramp, sweep_basis

    # 224 px on 2 cores (docs/PERFORMANCE.md): the overloaded step stored 16.7 img/s,
    # the knee lay between 12.6 and 14.2 offered
    basis, source = sweep_basis(Ramp(16.7, [], (12.6, 14.2)))
    assert source == "knee" and basis == pytest.approx((12.6 * 14.2) ** 0.5, abs=0.01)
    rate = choose_rate(basis, [1, 2, 3, 4])
    assert 3 * rate < 14.2 and 12.6 < 4 * rate < 16.7  # the top just past the knee, below the capacity
    assert sweep_basis(Ramp(256.0, [], None)) == (256.0, "capacity")  # nothing bracketed
