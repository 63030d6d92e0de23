#!/usr/bin/env bash
# Start, stop or inspect the bundle's TorchServe: scripts/serve.sh start|stop|status (scripts/serve.py says more).
# This file only finds the Python with TorchServe installed (.venv first) and runs the command from the repo root.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="$root/.venv/bin/python"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" -m scripts.serve "$@"
