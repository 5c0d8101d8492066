#!/usr/bin/env bash
# Run the chain suite (e2e/chain/): Serve demand -> Ray's autoscaler -> KubeRay -> scheduler ->
# KWOK pod -> real Ray node, on the local control plane, with real Ray processes per pod.
#
# It holds the machine-wide lock for heavy runs (/tmp/k2t-heavy.lock: Ray + vLLM processes), then
# enters a network AND mount namespace of its own (unshare -n -m): the control plane, KubeRay, the
# operator, the Ray processes and the test client all live there; pod addresses (10.244.0.0/16)
# and the kubernetes Service address exist only inside it, and /etc/hosts is replaced only there.
# Extra arguments go to pytest, e.g. `e2e/chain/run.sh -k spill`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${DATAPLANE_VENV:-$ROOT/.venv-dataplane}"
cd "$ROOT"

"$ROOT/e2e/dataplane/install.sh"
bash "$ROOT/e2e/scripts/build-binaries.sh" >/dev/null

if [[ "${K2T_HEAVY_LOCKED:-0}" != "1" ]]; then
  echo "chain suite: waiting for /tmp/k2t-heavy.lock"
  exec env K2T_HEAVY_LOCKED=1 flock /tmp/k2t-heavy.lock "$0" "$@"
fi

cmd=("$VENV/bin/python" -m pytest e2e/chain -p no:cacheprovider -o addopts=
     -o asyncio_default_fixture_loop_scope=function -rA --durations=0 "$@")
echo "chain suite: private network + mount namespace"
exec unshare -n -m --propagation private -- \
  env K2T_CHAIN_NETNS=1 K2T_OUTER_MNTNS="$(readlink /proc/self/ns/mnt)" K2T_CHAIN_VENV="$VENV" bash -c 'ip link set lo up && exec "$@"' _ "${cmd[@]}"
