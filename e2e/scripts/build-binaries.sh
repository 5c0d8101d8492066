#!/usr/bin/env bash
# Build (or reuse) every binary of the local test ground and print the directory holding them.
#
#   e2e/scripts/build-binaries.sh           # builds what is missing, prints the bin dir on stdout
#   e2e/scripts/build-binaries.sh --print   # prints the bin dir without building anything
#   e2e/scripts/build-binaries.sh --print-kueue   # prints Kueue's directory (bin, crds/, webhook/)
#   e2e/scripts/build-binaries.sh --print-kube-router   # prints kube-router's directory
#   e2e/scripts/build-binaries.sh --print-traefik   # prints Traefik's directory
#   e2e/scripts/build-binaries.sh --print-gateway-api   # prints the Gateway API CRDs' directory
#
# Versions come from e2e/build/versions.env only. The binaries land in
#   ${K2T_CACHE:-$HOME/.cache/k2think-operator}/bin/<key>/
# where <key> is the Kubernetes version plus a hash of versions.env and of the Go sources under
# e2e/build/, so bumping a version (or editing a main) builds into a new directory. A second run
# with everything present only hashes a few files. Progress goes to stderr; stdout is the path.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BUILD_SRC="$(cd "$HERE/../build" && pwd)"
CACHE="${K2T_CACHE:-$HOME/.cache/k2think-operator}"

# shellcheck source=../build/versions.env
source "$BUILD_SRC/versions.env"
: "${KUBERNETES_VERSION:?}" "${ETCD_VERSION:?}" "${KWOK_VERSION:?}" "${KUBERAY_VERSION:?}"
: "${HELM_VERSION:?}" "${KUEUE_VERSION:?}" "${KUBE_ROUTER_VERSION:?}"
: "${TRAEFIK_VERSION:?}" "${TRAEFIK_PATCH:?}"

# versions.env is hashed only up to its "optional components" marker: those components (Kueue)
# live in directories keyed by their own version, so adding one never rebuilds Kubernetes.
OPTIONAL_MARKER='^# ---- optional components'
hash_inputs() {
    (
        cd "$BUILD_SRC"
        find . -type f -name '*.go' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        echo "$(sed "/$OPTIONAL_MARKER/,\$d" versions.env | sha256sum | cut -d' ' -f1)  ./versions.env"
    ) | LC_ALL=C sort -k2 | sha256sum | cut -c1-10
}
KEY="${KUBERNETES_VERSION}-$(hash_inputs)"
BIN="$CACHE/bin/$KEY"
KUEUE_BIN="$CACHE/bin/kueue-${KUEUE_VERSION:?}"
KUBE_ROUTER_BIN="$CACHE/bin/kube-router-${KUBE_ROUTER_VERSION:?}"
TRAEFIK_BIN="$CACHE/bin/traefik-${TRAEFIK_VERSION}-${TRAEFIK_PATCH}"
GATEWAY_API_DIR="$CACHE/bin/gateway-api-${GATEWAY_API_VERSION:?}"
KUBE_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
ALL_BINS=("${KUBE_BINS[@]}" etcd kwok ray-operator helm)
STAGES=(node-initialize node-heartbeat pod-ready pod-complete pod-delete)

complete() {
    local b
    for b in "${ALL_BINS[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
    for b in "${STAGES[@]}"; do [[ -s "$BIN/kwok-stages/$b.yaml" ]] || return 1; done
    compgen -G "$BIN/crds/kuberay/*.yaml" >/dev/null || return 1
    [[ -s "$BIN/versions.env" ]] && kueue_complete && kube_router_complete && traefik_complete \
        && gateway_api_complete
}

gateway_api_complete() { compgen -G "$GATEWAY_API_DIR/crds/*.yaml" >/dev/null; }

kube_router_complete() { [[ -x "$KUBE_ROUTER_BIN/kube-router" ]]; }
traefik_complete() { [[ -x "$TRAEFIK_BIN/traefik" ]]; }

kueue_complete() {
    [[ -x "$KUEUE_BIN/kueue" && -s "$KUEUE_BIN/webhook/manifests.yaml" ]] \
        && compgen -G "$KUEUE_BIN/crds/*.yaml" >/dev/null
}

if [[ "${1:-}" == "--print" ]]; then
    echo "$BIN"
    exit 0
fi
if [[ "${1:-}" == "--print-kueue" ]]; then
    echo "$KUEUE_BIN"
    exit 0
fi
if [[ "${1:-}" == "--print-kube-router" ]]; then
    echo "$KUBE_ROUTER_BIN"
    exit 0
fi
if [[ "${1:-}" == "--print-traefik" ]]; then
    echo "$TRAEFIK_BIN"
    exit 0
fi
if [[ "${1:-}" == "--print-gateway-api" ]]; then
    echo "$GATEWAY_API_DIR"
    exit 0
fi
if complete; then
    echo "$BIN"
    exit 0
fi

log() { echo "build-binaries: $*" >&2; }
# Non-interactive shells (CI) may not have the PATH that ~/.bashrc sets up.
if ! command -v go >/dev/null; then
    for d in /usr/local/go/bin /usr/lib/go/bin "$HOME/go/bin" "$HOME/sdk/go/bin"; do
        if [[ -x "$d/go" ]]; then export PATH="$d:$PATH"; break; fi
    done
fi
command -v go >/dev/null || { log "go is not on PATH (need Go >= 1.26)"; exit 1; }

mkdir -p "$BIN" "$CACHE/src"
# One builder at a time per key (make demo and a test run may race on a fresh machine).
exec 9>"$BIN/.lock"
if command -v flock >/dev/null; then flock 9; fi
if complete; then echo "$BIN"; exit 0; fi

export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
GOMODCACHE="$(go env GOMODCACHE)"
START=$SECONDS

# staging minor: v1.36.3 -> v0.36.3
STAGING_VERSION="v0.${KUBERNETES_VERSION#v1.}"
K8S_MINOR="${KUBERNETES_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"

build_kube() {
    local work="$CACHE/src/$KEY/kube"
    log "kube: k8s.io/kubernetes $KUBERNETES_VERSION (staging $STAGING_VERSION) in $work"
    rm -rf "$work" && mkdir -p "$work"
    cp -r "$BUILD_SRC/kube/." "$work/"
    (
        cd "$work"
        go mod init k2think.dev/e2e/kube >/dev/null 2>&1
        go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
        go mod download "k8s.io/kubernetes@$KUBERNETES_VERSION"
        local gomod="$GOMODCACHE/k8s.io/kubernetes@$KUBERNETES_VERSION/go.mod" mods=() m
        mapfile -t mods < <(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$gomod")
        [[ ${#mods[@]} -gt 0 ]] || { log "no staging replaces found in $gomod"; exit 1; }
        for m in "${mods[@]}"; do
            go mod edit -replace="$m=$m@$STAGING_VERSION"
        done
        # Some staging modules (sample-*) are not served by the proxy; tidy only needs those used.
        if ! go mod tidy >tidy.log 2>&1; then
            log "go mod tidy failed:"; cat tidy.log >&2; exit 1
        fi
        local ld="-s -w" p
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ld+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1"
            ld+=" -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
            ld+=" -X $p.buildDate=1970-01-01T00:00:00Z"
        done
        local pkgs=()
        for p in "${KUBE_BINS[@]}"; do pkgs+=("./cmd/$p"); done
        # One go build for the four binaries: shared packages compile once.
        go build -ldflags="$ld" -o "$BIN/.tmp-kube/" "${pkgs[@]}"
    )
    local b
    for b in "${KUBE_BINS[@]}"; do mv -f "$BIN/.tmp-kube/$b" "$BIN/$b"; done
    rmdir "$BIN/.tmp-kube"
}

build_etcd() {
    local work="$CACHE/src/$KEY/etcd"
    log "etcd: go.etcd.io/etcd/server/v3 $ETCD_VERSION in $work"
    rm -rf "$work" && mkdir -p "$work"
    cp -r "$BUILD_SRC/etcd/." "$work/"
    (
        cd "$work"
        go mod init k2think.dev/e2e/etcd >/dev/null 2>&1
        go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
        go mod tidy >tidy.log 2>&1 || { cat tidy.log >&2; exit 1; }
        go build -ldflags="-s -w" -o "$BIN/.tmp-etcd" .
    )
    mv -f "$BIN/.tmp-etcd" "$BIN/etcd"
}

go_install_to() { # <directory> <binary name> <package@version> [extra ldflags]
    log "$2: go install $3 into $1"
    GOBIN="$1/.tmp-$2" go install -ldflags="-s -w ${4:-}" "$3"
    local built
    built="$(find "$1/.tmp-$2" -maxdepth 1 -type f -perm -u+x | head -n1)"
    [[ -n "$built" ]] || { log "go install $3 produced no binary"; exit 1; }
    mv -f "$built" "$1/$2"
    rm -rf "$1/.tmp-$2"
}
go_install() { go_install_to "$BIN" "$@"; } # <binary name> <package@version> [extra ldflags]

missing() { local b; for b in "$@"; do [[ -x "$BIN/$b" ]] || return 0; done; return 1; }

if missing "${KUBE_BINS[@]}"; then build_kube; fi
if missing etcd; then build_etcd; fi
if missing kwok; then go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"; fi
if missing ray-operator; then
    go_install ray-operator "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION"
fi
if missing helm; then
    go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
        "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
fi

build_kueue() { # its own directory and lock: keyed by KUEUE_VERSION, not by the Kubernetes key
    mkdir -p "$KUEUE_BIN"
    exec 8>"$KUEUE_BIN/.lock"
    if command -v flock >/dev/null; then flock 8; fi
    if kueue_complete; then return 0; fi
    go_install_to "$KUEUE_BIN" kueue "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION" \
        "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
    # CRDs and webhook configurations, copied so nothing reads GOMODCACHE at run time.
    local dir
    dir="$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    mkdir -p "$KUEUE_BIN/crds" "$KUEUE_BIN/webhook"
    cp "$dir"/config/components/crd/bases/*.yaml "$KUEUE_BIN/crds/"
    cp "$dir/config/components/webhook/manifests.yaml" "$KUEUE_BIN/webhook/manifests.yaml"
    chmod -R u+w "$KUEUE_BIN/crds" "$KUEUE_BIN/webhook"
    echo "KUEUE_VERSION=$KUEUE_VERSION" >"$KUEUE_BIN/version.env"
}
if ! kueue_complete; then build_kueue; fi

build_kube_router() { # keyed by KUBE_ROUTER_VERSION, like Kueue
    mkdir -p "$KUBE_ROUTER_BIN"
    exec 7>"$KUBE_ROUTER_BIN/.lock"
    if command -v flock >/dev/null; then flock 7; fi
    if kube_router_complete; then return 0; fi
    local module=github.com/cloudnativelabs/kube-router/v2
    go_install_to "$KUBE_ROUTER_BIN" kube-router "$module/cmd/kube-router@$KUBE_ROUTER_VERSION" \
        "-X $module/pkg/version.Version=$KUBE_ROUTER_VERSION"
    echo "KUBE_ROUTER_VERSION=$KUBE_ROUTER_VERSION" >"$KUBE_ROUTER_BIN/version.env"
}
if ! kube_router_complete; then build_kube_router; fi

module_dir() { # the module's directory in the Go module cache (downloaded if needed)
    go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

build_traefik() { # keyed by TRAEFIK_VERSION and TRAEFIK_PATCH (the recipe below)
    mkdir -p "$TRAEFIK_BIN"
    exec 8>"$TRAEFIK_BIN/.lock"
    if command -v flock >/dev/null; then flock 8; fi
    if traefik_complete; then return 0; fi
    local src="$TRAEFIK_BIN/src"
    rm -rf "$src"
    cp -r "$(module_dir "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")" "$src"
    chmod -R u+w "$src"
    # 1. The forks its go.mod replaces two modules with are not served: use upstream instead.
    sed -i -e '/=> github.com\/containous\/go-http-auth /d' -e '/=> github.com\/containous\/mux /d' \
        -e 's#github.com/abbot/go-http-auth v0.0.0-00010101000000-000000000000#github.com/abbot/go-http-auth v0.4.0#' \
        "$src/go.mod"
    #    The fork's two additions Traefik uses: a router option for its legacy (v2) rule syntax
    #    (matching then runs on the URL path) and a context key, made local.
    sed -i 's/mux\.NewRouter()\.UseRoutingPath()\.NewRoute()/mux.NewRouter().NewRoute()/' \
        "$src/pkg/muxer/http/matcher_v2.go"
    sed -i -e 's/mux\.RoutingPathKey/routingPathKey/g' -e '/^\t"github.com\/gorilla\/mux"$/d' \
        "$src/pkg/muxer/http/mux.go"
    printf '\ntype routingPathKeyType struct{}\n\nvar routingPathKey = routingPathKeyType{}\n' \
        >>"$src/pkg/muxer/http/mux.go"
    #    What upstream go-http-auth lacks: the basic-auth middleware refuses every password
    #    (its secret check is the fork's) and the digest one answers a stale nonce as a wrong one.
    sed -i 's/checkSecret:       goauth\.CheckSecret,/checkSecret:       func(string, string) bool { return false },/' \
        "$src/pkg/middlewares/auth/basic_auth.go"
    sed -i 's/d\.auth\.RequireAuthStale(rw, req)/d.auth.RequireAuth(rw, req)/' \
        "$src/pkg/middlewares/auth/digest_auth.go"
    # 2. lego (ACME) without its DNS-01 providers, whose cloud SDKs are refused.
    local lego_version
    lego_version="$(sed -n 's#^[[:space:]]*github.com/go-acme/lego/v5 \(v[^ ]*\).*#\1#p' "$src/go.mod" | head -n1)"
    cp -r "$(module_dir "github.com/go-acme/lego/v5@$lego_version")" "$src/third_party-lego"
    chmod -R u+w "$src/third_party-lego"
    rm -f "$src/third_party-lego/providers/dns/dns_providers_test.go"
    cat >"$src/third_party-lego/providers/dns/zz_gen_dns_providers.go" <<'GO'
// Trimmed by k2think-operator's e2e/scripts/build-binaries.sh: no DNS-01 providers (several of
// their SDKs are not served by the module proxy; the test ground's Gateway needs no ACME).

package dns

import (
	"fmt"

	"github.com/go-acme/lego/v5/challenge"
)

// NewDNSChallengeProviderByName refuses every name: no DNS-01 provider is built in.
func NewDNSChallengeProviderByName(name string) (challenge.Provider, error) {
	return nil, fmt.Errorf("unrecognized DNS provider: %s (not built into this Traefik)", name)
}
GO
    echo 'replace github.com/go-acme/lego/v5 => ./third_party-lego' >>"$src/go.mod"
    # 3. The nested module its go.mod replaces by ./pkg/config/dynamic/ext is not in the v3 zip
    #    (nor served): the dynamic configuration's extension points, empty structs in this build.
    mkdir -p "$src/pkg/config/dynamic/ext"
    printf 'module github.com/traefik/traefik/dynamic/ext\n\ngo 1.26.0\n' \
        >"$src/pkg/config/dynamic/ext/go.mod"
    cat >"$src/pkg/config/dynamic/ext/ext.go" <<'GO'
// Package ext stands in for Traefik's nested module github.com/traefik/traefik/dynamic/ext,
// left out of the v3 module's zip: the dynamic configuration's extension points, empty here.
package ext

// HTTP extends dynamic.HTTPConfiguration (nothing in this build).
type HTTP struct{}

// Router extends dynamic.Router (nothing in this build).
type Router struct{}
GO
    log "building Traefik $TRAEFIK_VERSION (patched, see versions.env) into $TRAEFIK_BIN"
    (cd "$src" && GOFLAGS=-mod=mod go build -trimpath \
        -ldflags "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
        -o "$TRAEFIK_BIN/traefik" ./cmd/traefik)
    rm -rf "$src"
    echo "TRAEFIK_VERSION=$TRAEFIK_VERSION TRAEFIK_PATCH=$TRAEFIK_PATCH" >"$TRAEFIK_BIN/version.env"
}
if ! traefik_complete; then build_traefik; fi

# The Gateway API's standard CRDs (the chain suite's incremental upgrade), copied out of the module
# cache: the suite runs in a network namespace of its own, where the Go proxy cannot be reached.
fetch_gateway_api() {
    mkdir -p "$GATEWAY_API_DIR/crds"
    local dir f
    dir="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
    for f in "$dir"/config/crd/standard/*.yaml; do
        # The CRDs only: v1.5+ ships a ValidatingAdmissionPolicy beside them.
        if grep -q '^kind: CustomResourceDefinition' "$f"; then cp "$f" "$GATEWAY_API_DIR/crds/"; fi
    done
    chmod -R u+w "$GATEWAY_API_DIR/crds"
    gateway_api_complete || { log "no Gateway API CRDs in $dir"; exit 1; }
}
if ! gateway_api_complete; then fetch_gateway_api; fi

# Data files the harness needs, copied next to the binaries so nothing reads GOMODCACHE at run time.
kuberay_dir="$(go mod download -json "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "$BIN/crds/kuberay"
cp "$kuberay_dir"/config/crd/bases/*.yaml "$BIN/crds/kuberay/"
chmod u+w "$BIN"/crds/kuberay/*.yaml

kwok_dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
mkdir -p "$BIN/kwok-stages"
for s in "${STAGES[@]}"; do
    f="$(find "$kwok_dir/kustomize/stage" -name "$s.yaml" -path '*/fast/*' | head -n1)"
    [[ -n "$f" ]] || f="$(find "$kwok_dir/kustomize/stage" -name "$s.yaml" | head -n1)"
    [[ -n "$f" ]] || { log "stage $s.yaml not found under $kwok_dir/kustomize/stage"; exit 1; }
    cp "$f" "$BIN/kwok-stages/$s.yaml"
    chmod u+w "$BIN/kwok-stages/$s.yaml"
done

cp "$BUILD_SRC/versions.env" "$BIN/versions.env"
log "done in $((SECONDS - START))s: $BIN"
complete || { log "incomplete build in $BIN"; exit 1; }
echo "$BIN"
