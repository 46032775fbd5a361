"""The dynamic batcher alone (no TensorFlow): merging, chunking, ordering, failures."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from inference.batcher import SHAPE_STEP, DynamicBatcher, Overloaded, model_sizes, padded_size


class Recorder:
    """A fake model: row i of the output is the id stored in input row i; records batch sizes."""

    def __init__(self, delay_s: float = 0.0):
        self.sizes: list[int] = []
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self.lock:
            self.sizes.append(len(images))
        time.sleep(self.delay_s)
        return images[:, 0, 0, :1].astype(np.float64)  # N x 1: the id


def tagged(ids) -> np.ndarray:
    out = np.zeros((len(ids), 2, 2, 1), dtype=np.int64)
    out[:, 0, 0, 0] = ids
    return out


# A hang guard, not a latency bound: only a batcher that never answers reaches it.
HANG_GUARD_S = 120


def collect(futures) -> np.ndarray:
    return np.concatenate([f.result(timeout=HANG_GUARD_S).probs[:, 0] for f in futures])


@pytest.fixture
def make_batcher():
    made = []

    def make(run, **kw):
        b = DynamicBatcher(run, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_concurrent_callers_get_exactly_their_rows(make_batcher):
    """Many callers at once, with requests over max_batch among them: every caller gets
    exactly its own rows out of batches that merge several callers' chunks.

    The model holds its first call until every caller's first request (1 to 4 images) is
    queued, so the next batch takes two of them or more on any machine: merging does not
    depend on how the threads happen to be scheduled."""
    n_threads, max_batch = 24, 8
    calls: list[tuple[int, set[int]]] = []  # per model call: its images, the callers they are of
    first_round_queued, lock, queued, submitted = threading.Event(), threading.Lock(), [0], [0]

    def model(images: np.ndarray) -> np.ndarray:
        calls.append((len(images), set((images[:, 0, 0, 0] // 1_000_000).tolist())))
        if len(calls) == 1:
            assert first_round_queued.wait(HANG_GUARD_S)
        return images[:, 0, 0, :1].astype(np.float64)

    batcher = make_batcher(model, max_batch=max_batch, max_delay_s=0.01)
    errors = []
    start = threading.Barrier(n_threads)

    def caller(t: int) -> None:
        rng = random.Random(t)
        start.wait()
        for r in range(5):
            # the first request fits twice in a batch; later ones are sometimes over
            # max_batch and split into chunks
            n = rng.randint(1, max_batch // 2) if r == 0 else rng.randint(1, 20)
            ids = np.arange(n) + 1_000_000 * t + 1000 * r
            futures = batcher.submit(tagged(ids))
            with lock:
                submitted[0] += n
                if r == 0:
                    queued[0] += 1
                    if queued[0] == n_threads:
                        first_round_queued.set()
            got = collect(futures)
            if not np.array_equal(got, ids):
                errors.append((t, r, got[:5], ids[:5]))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(HANG_GUARD_S)
    assert not errors, errors[:3]
    assert not any(th.is_alive() for th in threads)
    assert max(size for size, _ in calls) <= max_batch
    assert sum(size for size, _ in calls) == batcher.images_run == submitted[0]
    assert any(len(callers) > 1 for _, callers in calls), calls  # merged across callers
    assert batcher.queued_images() == 0


def test_large_request_is_chunked_in_order(make_batcher):
    model = Recorder()
    batcher = make_batcher(model, max_batch=4, max_delay_s=0.0)
    futures = batcher.submit(tagged(range(10)))
    assert len(futures) == 3
    assert collect(futures).tolist() == list(range(10))
    assert [len(f.result().probs) for f in futures] == [4, 4, 2]
    assert all(s <= 4 for s in model.sizes)


def test_a_merged_batch_of_an_unwarmed_size_is_padded_to_a_warmed_one(make_batcher):
    # Three requests make a batch of 20 and a fourth does not fit in 28, so the 20 run
    # without the delay: the model sees 24 (4 blank images), each caller its own rows.
    model = Recorder()
    batcher = make_batcher(model, max_batch=28, max_delay_s=10 * HANG_GUARD_S)
    f1, f2, f3, _ = (batcher.submit(tagged(ids)) for ids in (range(6), range(6, 13), range(13, 20), range(20, 29)))
    assert collect(f1).tolist() == list(range(6)) and collect(f2).tolist() == list(range(6, 13))
    assert collect(f3).tolist() == list(range(13, 20))
    assert model.sizes == [24] and f1[0].result().batch_size == 20 and batcher.images_run == 20


def test_every_batch_size_runs_as_a_size_the_warm_up_covers():
    for max_batch in (1, 5, 8, 9, 60, 64, 100):
        sizes = model_sizes(max_batch)
        assert max(sizes) == max_batch and 1 in sizes
        for n in range(1, max_batch + 1):
            assert padded_size(n, max_batch) == min(s for s in sizes if s >= n), (max_batch, n)
    assert model_sizes(64) == [*range(1, SHAPE_STEP + 1), *range(16, 65, 8)]


def test_a_model_that_returns_too_few_rows_fails_the_callers(make_batcher):
    batcher = make_batcher(lambda images: np.zeros((len(images) - 1, 1)), max_batch=64, max_delay_s=0.0)
    with pytest.raises(RuntimeError, match="rows for 16 images"):
        batcher.submit(tagged(range(13)))[0].result(timeout=HANG_GUARD_S)


def test_requests_within_the_delay_are_merged(make_batcher):
    # The delay is longer than the hang guard, so the second request arrives within it on
    # any machine; the batch is full with it and runs at once.
    model = Recorder()
    batcher = make_batcher(model, max_batch=3, max_delay_s=10 * HANG_GUARD_S)
    f1 = batcher.submit(tagged([1, 2]))
    f2 = batcher.submit(tagged([3]))
    assert collect(f1).tolist() == [1, 2] and collect(f2).tolist() == [3]
    assert model.sizes == [3]
    r1, r2 = f1[0].result(), f2[0].result()
    assert r1.batch_size == r2.batch_size == 3 and r1.inferred_at == r2.inferred_at


def test_full_batch_does_not_wait_for_the_delay(make_batcher):
    # The delay is far beyond the hang guard: a batcher that waited for it would time out.
    model = Recorder()
    batcher = make_batcher(model, max_batch=4, max_delay_s=10 * HANG_GUARD_S)
    assert collect(batcher.submit(tagged(range(4)))).tolist() == [0, 1, 2, 3]
    assert model.sizes == [4]


def test_lone_request_runs_alone_after_the_delay(make_batcher):
    # Nobody else comes: the request is run by itself once the delay has passed (a
    # batcher that waited for a full batch would hit the hang guard).
    model = Recorder()
    batcher = make_batcher(model, max_batch=64, max_delay_s=0.05)
    assert collect(batcher.submit(tagged([1]))).tolist() == [1]
    assert model.sizes == [1]


def test_model_error_reaches_every_caller_and_batcher_survives(make_batcher):
    calls = []

    def flaky(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise ValueError("boom")
        return images[:, 0, 0, :1]

    batcher = make_batcher(flaky, max_batch=8, max_delay_s=0.2)
    f1, f2 = batcher.submit(tagged([1])), batcher.submit(tagged([2]))
    for f in (f1[0], f2[0]):
        with pytest.raises(ValueError, match="boom"):
            f.result(timeout=HANG_GUARD_S)
    assert collect(batcher.submit(tagged([5]))).tolist() == [5]


def test_wrong_row_count_is_an_error_not_a_misalignment(make_batcher):
    batcher = make_batcher(lambda images: np.zeros((len(images) - 1, 1)), max_batch=8, max_delay_s=0)
    with pytest.raises(RuntimeError, match="rows"):
        batcher.submit(tagged([1, 2]))[0].result(timeout=HANG_GUARD_S)


def test_queue_limit_raises_overloaded(make_batcher):
    gate, entered = threading.Event(), threading.Event()

    def blocked(images):
        entered.set()
        gate.wait(HANG_GUARD_S)
        return images[:, 0, 0, :1]

    batcher = make_batcher(blocked, max_batch=2, max_delay_s=0, max_queue=4)
    first = batcher.submit(tagged([1, 2]))  # taken by the batcher thread, blocked in the model
    assert entered.wait(HANG_GUARD_S)
    queued = batcher.submit(tagged([3, 4, 5, 6]))
    with pytest.raises(Overloaded):
        batcher.submit(tagged([7]))
    gate.set()
    assert collect(first + queued).tolist() == [1, 2, 3, 4, 5, 6]


def test_slowdown_hook(make_batcher, monkeypatch):
    """INFERENCE_SLOWDOWN_S: every model call sleeps that long first, and the sleep counts in
    the model time it reports (the service looks like one with a slower model)."""
    from inference import batcher as batcher_module
    from tests.support import SkippedSleep

    clock = SkippedSleep()
    monkeypatch.setattr(batcher_module, "time", clock)
    model = Recorder()
    batcher = make_batcher(model, max_batch=8, max_delay_s=0, slowdown_s=0.2)
    res = batcher.submit(tagged([1]))[0].result(timeout=HANG_GUARD_S)
    assert clock.slept == [0.2] and model.sizes == [1]
    assert res.inference_ms >= 200  # the 0.2 s skipped, measured by the batcher's own clock


class Gated:
    """A fake model that records the ids of every call and holds calls until ``gate`` is set."""

    def __init__(self):
        self.seen: list[list[int]] = []
        self.entered, self.gate = threading.Event(), threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.seen.append(images[:, 0, 0, 0].tolist())
        self.entered.set()
        assert self.gate.wait(HANG_GUARD_S)
        return images[:, 0, 0, :1].astype(np.float64)


def test_cancelled_chunks_leave_the_queue_and_never_reach_the_model(make_batcher):
    # What the service does with a request that timed out (503): it cancels its futures.
    model = Gated()
    batcher = make_batcher(model, max_batch=2, max_delay_s=0, max_queue=4)
    first = batcher.submit(tagged([1, 2]))  # a full batch: taken at once, held in the model
    assert model.entered.wait(HANG_GUARD_S)
    abandoned = batcher.submit(tagged([3, 4, 5, 6]))  # two chunks queued behind it
    assert batcher.queued_images() == 4
    assert all(f.cancel() for f in abandoned)
    assert batcher.queued_images() == 0, "cancelled chunks still count against the queue"
    kept = batcher.submit(tagged([7, 8, 9, 10]))  # would be Overloaded if they still counted
    model.gate.set()
    assert collect(first + kept).tolist() == [1, 2, 7, 8, 9, 10]
    assert model.seen == [[1, 2], [7, 8], [9, 10]]  # 3..6 never reached the model
    assert batcher.images_dropped == 4 and batcher.queued_images() == 0


def test_a_chunk_past_its_deadline_is_dropped_before_the_model(make_batcher):
    model = Gated()
    batcher = make_batcher(model, max_batch=2, max_delay_s=0)
    first = batcher.submit(tagged([1, 2]))
    assert model.entered.wait(HANG_GUARD_S)
    # Already due when the model is free again: its caller has answered 503 by then.
    late = batcher.submit(tagged([3, 4, 5]), deadline=time.monotonic())
    on_time = batcher.submit(tagged([6, 7]), deadline=time.monotonic() + 10 * HANG_GUARD_S)
    model.gate.set()
    assert collect(first + on_time).tolist() == [1, 2, 6, 7]
    for f in late:
        with pytest.raises(CancelledError):
            f.result(timeout=HANG_GUARD_S)
    assert model.seen == [[1, 2], [6, 7]]
    assert batcher.images_dropped == 3 and batcher.queued_images() == 0
