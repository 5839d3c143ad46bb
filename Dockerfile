# Every MusicRL image, one target per deployable. Build from the repository root:
#
#   docker build --target gateway -t "$REGISTRY/musicrl-gateway:$TAG" .
#   docker build --target generator --build-arg TORCH_VARIANT=cu128 -t "$REGISTRY/musicrl-generator:$TAG" .
#
# Targets: gateway, recorder, rollout (no torch, no transformers), generator, rewards, pipeline (torch).
# Each installs only its role's extra of pyproject.toml (plus `s3`, see STORAGE_EXTRA), pinned by constraints.txt.
#
# TORCH_VARIANT picks the wheel index of the torch targets: `cpu` (default), or a CUDA build such as `cu128`.
# PyTorch's CUDA wheels carry the CUDA runtime libraries; the node's driver comes in through the NVIDIA container
# toolkit, so the base stays the same slim Python image.

# python:3.11.14-slim-bookworm, pinned by the digest of its multi-architecture index.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
# `s3` adds fsspec's S3 backend for s3:// dataset, clip and checkpoint URLs; set it empty for file:// only.
ARG STORAGE_EXTRA=s3
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu

# ---- base: the runtime every target starts from ----
FROM ${PYTHON_IMAGE} AS base
# A fixed uid (10001) the chart's runAsUser can name; its home holds the model cache (mount a volume there).
RUN groupadd --gid 10001 musicrl && useradd --uid 10001 --gid 10001 --create-home musicrl
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# ---- wheel: the musicrl package, built once for every target ----
FROM base AS wheel
COPY pyproject.toml README.md ./
COPY musicrl ./musicrl
COPY services ./services
COPY pipelines ./pipelines
RUN pip wheel --no-deps --wheel-dir /wheels .

# ---- venv: an empty virtual environment; each target fills one and copies it into a clean stage ----
FROM base AS venv
RUN python -m venv /opt/venv
COPY constraints.txt /tmp/constraints.txt

# ---- torch: the venv with torch from the CPU or a CUDA wheel index ----
FROM venv AS torch
ARG TORCH_VERSION
ARG TORCH_VARIANT
# torch first, from its own index: the extras accept any 2.13 build, so pip keeps this one.
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" "torch==${TORCH_VERSION}"

# ---- the dependencies of each role ----
FROM venv AS gateway-deps
ARG STORAGE_EXTRA
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install -c /tmp/constraints.txt "$(ls /wheels/musicrl-*.whl)[gateway${STORAGE_EXTRA:+,$STORAGE_EXTRA}]"

FROM venv AS recorder-deps
ARG STORAGE_EXTRA
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install -c /tmp/constraints.txt "$(ls /wheels/musicrl-*.whl)[recorder${STORAGE_EXTRA:+,$STORAGE_EXTRA}]"

FROM venv AS rollout-deps
ARG STORAGE_EXTRA
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install -c /tmp/constraints.txt "$(ls /wheels/musicrl-*.whl)[rollout${STORAGE_EXTRA:+,$STORAGE_EXTRA}]"

# the generator and the rewards serve from one environment
FROM torch AS serving-deps
ARG STORAGE_EXTRA
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install -c /tmp/constraints.txt "$(ls /wheels/musicrl-*.whl)[serving${STORAGE_EXTRA:+,$STORAGE_EXTRA}]"

FROM torch AS pipeline-deps
ARG STORAGE_EXTRA
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install -c /tmp/constraints.txt "$(ls /wheels/musicrl-*.whl)[pipeline${STORAGE_EXTRA:+,$STORAGE_EXTRA}]"

# ---- the targets: the base, one environment, a non-root user ----
FROM base AS gateway
COPY --from=gateway-deps /opt/venv /opt/venv
USER 10001:10001
ENV MUSICRL_HOST=0.0.0.0
EXPOSE 8000
ENTRYPOINT ["python", "-m", "services.gateway"]

FROM base AS recorder
COPY --from=recorder-deps /opt/venv /opt/venv
USER 10001:10001
# MUSICRL_NATS_URL and MUSICRL_DATASET_URL have no default: the deployment sets them (s3://... on a cluster).
ENV MUSICRL_METRICS_HOST=0.0.0.0
EXPOSE 9102
ENTRYPOINT ["python", "-m", "services.recorder"]

FROM base AS rollout
COPY --from=rollout-deps /opt/venv /opt/venv
USER 10001:10001
# MUSICRL_NATS_URL has no default; on a cluster the chart sets MUSICRL_TARGET=kserve and the InferenceService.
ENV MUSICRL_METRICS_HOST=0.0.0.0
EXPOSE 9103
ENTRYPOINT ["python", "-m", "services.rollout"]

FROM base AS generator
COPY --from=serving-deps /opt/venv /opt/venv
USER 10001:10001
# Weights are cached here; mount a volume (or an emptyDir) so restarts do not download again.
ENV MUSICRL_CACHE_DIR=/home/musicrl/.cache/musicrl \
    MUSICRL_HOST=0.0.0.0
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "services.generator"]

# tritonserver (the nvidia-pytriton wheel's binary) over the same venv: the Triton runtime of the chart
FROM serving-deps AS triton-deps
RUN python -m musicrl.triton.install --home /opt/triton

FROM base AS triton
COPY --from=triton-deps /opt/venv /opt/venv
COPY --from=triton-deps /opt/triton /opt/triton
USER 10001:10001
ENV MUSICRL_CACHE_DIR=/home/musicrl/.cache/musicrl \
    MUSICRL_TRITON_HOME=/opt/triton
EXPOSE 8080 8081 8082
ENTRYPOINT ["musicrl", "serve", "triton", "--host", "0.0.0.0"]

FROM base AS rewards
COPY --from=serving-deps /opt/venv /opt/venv
USER 10001:10001
ENV MUSICRL_CACHE_DIR=/home/musicrl/.cache/musicrl \
    MUSICRL_HOST=0.0.0.0
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "services.rewards"]

# The image every retraining step runs in (the pipeline's `image` parameter).
FROM base AS pipeline
COPY --from=pipeline-deps /opt/venv /opt/venv
# the stage configs and prompts the pipeline's defaults name (/app/configs/rl)
COPY configs ./configs
USER 10001:10001
ENV MUSICRL_CACHE_DIR=/tmp/musicrl-cache
ENTRYPOINT ["python", "-m", "musicrl"]
