-- wrk script for scripts/benchmark.py: POST one body file again and again with the inference token,
-- then print one JSON line with the counts and latency percentiles (microseconds).
--
--   wrk -t1 -c64 -d10s -s scripts/wrk_post.lua http://127.0.0.1:8080/predictions/digits -- BODY TOKEN TYPE

local request_bytes

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  request_bytes = wrk.format("POST", nil, {
    ["Authorization"] = "Bearer " .. args[2],
    ["Content-Type"] = args[3],
  }, body)
end

function request()
  return request_bytes
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
