"""Server-side dynamic batching, as Triton and TF Serving do it.

Request threads call :meth:`DynamicBatcher.submit` with their decoded images and
wait on the returned futures.  One batcher thread takes the oldest pending chunk,
then keeps adding chunks until the batch holds ``max_batch`` images or
``max_delay_s`` has passed since it started waiting, runs the model once on the
concatenation and hands every chunk its own slice of the result.

A request larger than ``max_batch`` is split into chunks of at most ``max_batch``
images; chunks are never split further, so a batch is a concatenation of whole
chunks in arrival order and every caller gets exactly its own rows.

The model sees only the batch sizes of :func:`model_sizes`: 1 to ``SHAPE_STEP`` and the
multiples of ``SHAPE_STEP`` (and ``max_batch``); a batch of another size is padded with
blank images up to the next of them, and the padding's rows are dropped.  A runtime
builds kernels for each input shape on its first use (TensorFlow: 5.8 MiB over 63 sizes,
docs/RELIABILITY.md, "The leak detector"), so a worker warms every size it can be called
with before it is ready: 15 sizes instead of 64 make that warm-up 316 images of compute
instead of 2,080 (2.5 s against 6.1 s on 2 cores, 150 MiB less resident memory), and a
restarted service serves that much sooner.  The padding costs nothing measurable: a
padded batch ran at 1.01 x the images/s of the same batch unpadded (``python -m
bench.shape_step``; oneDNN runs multiples of 8 more efficiently).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

SHAPE_STEP = 8  # batch sizes above it are multiples of it (see the module's docstring)


def model_sizes(max_batch: int, step: int = SHAPE_STEP) -> list[int]:
    """Every batch size the model is called with when batches hold at most ``max_batch``
    images, ascending."""
    return sorted({*range(1, min(step, max_batch) + 1), *range(step, max_batch + 1, step), max_batch})


def padded_size(n: int, max_batch: int, step: int = SHAPE_STEP) -> int:
    """The size of the model call a batch of ``n`` images (at most ``max_batch``) runs as:
    the smallest of model_sizes that holds it."""
    if n <= step:
        return n
    return min(-(-n // step) * step, max_batch)


class BatchResult(NamedTuple):
    """The rows of one chunk, plus when and how long the model call that produced them took."""

    probs: np.ndarray  # len(chunk) x classes
    inferred_at: float  # unix time the model output was ready
    inference_ms: float  # duration of the model call (whole merged batch)
    batch_size: int  # images in the merged batch


class Overloaded(RuntimeError):
    """More images are queued than ``max_queue`` allows: the caller should retry later."""


class _Chunk:
    __slots__ = ("images", "future", "deadline")

    def __init__(self, images: np.ndarray, deadline: float | None = None):
        self.images = images
        self.future: Future = Future()
        self.deadline = deadline  # time.monotonic() after which nobody waits for it

    def abandoned(self, now: float) -> bool:
        return self.future.cancelled() or (self.deadline is not None and now >= self.deadline)


class DynamicBatcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int,
                 max_delay_s: float, max_queue: int = 0, slowdown_s: float = 0.0,
                 name: str = "dynamic-batcher", observer=None):
        """``observer`` (inference.metrics.ServiceMetrics, optional) is told the queue depth
        when it changes (``queue_depth(images)``) and each model call (``model_batch(images,
        seconds)``); its methods never raise."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue = max_queue  # images; 0 = unbounded
        self.slowdown_s = slowdown_s
        self._pending: collections.deque[_Chunk] = collections.deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._observer = observer
        self.batches_run = 0  # statistics, read by tests and /v1/model
        self.images_run = 0
        self.images_dropped = 0  # queued, then abandoned by their caller: never run
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers

    def submit(self, images: np.ndarray, deadline: float | None = None) -> list[Future]:
        """Queue ``images`` (N x H x W x C); one future per chunk of at most max_batch rows.

        ``deadline`` (``time.monotonic()`` time) is when the caller stops waiting: a chunk
        not taken into a batch by then is dropped and its future cancelled.  Cancelling a
        future (a caller that gives up) takes its chunk out of the queue at once."""
        chunks = [_Chunk(images[i:i + self.max_batch], deadline) for i in range(0, len(images), self.max_batch)]
        for chunk in chunks:
            chunk.future.add_done_callback(functools.partial(self._forget, chunk))
        with self._cond:
            if self._stopped:
                raise RuntimeError("batcher stopped")
            if self.max_queue and self._queued_images + len(images) > self.max_queue and self._queued_images:
                raise Overloaded(f"{self._queued_images} images already queued (limit {self.max_queue})")
            self._pending.extend(chunks)
            self._queued_images += len(images)
            self._cond.notify()
            queued = self._queued_images
        if self._observer is not None:
            self._observer.queue_depth(queued)
        return [c.future for c in chunks]

    def queued_images(self) -> int:
        with self._cond:
            return self._queued_images

    def _forget(self, chunk: _Chunk, future: Future) -> None:
        """Done callback: a chunk cancelled while still queued leaves the queue now (one
        already taken into a batch is skipped by _execute)."""
        if not future.cancelled():
            return
        with self._cond:
            try:
                self._pending.remove(chunk)
            except ValueError:
                return
            self._queued_images -= len(chunk.images)
            self.images_dropped += len(chunk.images)

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------ batcher thread

    def _drop_abandoned_head(self) -> None:
        """Drop the chunks at the head of the queue that nobody waits for any more
        (cancelled, or past their deadline: cancelled here).  With the lock held."""
        now = time.monotonic()
        while self._pending and self._pending[0].abandoned(now):
            chunk = self._pending.popleft()
            self._queued_images -= len(chunk.images)
            self.images_dropped += len(chunk.images)
            chunk.future.cancel()

    def _take_batch(self) -> list[_Chunk] | None:
        with self._cond:
            self._drop_abandoned_head()
            while not self._pending and not self._stopped:
                self._cond.wait()
                self._drop_abandoned_head()
            if not self._pending:
                return None  # stopped and drained
            batch = [self._pending.popleft()]
            count = len(batch[0].images)
            deadline = time.monotonic() + self.max_delay_s
            while count < self.max_batch and not self._stopped:
                self._drop_abandoned_head()
                if self._pending:
                    if count + len(self._pending[0].images) > self.max_batch:
                        break  # the next chunk starts the next batch
                    chunk = self._pending.popleft()
                    batch.append(chunk)
                    count += len(chunk.images)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._queued_images -= count
            if self._observer is not None:
                self._observer.queue_depth(self._queued_images)
            return batch

    def _loop(self) -> None:
        while True:
            try:
                batch = self._take_batch()
            except Exception:  # pragma: no cover - defensive: the thread must not die
                log.exception("batcher: unexpected error while collecting a batch")
                continue
            if batch is None:
                return
            self._execute(batch)

    def _run_sized(self, images: np.ndarray) -> np.ndarray:
        """The model's rows for ``images``, run as a call of padded_size (blank images added,
        their rows dropped)."""
        n = len(images)
        size = padded_size(n, self.max_batch)
        if size > n:
            images = np.concatenate([images, np.zeros((size - n, *images.shape[1:]), dtype=images.dtype)])
        probs = np.asarray(self._run(images))
        if probs.shape[0] != size:
            raise RuntimeError(f"model returned {probs.shape[0]} rows for {size} images")
        return probs[:n]

    def _execute(self, batch: list[_Chunk]) -> None:
        now, live, dropped = time.monotonic(), [], 0
        for c in batch:
            if c.abandoned(now):  # given up on while the batch was being gathered
                c.future.cancel()
            if c.future.set_running_or_notify_cancel():
                live.append(c)
            else:
                dropped += len(c.images)
        if dropped:
            with self._cond:
                self.images_dropped += dropped
        if not live:
            return
        try:
            images = live[0].images if len(live) == 1 else np.concatenate([c.images for c in live])
            start = time.perf_counter()
            if self.slowdown_s > 0:
                time.sleep(self.slowdown_s)  # test hook: INFERENCE_SLOWDOWN_S
            probs = self._run_sized(images)
            inferred_at = time.time()
            elapsed_ms = (time.perf_counter() - start) * 1000.0
        except BaseException as exc:  # noqa: BLE001 - hand every error to the waiting callers
            log.exception("batcher: model call failed for a batch of %d chunks", len(live))
            for chunk in live:
                chunk.future.set_exception(exc)
            return
        self.batches_run += 1
        self.images_run += len(images)
        if self._observer is not None:
            self._observer.model_batch(len(images), elapsed_ms / 1000.0)
        log.debug("batch of %d images (%d chunks) in %.1f ms", len(images), len(live), elapsed_ms)
        offset = 0
        for chunk in live:
            n = len(chunk.images)
            chunk.future.set_result(BatchResult(probs[offset:offset + n], inferred_at, elapsed_ms, len(images)))
            offset += n
