#!/usr/bin/env bash
# Install the Debian packages the test suite needs beyond Python and Go. Idempotent: does nothing
# (and needs no root, no network) when everything is already there.
#
#   lua5.4  -- runs the Argo CD health check (docs/gitops/argocd-health.lua) in
#              tests/test_argocd_health.py (Argo CD itself embeds gopher-lua, Lua 5.1 semantics:
#              the script sticks to the common subset, and the test also runs it on Lua 5.1).
#   prometheus -- the Prometheus server and promtool: `promtool test rules` proves the alert
#              rules (tests/test_alert_rules.py), and the e2e and data-plane suites run a real
#              Prometheus on loopback against the operator and the Ray head (docs/observability.md).
#              Installed with --no-install-recommends; nothing is started (the tests start their
#              own server with a temporary TSDB).
#   redis-server -- the external Redis of GCS fault tolerance in the chain suite's head-crash
#              scenario (e2e/chain/test_30_head_failure.py); the test starts its own instance
#              inside the suite's network namespace, the package's service is not used.
#   iptables, ipset -- what kube-router's NetworkPolicy controller drives (it execs iptables-save,
#              iptables-restore and ipset) on each simulated node of the chain suite
#              (e2e/harness/policyagent.py); only ever inside the suite's network namespaces.
#   buildah, mmdebstrap -- `make image` (docker/build-image.sh) without a Docker daemon: mmdebstrap
#              makes the Debian bookworm + python3 base from the Debian mirror, buildah builds
#              docker/Dockerfile on it with --isolation=chroot (docs/install.md).
#   uidmap     -- newuidmap/newgidmap: buildah's user-namespace helpers (needed when not root).
#   wget       -- KubeRay's readiness probe of Ray pods is `wget ... | grep success` run inside the
#              container; the chain suite's kubelet stand-in runs it on the host filesystem
#              (e2e/harness/raynodes.py), as a Ray image would carry it.
set -euo pipefail

PACKAGES=(lua5.4 prometheus redis-server iptables ipset buildah mmdebstrap uidmap wget)
COMMANDS=(lua5.4 promtool redis-server iptables-restore ipset buildah mmdebstrap newuidmap wget)

missing=()
for i in "${!COMMANDS[@]}"; do
    command -v "${COMMANDS[$i]}" >/dev/null 2>&1 || missing+=("${PACKAGES[$i]}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: already installed: ${PACKAGES[*]}" >&2
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "install-system-deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    }
    SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: installing ${missing[*]}" >&2
# Update the package lists only when a first install attempt cannot find the packages.
if ! "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
    "${SUDO[@]}" apt-get update -qq >&2
    "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
