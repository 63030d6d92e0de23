-- The gateway's per-request logic, run by nginx's Lua module (Debian's libnginx-mod-http-lua).
--
-- Clients present the gateway's own credential; TorchServe's inference key never leaves the gateway. The key is
-- swapped by the gateway's gateway/keys.py through the admin socket, with a short hold so that no request reaches TorchServe
-- with a key it has just replaced (TorchServe 0.12.0 knows one inference key at a time and switches at once):
--   1. keys.py sets "hold": requests arriving now wait here (ngx.sleep: other requests go on);
--   2. keys.py waits until "inflight" (requests past this point and not yet finished) drops to 0;
--   3. keys.py rotates the key in TorchServe, sets the new one here and clears "hold".
-- A request counts itself in "inflight" *before* it looks at "hold", so keys.py can never miss one.
local M = {}

local state = ngx.shared.gateway
local credential_required = true -- false only on a loopback-only gateway (python -m gateway --no-client-credential)
local HOLD_LIMIT = 3.0 -- seconds a request waits for a rotation before going on regardless
local HOLD_STEP = 0.002

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end))
end

-- An answer the gateway gives itself, in the handler's error shape ({"code", "type", "message"}), or on the Open
-- Inference Protocol's paths (/v2) in that protocol's ({"error": "..."}), which its clients read.
function M.reject(status, kind, message)
  ngx.var.gateway_refused = status -- what the metrics count: over gRPC the HTTP status stays 200
  if ngx.var.gateway_protocol == "grpc" then
    -- gRPC: the status a gRPC client reads (UNAUTHENTICATED, UNAVAILABLE, ...) with the message, answered by the
    -- config's @grpc_error (nginx sends it as one trailers-only HEADERS frame; a body here would break that).
    ngx.var.grpc_status = ({ [401] = 16, [413] = 8, [429] = 8, [503] = 14 })[status] or 2
    ngx.var.grpc_message = message
    return ngx.exec("@grpc_error")
  end
  local body
  if ngx.var.uri:sub(1, 4) == "/v2/" or ngx.var.uri == "/v2" then
    body = string.format('{"error": "%s"}\n', json_escape(message))
  else
    body = string.format('{"code": %d, "type": "%s", "message": "%s"}\n', status, kind, json_escape(message))
  end
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body)
  return ngx.exit(status)
end

-- The client credentials live in the shared dictionary, one key "credential|Bearer <credential>" each (what a
-- request's Authorization header is looked up as) and their list under "credentials", so that the gateway can
-- replace them while serving (supervisor.CredentialWatch, PUT /admin/credentials) and every nginx worker sees it.
-- Replacing adds the new ones before it removes the old: a credential in both sets is never missing.
local function set_credentials(text)
  local new, count = {}, 0
  for line in text:gmatch("[^\n]+") do
    local credential = line:match("^%s*(.-)%s*$")
    if credential ~= "" then
      if #credential < 16 or not credential:match("^[\33-\126]+$") then
        return nil
      end
      new[credential] = true
      count = count + 1
    end
  end
  if count == 0 then
    return nil
  end
  local list = {}
  for credential in pairs(new) do
    assert(state:set("credential|Bearer " .. credential, true))
    list[#list + 1] = credential
  end
  for old in (state:get("credentials") or ""):gmatch("[^\n]+") do
    if not new[old] then
      state:delete("credential|Bearer " .. old)
    end
  end
  assert(state:set("credentials", table.concat(list, "\n")))
  state:set("credential_count", #list)
  return #list
end

-- init_by_lua: the client credentials, one per line, from the file the gateway wrote (mode 0600). `required` false:
-- the gateway was started with --no-client-credential, which it allows on a loopback address only, and wrote no file.
function M.load_credentials(path, required)
  if required == false then
    credential_required = false
    return
  end
  local file = assert(io.open(path, "r"))
  local text = file:read("*a")
  file:close()
  assert(set_credentials(text), "no valid client credential in " .. path)
end

-- Whether this request counts in "inflight" lives in a request variable ($gateway_counted), not ngx.ctx: nginx
-- keeps variables across internal redirects (error pages, ngx.exec) and drops ngx.ctx.
local function add_torchserve_key()
  local waited = 0
  while true do
    state:incr("inflight", 1, 0)
    ngx.var.gateway_counted = "1"
    if not state:get("hold") or waited >= HOLD_LIMIT then
      break
    end
    state:incr("inflight", -1, 0)
    ngx.var.gateway_counted = ""
    ngx.sleep(HOLD_STEP)
    waited = waited + HOLD_STEP
  end
  local key = state:get("inference_key")
  if not key then
    return M.reject(503, "ServiceUnavailable", "the gateway has no TorchServe key yet: the server is starting")
  end
  ngx.req.set_header("Authorization", "Bearer " .. key)
end

-- access_by_lua for what the gateway answers itself to clients (the v2 model metadata): the client's credential.
function M.client()
  if credential_required and not state:get("credential|" .. (ngx.var.http_authorization or "")) then
    return M.reject(401, "Unauthorized",
      "missing or wrong credential: send 'Authorization: Bearer <the gateway's client token>'")
  end
end

-- access_by_lua for inference (REST and gRPC): the client's credential, then TorchServe's key.
function M.inference()
  M.client()
  return add_torchserve_key()
end

-- The model's signature in the Open Inference Protocol, as the handler reads and answers it
-- (handler/open_inference.py; tests/gateway/test_render.py holds the two together). The handler takes one input
-- of any name, either pixels (this one: what a client that builds its request from the metadata sends) or encoded
-- images (BYTES [N]); the metadata can name one datatype per input, so it names the pixels.
local V2_METADATA = '{"name": "%s", "versions": [], "platform": "pytorch_torchserve", '
  .. '"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 28, 28]}], '
  .. '"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}, '
  .. '{"name": "labels", "datatype": "BYTES", "shape": [-1]}]}\n'
-- ... and as Triton's model configuration (GET /v2/models/<model>/config, Triton's extension): max_batch_size 0,
-- so the batch is the tensors' first dimension, as the handler reads it.
local TRITON_CONFIG = '{"name": "%s", "platform": "pytorch_torchserve", "max_batch_size": 0, '
  .. '"input": [{"name": "pixels", "data_type": "TYPE_UINT8", "dims": [-1, 28, 28]}], '
  .. '"output": [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [-1, 10]}, '
  .. '{"name": "labels", "data_type": "TYPE_STRING", "dims": [-1]}]}\n'

-- access_by_lua for GET /v2/models/<model>/ready: the client's credential, the model's name, TorchServe's key (for
-- its /ping, which says whether every model has its minimum of live workers).
function M.model_ready(model)
  M.client()
  if ngx.var.uri:match("^/v2/models/([^/]+)/ready$") ~= model then
    return M.reject(404, "NotFound", "no such model here: " .. model .. " is served")
  end
  ngx.req.set_uri("/ping") -- proxy_pass in a regular-expression location cannot name a URI itself
  return add_torchserve_key()
end

-- content_by_lua for GET /v2/models/<model> and /v2/models/<model>/config: TorchServe 0.12.0 answers neither over
-- REST (only metadata, and only over gRPC, through the handler), so the gateway answers for the model it serves.
function M.model_metadata(model)
  local uri = ngx.var.uri
  local config = uri:sub(-7) == "/config"
  local name = config and uri:match("^/v2/models/([^/]+)/config$") or uri:match("^/v2/models/([^/]+)$")
  if name ~= model then
    return M.reject(404, "NotFound", "no such model here: " .. model .. " is served")
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(string.format(config and TRITON_CONFIG or V2_METADATA, model))
end

-- access_by_lua for the health endpoints: no client credential (orchestrators have none).
function M.health(readiness)
  if readiness and state:get("draining") then
    return M.reject(503, "Draining", "the gateway is shutting down: send new requests elsewhere")
  end
  if readiness and not state:get("ready") then
    return M.reject(503, "Starting", "the gateway is starting: the model's workers are loading")
  end
  return add_torchserve_key()
end

-- The status and message a client reads when TorchServe lost its request: its worker stopped while holding it (a
-- SIGKILL, the kernel's OOM killer, a crash), or could not take it. TorchServe 0.12.0 answers that itself, not the
-- handler: REST 500 or 507 "Worker died." (507 when it has already read the worker's exit status 137, which it takes
-- for out of memory, 500 before), gRPC INTERNAL or RESOURCE_EXHAUSTED. Those tell a client the server has a bug or
-- the client went over a quota, and not to send it again. Neither is so: the same request sent again is answered by
-- the other worker or the replacement TorchServe starts. The gateway answers 503 and UNAVAILABLE instead, what a
-- client (and gRPC's retry policy) sends again, with TorchServe's message and status kept in the message.
local LOST_STATUS = 503
local LOST_GRPC_STATUS = "14" -- UNAVAILABLE
local LOST_ADVICE = "TorchServe lost this request, the worker holding it stopped or could not take it; send it again"

-- header_filter_by_lua (the REST server): drop an answer TorchServe wrote for another request. TorchServe 0.12.0,
-- scaling a worker down, can answer a request twice on one keep-alive connection (docs/serving.md, "Scaling down
-- under load"), and nginx would read the copy as the answer to the next request it sent on that connection, maybe
-- another client's. The gateway sends each request's own id ($request_id) as X-Request-Id and the handler echoes
-- it in X-Client-Request-Id: an answer echoing another id is dropped with its connection (whose next answer would
-- be this request's), and this client sees its request fail instead of reading someone else's answer.
-- On the inference paths ($gateway_inference), a 500 or 507 echoing no id is TorchServe's own (the handler echoes
-- the id on every answer it writes, its own 500 included): the request was lost, and is answered 503 (above).
function M.check_answer()
  local echoed = ngx.var.upstream_http_x_client_request_id
  if echoed and echoed ~= "" and echoed ~= ngx.var.request_id then
    state:incr("stray_answers", 1, 0)
    ngx.var.gateway_refused = 502 -- counted as a bad answer from upstream; the client sees its connection close
    ngx.log(ngx.ERR, "dropped TorchServe's answer to request ", echoed, " sent for request ", ngx.var.request_id,
      ", and its connection")
    return ngx.exit(ngx.ERROR)
  end
  local status = ngx.status
  if status < 400 or not ngx.var.upstream_status then
    return
  end
  if (status == 500 or status == 507) and not echoed and ngx.var.gateway_inference == "1" then
    ngx.ctx.lost = status
    ngx.status = LOST_STATUS
  elseif ngx.var.gateway_v2 ~= "1" then
    return
  end
  ngx.header["Content-Length"] = nil -- error_body rewrites TorchServe's body
  ngx.header["Content-Type"] = "application/json"
end

-- body_filter_by_lua on the inference paths: the body of an answer check_answer changed, and on the Open Inference
-- Protocol's paths every error TorchServe's frontend wrote itself (an unknown model or version, no worker;
-- {"code", "type", "message"}), in the protocol's shape ({"error": message}). Every other body passes untouched:
-- answers, and refusals already in their path's shape (the handler's, the gateway's own).
function M.error_body()
  if ngx.status < 400 then
    return
  end
  local lost, v2 = ngx.ctx.lost, ngx.var.gateway_v2 == "1"
  if not lost and not v2 then
    return
  end
  local chunks = ngx.ctx.error_chunks or {}
  ngx.ctx.error_chunks = chunks
  chunks[#chunks + 1] = ngx.arg[1]
  if not ngx.arg[2] then
    ngx.arg[1] = nil -- held back until the whole body is here (an error body is small)
    return
  end
  local body = table.concat(chunks)
  if not body:match('^%s*{%s*"code"') then
    ngx.arg[1] = body -- already in the path's shape
    return
  end
  -- message is JSON-escaped already: it came from a JSON string
  local message = body:match('"message"%s*:%s*"(.-)"%s*[,}]') or "TorchServe refused the request"
  if lost then
    message = string.format("%s (TorchServe's %d): %s", message, lost, LOST_ADVICE)
  end
  if v2 then
    body = '{"error": "' .. message .. '"}\n'
  else
    body = string.format('{"code": %d, "type": "ServiceUnavailable", "message": "%s"}\n', LOST_STATUS, message)
  end
  ngx.arg[1] = body
end

-- header_filter_by_lua (the gRPC server): TorchServe's "Worker died." (INTERNAL or RESOURCE_EXHAUSTED, above) is
-- UNAVAILABLE. TorchServe sends it before any message, so as a trailers-only answer: grpc-status and grpc-message
-- are headers here. grpc-message is percent-encoded; TorchServe's reads "Worker died.%0Aorg.pytorch...Exception".
function M.check_grpc_answer()
  local status = ngx.header["grpc-status"]
  if (status == "13" or status == "8") and ngx.var.upstream_status then
    local message = ngx.header["grpc-message"] or ""
    if message:match("^Worker died%.") then
      ngx.header["grpc-status"] = LOST_GRPC_STATUS
      ngx.header["grpc-message"] = string.format("Worker died. (TorchServe's %s): %s",
        status == "13" and "INTERNAL" or "RESOURCE_EXHAUSTED", LOST_ADVICE)
    end
  end
end

-- log_by_lua (every request of the REST and gRPC servers): the request is done (answered, failed or abandoned
-- by its client). Counts the answer for the metrics.
function M.finished()
  if ngx.var.gateway_counted == "1" then
    state:incr("inflight", -1, 0)
  end
  local protocol = ngx.var.gateway_protocol
  if ngx.var.uri:sub(1, 9) == "/healthz/" then
    protocol = "health"
  end
  local code = ngx.var.gateway_refused
  state:incr("answers|" .. protocol .. "|" .. (code ~= "" and code or ngx.status), 1, 0)
end

-- content_by_lua for GET /metrics on the metrics port: TorchServe's metrics, then the gateway's own.
function M.metrics()
  local torchserve = ngx.location.capture("/torchserve-metrics")
  local lines = {}
  if torchserve.status == 200 then
    lines[#lines + 1] = torchserve.body
  end
  local function metric(name, kind, help, samples)
    lines[#lines + 1] = "# HELP " .. name .. " " .. help .. "\n# TYPE " .. name .. " " .. kind .. "\n"
    for _, sample in ipairs(samples) do
      lines[#lines + 1] = name .. sample[1] .. " " .. string.format("%.17g", sample[2]) .. "\n"
    end
  end
  local answers = {}
  for _, key in ipairs(state:get_keys(0)) do
    local protocol, code = key:match("^answers|(%a+)|(%d+)$")
    if protocol then
      answers[#answers + 1] = { string.format('{protocol="%s",code="%s"}', protocol, code), state:get(key) }
    end
  end
  table.sort(answers, function(a, b) return a[1] < b[1] end)
  metric("digits_gateway_requests_total", "counter", "Answers the gateway sent, by protocol and HTTP status.", answers)
  metric("digits_gateway_inflight", "gauge", "Requests being served now.", { { "", state:get("inflight") or 0 } })
  local ready = state:get("ready") and not state:get("draining")
  metric("digits_gateway_ready", "gauge", "1 when ready for traffic, 0 while starting or draining.",
    { { "", ready and 1 or 0 } })
  metric("digits_gateway_key_expiry_timestamp_seconds", "gauge",
    "When TorchServe's current keys expire (Unix time); they are rotated at half their lifetime.",
    { { "", state:get("key_expiry") or 0 } })
  metric("digits_gateway_key_rotations_total", "counter", "Rotations of TorchServe's keys.",
    { { "", state:get("rotations") or 0 } })
  metric("digits_gateway_key_rotation_failures_total", "counter",
    "Rotations of TorchServe's keys that failed (the gateway keeps the current keys and tries again).",
    { { "", state:get("rotation_failures") or 0 } })
  metric("digits_gateway_client_credentials", "gauge", "Client credentials the gateway accepts now.",
    { { "", state:get("credential_count") or 0 } })
  metric("digits_gateway_stray_answers_total", "counter",
    "Answers TorchServe sent on a connection for another request (a worker scaled down), dropped.",
    { { "", state:get("stray_answers") or 0 } })
  metric("digits_gateway_torchserve_metrics_up", "gauge", "1 if TorchServe's metrics answered this scrape.",
    { { "", torchserve.status == 200 and 1 or 0 } })
  ngx.header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx.print(table.concat(lines))
end

-- content_by_lua on the admin socket (the gateway's own process only): PUT /key, /expiry, /hold, /draining, /ready,
-- /credentials (the whole new set, one per line), /rotationfailed (count one); GET /inflight.
function M.admin()
  local what = ngx.var.uri:match("^/admin/(%a+)$")
  if ngx.req.get_method() == "GET" and what == "inflight" then
    ngx.say(state:get("inflight") or 0)
    return
  end
  if ngx.req.get_method() ~= "PUT" then
    return ngx.exit(405)
  end
  ngx.req.read_body()
  local value = ngx.req.get_body_data() or ""
  if what == "key" and value:match("^[%w%-_=]+$") then
    local current = state:get("inference_key")
    if current and current ~= value then
      state:incr("rotations", 1, 0)
    end
    state:set("inference_key", value)
  elseif what == "credentials" and credential_required then
    if not set_credentials(value) then
      return ngx.exit(400)
    end
  elseif what == "rotationfailed" then
    state:incr("rotation_failures", 1, 0)
  elseif what == "expiry" and tonumber(value) then
    state:set("key_expiry", tonumber(value))
  elseif what == "hold" or what == "draining" or what == "ready" then
    state:set(what, value == "1")
  else
    return ngx.exit(400)
  end
  ngx.say("ok")
end

return M
