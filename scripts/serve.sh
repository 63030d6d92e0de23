#!/usr/bin/env bash
# Start, stop or inspect the bundle's TorchServe.
#
#   scripts/serve.sh start    # start with config.properties on model_store/, wait until digits answers
#   scripts/serve.sh status   # running? which endpoints, which token file
#   scripts/serve.sh stop     # stop TorchServe and its workers
#
# TorchServe writes its token file (key_file.json) and logs/ into the repo root, where this script
# starts it. Environment: START_TIMEOUT (seconds, default 120); any TS_<KEY> overrides config.properties.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="$root/.venv/bin"
[ -x "$bin/torchserve" ] || bin="$(dirname "$(command -v torchserve || echo /nonexistent/torchserve)")"
python="$bin/python"
[ -x "$python" ] || python="$(command -v python3)"
pid_file="${TMPDIR:-/tmp}/.model_server.pid"  # where torchserve's launcher keeps the frontend's pid
console="$root/logs/console.log"

running_pid() {
  [ -f "$pid_file" ] || return 1
  local pid
  pid="$(cat "$pid_file")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  if [ ! -x "$bin/torchserve" ]; then
    echo "serve.sh: torchserve not found; run 'make venv' first" >&2; exit 1
  fi
  if [ ! -f model_store/digits.mar ]; then
    echo "serve.sh: model_store/digits.mar not found; run 'make package' (or scripts/package.sh) first" >&2; exit 1
  fi
  if pid="$(running_pid)"; then
    echo "serve.sh: TorchServe is already running (pid $pid); 'scripts/serve.sh stop' first" >&2; exit 1
  fi
  mkdir -p logs
  # config.properties loads digits.mar and, when `make package-v2` has built it, digits_v2.mar (version 2.0).
  if [ -z "${TS_LOAD_MODELS:-}" ]; then
    TS_LOAD_MODELS="$("$python" scripts/serving.py load-models)"
    export TS_LOAD_MODELS
  fi
  # Output to a file, never a pipe: the Java frontend inherits it and would hold a pipe open.
  PATH="$bin:$PATH" "$bin/torchserve" --start --ncs --ts-config config.properties --model-store model_store \
    --log-config log4j2.xml >"$console" 2>&1
  sleep 1
  pid="$(running_pid || true)"
  if [ -z "$pid" ]; then
    echo "serve.sh: TorchServe did not start; last lines of $console:" >&2; tail -n 30 "$console" >&2; exit 1
  fi
  if ! "$python" scripts/serving.py wait --timeout "${START_TIMEOUT:-120}" --pid "$pid"; then
    echo "serve.sh: TorchServe (pid $pid) did not get the model ready; last lines of the logs:" >&2
    tail -n 30 logs/model_log.log logs/ts_log.log "$console" 2>/dev/null >&2 || true
    stop >&2
    exit 1
  fi
  echo "TorchServe is running (pid $pid) with model digits ready."
  "$python" scripts/serving.py endpoints
  echo "try: $python scripts/predict.py artifacts/samples/*.png"
}

stop() {
  local pid children waited=0
  if ! pid="$(running_pid)"; then
    echo "TorchServe is not running."; rm -f "$pid_file"; return 0
  fi
  children="$(pgrep -P "$pid" || true)"  # the Python workers
  "$bin/torchserve" --stop >/dev/null 2>&1 || kill "$pid"
  while kill -0 "$pid" 2>/dev/null || { [ -n "$children" ] && kill -0 $children 2>/dev/null; }; do
    if [ "$waited" -ge 60 ]; then
      echo "serve.sh: still running after 30s, sending SIGKILL to $pid $children" >&2
      kill -9 "$pid" $children 2>/dev/null || true
      break
    fi
    sleep 0.5; waited=$((waited + 1))
  done
  rm -f "$root/key_file.json"
  echo "TorchServe stopped (pid $pid)."
}

status() {
  if pid="$(running_pid)"; then
    echo "TorchServe is running (pid $pid)."
    "$python" scripts/serving.py endpoints
  else
    echo "TorchServe is not running."; return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: scripts/serve.sh start|stop|status" >&2; exit 2 ;;
esac
