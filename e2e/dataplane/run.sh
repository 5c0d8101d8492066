#!/usr/bin/env bash
# Run the data-plane suite: install .venv-dataplane if needed, then pytest -m dataplane.
#
# The tests run in a private network namespace (unshare -n, loopback only) when the machine
# allows it, so that Ray's internal services bind 127.0.0.1 as well and no packet can leave the
# host; set K2T_DATAPLANE_NETNS=0 to run in the host's namespace instead (Ray then uses the host's
# primary address for its internal traffic; the dashboard and Serve stay on 127.0.0.1).
# Extra arguments go to pytest, e.g. `e2e/dataplane/run.sh -k serving`.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${DATAPLANE_VENV:-$ROOT/.venv-dataplane}"
cd "$ROOT"

"$HERE/install.sh"

export K2T_DATAPLANE_REQUIRED=1
cmd=("$VENV/bin/python" -m pytest -m dataplane e2e/dataplane -p no:cacheprovider
     -o addopts= -o asyncio_default_fixture_loop_scope=function -rA --durations=0 "$@")

if [[ "${K2T_DATAPLANE_NETNS:-auto}" != "0" ]] && command -v unshare >/dev/null \
   && command -v ip >/dev/null && unshare -n true 2>/dev/null; then
  echo "data-plane suite: private network namespace (loopback only)"
  exec unshare -n -- bash -c 'ip link set lo up && exec "$@"' _ "${cmd[@]}"
fi
echo "data-plane suite: host network namespace (dashboard and Serve on 127.0.0.1)"
exec "${cmd[@]}"
