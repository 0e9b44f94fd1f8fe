#!/bin/bash
# Metrics on vs off: same model, same load, alternating, gRPC raw and REST binary, concurrency 16.
# Needs the benchmark model cache (any `tensorgate bench --model mlp_small` run builds it).
set -u
cd "$(dirname "$0")/.."
repo=$(mktemp -d)
cp -r benchmarks/model_repo/mlp_small "$repo"/
out=$(mktemp -d)
for round in 1 2; do
  for mode in on off; do
    if [ $mode = on ]; then mp=18302; else mp=0; fi
    .venv/bin/tensorgate serve --model-repo "$repo" --http-port 18300 --grpc-port 18301 --metrics-port $mp --log-level warning > "$out/serve.log" 2>&1 &
    pid=$!
    for i in $(seq 100); do curl -sf localhost:18300/v2/health/ready >/dev/null && break; sleep 0.1; done
    if [ $mode = on ]; then (while kill -0 $pid 2>/dev/null; do curl -s localhost:18302/metrics >/dev/null; sleep 1; done) & fi
    for proto in grpc rest-binary; do
      .venv/bin/tensorgate bench --url http://127.0.0.1:18300 --grpc-target 127.0.0.1:18301 --server-pid $pid \
        --model mlp_small --protocol $proto --concurrency 16 --duration 10 --warmup 2 --no-offline \
        --output-dir "$out" --name metrics-$mode-$proto-r$round --title "metrics $mode" > "$out/$mode-$proto-$round.txt" 2>&1
      grep "^| mlp_small" "$out/metrics-$mode-$proto-r$round.md" | head -1 | awk -F'|' -v m=$mode -v p=$proto -v r=$round '{print "metrics " m " " p " round " r ": req/s" $8 " p50" $10 " p99" $12 " gateway-us/req" $20}'
    done
    kill -TERM $pid; wait $pid
  done
done
