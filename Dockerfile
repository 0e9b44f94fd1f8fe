# TensorGate image: `tensorgate serve` over the model repository mounted at /models.
#
#   make image RUNTIMES=onnx     # scripts/build_image.sh: buildah, on a debootstrapped base (no daemon, no registry)
#   docker build -t tensorgate:onnx .                                  # ONNX Runtime only (default)
#   docker build --build-arg RUNTIMES=torch -t tensorgate:torch .       # or tensorflow, jax, tflite, all, "onnx,torch"
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 \
#                --build-arg RUNTIMES=torch -t tensorgate:torch-cuda .  # CUDA base
#   docker build --build-arg RUNTIMES=torch --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
#                -t tensorgate:torch-cpu .                               # CPU-only torch
#   docker run -p 8000-8002:8000-8002 -v "$PWD/model_repo/digits_onnx:/models/digits_onnx:ro" tensorgate:onnx
#
# RUNTIMES names extras of pyproject.toml (tests/deploy/test_dockerfile.py checks each exists), so
# the image installs exactly the dependency sets the project declares and pins.
# The base image must provide Python 3.11 as `python3.11` or have it in its apt sources
# (Debian bookworm / Ubuntu 22.04 based CUDA images do).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- base: Python 3.11 and tini, shared by both stages so the venv's interpreter path matches ---
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
SHELL ["/bin/sh", "-eu", "-c"]
# Distribution packages are left unpinned on purpose: the base image's release fixes them, and
# security updates should apply on rebuild. $packages is a word list, split on purpose.
# hadolint ignore=DL3008,SC2086
RUN set -eu; \
    apt-get update; \
    packages="tini"; \
    command -v python3.11 >/dev/null || packages="$packages python3.11 python3.11-venv"; \
    apt-get install -y --no-install-recommends $packages; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log; \
    python3.11 --version

# --- build: a venv with tensorgate[RUNTIMES]; pip, setuptools, the packages' own test suites (numpy's,
# onnx's backend test data) and the C++ headers for building custom ops (tensorflow's 287 MB, torch's
# 62 MB) are removed: nothing uses them at run time ---
FROM base AS build
ARG RUNTIMES=onnx
# pip reads it from the environment: https://download.pytorch.org/whl/cpu makes a CPU-only torch image
# (torch's Linux wheel on PyPI is the CUDA build). Unset by default.
ARG PIP_EXTRA_INDEX_URL
RUN set -eu; \
    IFS=','; for runtime in ${RUNTIMES}; do \
      case "${runtime}" in \
        onnx|torch|tensorflow|jax|tflite|all) ;; \
        *) echo "RUNTIMES: '${runtime}' is not one of onnx, torch, tensorflow, jax, tflite, all" >&2; exit 1 ;; \
      esac; \
    done
WORKDIR /src
# .dockerignore is an allow-list: pyproject.toml, README.md and the Python packages it declares.
COPY . ./
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Local wheels scripts/build_image.sh staged (torch's CPU build), if any. $find_links is split on purpose.
# hadolint ignore=SC2086
RUN set -eu; \
    python3.11 -m venv /opt/tensorgate; \
    find_links=""; [ ! -d /src/.image-wheels ] || find_links="--find-links /src/.image-wheels"; \
    /opt/tensorgate/bin/pip install $find_links "/src[${RUNTIMES}]"; \
    /opt/tensorgate/bin/pip uninstall -y pip setuptools; \
    site=/opt/tensorgate/lib/python3.11/site-packages; \
    find "$site" -depth -type d -name tests -exec rm -rf {} +; \
    rm -rf "$site/onnx/backend/test/data" "$site/tensorflow/include" "$site/torch/include"; \
    /opt/tensorgate/bin/python -c "import gateway.server"

# --- runtime: no compiler, no pip, no source tree; a non-root user ---
FROM base AS runtime
ARG RUNTIMES=onnx
LABEL org.opencontainers.image.title="tensorgate" \
      org.opencontainers.image.description="Open Inference Protocol (KServe v2) model server, runtimes: ${RUNTIMES}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN set -eu; \
    groupadd --system --gid 10001 tensorgate; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin tensorgate; \
    mkdir -p /models
COPY --from=build /opt/tensorgate /opt/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH \
    TENSORGATE_MODEL_REPO=/models \
    TENSORGATE_HOST=0.0.0.0 \
    HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002
STOPSIGNAL SIGTERM
# tini is PID 1: it forwards SIGTERM to the server (which drains) and reaps orphaned processes.
ENTRYPOINT ["tini", "--", "tensorgate", "serve"]
CMD []
