-- The gateway's per-request logic, run by nginx's Lua module (Debian's libnginx-mod-http-lua).
--
-- Clients present the gateway's own credential; TorchServe's inference key never leaves the gateway. The key is
-- swapped by gateway/run.py through the admin socket, with a short hold so that no request reaches TorchServe
-- with a key it has just replaced (TorchServe 0.12.0 knows one inference key at a time and switches at once):
--   1. run.py sets "hold": requests arriving now wait here (ngx.sleep: other requests go on);
--   2. run.py waits until "inflight" (requests past this point and not yet finished) drops to 0;
--   3. run.py rotates the key in TorchServe, sets the new one here and clears "hold".
-- A request counts itself in "inflight" *before* it looks at "hold", so run.py can never miss one.
local M = {}

local state = ngx.shared.gateway
local credentials = {}
local HOLD_LIMIT = 3.0 -- seconds a request waits for a rotation before going on regardless
local HOLD_STEP = 0.002

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end))
end

-- An answer the gateway gives itself, in the handler's error shape ({"code", "type", "message"}).
function M.reject(status, kind, message)
  if ngx.var.gateway_protocol == "grpc" then
    -- gRPC: the status a gRPC client reads (UNAUTHENTICATED, UNAVAILABLE, ...) with the message, answered by the
    -- config's @grpc_error (nginx sends it as one trailers-only HEADERS frame; a body here would break that).
    ngx.var.grpc_status = ({ [401] = 16, [413] = 8, [429] = 8, [503] = 14 })[status] or 2
    ngx.var.grpc_message = message
    return ngx.exec("@grpc_error")
  end
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(string.format('{"code": %d, "type": "%s", "message": "%s"}\n', status, kind, json_escape(message)))
  return ngx.exit(status)
end

-- init_by_lua: the client credentials, one per line, from the file run.py wrote (mode 0600).
function M.load_credentials(path)
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    local credential = line:match("^%s*(.-)%s*$")
    if credential ~= "" then
      credentials["Bearer " .. credential] = true
    end
  end
  file:close()
  assert(next(credentials) ~= nil, "no client credential in " .. path)
end

local function add_torchserve_key()
  local waited = 0
  while true do
    state:incr("inflight", 1, 0)
    ngx.ctx.counted = true
    if not state:get("hold") or waited >= HOLD_LIMIT then
      break
    end
    state:incr("inflight", -1, 0)
    ngx.ctx.counted = false
    ngx.sleep(HOLD_STEP)
    waited = waited + HOLD_STEP
  end
  local key = state:get("inference_key")
  if not key then
    return M.reject(503, "ServiceUnavailable", "the gateway has no TorchServe key yet: the server is starting")
  end
  ngx.req.set_header("Authorization", "Bearer " .. key)
end

-- access_by_lua for inference (REST and gRPC): the client's credential, then TorchServe's key.
function M.inference()
  if not credentials[ngx.var.http_authorization or ""] then
    return M.reject(401, "Unauthorized",
      "missing or wrong credential: send 'Authorization: Bearer <the gateway's client token>'")
  end
  return add_torchserve_key()
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

-- log_by_lua: the request is done (answered, failed or abandoned by its client).
function M.finished()
  if ngx.ctx.counted then
    state:incr("inflight", -1, 0)
  end
end

-- content_by_lua on the admin socket (run.py only): PUT /key, /hold, /draining, /ready; GET /inflight.
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
    state:set("inference_key", value)
  elseif what == "hold" or what == "draining" or what == "ready" then
    state:set(what, value == "1")
  else
    return ngx.exit(400)
  end
  ngx.say("ok")
end

return M
