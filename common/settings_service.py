"""Settings of the servers: the inference service, its Gunicorn master, the dashboard.

Imported through :mod:`common.settings`; this module holds them only to keep each module
short.  gunicorn.conf.py imports them in the Gunicorn master, so nothing here may import
more than pydantic.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr

from common.settings_base import ProjectSettings, SettingsError, level_name
from common.wire import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_IMAGES, b64_chars


# The CIFAR-native ResNets of chenyaofo/pytorch-cifar-models (inference/cifar_resnet.py, which
# checks that its table names the same ones): MODEL_ENGINE=torch only.
CIFAR_RESNETS = ("cifar10_resnet20", "cifar10_resnet32", "cifar10_resnet44", "cifar10_resnet56",
                 "cifar100_resnet20", "cifar100_resnet32", "cifar100_resnet44", "cifar100_resnet56")
CIFAR_RESNET_RELEASE_URL = "https://github.com/chenyaofo/pytorch-cifar-models/releases/download/resnet/"


class ServiceSettings(ProjectSettings):
    """The Flask/Gunicorn inference service (inference/)."""

    model: Literal[("resnet50", *CIFAR_RESNETS)] | None = Field(None, description=(
        "The network: resnet50 (Keras' ResNet50; MODEL_ENGINE tensorflow, onnxruntime or openvino) or a "
        "CIFAR-native ResNet of chenyaofo/pytorch-cifar-models, pretrained on CIFAR-10 or CIFAR-100 "
        "(MODEL_ENGINE=torch only). Unset: resnet50, or with MODEL_ENGINE=torch cifar10_resnet20 "
        "(cifar100_resnet20 when DATASET=cifar100)."))
    dataset: Literal["cifar10", "cifar100", "synthetic", "folder"] = Field("cifar10", description=(
        "The service reads the cameras' DATASET for one thing: with MODEL_ENGINE=torch and MODEL unset, "
        "cifar100 serves cifar100_resnet20."))
    model_weights: str = Field("auto", description=(
        "auto (the pretrained weights when they can be had, else random), random, or the path of a "
        "weights file; resnet50: imagenet (Keras' ImageNet weights; python -m inference.train writes a "
        "file); the CIFAR ResNets: pretrained (the published checkpoint of MODEL, downloaded once into "
        "the Keras cache and checked against the sha256 prefix of its file name)."))
    model_input_size: int | None = Field(None, description=(
        "Side of the model's square input, in pixels. Unset: 224 for ImageNet weights, 32 otherwise "
        "(the CIFAR ResNets take 32 only)."))
    torch_weights_url: str = Field(CIFAR_RESNET_RELEASE_URL, description=(
        "MODEL_ENGINE=torch: where the published checkpoints are downloaded from, the file name "
        "(<model>-<sha256 prefix>.pt) appended: upstream's GitHub release, or a mirror (https:// or "
        "file://) for hosts that cannot reach GitHub."))
    # 1.31x at batch 16 at 224 px here, predictions within ~1e-2 (docs/PERFORMANCE.md).
    model_precision: Literal["float32", "bfloat16"] = Field("float32", description=(
        "bfloat16: the same weights computed in bfloat16 (oneDNN on AVX512_BF16/AMX CPUs)."))
    # openvino 1.5-2.8x at 224 px with TF's labels; onnxruntime's conversion needs ~7-9 GiB
    # (docs/PERFORMANCE.md).
    model_engine: Literal["tensorflow", "onnxruntime", "openvino", "torch"] = Field("tensorflow", description=(
        "Runtime of the model: tensorflow, or the same Keras model converted at load by ONNX Runtime or "
        "OpenVINO (optional packages: requirements/runtime-<engine>.txt; float32 only); torch: PyTorch "
        "running the CIFAR ResNets (MODEL; requirements/runtime-torch.txt; float32 only)."))
    max_request_images: int = Field(DEFAULT_MAX_REQUEST_IMAGES, ge=1, description="Most images one /v1/predict request may carry.")
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1024, description=(
        "Largest image of a request (PNG or JPEG, the file, base64 aside); read from the header before "
        "anything is decoded."))
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1, description=(
        "Most pixels of one image (a decompression bomb gets a per-image error)."))
    # With the defaults the cap decides: 64 MiB holds 47 images of 1 MiB in JSON (63 in
    # multipart), 128 of up to 370 KiB.
    max_request_bytes: int | None = Field(None, ge=1024, description=(
        "Largest request body (413 above it, before anything is parsed). Unset: MAX_REQUEST_IMAGES x "
        "(the base64 of MAX_IMAGE_BYTES + 1 KiB) + 64 KiB, capped at 64 MiB."))
    inference_token: SecretStr | None = Field(None, description=(
        "Bearer token every request must carry (the consumers' INFERENCE_TOKEN). Unset: none."))
    model_batch_max_images: int = Field(64, ge=1, description=(
        "Dynamic batching: most images per model call, merged across requests."))
    model_batch_delay_ms: float = Field(2.0, ge=0, description=(
        "Dynamic batching: how long requests are gathered into one model call."))
    model_warmup_s: float = Field(30.0, ge=0, description=(
        "Before a worker reports ready it runs each batch size the model is called with once (1 to 8 "
        "and the multiples of 8 up to MODEL_BATCH_MAX_IMAGES: 1 and the largest always, the others "
        "while this many seconds last): the runtime builds kernels for each size on its first use, so "
        "the worker's memory at ready is its steady memory. 32 px, 64 images: 15 sizes, 316 images."))
    tf_intra_op_threads: int = Field(0, description=(
        "TensorFlow's threads per operation; 0: TensorFlow decides. MODEL_ENGINE=torch: "
        "torch.set_num_threads, 0: the CPUs the worker may run on."))
    tf_inter_op_threads: int = Field(0, description=(
        "TensorFlow's concurrent operations; 0: TensorFlow decides. MODEL_ENGINE=torch: "
        "torch.set_num_interop_threads, 0: torch decides."))
    inference_slowdown_s: float = Field(0.0, description="Test hook: extra seconds added to every batch (0: off).")
    weights_download_timeout_s: float = Field(3.0, gt=0, description=(
        "auto/imagenet: bound of every socket operation of the weights download, so a host without "
        "internet falls back (auto) or fails (imagenet) fast."))
    max_queue_images: int = Field(1024, ge=0, description=(
        "Backpressure: a request that would push the dynamic batcher's queue past this many images gets "
        "503 + Retry-After (0: unbounded)."))
    # Shorter than the consumers' INFERENCE_TIMEOUT_S, so the service gives up before its
    # client does and never computes a batch the client already resends.
    inference_request_timeout_s: float = Field(60.0, gt=0, description=(
        "How long a request waits for its batches before answering 503; its chunks not run by then are "
        "dropped from the queue. Keep it below the consumers' INFERENCE_TIMEOUT_S."))

    def __init__(self, **values):
        super().__init__(**values)
        problem = model_problem(self)
        if problem:
            raise SettingsError(f"invalid setting: {problem}")

    def served_model(self) -> str:
        """The network served: MODEL, else resnet50, or with MODEL_ENGINE=torch the ResNet20 of
        the cameras' dataset (cifar100_resnet20 for DATASET=cifar100, else cifar10_resnet20)."""
        if self.model:
            return self.model
        if self.model_engine == "torch":
            return "cifar100_resnet20" if self.dataset == "cifar100" else "cifar10_resnet20"
        return "resnet50"


def model_problem(s: ServiceSettings) -> str | None:
    """What is wrong with the combination of MODEL, MODEL_ENGINE and the model's other settings
    (each valid alone), naming the variables; None when they go together.  Checked when the
    settings load, so the Gunicorn master refuses to start instead of a worker failing to load."""
    name = s.served_model()
    weights = s.model_weights.strip().lower()
    if s.model_engine != "torch":
        if name in CIFAR_RESNETS:
            return (f"MODEL={name} with MODEL_ENGINE={s.model_engine}: the CIFAR ResNets run on "
                    "MODEL_ENGINE=torch only (set MODEL_ENGINE=torch, or MODEL=resnet50)")
        if weights == "pretrained":
            return (f"MODEL_WEIGHTS=pretrained with MODEL={name}: the published weights of the CIFAR ResNets "
                    "(MODEL_ENGINE=torch); resnet50 takes auto, imagenet, random or a file")
        return None
    if name == "resnet50":
        return ("MODEL=resnet50 with MODEL_ENGINE=torch: the torch engine runs the CIFAR ResNets (MODEL="
                f"{', '.join(CIFAR_RESNETS)}); resnet50 runs on MODEL_ENGINE=tensorflow, onnxruntime or openvino")
    if weights == "imagenet":
        return (f"MODEL_WEIGHTS=imagenet with MODEL_ENGINE=torch (MODEL={name}): ImageNet weights are "
                "resnet50's; the CIFAR ResNets take auto, pretrained, random or a checkpoint file")
    if s.model_precision != "float32":
        return f"MODEL_PRECISION={s.model_precision} with MODEL_ENGINE=torch: float32 only"
    if s.model_input_size not in (None, 32):
        return (f"MODEL_INPUT_SIZE={s.model_input_size} with MODEL_ENGINE=torch (MODEL={name}): the CIFAR "
                "ResNets take 32x32 images (the service resizes every image to 32)")
    return None


REQUEST_BYTES_CAP = 64 * 1024 * 1024


def request_bytes_limit(s: ServiceSettings) -> int:
    """The service's body limit: MAX_REQUEST_BYTES, else derived from MAX_REQUEST_IMAGES and
    MAX_IMAGE_BYTES (base64: 4/3 of it, plus 1 KiB per image), capped at 64 MiB, so a worker's
    memory per request is bounded by what it may legitimately receive."""
    if s.max_request_bytes:
        return s.max_request_bytes
    per_image = b64_chars(s.max_image_bytes) + 1024
    return min(s.max_request_images * per_image + 64 * 1024, REQUEST_BYTES_CAP)


class GunicornSettings(ProjectSettings):
    """The Gunicorn master of the inference service (inference/gunicorn.conf.py explains each choice)."""

    # The service has no TLS and the bearer token is optional: exposing it is a choice.
    inference_bind: str = Field("127.0.0.1:8000", description=(
        "Address the service listens on. Loopback by default (INFERENCE_BIND=0.0.0.0:8000 exposes it)."))
    gunicorn_workers: int = Field(1, ge=1, description=(
        "Worker processes, each with its own model (0.6-1 GB each); raise it on hosts with many cores, "
        "with TF_INTRA_OP_THREADS = cores / workers."))
    gunicorn_threads: int = Field(8, ge=1, description=(
        "Request threads per worker: concurrent requests the dynamic batcher can merge."))
    gunicorn_timeout: int = Field(60, ge=1, description="Seconds without a worker heartbeat before it is killed.")
    gunicorn_graceful_timeout: int = Field(30, ge=0, description="Seconds requests in flight get to finish on SIGTERM.")
    gunicorn_keepalive: int = Field(5, ge=0, description="Seconds an idle client connection is kept open.")
    gunicorn_max_requests: int = Field(0, ge=0, description="Requests before a worker is replaced; 0: never.")
    gunicorn_max_requests_jitter: int = Field(0, ge=0, description="Random extra requests added to GUNICORN_MAX_REQUESTS.")
    gunicorn_backlog: int = Field(128, ge=1, description="Pending connections the kernel queues.")
    gunicorn_reuse_port: bool = Field(False, description=(
        "Listen with SO_REUSEPORT, so that a second service can start on the same port and take over "
        "before this one stops (the local stack's handover). Off: a second start on a taken port fails."))
    gunicorn_control_socket: str | None = Field(None, description=(
        "Path of Gunicorn's control socket (gunicornc). Unset: no control socket."))
    gunicorn_accesslog: str | None = Field(None, description="Access log file. Unset: stderr.")
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(level_name)] = Field(
        "INFO", description="Gunicorn's log level, in any case (also the level of the workers' log: LogSettings).")
    prometheus_multiproc_dir: str | None = Field(None, description=(
        "Directory of the workers' metric files (prometheus_client's own variable, which it reads in "
        "each worker). Emptied at start. Unset: a private temporary directory, set for the workers and "
        "removed when the master exits."))


class DashboardSettings(ProjectSettings):
    """The live dashboard (``python -m dashboard``): reads MongoDB and Prometheus only."""

    dashboard_bind: str = Field("127.0.0.1:8050", description=(
        "Address of the dashboard (--bind). Loopback by default; any other address needs "
        "DASHBOARD_TOKEN (the page shows the pipeline's images)."))
    dashboard_token: SecretStr | None = Field(None, description=(
        "Bearer token of the dashboard, given once as /?token=... and kept in an HttpOnly cookie. "
        "Unset: no token."))
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus the dashboard queries (--prometheus-url).")
    dashboard_recent_images: int = Field(12, ge=1, le=100, description="Latest images the page shows.")
    dashboard_refresh_ms: int = Field(2000, ge=200, description="How often the page refreshes.")
