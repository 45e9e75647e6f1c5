# syntax=docker/dockerfile:1
# ipsbench-load: the locust-based load generator (master, worker, web UI, headless scenarios). No PyTorch.
#
# Build (from the repository root):
#   docker build -f deploy/docker/loadgen.Dockerfile -t ipsbench/load:0.1.0 .
# Run a scenario, report into ./reports:
#   docker run --rm -v "$PWD/reports:/reports" ipsbench/load:0.1.0 \
#     ipsbench-load sweep --target gpu-box:8001 --model resnet50 --out /reports/sweep
# 8089: locust's web UI (ipsbench-load ui). 5557: the master's port that workers connect to (--master-bind).

ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

# -- build: a virtual environment with the load generator, pinned by deploy/constraints.txt --
FROM ${PYTHON_IMAGE} AS build
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
RUN /opt/venv/bin/pip install --no-cache-dir -c deploy/constraints.txt '.[loadgen]'

# -- runtime: the environment and a non-root user --
FROM ${PYTHON_IMAGE} AS load
RUN groupadd --system --gid 10001 ipsbench \
    && useradd --system --uid 10001 --gid ipsbench --no-create-home --home-dir /nonexistent ipsbench \
    && mkdir /reports \
    && chown 10001:10001 /reports
COPY --from=build /opt/venv /opt/venv
# matplotlib (the HTML report's plots) wants a writable config folder; the root filesystem may be read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp
USER 10001:10001
WORKDIR /reports
VOLUME ["/reports"]
EXPOSE 8089 5557
# One image, several roles (one-shot scenario, master, worker, web UI): liveness is each orchestrator's business
# (a job's exit status, the master's port), so the image declares no health check of its own.
HEALTHCHECK NONE
CMD ["ipsbench-load", "--help"]
