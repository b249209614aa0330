-- wrk script: POST one file as the raw request body, then print the run as one JSON line.
--
--   wrk -t1 -c8 -d5s --latency -s loadtest/wrk_post.lua http://127.0.0.1:8000/v1/classify -- IMAGE [CONTENT_TYPE] [statuses]
--
-- The body is read once per wrk thread (in init), so requests cost no file I/O. With a third
-- argument `statuses`, answers are also counted by kind (200, 503 overloaded, other 503, other
-- 5xx, 4xx); without it wrk skips parsing response headers, which costs nothing.

local function read_file(path)
  local f = assert(io.open(path, "rb"), "cannot open " .. tostring(path))
  local data = f:read("*a")
  f:close()
  return data
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread counters (globals, so done() can read them with thread:get).
ok, overloaded, other_503, other_5xx, client_4xx = 0, 0, 0, 0, 0

local function count(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 503 then
    if body and string.find(body, '"overloaded"', 1, true) then
      overloaded = overloaded + 1
    else
      other_503 = other_503 + 1
    end
  elseif status >= 500 then
    other_5xx = other_5xx + 1
  elseif status >= 400 then
    client_4xx = client_4xx + 1
  end
end

function init(args)
  local path = args[1] or os.getenv("WRK_BODY_FILE")
  assert(path, "usage: wrk ... -s wrk_post.lua URL -- IMAGE_FILE [CONTENT_TYPE] [statuses]")
  wrk.method = "POST"
  wrk.body = read_file(path)
  wrk.headers["Content-Type"] = args[2] or "image/jpeg"
  if args[3] == "statuses" then
    response = count
  end
end

-- Latencies are in microseconds, as wrk records them. One line, prefixed, so a parser can find it
-- among wrk's own report.
function done(summary, latency, requests)
  local e = summary.errors
  local kinds = {ok = 0, overloaded = 0, other_503 = 0, other_5xx = 0, client_4xx = 0}
  for _, thread in ipairs(threads) do
    for name, value in pairs(kinds) do
      kinds[name] = value + (thread:get(name) or 0)
    end
  end
  io.write(string.format(
    'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d}, ' ..
    '"statuses": {"200": %d, "503 overloaded": %d, "503 other": %d, "5xx other": %d, "4xx": %d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    kinds.ok, kinds.overloaded, kinds.other_503, kinds.other_5xx, kinds.client_4xx))
end
