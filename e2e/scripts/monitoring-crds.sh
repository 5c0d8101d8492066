#!/usr/bin/env bash
# Generate (or reuse) the monitoring.coreos.com CRDs the install e2e needs and print their directory.
#
#   e2e/scripts/monitoring-crds.sh      # prints the directory holding the three CRD files
#
# Source: the API types of prometheus-operator (Go module proxy), turned into CRDs by
# sigs.k8s.io/controller-tools' controller-gen, both pinned in e2e/build/monitoring.env. Output:
#   ${K2T_CACHE:-$HOME/.cache/k2think-operator}/monitoring-crds/<po>-<controller-tools>/
# Only servicemonitors, podmonitors and prometheusrules are kept (what the chart renders).
# A warm run only checks three files; a cold one takes ~1 min plus module downloads.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../build/monitoring.env
source "$HERE/../build/monitoring.env"
: "${PROMETHEUS_OPERATOR_VERSION:?}" "${CONTROLLER_TOOLS_VERSION:?}"
CACHE="${K2T_CACHE:-$HOME/.cache/k2think-operator}"
OUT="$CACHE/monitoring-crds/${PROMETHEUS_OPERATOR_VERSION}-${CONTROLLER_TOOLS_VERSION}"
KINDS=(servicemonitors podmonitors prometheusrules)

complete() {
    local k
    for k in "${KINDS[@]}"; do [[ -s "$OUT/monitoring.coreos.com_$k.yaml" ]] || return 1; done
}
if complete; then echo "$OUT"; exit 0; fi

log() { echo "monitoring-crds: $*" >&2; }
if ! command -v go >/dev/null; then
    for d in /usr/local/go/bin /usr/lib/go/bin "$HOME/go/bin" "$HOME/sdk/go/bin"; do
        if [[ -x "$d/go" ]]; then export PATH="$d:$PATH"; break; fi
    done
fi
command -v go >/dev/null || { log "go is not on PATH"; exit 1; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
if command -v flock >/dev/null; then flock 9; fi
if complete; then echo "$OUT"; exit 0; fi

export GOFLAGS="${GOFLAGS:-} -mod=mod -trimpath -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
work="$OUT/.work"
rm -rf "$work" && mkdir -p "$work/bin" "$work/mod" "$work/gen"
log "controller-gen $CONTROLLER_TOOLS_VERSION"
GOBIN="$work/bin" go install "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION"
API="github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
log "$API@$PROMETHEUS_OPERATOR_VERSION"
(
    cd "$work/mod"
    # A module that imports the API package, so controller-gen can load it with its dependencies.
    printf 'package tools\n\nimport _ "%s/v1"\n' "$API" > tools.go
    go mod init k2think.dev/e2e/monitoring-crds >/dev/null 2>&1
    go mod edit -require="$API@$PROMETHEUS_OPERATOR_VERSION"
    go mod tidy >tidy.log 2>&1 || { cat tidy.log >&2; exit 1; }
    "$work/bin/controller-gen" crd:crdVersions=v1 "paths=$API/v1" "output:crd:dir=$work/gen"
)
for k in "${KINDS[@]}"; do
    mv -f "$work/gen/monitoring.coreos.com_$k.yaml" "$OUT/"
done
rm -rf "$work"
log "done: $OUT"
echo "$OUT"
