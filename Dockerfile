# syntax=docker/dockerfile:1
# The VidPlan planning server: gRPC :50051 and HTTP :8000 (/v1/plan, /metrics), the bundled checkpoint inside.
#
#   docker build -t vidplan:gpu .                              # CUDA runtime base, PyPI's CUDA build of torch
#   docker build -t vidplan:cpu --build-arg VARIANT=cpu .      # Debian slim base, the CPU wheel of torch
#   docker build -t vidplan:gpu-ray --build-arg EXTRAS=scale .  # with Ray Serve, for KubeRay (deploy/ray/)
#   docker run --gpus all -p 50051:50051 -p 8000:8000 -e VIDPLAN_TOKEN --stop-timeout 45 vidplan:gpu
#
# Settings come from VIDPLAN_* variables (every `vidplan serve` option has one; `--print-config` shows them) or
# from arguments after the image name (`vidplan serve` is the entry point). Stop: SIGTERM drains in-flight plans
# for VIDPLAN_SHUTDOWN_GRACE (30 s), so give `docker stop` / compose / Kubernetes a longer timeout (45 s).

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG CPU_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- base images, one per variant
# The CUDA image brings the driver-facing settings the NVIDIA container toolkit reads (NVIDIA_VISIBLE_DEVICES,
# NVIDIA_DRIVER_CAPABILITIES) and Ubuntu 24.04's Python 3.12; torch's own wheels bring cuDNN and cuBLAS.
FROM ${CUDA_IMAGE} AS base-gpu
ENV DEBIAN_FRONTEND=noninteractive VIDPLAN_DEVICE=cuda
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates wget \
    && rm -rf /var/lib/apt/lists/*

FROM ${CPU_IMAGE} AS base-cpu
ENV VIDPLAN_DEVICE=cpu
# wget: KubeRay's probes of a Ray node call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

FROM base-${VARIANT} AS base
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# ---------------------------------------------------------------- builder: compilers and the filled virtualenv
FROM base AS builder
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# "auto": PyPI's torch for gpu (the CUDA build), PyTorch's CPU index for cpu; a URL; or empty for pip's own index.
ARG TORCH_INDEX_URL=auto
# Extras of the server: "scale" adds Ray Serve (the image KubeRay's RayService runs).
ARG EXTRAS=
# pybullet has no wheel for Python 3.12 (the CUDA image's Python): it compiles here, never in the runtime image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && if [ "$VARIANT" = gpu ]; then apt-get install -y --no-install-recommends python3-dev; fi \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY client/ client/
COPY vidplan_server/ vidplan_server/
COPY deploy/docker/install.sh deploy/docker/install.sh
# The build arguments reach the script as variables (VARIANT, TORCH_VERSION, TORCH_INDEX_URL, EXTRAS).
RUN sh deploy/docker/install.sh

# ---------------------------------------------------------------- runtime: the virtualenv and a non-root user
FROM base AS runtime
COPY --from=builder /opt/venv /opt/venv
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/vidplan vidplan
USER 10001:10001
WORKDIR /home/vidplan
ENV VIDPLAN_HOST=0.0.0.0 \
    VIDPLAN_GRPC_PORT=50051 \
    VIDPLAN_HTTP_PORT=8000 \
    VIDPLAN_SHUTDOWN_GRACE=30 \
    VIDPLAN_LOG_FORMAT=json \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/cache
EXPOSE 50051 8000
# Docker's health status from the server's own grpc.health.v1 (SERVING only once the model is warmed up); health
# needs no token. The start period covers loading and warming up the model.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["vidplan-client", "--target", "127.0.0.1:50051", "--timeout", "4", "--retries", "0", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["vidplan", "serve"]
