# syntax=docker/dockerfile:1
# ipsbench-export: torchvision models → ONNX or TorchScript in a Triton-layout model repository, on the CPU.
# A one-shot job: the compose file's `export` service and the Kubernetes server's init container run it to fill
# the model repository that the server then mounts read-only.
#
# Build (from the repository root):
#   docker build -f deploy/docker/export.Dockerfile -t ipsbench/export:0.1.0 .
# Run:
#   docker run --rm -v "$PWD/models:/models" ipsbench/export:0.1.0 ipsbench-export resnet50 --device gpu --out /models

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm
# PyTorch's CPU-only wheels: the exporter traces and checks on the CPU, and the CUDA wheels would add gigabytes.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# -- build: PyTorch (CPU), torchvision and the exporter, pinned by deploy/constraints.txt --
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY deploy/constraints.txt deploy/constraints.txt
COPY pyproject.toml README.md ./
# The three role folders are one distribution (ipsbench.server, .loadgen, .export); the extra picks the dependencies.
COPY server server
COPY loadgen loadgen
COPY export export
RUN /opt/venv/bin/pip install --no-cache-dir -c deploy/constraints.txt --index-url "${TORCH_INDEX_URL}" \
        torch torchvision \
    && /opt/venv/bin/pip install --no-cache-dir -c deploy/constraints.txt '.[export]'

# -- runtime --
FROM ${PYTHON_IMAGE} AS export
RUN groupadd --system --gid 10001 ipsbench \
    && useradd --system --uid 10001 --gid ipsbench --no-create-home --home-dir /nonexistent ipsbench \
    && mkdir /models \
    && chown 10001:10001 /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
# A named volume mounted here starts owned by the image's user, so the export can write into it.
VOLUME ["/models"]
HEALTHCHECK NONE
CMD ["ipsbench-export", "--list"]
