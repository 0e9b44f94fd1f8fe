#!/usr/bin/env bash
# The gRPC port's two servers (--grpc-server aio / native) on this checkout, alternating round by round
# on a fresh server each time: `tensorgate bench` over gRPC (tritonclient aio load) at 1 and 16 clients,
# with the gateway's CPU per request from /proc. Only a ratio taken in the same minutes means anything.
#
#   benchmarks/grpc_servers_ab.sh [ROUNDS]
#
# Environment: REPO (default /tmp/tg-anchor-ts, see ../shared/anchors/README.md), MODELS (mlp,identity),
# CONCS (1,16), DUR (8 s), PORT (9100; also PORT+1 for gRPC and PORT+2 for metrics). Prints each
# round's table rows; the full reports are left in the directory it names at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
repo=${REPO:-/tmp/tg-anchor-ts} models=${MODELS:-mlp,identity} concs=${CONCS:-1,16} dur=${DUR:-8}
port=${PORT:-9100}
out=$(mktemp -d)

for round in $(seq "$rounds"); do
  for kind in aio native; do
    .venv/bin/tensorgate serve --model-repo "$repo" --http-port "$port" --grpc-port $((port + 1)) \
      --metrics-port $((port + 2)) --log-level warning --grpc-server "$kind" > "$out/server-$kind-$round.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf "localhost:$port/v2/health/ready" > /dev/null && break; sleep 0.5; done
    .venv/bin/tensorgate bench --url "http://127.0.0.1:$port" --grpc-url "127.0.0.1:$((port + 1))" \
      --model "$models" --protocol grpc --concurrency "$concs" --duration "$dur" --warmup 2 --server-pid "$pid" \
      --no-offline --output-dir "$out" --name "$kind-$round" > "$out/bench-$kind-$round.log" 2>&1
    kill -INT "$pid"
    wait "$pid" || true
    echo "== --grpc-server $kind, round $round"
    grep -E "^\| ($(echo "$models" | tr , '|')) \| grpc \|" "$out/$kind-$round.md"
  done
done
echo "reports: $out"
