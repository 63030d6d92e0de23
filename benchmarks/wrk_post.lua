-- wrk script for the benchmark (python -m benchmarks): POST request bodies with a bearer token, then print one JSON line with the
-- counts and latency percentiles (microseconds).
--
--   wrk -t1 -c64 -d10s -s benchmarks/wrk_post.lua URL -- TOKEN TYPE BODY                        # load
--   wrk -t32 -c32 -d10s -s benchmarks/wrk_post.lua URL -- TOKEN TYPE BODY=LABEL BODY=LABEL ...   # every answer checked
--
-- Checked: the bodies are sent in turn, and an answer counts as wrong unless it is a 200 whose top-1 "label" is
-- exactly the label of the body sent on that connection. That needs one connection per thread (-t equal to -c):
-- a thread's callbacks then alternate request, response on its one connection, so it knows which body each
-- answer belongs to, and an answer swapped between concurrent requests is caught.

local requests = {}
local expected = {}
local sent = 0
local threads = {}
wrong = 0  -- globals: done() reads them from each thread with thread:get
checked = 0
unavailable = 0  -- 503 answers (a full queue under overload)

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local token, content_type = args[1], args[2]
  for index = 3, #args do
    local path, label = string.match(args[index], "^(.-)=([^=/]+)$")
    path = path or args[index]
    local file = assert(io.open(path, "rb"))
    local body = file:read("*a")
    file:close()
    table.insert(requests, wrk.format("POST", nil, {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = content_type,
    }, body))
    -- The handler's JSON starts with the top-1 label: {"label": "7", "index": 7, ...}
    table.insert(expected, label and ('{"label": "' .. label .. '",') or false)
  end
end

function request()
  sent = sent % #requests + 1
  return requests[sent]
end

function response(status, headers, body)
  if status == 503 then
    unavailable = unavailable + 1
  end
  local prefix = expected[sent]
  if prefix then
    checked = checked + 1
    if status ~= 200 or string.sub(body, 1, #prefix) ~= prefix then
      wrong = wrong + 1
    end
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local wrong_answers, checked_answers, unavailable_answers = 0, 0, 0
  for _, thread in ipairs(threads) do
    wrong_answers = wrong_answers + thread:get("wrong")
    checked_answers = checked_answers + thread:get("checked")
    unavailable_answers = unavailable_answers + thread:get("unavailable")
  end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "wrong_answers": %d, "checked_answers": %d, "status_503": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, wrong_answers, checked_answers, unavailable_answers,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
