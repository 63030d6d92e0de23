#!/usr/bin/env bash
# Package the trained digit CNN into a TorchServe archive: model_store/<name>.mar
#
#   scripts/package.sh                       # artifacts/ -> model_store/digits.mar, version 1.0
#   scripts/package.sh --version 2.0 --artifacts artifacts/v2 --archive-name digits_v2
#                                            # -> model_store/digits_v2.mar: model digits, version 2.0
#   scripts/package.sh --latency             # -> model_store/digits-latency.mar: model digits-latency, for lone
#                                            #    requests (batching off, one worker; docs/serving.md)
#
# The archive carries the weights (state_dict + architecture) and their SHA-256 (weights.sha256), the
# TorchServe handler and the handler/ package it adapts (the predictor, the request formats, the answers), the model/
# package (network + the one preprocessing module) so the predictor imports it exactly as train.py does,
# index_to_name.json, and handler/model-config.yaml (workers, batching, timeouts).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model_name="digits"
version="1.0"
artifacts="artifacts"
export_path="model_store"
archive_name=""
model_config="$root/handler/model-config.yaml"
latency=""
model_name_given=""

usage() {
  cat <<USAGE
usage: scripts/package.sh [--version V] [--model-name NAME] [--artifacts DIR] [--export-path DIR] [--model-config FILE]
                          [--latency]
  --version       model version recorded in the archive (default: $version)
  --model-name    model name, the URL path /predictions/<name> (default: $model_name)
  --archive-name  file name of the archive without .mar (default: the model name); two versions of one
                  model in one store need two names
  --artifacts     train.py's output dir with digit_cnn.pt and index_to_name.json (default: $artifacts)
  --export-path   where <name>.mar is written (default: $export_path)
  --model-config  TorchServe per-model settings (default: handler/model-config.yaml)
  --latency       the model for lone requests: the model config with batching off (batchSize 1: no wait for a
                  batch to fill) and one worker; model name <name>-latency unless --model-name is given
USAGE
}

while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --model-name) model_name="$2"; model_name_given=1; shift 2 ;;
    --archive-name) archive_name="$2"; shift 2 ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    --export-path) export_path="$2"; shift 2 ;;
    --model-config) model_config="$2"; shift 2 ;;
    --latency) latency=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "package.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -n "$latency" ] && [ "$model_name_given" != 1 ]; then
  model_name="$model_name-latency"
fi
archive_name="${archive_name:-$model_name}"
case "$archive_name" in
  */*|.*|"") echo "package.sh: --archive-name is a file name without .mar, got '$archive_name'" >&2; exit 2 ;;
esac
weights="$artifacts/digit_cnn.pt"
labels="$artifacts/index_to_name.json"
for file in "$weights" "$labels"; do
  if [ ! -f "$file" ]; then
    echo "package.sh: $file not found. Train first: python train.py --output-dir $artifacts" >&2
    exit 1
  fi
done
[ -f "$model_config" ] || { echo "package.sh: model config $model_config not found" >&2; exit 1; }

archiver="$(command -v torch-model-archiver || true)"
[ -n "$archiver" ] || archiver="$root/.venv/bin/torch-model-archiver"
[ -x "$archiver" ] || { echo "package.sh: torch-model-archiver not found; run 'make venv' first" >&2; exit 1; }

# Extra files given as a directory are copied by their contents; staging keeps model/ a package.
stage="$(mktemp -d)"
out="$(mktemp -d)"
trap 'rm -rf "$stage" "$out"' EXIT
if [ -n "$latency" ]; then
  # The same settings but three: a lone request is handed to the worker at once instead of waiting maxBatchDelay
  # for company (TorchServe skips the batch loop at batchSize 1), and one worker, beside the batched model's.
  for key in batchSize minWorkers maxWorkers; do
    grep -q "^$key: " "$model_config" || { echo "package.sh: $model_config sets no top-level $key" >&2; exit 1; }
  done
  sed -e 's/^batchSize: .*/batchSize: 1/' -e 's/^minWorkers: .*/minWorkers: 1/' -e 's/^maxWorkers: .*/maxWorkers: 1/' \
    "$model_config" >"$out/model-config.yaml"
  model_config="$out/model-config.yaml"
fi
mkdir -p "$stage/model" "$stage/handler"
cp "$root"/model/*.py "$stage/model/"
# The handler's package (handler/predictor.py, wire.py, answers.py, refusals.py, open_inference.py, explanations.py,
# metrics.py) as the package they are imported from; the handler file itself goes in as --handler.
find "$root/handler" -maxdepth 1 -name '*.py' ! -name digit_handler.py -exec cp {} "$stage/handler/" \;
cp "$labels" "$stage/index_to_name.json"
# The weights' SHA-256, recorded now and checked by the handler before torch.load: a swapped or corrupted
# weights file refuses to load. (sha256sum's format: "<hex>  <file name>".)
(cd "$(dirname "$weights")" && sha256sum "$(basename "$weights")") >"$stage/weights.sha256"

mkdir -p "$export_path"
# torch-model-archiver names the file after the model; TorchServe reads name and version from the manifest.
# It also stages the archive in $TMPDIR/<model name>, deleting whatever is there before and after: given the
# shared /tmp, packaging "digits" would delete /tmp/digits (the image's state directory, with the running gateway's
# keys and sockets). Its own TMPDIR, inside our scratch directory, keeps it to itself.
mkdir "$out/tmp"
TMPDIR="$out/tmp" "$archiver" \
  --model-name "$model_name" \
  --version "$version" \
  --model-file "$root/model/digit_cnn.py" \
  --serialized-file "$weights" \
  --handler "$root/handler/digit_handler.py" \
  --extra-files "$stage" \
  --config-file "$model_config" \
  --export-path "$out" \
  --force
mv -f "$out/$model_name.mar" "$export_path/$archive_name.mar"
echo "wrote $export_path/$archive_name.mar (model $model_name, version $version)"
