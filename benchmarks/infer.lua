-- wrk script for TensorGate's benchmark harness (benchmarks/wrk.py runs it).
--
--   wrk -s infer.lua URL -- BODY_FILE CONTENT_TYPE HEADER_LENGTH REQUESTS_PER_THREAD [KEY_HEADER]
--
-- BODY_FILE holds the request body that benchmarks/payloads.py generated (JSON, or a JSON
-- header plus raw tensor bytes); HEADER_LENGTH is the binary extension's
-- Inference-Header-Content-Length ("-" for a plain JSON body); REQUESTS_PER_THREAD stops each
-- thread after that many replies ("0": run for wrk's -d duration; with a count, the harness
-- stops wrk with SIGINT when every thread has printed "TGDONE"). Every request is the same
-- POST, so wrk formats it once. KEY_HEADER, when given, carries $TENSORGATE_BENCH_API_KEY (read here,
-- so the key is on no command line). done() prints one line, "TGBENCH {json}", for the harness.

local threads = {}
DONE_MARKER = "TGDONE\n"

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= "-" then
    wrk.headers["Inference-Header-Content-Length"] = args[3]
  end
  if args[5] then
    wrk.headers[args[5]] = assert(os.getenv("TENSORGATE_BENCH_API_KEY"), "TENSORGATE_BENCH_API_KEY is not set")
  end
  local limit = tonumber(args[4]) or 0
  if limit > 0 then
    -- Defined only when needed: wrk parses replies for Lua only if a response() exists.
    local seen = 0
    response = function(status, headers, body)
      seen = seen + 1
      if seen == limit then
        -- wrk's main thread sleeps for -d regardless: the harness sends SIGINT once every
        -- thread has printed this marker.
        io.write(DONE_MARKER)
        io.flush()
        wrk.thread:stop()
      end
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format(
    'TGBENCH {"generator": "wrk", "requests": %d, "errors": %d, "elapsed_s": %.6f, ' ..
    '"p50_ms": %.4f, "p90_ms": %.4f, "p99_ms": %.4f, "mean_ms": %.4f, "max_ms": %.4f, ' ..
    '"error_samples": ["connect %d, read %d, write %d, status %d, timeout %d"]}\n',
    summary.requests, errors, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.mean / 1e3, latency.max / 1e3,
    e.connect, e.read, e.write, e.status, e.timeout))
end
