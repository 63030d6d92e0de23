-- wrk script for scripts/benchmark.py: POST one body file again and again with the inference token,
-- then print one JSON line with the counts and latency percentiles (microseconds).
--
--   wrk -t1 -c64 -d10s -s scripts/wrk_post.lua http://127.0.0.1:8080/predictions/digits -- BODY TOKEN TYPE [LABEL]
--
-- With LABEL every answer is checked: one that is not a 200 carrying "label": "LABEL" counts as wrong.

local request_bytes
local expected = nil
local threads = {}
wrong = 0  -- a global: done() reads it from each thread with thread:get

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  request_bytes = wrk.format("POST", nil, {
    ["Authorization"] = "Bearer " .. args[2],
    ["Content-Type"] = args[3],
  }, body)
  if args[4] then
    expected = '"label": "' .. args[4] .. '"'
  end
end

function request()
  return request_bytes
end

function response(status, headers, body)
  if expected and (status ~= 200 or not string.find(body, expected, 1, true)) then
    wrong = wrong + 1
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local wrong_answers = 0
  for _, thread in ipairs(threads) do
    wrong_answers = wrong_answers + thread:get("wrong")
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "wrong_answers": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, wrong_answers,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
