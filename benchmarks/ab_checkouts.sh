#!/usr/bin/env bash
# Two checkouts of TensorGate, one bench point each, alternating round by round on a fresh server:
# on a noisy machine only a ratio taken in the same minutes means anything.
#
#   benchmarks/ab_checkouts.sh BASE_DIR NEW_DIR [ROUNDS]
#
# BASE_DIR and NEW_DIR are source trees (e.g. `git archive HEAD | tar -x -C /tmp/base` and this
# checkout), each served with this checkout's venv and PYTHONPATH set to the tree. Per round and
# checkout it prints the bench line, the gateway's CPU per request, and the model's statistics over
# the point: mean µs per request
# from dispatch to the instance's start (in), infer, end to answers delivered (out), queue, and the
# seconds the instance computed (warm-up included). Environment: REPO (default /tmp/tg-anchor-ts, see
# ../shared/anchors/README.md), MODEL (mlp), PROTO (rest-json), CONC (16), DUR (8 s), PORT (9100),
# BASE_PYTHON and NEW_PYTHON (the venv python each side is served with; default this checkout's:
# `BASE_PYTHON=/tmp/other-venv/bin/python benchmarks/ab_checkouts.sh . .` compares two interpreters).
set -euo pipefail
cd "$(dirname "$0")/.."
base=$(realpath "$1") new=$(realpath "$2") rounds=${3:-3}
repo=${REPO:-/tmp/tg-anchor-ts} model=${MODEL:-mlp} proto=${PROTO:-rest-json} conc=${CONC:-16}
dur=${DUR:-8} port=${PORT:-9100}
python=$PWD/.venv/bin/python
base_python=${BASE_PYTHON:-$python} new_python=${NEW_PYTHON:-$python}
out=$(mktemp -d)

stats() {
  curl -sf "localhost:$port/v2/models/$model/stats" | "$python" -c '
import json, sys
d = json.load(sys.stdin)["model_stats"][0]
i, n = d["inference_stats"], d["inference_stats"]["success"]["count"]
busy = sum(b["compute_infer"]["ns"] for b in d["batch_stats"]) / 1e9
print("in %.0f infer %.0f out %.0f queue %.0f µs, instance busy %.2f s" % (
    *(i[k]["ns"] / n / 1e3 for k in ("compute_input", "compute_infer", "compute_output", "queue")), busy))'
}

for round in $(seq "$rounds"); do
  for name in base new; do
    tree=$base serve_python=$base_python
    [ "$name" = new ] && tree=$new serve_python=$new_python
    (cd "$tree" && PYTHONPATH=$tree exec "$serve_python" -m gateway.cli serve --model-repo "$repo" --http-port "$port" \
      --grpc-port $((port + 1)) --metrics-port $((port + 2)) --log-level warning) >"$out/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf "localhost:$port/v2/health/ready" >/dev/null && break; sleep 0.5; done
    line=$("$python" -m benchmarks.cli --url "http://127.0.0.1:$port" --grpc-url "127.0.0.1:$((port + 1))" \
      --server-pid "$pid" --model "$model" --protocol "$proto" --concurrency "$conc" --duration "$dur" --warmup 2 \
      --no-offline --output-dir "$out" --name "$name-$round" 2>&1 | grep -E "req/s, " || true)
    # The results table's last column: the gateway's CPU per request, from /proc.
    cpu=$(grep -E "^\| $model \| $proto \| $conc \|" "$out/$name-$round.md" | awk -F'|' '{print $(NF-1)}' | tr -d ' ')
    echo "round $round $name $(date +%T) load $(cut -d' ' -f1 /proc/loadavg): ${line# *} | gateway ${cpu:-?} µs/req | $(stats)"
    kill -TERM "$pid"
    wait "$pid" || true
  done
done
