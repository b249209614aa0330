-- wrk script: POST one file as the raw request body, then print the run as one JSON line.
--
--   wrk -t1 -c8 -d5s --latency -s loadtest/wrk_post.lua http://127.0.0.1:8000/v1/classify -- IMAGE [CONTENT_TYPE]
--
-- The body is read once per wrk thread (in init), so requests cost no file I/O.

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

function init(args)
  local path = args[1] or os.getenv("WRK_BODY_FILE")
  assert(path, "usage: wrk ... -s wrk_post.lua URL -- IMAGE_FILE [CONTENT_TYPE]")
  wrk.method = "POST"
  wrk.body = read_file(path)
  wrk.headers["Content-Type"] = args[2] or "image/jpeg"
end

-- Latencies are in microseconds, as wrk records them. One line, prefixed, so a parser can find it
-- among wrk's own report.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99)))
end
