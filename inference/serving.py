"""The model a Gunicorn worker serves (``ModelHost``): loaded in a background thread after
the fork, then fed by the dynamic batcher.  The Flask app finds it in
``app.extensions["model_host"]``.

Not to be confused with ``MODEL_ENGINE`` (``inference/runtimes.py``, ``inference/torch_engine.py``),
the runtime that runs the model (TensorFlow, ONNX Runtime, OpenVINO, PyTorch): a ModelHost
holds whatever model that engine built (an ``inference.weights.LoadedModel``), one per worker
process.

Nothing here imports TensorFlow or torch at module level: the engine's module
(``inference.model`` or ``inference.torch_engine``) is imported by the loader thread, which
runs in the Gunicorn *worker* after the fork (the master never calls ``create_app`` because
``preload_app`` is off), and a worker imports only its own engine's runtime.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from common.settings import ServiceSettings
from inference.batcher import DynamicBatcher, model_sizes

log = logging.getLogger(__name__)

LOADING, READY, FAILED = "loading", "ready", "failed"


def load_engine_model(s: ServiceSettings):
    """The model of ``s`` (MODEL, MODEL_WEIGHTS, MODEL_ENGINE ...) loaded by its engine, the
    engine's threads configured first (TF_INTRA_OP_THREADS, TF_INTER_OP_THREADS): an
    ``inference.weights.LoadedModel``.  Imports that engine's runtime only."""
    if s.model_engine == "torch":
        from inference import torch_engine  # imports torch: worker only

        torch_engine.configure_threads(s.tf_intra_op_threads, s.tf_inter_op_threads)
        return torch_engine.load_model(s.served_model(), s.model_weights, s.model_input_size,
                                       download_timeout_s=s.weights_download_timeout_s,
                                       base_url=s.torch_weights_url)
    from inference import model as model_mod  # imports TensorFlow: worker only

    model_mod.configure_threads(s.tf_intra_op_threads, s.tf_inter_op_threads)
    return model_mod.load_model(s.model_weights, s.model_input_size, download_timeout_s=s.weights_download_timeout_s,
                                precision=s.model_precision, engine=s.model_engine)


def unsayable_classes(classes) -> list[str]:
    """The classes a result cannot carry: the response contract's ``Prediction.label`` is a
    closed set of names (common/http_models.py), and a label outside it would fail every
    /v1/predict answer after the model ran.  Checked at load, so such a model fails there,
    visibly (/readyz, the log), and serves as soon as the contract accepts its classes."""
    import typing

    from common.http_models import Prediction

    label = Prediction.model_fields["label"].annotation
    if typing.get_origin(label) is not typing.Literal:
        return []  # an open type: any name
    allowed = set(typing.get_args(label))
    return [c for c in classes if c not in allowed]


def warm_up(predict, input_size: int, max_batch: int, budget_s: float) -> tuple[int, float]:
    """Run ``predict`` once per batch size the dynamic batcher calls the model with
    (inference.batcher.model_sizes): 1 and ``max_batch`` always, then the others, ascending,
    while ``budget_s`` lasts.  The first call traces the model and lets the runtime build its
    kernels, and each new batch size gets kernels of its own on first use (TensorFlow at 32
    px: +5.8 MiB of resident memory as sizes 2-63 first came after 1 and 64, then flat;
    docs/RELIABILITY.md, "The leak detector"), so a worker warmed this way holds its steady
    memory at ready.  (sizes run, seconds taken)"""
    started = time.perf_counter()
    ends = [1, *([max_batch] if max_batch > 1 else [])]
    sizes = [*ends, *(n for n in model_sizes(max_batch) if n not in ends)]
    done = 0
    for n in sizes:
        if done >= 2 and time.perf_counter() - started >= budget_s:
            break
        predict(np.zeros((n, input_size, input_size, 3), dtype=np.uint8))
        done += 1
    return done, time.perf_counter() - started


class ModelHost:
    """This worker's model and its dynamic batcher, with the state /readyz reports:
    ``loading`` until the loader thread is done, then ``ready`` or ``failed``."""

    def __init__(self, settings: ServiceSettings, metrics=None):
        """``metrics``: an inference.metrics.ServiceMetrics (model state, the batcher's observer)."""
        self.settings = settings
        self.metrics = metrics
        self.state = LOADING
        self.error: str | None = None
        self.model = None  # inference.weights.LoadedModel once ready
        self.batcher: DynamicBatcher | None = None
        self.load_seconds: float | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "ModelHost":
        self._thread = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        return self.state == READY

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    def _load(self) -> None:
        s = self.settings
        started = time.perf_counter()
        try:
            loaded = load_engine_model(s)
            refused = unsayable_classes(loaded.classes)
            if refused:
                raise ValueError(
                    f"{loaded.id} answers {len(loaded.classes)} classes, {len(refused)} of which the result "
                    f"contract cannot carry ({', '.join(refused[:5])} ...): common.http_models.Prediction.label "
                    "takes the CIFAR-10 and CIFAR-100 class names")
            warmed, took = warm_up(loaded.predict, loaded.input_size, s.model_batch_max_images, s.model_warmup_s)
            log.info("warm-up: %d of %d batch sizes in %.1fs (MODEL_WARMUP_S=%g)", warmed,
                     len(model_sizes(s.model_batch_max_images)), took, s.model_warmup_s)
            self.batcher = DynamicBatcher(
                loaded.predict, max_batch=s.model_batch_max_images,
                max_delay_s=s.model_batch_delay_ms / 1000.0, max_queue=s.max_queue_images,
                slowdown_s=s.inference_slowdown_s, observer=self.metrics)
            self.model = loaded
            self.load_seconds = time.perf_counter() - started
            self.state = READY
            if self.metrics is not None:
                self.metrics.model_state(ready=True, failed=False)
            level = logging.WARNING if loaded.untrained else logging.INFO
            log.log(level, "model %s ready in %.1fs (weights %s)%s", loaded.id, self.load_seconds,
                    loaded.weights_source,
                    " - UNTRAINED: labels are meaningless" if loaded.untrained else "")
        except Exception as exc:  # noqa: BLE001 - report through /readyz instead of dying
            self.error = f"{type(exc).__name__}: {exc}"
            self.state = FAILED
            if self.metrics is not None:
                self.metrics.model_state(ready=False, failed=True)
            log.exception("model loading failed: %s", self.error)
        finally:
            self._ready.set()
