# syntax=docker/dockerfile:1
# ipsbench-serve for an NVIDIA GPU: ONNX Runtime's CUDA build and TensorRT on a CUDA 13 / cuDNN 9 runtime base.
#
# Build (from the repository root):
#   docker build -f deploy/docker/server.Dockerfile -t ipsbench/server:0.1.0 .
# Run (model repository mounted read-only; 8001 gRPC, KServe v2 and grpc.health.v1; 8002 Prometheus metrics):
#   docker run --gpus 1 -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models:ro" ipsbench/server:0.1.0
# The command is the whole CMD (no ENTRYPOINT), so `docker run ... ipsbench/server:0.1.0 ipsbench-serve --help` works.
# The host needs an NVIDIA driver that supports CUDA 13 (R580 or newer) and the NVIDIA Container Toolkit.

ARG CUDA_IMAGE=nvcr.io/nvidia/cuda:13.1.1-cudnn-runtime-ubuntu24.04

# -- build: a virtual environment with the server and its GPU runtimes, pinned by deploy/constraints.txt --
FROM ${CUDA_IMAGE} AS build
# The base image's tag pins the Ubuntu release; Ubuntu's archive drops superseded package versions, so exact apt
# pins would break rebuilds without making them more reproducible than the tag already does.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3.12 -m venv /opt/venv
WORKDIR /src
COPY deploy/constraints.txt deploy/constraints.txt
COPY pyproject.toml README.md ./
# The three role folders are one distribution (ipsbench.server, .loadgen, .export); the extra picks the dependencies.
COPY server server
COPY loadgen loadgen
COPY export export
# onnxruntime-gpu replaces the CPU onnxruntime that the server extra names: both install the same module.
# TensorRT's backend needs what the tensorrt extra names: TensorRT 11 (here its CUDA 13 build, tensorrt-cu13) and
# cuda-bindings for its device buffers and streams, so the image serves plans without PyTorch.
RUN /opt/venv/bin/pip install --no-cache-dir -c deploy/constraints.txt '.[server]' \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install --no-cache-dir -c deploy/constraints.txt \
        --extra-index-url https://pypi.nvidia.com onnxruntime-gpu tensorrt-cu13 cuda-bindings

# -- runtime: the same base, Python, the environment, a non-root user; nothing to build with --
FROM ${CUDA_IMAGE} AS server
# Unpinned apt versions for the reason given in the build stage: the base image's tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ipsbench \
    && useradd --system --uid 10001 --gid ipsbench --no-create-home --home-dir /nonexistent ipsbench \
    && mkdir /models
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/grpc_health_check.py /opt/ipsbench/grpc_health_check.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
# The model repository: mount it read-only (-v models:/models:ro); the server never writes to it.
VOLUME ["/models"]
# 8001: gRPC (KServe v2 inference and grpc.health.v1). 8002: Prometheus metrics at /metrics.
EXPOSE 8001 8002
# Healthy once every model is loaded and warmed (the health service follows readiness); start-period covers
# loading, which for TensorRT engines can take minutes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "/opt/ipsbench/grpc_health_check.py", "127.0.0.1:8001"]
# SIGTERM: NOT_SERVING, refuse new work, drain in-flight requests for --grace-period-s, exit. Give the container
# longer than that to stop (docker stop -t 40, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
CMD ["ipsbench-serve", "--model-repository", "/models", "--host", "0.0.0.0", "--grpc-port", "8001", \
     "--metrics-port", "8002", "--grace-period-s", "30"]
