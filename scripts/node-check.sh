#!/usr/bin/env bash
# Checks that a node can run multitenant experiments on a real GPU, using `agent doctor`:
# exits 1 when the GPU (NVML) or vLLM is missing, and says which sharing modes will work.
#
#   scripts/node-check.sh [VLLM]     # default: vllm on PATH
set -euo pipefail
cd "$(dirname "$0")/.."

agent=${AGENT:-target/release/agent}
[ -x "$agent" ] || { echo "no agent at $agent: run scripts/node-setup.sh first (or set AGENT)" >&2; exit 1; }
status=0
report=$("$agent" doctor --vllm "${1:-vllm}") || status=$?
echo "$report"
if [ "$status" -ne 0 ]; then
  echo "node-check: agent doctor found something that would fail (see the FAIL lines above)" >&2
  exit 1
fi
if grep -qE '^missing (gpu|vllm) ' <<< "$report"; then
  echo "node-check: this node cannot run real experiments (see the missing lines above)" >&2
  exit 1
fi
