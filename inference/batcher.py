"""Server-side dynamic batching, as Triton and TF Serving do it.

Request threads call :meth:`DynamicBatcher.submit` with their decoded images and
wait on the returned futures.  One batcher thread takes the oldest pending chunk,
then keeps adding chunks until the batch holds ``max_batch`` images or
``max_delay_s`` has passed since it started waiting, runs the model once on the
concatenation and hands every chunk its own slice of the result.

A request larger than ``max_batch`` is split into chunks of at most ``max_batch``
images; chunks are never split further, so a batch is a concatenation of whole
chunks in arrival order and every caller gets exactly its own rows.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, NamedTuple

import numpy as np

log = logging.getLogger(__name__)


class BatchResult(NamedTuple):
    """The rows of one chunk, plus when and how long the model call that produced them took."""

    probs: np.ndarray  # len(chunk) x classes
    inferred_at: float  # unix time the model output was ready
    inference_ms: float  # duration of the model call (whole merged batch)
    batch_size: int  # images in the merged batch


class Overloaded(RuntimeError):
    """More images are queued than ``max_queue`` allows: the caller should retry later."""


class _Chunk:
    __slots__ = ("images", "future")

    def __init__(self, images: np.ndarray):
        self.images = images
        self.future: Future = Future()


class DynamicBatcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int,
                 max_delay_s: float, max_queue: int = 0, slowdown_s: float = 0.0,
                 name: str = "dynamic-batcher"):
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
        self.batches_run = 0  # statistics, read by tests and /v1/model
        self.images_run = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers

    def submit(self, images: np.ndarray) -> list[Future]:
        """Queue ``images`` (N x H x W x C); one future per chunk of at most max_batch rows."""
        chunks = [_Chunk(images[i:i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        with self._cond:
            if self._stopped:
                raise RuntimeError("batcher stopped")
            if self.max_queue and self._queued_images + len(images) > self.max_queue and self._queued_images:
                raise Overloaded(f"{self._queued_images} images already queued (limit {self.max_queue})")
            self._pending.extend(chunks)
            self._queued_images += len(images)
            self._cond.notify()
        return [c.future for c in chunks]

    def queued_images(self) -> int:
        with self._cond:
            return self._queued_images

    def stop(self, timeout: float | None = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ------------------------------------------------------------ batcher thread

    def _take_batch(self) -> list[_Chunk] | None:
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if not self._pending:
                return None  # stopped and drained
            batch = [self._pending.popleft()]
            count = len(batch[0].images)
            deadline = time.monotonic() + self.max_delay_s
            while count < self.max_batch and not self._stopped:
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

    def _execute(self, batch: list[_Chunk]) -> None:
        live = [c for c in batch if c.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            images = live[0].images if len(live) == 1 else np.concatenate([c.images for c in live])
            start = time.perf_counter()
            if self.slowdown_s > 0:
                time.sleep(self.slowdown_s)  # test hook: INFERENCE_SLOWDOWN_S
            probs = np.asarray(self._run(images))
            inferred_at = time.time()
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            if probs.shape[0] != len(images):
                raise RuntimeError(f"model returned {probs.shape[0]} rows for {len(images)} images")
        except BaseException as exc:  # noqa: BLE001 - hand every error to the waiting callers
            log.exception("batcher: model call failed for a batch of %d chunks", len(live))
            for chunk in live:
                chunk.future.set_exception(exc)
            return
        self.batches_run += 1
        self.images_run += len(images)
        log.debug("batch of %d images (%d chunks) in %.1f ms", len(images), len(live), elapsed_ms)
        offset = 0
        for chunk in live:
            n = len(chunk.images)
            chunk.future.set_result(BatchResult(probs[offset:offset + n], inferred_at, elapsed_ms, len(images)))
            offset += n
