#!/usr/bin/env bash
# Prove that TorchServe's workers run on CUDA: scripts/gpu_check.sh [--cpu] [--artifacts DIR] [--archive FILE]
# (scripts/gpu_check.py says what it checks). This file only finds the Python with TorchServe installed (.venv
# here, /opt/venv in the image) and runs the check from the repo root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="$root/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3 || true)"
"$python" -c 'import ts' 2>/dev/null || { echo "gpu_check: no Python with torchserve; run 'make venv' first" >&2; exit 1; }
exec "$python" -m scripts.gpu_check "$@"
