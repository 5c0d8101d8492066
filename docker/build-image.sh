#!/usr/bin/env bash
# Build the operator image from docker/Dockerfile (unchanged) without a Docker daemon: `make image`.
#
#   1. The base: the Dockerfile's PYTHON_IMAGE (python:3.11-slim-bookworm) is Debian bookworm with
#      Python 3.11. Registries of container images are not reachable from the machines this
#      project is tested on, so the same thing is made from Debian packages: `mmdebstrap` of
#      bookworm (+ bookworm-updates, bookworm-security) with python3, python3-venv (ensurepip),
#      python-is-python3 (the Dockerfile runs `python`) and ca-certificates, from the Debian mirror
#      the machine's apt uses. The root filesystem tarball is cached in
#      $K2T_CACHE/image/base-<key>.tar and added to buildah's local store as
#      localhost/k2think-base-python:3.11-bookworm-<key> (a two-line Containerfile: FROM scratch,
#      ADD the tarball).
#   2. The image: `buildah bud --isolation=chroot` of docker/Dockerfile with
#      --build-arg PYTHON_IMAGE=<that base> and the Dockerfile's own ignore file, tagged
#      localhost/k2think-operator:<chart appVersion> (what `buildah images` lists; override the
#      name with IMAGE=...). pip reaches PyPI as on any machine; when this machine reaches it
#      through a TLS-intercepting proxy ($PIP_CERT / $SSL_CERT_FILE name a CA bundle), that bundle
#      and a pip.conf naming it are bind-mounted into the build's RUN steps only (buildah -v):
#      nothing of the build host is committed to the image.
#   3. Cache: the image carries the label dev.k2think.inputs=<sha256 of the Dockerfile, its ignore
#      file, pyproject.toml, README.md, operator/ and this script>; when the store already holds
#      the tag with that label, nothing is built (a second `make image` is a no-op).
#
# Needs buildah and mmdebstrap (`make system-deps`); runs as root or rootless (buildah unshare).
# A machine with Docker builds the same image with `docker build -f docker/Dockerfile .`
# (docs/install.md).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${K2T_CACHE:-$HOME/.cache/k2think-operator}/image"
VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/k2think-operator/Chart.yaml)"
IMAGE="${IMAGE:-localhost/k2think-operator:$VERSION}"
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
LABEL=dev.k2think.inputs

log() { echo "build-image: $*" >&2; }

for tool in buildah mmdebstrap; do
    command -v "$tool" >/dev/null || { log "$tool missing: run make system-deps"; exit 1; }
done
[[ -n "$VERSION" ]] || { log "no appVersion in charts/k2think-operator/Chart.yaml"; exit 1; }

# The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org.
mirror() {
    local uri
    uri="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' \
        | grep -v -- '-security' | head -n1 || true)"
    [[ -n "$uri" ]] || uri="$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)"
    echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR="$(mirror)"
SECURITY_MIRROR="${MIRROR%/debian}/debian-security"

hash_files() { sha256sum "$@" | sha256sum | cut -c1-16; }

BASE_KEY="$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)"
BASE_IMAGE="localhost/k2think-base-python:3.11-$SUITE-$BASE_KEY"
INPUTS="$(hash_files docker/Dockerfile docker/Dockerfile.dockerignore pyproject.toml README.md \
    docker/build-image.sh $(git ls-files operator 2>/dev/null || find operator -name '*.py' | sort))"

current="$(buildah inspect --type image --format "{{ index .Docker.Config.Labels \"$LABEL\" }}" \
    "$IMAGE" 2>/dev/null || true)"
if [[ "$current" == "$INPUTS" ]]; then
    log "$IMAGE is up to date (inputs $INPUTS)"
    exit 0
fi

mkdir -p "$CACHE"
if ! buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    tarball="$CACHE/base-$BASE_KEY.tar"
    if [[ ! -s "$tarball" ]]; then
        log "mmdebstrap $SUITE ($BASE_PACKAGES) from $MIRROR"
        mmdebstrap --variant=essential --include="$BASE_PACKAGES" --mode=auto --format=tar "$SUITE" \
            "$tarball.tmp" \
            "deb $MIRROR $SUITE main" \
            "deb $MIRROR $SUITE-updates main" \
            "deb $SECURITY_MIRROR $SUITE-security main" >&2
        mv "$tarball.tmp" "$tarball"
    fi
    ctx="$(mktemp -d)"
    trap 'rm -rf "$ctx"' EXIT
    ln "$tarball" "$ctx/rootfs.tar" 2>/dev/null || cp "$tarball" "$ctx/rootfs.tar"
    printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n' >"$ctx/Containerfile"
    log "importing the base as $BASE_IMAGE"
    buildah bud --isolation=chroot --pull=never -f "$ctx/Containerfile" -t "$BASE_IMAGE" "$ctx" >&2
fi

mounts=()
ca="${K2T_BUILD_CA:-${PIP_CERT:-${SSL_CERT_FILE:-}}}"
if [[ -n "$ca" && -f "$ca" ]]; then
    # For the build's RUN steps only (pip's own CA list lacks an intercepting proxy's CA).
    printf '[global]\ncert = /run/k2t-build/ca.crt\n' >"$CACHE/pip.conf"
    mounts=(-v "$(readlink -f "$ca"):/run/k2t-build/ca.crt:ro" -v "$CACHE/pip.conf:/etc/pip.conf:ro")
fi

log "building $IMAGE from docker/Dockerfile (inputs $INPUTS)"
buildah bud --isolation=chroot --pull=never --layers=false \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    --ignorefile docker/Dockerfile.dockerignore \
    --label "$LABEL=$INPUTS" \
    "${mounts[@]}" \
    -f docker/Dockerfile -t "$IMAGE" . >&2
log "built $IMAGE"
buildah images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE" >&2
