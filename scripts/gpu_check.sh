#!/usr/bin/env bash
# Prove that TorchServe's workers run the digit CNN on CUDA, on a machine with NVIDIA GPUs.
#
#   scripts/gpu_check.sh              # on a CUDA machine: check; without one: say so and exit 0
#   scripts/gpu_check.sh --cpu        # the same steps with CPU workers (a dry run of this script anywhere)
#   scripts/gpu_check.sh --artifacts DIR   # train.py's output to package (default: artifacts/)
#   scripts/gpu_check.sh --archive FILE    # the weights of a built .mar instead (inside the container image:
#                                          #   --archive /opt/digits/model_store/digits.mar)
#
# What it does, in about a minute on a GPU machine: packages artifacts/ (training first if there are no
# weights) with handler/model-config.yaml plus `deviceType: gpu` and `deviceIds: [0..N-1]`, starts its own
# TorchServe (free ports, own temp dir, token auth on; never touches a running one), then requires that
#   1. describe reports deviceType gpu and "gpu": true for every worker,
#   2. every worker's handler logged "digit model loaded on cuda:<id> by pid <its pid> (preprocessing on cuda:<id>",
#      the device of a batch its preprocessing produced at start,
#   3. nvidia-smi lists every worker's pid as a CUDA process,
#   4. the sample digits are classified correctly over REST.
# It stops the server it started (by its own pid file) and removes its temp dir. Exit 0: all held.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bin="$root/.venv/bin"
[ -x "$bin/python" ] || bin="$(dirname "$(command -v python3 || echo /nonexistent/python3)")"  # the image's venv
[ -x "$bin/torchserve" ] || { echo "gpu_check: no .venv with torchserve; run 'make venv' first" >&2; exit 1; }
python="$bin/python3"
device="gpu"
artifacts="artifacts"
archive=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) device="cpu"; shift ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    --archive) archive="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$device" = gpu ]; then
  gpus="$("$python" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
  if [ "$gpus" -eq 0 ] || ! command -v nvidia-smi >/dev/null; then
    echo "gpu_check: no CUDA GPU on this machine (torch.cuda.device_count() = $gpus); GPU workers not checked."
    exit 0
  fi
  echo "gpu_check: $gpus CUDA GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd, -)"
fi
work="$(mktemp -d /tmp/ts-gpu-check-XXXXXX)"  # short: worker sockets live in TMPDIR
mkdir -p "$work/tmp" "$work/store"
read -r -a ports <<<"$("$python" -c 'from scripts.local_server import free_ports; print(*free_ports(5))')"
export TMPDIR="$work/tmp" TEMP="$work/tmp" LOG_LOCATION="$work/logs" METRICS_LOCATION="$work/logs"
export TS_INFERENCE_ADDRESS="http://127.0.0.1:${ports[0]}" TS_MANAGEMENT_ADDRESS="http://127.0.0.1:${ports[1]}"
export TS_METRICS_ADDRESS="http://127.0.0.1:${ports[2]}" TS_GRPC_INFERENCE_PORT="${ports[3]}"
export TS_GRPC_MANAGEMENT_PORT="${ports[4]}" TS_INITIAL_WORKER_PORT="$((20000 + ports[0] % 20000))"
export TS_LOAD_MODELS="digits.mar" TS_METRICS_CONFIG="$root/metrics.yaml"
key_file="$work/key_file.json"
server_pid=""

cleanup() {
  local status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    local frontend children
    frontend="$(cat "$work/tmp/.model_server.pid" 2>/dev/null || true)"
    children="$( [ -n "$frontend" ] && pgrep -P "$frontend" || true)"
    (cd "$work" && "$bin/torchserve" --stop >/dev/null 2>&1) || true
    for _ in $(seq 60); do
      kill -0 "$server_pid" $children 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$server_pid" $frontend $children 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

if [ -n "$archive" ]; then
  # The archive's weights and labels, and 20 test digits as samples (no training, nothing written outside $work).
  artifacts="$work/artifacts"
  "$python" - "$archive" "$artifacts" <<'PYTHON' || { echo "gpu_check: cannot read $archive" >&2; exit 1; }
import sys, zipfile
from pathlib import Path

from PIL import Image

import train

archive, out = sys.argv[1], Path(sys.argv[2])
(out / "samples").mkdir(parents=True)
with zipfile.ZipFile(archive) as mar:
    for name in (train.WEIGHTS_FILE, "index_to_name.json"):
        (out / name).write_bytes(mar.read(name))
defaults = train.build_parser().parse_args([])
images, labels = train.builtin_splits(defaults.dataset, (defaults.val_fraction, defaults.test_fraction),
                                      defaults.seed)["test"]
for index in range(20):
    Image.fromarray(images[index]).save(out / "samples" / f"test{index:05d}_label-{labels[index]}.png")
PYTHON
fi
[ -f "$artifacts/digit_cnn.pt" ] || "$python" train.py --output-dir "$artifacts"

config="$work/model-config.yaml"
cp handler/model-config.yaml "$config"
if [ "$device" = gpu ]; then
  # One source of truth for the settings: the shipped file, plus where the workers go.
  printf '\n# Added by scripts/gpu_check.sh: every worker on a GPU, round-robin over these ids.\ndeviceType: gpu\ndeviceIds: [%s]\n' \
    "$(seq -s, 0 $((gpus - 1)))" >>"$config"
  export TS_NUMBER_OF_GPU="$gpus"
else
  printf '\ndeviceType: cpu\n' >>"$config"
fi
PATH="$bin:$PATH" scripts/package.sh --artifacts "$artifacts" --export-path "$work/store" --model-config "$config" >/dev/null

(cd "$work" && exec "$bin/torchserve" --start --foreground --ncs --ts-config "$root/config.properties" \
  --model-store "$work/store" --log-config "$root/log4j2.xml" >"$work/console.log" 2>&1) &
server_pid=$!
if ! "$python" scripts/serving.py wait --key-file "$key_file" --timeout 240 --pid "$server_pid"; then
  echo "gpu_check: TorchServe did not get the model ready; last log lines:" >&2
  tail -n 40 "$work/logs/model_log.log" "$work/logs/ts_log.log" "$work/console.log" 2>/dev/null >&2 || true
  exit 1
fi

failures=0
fail() { echo "gpu_check: FAIL: $*" >&2; failures=$((failures + 1)); }

describe="$("$python" scripts/manage.py --key-file "$key_file" --json describe)"
read -r device_type worker_pids gpu_flags statuses min_workers <<<"$("$python" -c '
import json, sys
entry = json.load(sys.stdin)[0]
workers = entry["workers"]
print(entry.get("deviceType"), ",".join(str(w["pid"]) for w in workers), ",".join(str(w["gpu"]).lower() for w in workers),
      ",".join(w["status"] for w in workers), entry["minWorkers"])
' <<<"$describe")"
"$python" scripts/manage.py --key-file "$key_file" describe
want_gpu=$([ "$device" = gpu ] && echo true || echo false)
[ "$device_type" = "$device" ] || fail "describe says deviceType $device_type, expected $device"
for flag in ${gpu_flags//,/ }; do
  [ "$flag" = "$want_gpu" ] || fail "describe says a worker has gpu=$flag, expected $want_gpu"
done
ready="$(tr ',' '\n' <<<"$statuses" | grep -c '^READY$' || true)"
[ "$ready" -ge "$min_workers" ] || fail "describe shows $ready READY workers (statuses $statuses), minWorkers is $min_workers"

expected="$([ "$device" = gpu ] && echo "cuda:" || echo "cpu")"
# Each worker's handler logs "digit model loaded on <device> by pid <pid>" before it reports READY, but that line
# travels to model_log.log through the frontend's stdout reader and log4j2's async logger, so it can land after
# describe already shows the worker READY. Wait for one line per worker pid (with a deadline), never count once.
model_log="$work/logs/model_log.log"
missing=""
for _ in $(seq 100); do
  missing=""
  for pid in ${worker_pids//,/ }; do
    grep -q "digit model loaded on $expected[^ ]* by pid $pid (preprocessing on $expected" "$model_log" 2>/dev/null ||
      missing="$missing $pid"
  done
  [ -z "$missing" ] && break
  sleep 0.2
done
workers="$(tr ',' '\n' <<<"$worker_pids" | grep -c .)"
loaded=$((workers - $(wc -w <<<"$missing")))
echo "handler log: $loaded of $workers workers loaded the model and preprocess on $expected*"
grep -o "digit model loaded on [^ ]* by pid [0-9]* (preprocessing on [^,]*" "$model_log" 2>/dev/null || true
if [ -n "$missing" ]; then
  fail "no 'digit model loaded on $expected... (preprocessing on $expected' line within 20 s from worker pid(s)$missing; model_log.log had:"
  grep "digit model loaded" "$model_log" >&2 2>/dev/null || echo "  (no 'digit model loaded' line at all)" >&2
fi

if [ "$device" = gpu ]; then
  cuda_pids="$(nvidia-smi --query-compute-apps=pid --format=csv,noheader | tr -d ' ')"
  for pid in ${worker_pids//,/ }; do
    grep -qx "$pid" <<<"$cuda_pids" || fail "worker pid $pid is not a CUDA process in nvidia-smi"
  done
  echo "nvidia-smi CUDA processes: $(paste -sd, - <<<"$cuda_pids")"
fi

answers="$("$python" scripts/predict.py --key-file "$key_file" "$artifacts"/samples/*.png)" || fail "predict.py failed"
right=0 total=0
while read -r path label _; do
  total=$((total + 1))
  [[ "$path" == *"_label-$label.png" ]] && right=$((right + 1))
done <<<"$answers"
echo "predictions: $right of $total sample digits right"
if ! { [ "$total" -gt 0 ] && [ $((right * 10)) -ge $((total * 9)) ]; }; then
  fail "only $right of $total sample digits right; the answers (file, label, probability) were:"
  echo "$answers" >&2
fi

if [ "$failures" -gt 0 ]; then
  echo "gpu_check: $failures check(s) failed; the last lines of model_log.log:" >&2
  tail -n 20 "$work/logs/model_log.log" >&2 || true
  exit 1
fi
echo "gpu_check: OK: $workers workers on $device_type, every check passed."
