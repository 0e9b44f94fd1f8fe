#!/bin/bash
# Tracing's cost: a base checkout (main) vs this one with tracing off, with --tracing sampling every
# request, and with --tracing sampling 1% (parentbased_traceidratio 0.01); spans exported over OTLP/HTTP
# to a local receiver that reads and drops them. The example model digits_onnx, gRPC and REST binary at
# concurrency 16, modes alternating, ROUNDS rounds (default 3); MODES and PROTOCOLS pick a subset or another order.
# Usage: benchmarks/tracing_cost.sh BASE_CHECKOUT MODEL_REPO   (PY: the interpreter, default .venv/bin/python)
set -u
cd "$(dirname "$0")/.."
here=$PWD
base=$1
repo=$2
py=${PY:-$here/.venv/bin/python}
out=$(mktemp -d)
# The receiver: OTLP/HTTP that answers 200 to every POST and decodes nothing (a collector's cost is its own).
$py -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18304), H).serve_forever()' &
receiver=$!
trap 'kill $receiver' EXIT
for round in $(seq "${ROUNDS:-3}"); do
  for mode in ${MODES:-base off on on-1pct}; do
    checkout=$here; flags=(); ratio=1
    [ $mode = base ] && checkout=$base
    [ $mode = on ] && flags=(--tracing)
    [ $mode = on-1pct ] && flags=(--tracing) && ratio=0.01
    (cd "$checkout" && OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18304 OTEL_TRACES_SAMPLER=parentbased_traceidratio \
      OTEL_TRACES_SAMPLER_ARG=$ratio $py -m gateway.cli serve --model-repo "$repo" \
      --http-port 18300 --grpc-port 18301 --metrics-port 18302 --log-level warning "${flags[@]}" > "$out/serve-$mode.log" 2>&1) &
    pid=$!
    for _ in $(seq 300); do curl -sf localhost:18300/v2/health/ready >/dev/null && break; sleep 0.1; done
    server=$(pgrep -f -n "gateway.cli serve --model-repo $repo")
    for proto in ${PROTOCOLS:-grpc rest-binary}; do
      $py -m gateway.cli bench --url http://127.0.0.1:18300 --grpc-url 127.0.0.1:18301 --server-pid "$server" \
        --model digits_onnx --protocol $proto --concurrency 16 --duration 10 --warmup 2 --no-offline \
        --output-dir "$out" --name tracing-$mode-$proto-r$round --title "tracing $mode" > "$out/$mode-$proto-$round.txt" 2>&1
      grep "^| digits_onnx" "$out/tracing-$mode-$proto-r$round.md" | head -1 | awk -F'|' -v m=$mode -v p=$proto -v r=$round \
        '{print "tracing " m " " p " round " r ": req/s" $8 " p50" $10 " p99" $12 " gateway-us/req" $20}'
    done
    kill -TERM "$server"; wait $pid
  done
done
echo "results in $out"
