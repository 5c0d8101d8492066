#!/usr/bin/env bash
# `make lint`: check .github/workflows/ with actionlint (github.com/rhysd/actionlint), built once
# per machine from the Go module proxy into $K2T_CACHE/bin/actionlint-<ACTIONLINT_VERSION>/
# (e2e/build/versions.env). The release workflow cannot run on these machines; actionlint checks
# its syntax, expressions, job/step references and known actions' inputs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=/dev/null
source <(grep '^ACTIONLINT_VERSION=' "$ROOT/e2e/build/versions.env")
BIN="${K2T_CACHE:-$HOME/.cache/k2think-operator}/bin/actionlint-${ACTIONLINT_VERSION:?}"
if [[ ! -x "$BIN/actionlint" ]]; then
    mkdir -p "$BIN"
    exec 9>"$BIN/.lock"
    flock 9
    if [[ ! -x "$BIN/actionlint" ]]; then
        echo "actionlint: building $ACTIONLINT_VERSION (go install, once per machine)" >&2
        GOBIN="$BIN" GOFLAGS=-trimpath go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
    fi
fi
cd "$ROOT"
"$BIN/actionlint" -no-color .github/workflows/*.yml
