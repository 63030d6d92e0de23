#!/bin/sh
# perf_analyzer, NVIDIA's load generator for the Open Inference Protocol, into a virtualenv (make perf-analyzer:
# .venv-triton): VENV/bin/perf_analyzer, a wrapper that finds the libraries it links.
#
# PyPI's "perf-analyzer" is an empty placeholder (0.1.0: no binary), and tritonclient's wheels stopped carrying
# the binary after 2.60.0. Those from 2.52.0 on are built against glibc 2.38 (Ubuntu 24.04) and do not run on
# Debian 12 (glibc 2.36). So: the binary from tritonclient 2.51.0's manylinux wheel (the newest that runs here),
# which links libb64 (Debian's libb64-0d) and the CUDA runtime 12 (for its CUDA shared-memory mode, never used
# here: the nvidia-cuda-runtime-cu12 wheel provides the library; no GPU or driver is needed to load it).
set -eu
venv=${1:-.venv-triton}
version=2.51.0
cudart=nvidia-cuda-runtime-cu12==12.9.79
[ -x "$venv/bin/python" ] || { echo "install-perf-analyzer: no virtualenv at $venv (make triton-client)" >&2; exit 1; }

if ! /sbin/ldconfig -p | grep -q 'libb64\.so\.0d'; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  echo "installing libb64-0d (apt-get)"
  $sudo apt-get install -y -q libb64-0d >/dev/null 2>&1 || { $sudo apt-get update -q >/dev/null &&
    $sudo apt-get install -y -q libb64-0d >/dev/null; }
fi
"$venv/bin/python" -m pip install --quiet "$cudart"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
  --python-version 3.11 "tritonclient==$version" -d "$work"
mkdir -p "$venv/libexec"
"$venv/bin/python" - "$work" "$version" "$venv/libexec/perf_analyzer" <<'PY'
import pathlib, shutil, sys, zipfile
work, version, target = sys.argv[1:]
wheel = next(pathlib.Path(work).glob(f"tritonclient-{version}-*.whl"))
with zipfile.ZipFile(wheel) as archive, archive.open(f"tritonclient-{version}.data/data/bin/perf_analyzer") as source:
    with open(target, "wb") as binary:
        shutil.copyfileobj(source, binary)
pathlib.Path(target).chmod(0o755)
PY
cat > "$venv/bin/perf_analyzer" <<'SH'
#!/bin/sh
# perf_analyzer (benchmarks/install-perf-analyzer.sh) with the CUDA runtime library it links.
venv=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cudart=$(echo "$venv"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)
LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$venv/libexec/perf_analyzer" "$@"
SH
chmod 755 "$venv/bin/perf_analyzer"
"$venv/bin/perf_analyzer" --version
