#!/usr/bin/env bash
# Every RUNTIMES variant of the image, built with scripts/build_image.sh and started with buildah: its
# size, its build time, and how long it takes to be ready with the example models it can serve
# (two starts each: the first reads the image from disk, the second from the page cache).
# Prints a markdown table; the images stay (localhost/tensorgate:<variant>) for a look with `buildah images`.
#
# Usage: benchmarks/image_sizes.sh [VARIANT ...]   (default: onnx torch tensorflow jax tflite all)
# MODEL_REPO: the example repository (default model_repo, made by `make model_repo`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=${MODEL_REPO:-model_repo}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(onnx torch tensorflow jax tflite all)
port=18700
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

models_for() {
    case $1 in
        onnx) echo digits_onnx ;;
        torch) echo digits_torchscript digits_torch_export digits_torch_aoti ;;
        tensorflow) echo digits_savedmodel ;;
        jax) echo digits_jax ;;
        tflite) echo digits_tflite digits_tflite_int8 ;;
        all) (cd "$repo" && echo digits_*) ;;
    esac
}

now() { date +%s.%N; }

# Seconds from `buildah run` to a 200 from /v2/health/ready, then SIGTERM to tini and the exit status.
start_once() {
    local image=$1 models=$2 ctr started pid ready tini status
    ctr=$(buildah from --quiet "$image")
    started=$(now)
    buildah run --isolation chroot --volume "$models:/models:ro" --env TINI_SUBREAPER=1 \
        --env TENSORGATE_HTTP_PORT=$port --env TENSORGATE_GRPC_PORT=$((port + 1)) \
        --env TENSORGATE_METRICS_PORT=$((port + 2)) "$ctr" -- tini -- tensorgate serve \
        >"$work/serve.log" 2>&1 &
    pid=$!
    ready=""
    for _ in $(seq 3000); do  # up to a few minutes
        if curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null; then ready=$(now); break; fi
        kill -0 $pid 2>/dev/null || break
        sleep 0.05
    done
    tini=$(pgrep -f -n '^/usr/bin/tini -- tensorgate serve' || true)
    [ -n "$tini" ] && kill -TERM "$tini"
    status=0; wait $pid || status=$?
    buildah rm "$ctr" >/dev/null
    if [ -z "$ready" ]; then echo "never ready (exit $status; log: $(tail -3 "$work/serve.log" | tr '\n' ' '))"; return; fi
    printf '%.1f' "$(echo "$ready - $started" | bc)"
    [ $status = 0 ] || printf ' (exit %s)' $status
}

echo "| RUNTIMES | image size | build s | example models | ready after s (1st, 2nd start) |"
echo "|---|---:|---:|---|---:|"
for variant in "${variants[@]}"; do
    begun=$(now)
    image=$(scripts/build_image.sh "$variant" 2>"$work/build.log") || { echo "| $variant | build failed: $(tail -2 "$work/build.log" | tr '\n' ' ') |"; continue; }
    built=$(printf '%.0f' "$(echo "$(now) - $begun" | bc)")
    size=$(buildah images --format '{{.Size}}' "$image" | head -1)
    models=$work/models-$variant
    mkdir -p "$models"
    read -ra names <<<"$(models_for "$variant")"
    for name in "${names[@]}"; do cp -r "$repo/$name" "$models/"; done
    chmod -R a+rX "$models"
    first=$(start_once "$image" "$models")
    second=$(start_once "$image" "$models")
    echo "| $variant | $size | $built | ${names[*]} | $first, $second |"
done
