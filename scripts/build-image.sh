#!/bin/sh
# Builds tend's image and tags it IMAGE:VERSION, VERSION being what the binary's
# `tend version` prints (Cargo.toml's version).
#
# Where docker or podman can build, the multi-stage Dockerfile is built. Elsewhere
# (no engine, or no registry to pull base images from) buildah assembles the same
# runtime from this machine: the binary, the loader and libraries it links, CA
# certificates and a non-root user, on an empty base.
#
#   scripts/build-image.sh [--binary PATH] [--tag NAME:TAG]
#
# --binary uses an already built tend instead of building a release one, and
# implies the buildah path. buildah is installed from Debian's packages if missing.
set -eu
cd "$(dirname "$0")/.."

image="${IMAGE:-ghcr.io/tend-dev/tend}"
binary=""
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

engine=""
if [ -z "$binary" ]; then
  for candidate in docker podman; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
      engine="$candidate"
      break
    fi
  done
fi

if [ -n "$engine" ]; then
  version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
  tag="${tag:-$image:$version}"
  echo "building $tag with $engine"
  exec "$engine" build -t "$tag" .
fi

if [ -z "$binary" ]; then
  cargo build --release --locked --bin tend
  binary="${CARGO_TARGET_DIR:-target}/release/tend"
fi
version="$("$binary" version | sed -n 's/^tend //p')"
tag="${tag:-$image:$version}"

if ! command -v buildah >/dev/null 2>&1; then
  echo "installing buildah (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q buildah >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q buildah >/dev/null; }
fi
# No daemon and no user namespaces here: vfs storage and chroot isolation.
buildah() { command buildah --storage-driver vfs "$@"; }

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$binary" "$root/tend"
# The loader and every library the binary links, at the paths it expects.
ldd "$binary" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
  install -D -m 0644 "$lib" "$root$lib"
  real="$(readlink -f "$lib")"
  [ "$real" = "$lib" ] || install -D -m 0644 "$real" "$root$real"
done
chmod 0755 "$root"/lib*/ld-linux* 2>/dev/null || true
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
mkdir -p "$root/tmp"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"

container="$(buildah from scratch)"
buildah copy --quiet "$container" "$root" / >/dev/null
buildah config \
  --user 65532:65532 \
  --port 8080 \
  --entrypoint '["/tend"]' \
  --cmd run \
  --label org.opencontainers.image.title=tend \
  --label "org.opencontainers.image.version=$version" \
  "$container"
buildah commit --quiet --rm "$container" "$tag" >/dev/null
echo "built $tag"
