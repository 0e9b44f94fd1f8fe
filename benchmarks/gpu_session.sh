#!/usr/bin/env bash
# The GPU machine's whole check, as one script (../shared/reference/gpu-machine.md): GPU time there is
# minutes, so everything it should measure runs in one call. Prepare here with `bash scripts/gpu_kit.sh`,
# then on the device, from the checkout root, carrying .gpu-kit:
#
#   bash benchmarks/gpu_session.sh          # writes its tables under $OUT (the device tool's folder)
#
# Steps, each under its own time limit so that one hang cannot spend the session:
#   1. the wheels of .gpu-kit/wheels unpacked into a temporary site (that machine lacks our serving stack)
#   2. the digits models built there from .gpu-kit/digits.npz (its torch may not load this machine's files)
#   3. benchmarks/gpu_check.py on the device: every model matches the CPU, torch rows say "pinned"
#   4. tensorgate bench with the instances on the device: the MLPs over REST binary and gRPC, and the
#      MLP at 64 clients against the frontend count (does the protocol work keep the GPU fed?)
#
# Knobs (environment): PY (python3), DEVICE (cuda:0), FORMAT (torchscript), DURATION (5 s per point),
# FRONTENDS ("1 4 8"), CONCURRENCY (1,16,64), WRK_THREADS (4, frontend scaling), DIGITS_FORMATS (every
# one whose framework imports), KIT (.gpu-kit), OUT (./gpu-session-out), SESSION_LIMIT (540 s for all
# steps; a step that would pass it is cut short, and summary.md is rewritten after every step).
# With DEVICE=cpu the same steps run here; tests/integration/test_gpu_session.py does that, so the
# script keeps working between GPU sessions.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
FORMAT=${FORMAT:-torchscript}
DURATION=${DURATION:-5}
FRONTENDS=${FRONTENDS:-1 4 8}
CONCURRENCY=${CONCURRENCY:-1,16,64}
WRK_THREADS=${WRK_THREADS:-4}  # for the frontend scaling: one wrk thread could be the limit there
OUT=${OUT:-$PWD/gpu-session-out}
KIT=${KIT:-.gpu-kit}
# All steps together stop by then: under the device tool's 600 s per call, with room for its start.
SESSION_LIMIT=${SESSION_LIMIT:-540}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-session.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
failed=()
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$OUT/session.log"; }
step() {  # step NAME SECONDS COMMAND...: run it, its output in $OUT/NAME.txt, and note a failure
  local name=$1 limit=$2
  shift 2
  local left=$((SESSION_LIMIT - SECONDS))
  if [ "$left" -lt 30 ]; then
    log "skip $name: ${left} s of the session's ${SESSION_LIMIT} s left"
    failed+=("$name:skipped")
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  log "start $name (limit ${limit} s)"
  timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local code=$?
  log "end $name: exit $code"
  [ "$code" -eq 0 ] || failed+=("$name:$code")
  summarize  # after every step: a run cut short still leaves its tables
  return 0
}
summarize() {  # the tables so far, in one file to read first
  {
    echo "# GPU session: $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEVICE"
    echo
    cat "$OUT/session.log"
    if [ -f "$OUT/gpu_check.txt" ]; then
      printf '\n## gpu_check\n\n'
      cat "$OUT/gpu_check.txt"
    fi
    for report in "$OUT"/bench/*.md; do
      printf '\n## %s\n\n' "$(basename "$report")"
      sed -n '/^## Served/,/^## Offline/p' "$report"
    done
  } >"$OUT/summary.md"
}

log "host: $(nproc) CPUs; $($PY --version 2>&1); device $DEVICE"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee -a "$OUT/session.log"

# 1. The wheels: unpacked as they are (a wheel is a zip of its site-packages files), no pip needed.
SITE=$WORK/site
mkdir -p "$SITE"
shopt -s nullglob
wheels=("$KIT"/wheels/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  "$PY" -c 'import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])' "$SITE" "${wheels[@]}"
fi
log "unpacked ${#wheels[@]} wheels"
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'EOF' | tee -a "$OUT/session.log"
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "jax", "jaxlib", "onnxruntime", "onnx", "tensorflow", "numpy", "grpcio", "protobuf"):
    try:
        print(f"  {name}: {version(name)}")
    except PackageNotFoundError:
        print(f"  {name}: missing")
EOF

# The REST load generator: wrk if that machine has one, else the kit's (through a wrapper that gives
# only wrk the kit's libraries), else the harness's Python client.
if ! command -v wrk >/dev/null && [ -x "$KIT/wrk/wrk" ]; then
  mkdir -p "$WORK/bin"
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$(cd "$KIT/wrk" && pwd)" "$(cd "$KIT/wrk" && pwd)/wrk" \
    >"$WORK/bin/wrk"
  chmod +x "$WORK/bin/wrk"
  if "$WORK/bin/wrk" --version 2>&1 | grep -q '^wrk '; then
    export PATH=$WORK/bin:$PATH
  else
    log "the kit's wrk does not start here: $("$WORK/bin/wrk" --version 2>&1 | head -1)"
  fi
fi
if command -v wrk >/dev/null; then
  log "REST load: $( (wrk --version 2>&1 || true) | head -1 | cut -d' ' -f1-2)"
else
  log "REST load: the Python client (no wrk)"
fi

# 2. The digits models, from the bundle: the weights every other build holds.
REPO=$WORK/repo
formats=${DIGITS_FORMATS:-}
if [ -z "$formats" ]; then  # every format whose framework is there (no TensorFlow: no SavedModel, no LiteRT)
  formats=onnx
  "$PY" -c 'import torch' 2>/dev/null && formats=$formats,torchscript,torch_export,torch_aoti
  "$PY" -c 'import jax' 2>/dev/null && formats=$formats,jax
fi
step build_models 150 "$PY" scripts/build_model_repo.py --repo "$REPO" --digits "$KIT/digits.npz" --formats "$formats"

# 3. gpu_check: each model on the device against the CPU.
step gpu_check 180 "$PY" benchmarks/gpu_check.py --device "$DEVICE" --repo "$REPO" --digits "$KIT/digits.npz" \
  --batch-sizes 1,8,64 --repeats 20

# 4. Serving with the instances on the device.
for model in mlp_small mlp_large; do  # one report each, so that a cut-short step loses one model, not both
  step "bench_$model" 150 "$PY" -m gateway.cli bench --device "$DEVICE" --format "$FORMAT" --model "$model" \
    --protocol rest-binary,grpc --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup 1 --offline-time 0.3 \
    --output-dir "$OUT/bench" --name "$model"
done
for count in $FRONTENDS; do
  TENSORGATE_FRONTENDS=$count step "bench_frontends_$count" 60 "$PY" -m gateway.cli bench --device "$DEVICE" \
    --format "$FORMAT" --model mlp_small --protocol rest-binary --concurrency 64 --duration "$DURATION" --warmup 1 \
    --wrk-threads "$WRK_THREADS" --no-offline --output-dir "$OUT/bench" --name "frontends-$count" \
    --title "mlp_small REST binary c64 on $DEVICE, $count frontend(s)"
done

if [ ${#failed[@]} -gt 0 ]; then
  log "failed steps: ${failed[*]}"
else
  log "all steps passed"
fi
summarize
[ ${#failed[@]} -eq 0 ]
