#!/usr/bin/env bash
# Sets up a rented GPU node for multitenant: vLLM (CUDA build) in its own venv, and the agent
# built from this checkout. Run from the repository root on the node:
#
#   scripts/node-setup.sh [VLLM_VERSION]      # e.g. 0.11.0; default: the newest on PyPI
#
# Prints the paths to use: `agent serve --mps-control …` and the config's engine.executable.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MULTITENANT_VLLM_VENV:-$HOME/.cache/multitenant/vllm}
say() { printf '[node-setup] %s\n' "$*" >&2; }

command -v nvidia-smi >/dev/null || say "warning: nvidia-smi not found; is the NVIDIA driver installed?"
if [ ! -x "$VENV/bin/vllm" ]; then
  say "installing vLLM into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "vllm${1:+==$1}"
fi
"$VENV/bin/vllm" --version >&2

command -v cargo >/dev/null || { say "cargo not found: install Rust (https://rustup.rs) and run again"; exit 1; }
say "building the agent (release)"
cargo build --release -p agent
echo "AGENT=$PWD/target/release/agent"
echo "VLLM=$VENV/bin/vllm"
