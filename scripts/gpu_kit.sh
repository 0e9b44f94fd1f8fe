#!/usr/bin/env bash
# Build .gpu-kit/ here: what benchmarks/gpu_session.sh needs on the GPU machine and cannot get there
# (it has no network, Python 3.12, and torch, JAX and ONNX but none of our serving stack; see
# ../shared/reference/gpu-machine.md):
#   .gpu-kit/wheels/  Python 3.12 wheels (no dependencies) of the packages that machine lacks or has at
#                     other versions, at the versions this venv runs
#   .gpu-kit/digits.npz  the digits test split and the trained weights (that machine has no scikit-learn)
#   .gpu-kit/wrk/     this machine's wrk and the shared libraries it needs beyond glibc
# The folder is git-ignored; the device tool carries it (carry: [".gpu-kit"], at most 64 MiB).
#
#   bash scripts/gpu_kit.sh            # then: run bash benchmarks/gpu_session.sh, carrying .gpu-kit
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
KIT=.gpu-kit
# What the gateway, the runtime worker and the benchmark harness import that the GPU machine lacks.
# Pure-Python wheels are py3-none-any; the compiled ones are cp312 (or abi3) manylinux builds.
PACKAGES=(
  orjson==3.13.0 pysimdjson==7.0.2 httptools==0.9.0 hpack==4.1.0
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 click==8.5.1
  pydantic==2.14.4 pydantic_core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  annotated-types==0.8.0 annotated-doc==0.0.7 typing-inspection==0.4.5 typing_extensions==4.16.0
  cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  grpcio-health-checking==1.81.1 opentelemetry-api==1.45.2
  # Present there, but at versions of their own: our generated protobuf modules need a protobuf runtime at
  # least as new as the one that generated them, and jax.export serialises with flatbuffers, which jax
  # does not install. These take precedence on PYTHONPATH.
  protobuf==6.33.6 grpcio==1.81.1 flatbuffers==25.12.19
)
rm -rf "$KIT/wheels"
mkdir -p "$KIT/wheels"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$KIT/wheels" "${PACKAGES[@]}"
"$PYTHON" scripts/build_model_repo.py --save-digits "$KIT/digits.npz"
# wrk, the REST load generator, and the libraries it may not find there (LuaJIT, OpenSSL 3); the
# session runs it through a wrapper that points only wrk at them, and falls back to the Python client
# when it does not start.
rm -rf "$KIT/wrk"
if command -v wrk >/dev/null; then
  mkdir -p "$KIT/wrk"
  cp "$(command -v wrk)" "$KIT/wrk/wrk"
  for lib in libluajit-5.1.so.2 libssl.so.3 libcrypto.so.3; do
    path=$(ldd "$(command -v wrk)" | awk -v lib="$lib" '$1 == lib {print $3}')
    if [ -n "$path" ]; then cp -L "$path" "$KIT/wrk/"; fi
  done
else
  echo "gpu_kit: no wrk here (apt-get install wrk): the session's REST load will use the Python client" >&2
fi
du -sh "$KIT"
size_kib=$(du -sk "$KIT" | cut -f1)
if [ "$size_kib" -gt $((60 * 1024)) ]; then
  echo "gpu_kit: $KIT is ${size_kib} KiB, over the 60 MiB that leaves room for the checkout in a carry" >&2
  exit 1
fi
