#!/usr/bin/env bash
# Build the digits-serve image from the Dockerfile at the repository root (what `make image` runs).
#
#   deploy/docker/build.sh                                   # model_store/digits.mar -> digits-serve:latest
#   deploy/docker/build.sh --archive /tmp/x/digits.mar --tag digits-serve:1.0.0 --tag digits-serve:latest
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
tags=()
base_image="debian:bookworm-slim"
while [ $# -gt 0 ]; do
  case "$1" in
    --archive) archive="$2"; shift 2 ;;
    --tag) tags+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ ${#tags[@]} -gt 0 ] || tags=("digits-serve:latest")
[ -f "$archive" ] || { echo "build.sh: $archive not found: run 'make package' first" >&2; exit 1; }
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
    tar -C "$rootfs" -c . | docker import - "$base_image" >/dev/null
    rm -rf "$rootfs"
  fi
fi

# ---- local package folders, served on loopback for the build
build_args=()
extra_urls=()
python="$(command -v python3)"
for index in $("$python" -m pip config list 2>/dev/null | sed -nE "s/^(global|install)\.extra-index-url='(.*)'$/\2/p" | tr ' ' '\n' \
               | sed -n 's|^file://||p'); do
  index="${index%/}"
  [ -d "$index" ] || continue
  # Serve the index's parent: its pages link to files beside it (../../files/...).
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  "$python" -m http.server --bind 127.0.0.1 --directory "$(dirname "$index")" "$port" >/dev/null 2>&1 &
  servers+=("$!")
  extra_urls+=("http://127.0.0.1:$port/$(basename "$index")/")
done
if [ ${#extra_urls[@]} -gt 0 ]; then
  build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra_urls[*]}" --build-arg "PIP_TRUSTED_HOST=127.0.0.1")
  for url in "${extra_urls[@]}"; do  # until each server answers
    for _ in $(seq 50); do "$python" -c "import urllib.request; urllib.request.urlopen('$url', timeout=1)" 2>/dev/null && break; sleep 0.1; done
  done
fi
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
# pip checks TLS against its own CA bundle unless told otherwise: the system's one carries this machine's CAs.
if "$python" -m pip config list 2>/dev/null | grep -q "^global.cert="; then
  build_args+=(--build-arg "PIP_CERT=/etc/ssl/certs/ca-certificates.crt")
fi

# ---- the context: what the image needs, and nothing else
context="$work/context"
mkdir -p "$context/model_store"
cp "$root/Dockerfile" "$root/requirements.txt" "$root/config.properties" "$root/metrics.yaml" "$root/log4j2.xml" \
  "$root/train.py" "$context/"
for dir in model handler scripts gateway web; do
  cp -r "$root/$dir" "$context/$dir"
done
find "$context" -name __pycache__ -prune -exec rm -rf {} +
cp "$archive" "$context/model_store/digits.mar"

tag_args=()
for tag in "${tags[@]}"; do tag_args+=(-t "$tag"); done
echo "build.sh: docker build ${tags[*]} (the first build installs requirements.txt: several minutes)"
docker build --network host "${build_args[@]}" "${tag_args[@]}" "$context"
