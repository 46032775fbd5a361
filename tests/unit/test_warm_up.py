"""The worker's warm-up (inference/serving.py warm_up): every batch size the dynamic batcher
calls the model with, the two ends first, the rest within the budget."""

from inference import serving
from inference.batcher import model_sizes
from inference.serving import warm_up


def test_every_batch_size_is_run_once_the_ends_first():
    seen = []
    warmed, _ = warm_up(lambda batch: seen.append(batch.shape), 32, 6, budget_s=60)
    assert warmed == 6 and [s[0] for s in seen] == [1, 6, 2, 3, 4, 5]
    assert {s[1:] for s in seen} == {(32, 32, 3)}


def test_above_the_shape_step_only_the_sizes_the_model_is_called_with():
    seen = []
    warmed, _ = warm_up(lambda batch: seen.append(len(batch)), 8, 64, budget_s=60)
    assert seen == [1, 64, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 40, 48, 56] and warmed == 15
    assert sorted(seen) == model_sizes(64)


def test_the_budget_stops_after_the_ends(monkeypatch):
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(serving.time, "perf_counter", lambda: next(clock))
    seen = []
    warmed, _ = warm_up(lambda batch: seen.append(len(batch)), 8, 64, budget_s=3)
    assert seen[:2] == [1, 64] and warmed == len(seen) and 2 <= warmed < len(model_sizes(64))


def test_a_zero_budget_still_runs_one_image_and_a_full_batch():
    seen = []
    warm_up(lambda batch: seen.append(len(batch)), 8, 16, budget_s=0)
    assert seen == [1, 16]
    seen.clear()
    warm_up(lambda batch: seen.append(len(batch)), 8, 1, budget_s=0)
    assert seen == [1]
