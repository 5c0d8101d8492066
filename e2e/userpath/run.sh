#!/usr/bin/env bash
# Run the user's-path suite (e2e/userpath/): the chart installed with real helm, the operator running
# as pods from the image `make image` built, the shipped example served with every production
# default on, on the chain suite's test ground (e2e/chain/run.sh explains the namespaces).
# Extra arguments go to pytest, e.g. `e2e/userpath/run.sh -k probes`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${DATAPLANE_VENV:-$ROOT/.venv-dataplane}"
cd "$ROOT"

"$ROOT/e2e/dataplane/install.sh"
bash "$ROOT/e2e/scripts/build-binaries.sh" >/dev/null

if [[ "${K2T_HEAVY_LOCKED:-0}" != "1" ]]; then
  echo "userpath suite: waiting for /tmp/k2t-heavy.lock"
  exec env K2T_HEAVY_LOCKED=1 flock /tmp/k2t-heavy.lock "$0" "$@"
fi
# The image (a no-op when its inputs are unchanged; a build is heavy, so under the lock).
bash "$ROOT/docker/build-image.sh"

cmd=("$VENV/bin/python" -m pytest e2e/userpath -p no:cacheprovider -o addopts=
     -o asyncio_default_fixture_loop_scope=function -rA --durations=0 "$@")
echo "userpath suite: private network + mount namespace"
exec unshare -n -m --propagation private -- \
  env K2T_CHAIN_NETNS=1 K2T_OUTER_MNTNS="$(readlink /proc/self/ns/mnt)" K2T_CHAIN_VENV="$VENV" bash -c 'ip link set lo up && exec "$@"' _ "${cmd[@]}"
