"""The send loop of ``python -m bench.kafka_client_cost`` (no client: encode, build, stamp)."""

from bench.kafka_client_cost import _loop


def test_the_client_cost_loop_builds_and_hands_over_every_record():
    out = _loop("none", "", "images", rate=5000.0, count=25, linger_ms=20)
    assert out["client"] == "none" and out["acked"] == 25
    assert out["loop_core_ms_per_img"] > 0 and out["start_core_s"] >= 0
