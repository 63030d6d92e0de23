#!/usr/bin/env bash
# Build the digits-serve image from the Dockerfile at the repository root (what `make image` runs).
#
#   deploy/docker/build.sh                                   # model_store/digits.mar -> digits-serve:latest
#   deploy/docker/build.sh --archive /tmp/x/digits.mar --tag digits-serve:1.0.0 --tag digits-serve:latest
#   deploy/docker/build.sh --target runtime                  # only the slow layers (no archive needed): a warm cache
#   deploy/docker/build.sh --torch-index https://download.pytorch.org/whl/cpu --tag digits-serve:1.0.0-cpu
#                                                            # torch and torchvision from that index (CPU wheels)
#   (--samples DIR: the held-out PNGs the image carries for scripts/gpu_check.sh, default artifacts/samples, from
#    the training run that made the archive; --iidfile FILE: the built image's id, as docker build writes it)
#
# On a machine with a registry and PyPI this is `docker build` with a small context (the files the image needs
# and the archive). Two things make it work offline too, and neither reaches the Dockerfile:
#   * no debian:bookworm-slim image and no registry: the base is made with debootstrap from the apt mirror this
#     machine uses (root only), trusting this machine's CA certificates (a TLS proxy in front of PyPI);
#   * pip configured with local package folders (file:// indexes, e.g. a torch wheel on disk): each folder is
#     served on 127.0.0.1 for the length of the build and passed as PIP_EXTRA_INDEX_URL.
# The build uses the host's network (--network host): no bridge network is created.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
archive="$root/model_store/digits.mar"
samples="$root/artifacts/samples"
torch_index=""
tags=()
target=""
iidfile=""
base_image="debian:bookworm-slim"
label="io.digits-serve.project=digits-serve"  # the Dockerfile's label: `make docker-clean` removes what carries it
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) archive="$2"; shift 2 ;;
    --samples) samples="$2"; shift 2 ;;
    --torch-index) torch_index="$2"; shift 2 ;;
    --tag) tags+=("$2"); shift 2 ;;
    --target) target="$2"; shift 2 ;;
    --iidfile) iidfile="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#tags[@]} -gt 0 ] || [ -n "$target" ] || tags=("digits-serve:latest")
[ -n "$target" ] || [ -f "$archive" ] || { echo "build.sh: $archive not found: run 'make package' first" >&2; exit 1; }
[ -n "$target" ] || compgen -G "$samples/*.png" >/dev/null \
  || { echo "build.sh: no PNGs in $samples: train first (make train), or pass --samples DIR" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build.sh: no Docker daemon answers ('docker info' fails)" >&2; exit 1; }

work="$(mktemp -d /tmp/digits-image-XXXXXX)"
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# ---- the base image
if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  echo "build.sh: no local $base_image; trying the registry"
  if ! timeout 60 docker pull "$base_image" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "build.sh: no registry and no debootstrap to make $base_image" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { echo "build.sh: making $base_image with debootstrap needs root" >&2; exit 1; }
    mirror="$( { grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ \
              2>/dev/null || true; } | grep -oE 'https?://[^ ]+' | head -n 1 || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    echo "build.sh: making $base_image with debootstrap from $mirror (about a minute)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
      || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
    # Trust what this machine trusts (a TLS proxy's CA, say), as separate certificates so that installing
    # ca-certificates again in a build keeps them.
    awk -v dir="$rootfs/usr/local/share/ca-certificates" \
      '/BEGIN CERTIFICATE/ {n++; file=sprintf("%s/host-%04d.crt", dir, n)} file {print > file} /END CERTIFICATE/ {close(file); file=""}' \
      /etc/ssl/certs/ca-certificates.crt
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import --change "LABEL $label" - "$base_image" >/dev/null
    rm -rf "$rootfs"
  fi
fi

# ---- local package folders, served on loopback for the build
build_args=()
extra_urls=()
python="$(command -v python3)"
# Read once, whole: `pip config list | grep -q` can kill pip with SIGPIPE, which pipefail turns into "no match" now
# and then, and a build argument that comes and goes invalidates Docker's cache.
pip_config="$("$python" -m pip config list 2>/dev/null || true)"
for index in $(sed -nE "s/^(global|install)\.extra-index-url='(.*)'$/\2/p" <<<"$pip_config" | tr ' ' '\n' \
               | sed -n 's|^file://||p'); do
  index="${index%/}"
  [ -d "$index" ] || continue
  # Serve the index's parent: its pages link to files beside it (../../files/...). On a port of its own that is the
  # same on every build (the URL is a build argument: a new one would invalidate Docker's cache of every layer
  # after it, the pip install among them), or the next one when that is taken.
  served=""
  for port in $("$python" -c 'import sys, zlib; base = 20000 + zlib.crc32(sys.argv[1].encode()) % 10000
print(*range(base, base + 20))' "$index"); do
    "$python" -m http.server --bind 127.0.0.1 --directory "$(dirname "$index")" "$port" >/dev/null 2>&1 &
    pid=$!
    url="http://127.0.0.1:$port/$(basename "$index")/"
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break  # it could not bind the port: the next one
      if "$python" -c "import urllib.request; urllib.request.urlopen('$url', timeout=1)" 2>/dev/null \
         && kill -0 "$pid" 2>/dev/null; then
        served="$url"
        break
      fi
      sleep 0.1
    done
    if [ -n "$served" ]; then servers+=("$pid"); break; fi
    kill "$pid" 2>/dev/null || true
  done
  [ -n "$served" ] || { echo "build.sh: could not serve $index on 127.0.0.1" >&2; exit 1; }
  extra_urls+=("$served")
done
trusted=""
if [ ${#extra_urls[@]} -gt 0 ]; then
  build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra_urls[*]}")
  trusted=127.0.0.1
fi
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
if [ -n "$torch_index" ]; then
  build_args+=(--build-arg "TORCH_INDEX_URL=$torch_index")
  # A plain-http index on this machine's loopback (a local mirror of the wheels) is trusted as the folders above are.
  case "$torch_index" in http://127.0.0.1[:/]*) trusted=127.0.0.1 ;; esac
fi
[ -z "$trusted" ] || build_args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
# pip checks TLS against its own CA bundle unless told otherwise: the system's one carries this machine's CAs.
if grep -q "^global.cert=" <<<"$pip_config"; then
  build_args+=(--build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi

# ---- the context: what the image needs, and nothing else. The list is .dockerignore's (`!path` lines), the one
# place that names it, so `docker build .` by hand sends the same files; the archive comes from --archive, the
# samples from --samples.
context="$work/context"
mkdir -p "$context/model_store" "$context/artifacts/samples"
while read -r entry; do
  entry="${entry%/}"
  case "$entry" in model_store/digits.mar|artifacts/samples) continue ;; esac
  cp -r "$root/$entry" "$context/$entry"
done < <(sed -n 's/^!//p' "$root/.dockerignore")
find "$context" -name __pycache__ -prune -exec rm -rf {} +
[ -z "$target" ] || [ -f "$archive" ] || archive=/dev/null  # a stage before the archive's COPY needs none
cp "$archive" "$context/model_store/digits.mar"
[ -n "$target" ] || cp "$samples"/*.png "$context/artifacts/samples/"

tag_args=()
for tag in "${tags[@]}"; do tag_args+=(-t "$tag"); done
[ -z "$target" ] || tag_args+=(--target "$target")
[ -z "$iidfile" ] || tag_args+=(--iidfile "$iidfile")
echo "build.sh: docker build ${tags[*]:-(stage $target)} (the first build installs requirements-serve.txt: several minutes)"
docker build --network host --force-rm "${build_args[@]}" "${tag_args[@]}" "$context"
