#!/usr/bin/env bash
# Sets up a rented GPU node (a fresh Ubuntu 22.04/24.04 or Debian image) for multitenant: the
# system packages the build and vLLM's venv need, vLLM (the CUDA build the driver can run) in
# its own venv, and the agent and coordinator built from this checkout. Run from the repository
# root on the node:
#
#   scripts/node-setup.sh [VLLM_VERSION]      # e.g. 0.32.0; default: the newest on PyPI
#
# Prints the paths to use: AGENT, COORDINATOR, VLLM and the Python of vLLM's venv. Each step
# says SKIP with the reason where this machine cannot do it (no NVIDIA driver: vLLM's GPU
# build is not installed), and the script still ends with the binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MULTITENANT_VLLM_VENV:-$HOME/.cache/multitenant/vllm}
say() { printf '[node-setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# A C compiler (ring and mimalloc build C), pkg-config, Python's venv and pip, curl for rustup.
missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v curl >/dev/null || missing+=(curl ca-certificates)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if command -v cargo >/dev/null; then
  :
elif [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
else
  say "installing Rust through rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
fi
say "building the agent and the coordinator (release)"
cargo build --release -p agent -p coordinator

if ! command -v nvidia-smi >/dev/null; then
  say "SKIP vLLM: nvidia-smi is not here, so there is no NVIDIA driver to build vLLM's GPU install for"
else
  # vLLM's default wheels are built for CUDA 13 from 0.20 on: a 12.x driver, or a GPU below
  # compute capability 7.5, needs the cu129 variant (docs/gpu-first-contact.md, items 7-8).
  driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\)\..*/\1/p' | head -n 1 || true)
  capability=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '. ' || true)
  variant=
  if [ -n "$driver_cuda" ] && { [ "$driver_cuda" -lt 13 ] || [ "${capability:-75}" -lt 75 ]; }; then
    variant=cu129
  fi
  if [ ! -x "$VENV/bin/vllm" ]; then
    say "installing vLLM${1:+ $1} into $VENV (driver CUDA ${driver_cuda:-unknown}, compute capability ${capability:-unknown}: ${variant:-default} wheels)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    if [ -n "$variant" ]; then
      version=${1:-$("$VENV/bin/pip" index versions vllm 2>/dev/null | sed -n 's/^vllm (\(.*\))$/\1/p')}
      "$VENV/bin/pip" install -q "vllm==$version" \
        --extra-index-url "https://wheels.vllm.ai/$version/$variant" \
        --extra-index-url "https://download.pytorch.org/whl/$variant"
    else
      "$VENV/bin/pip" install -q "vllm${1:+==$1}"
    fi
  fi
  "$VENV/bin/vllm" --version >&2
  echo "VLLM=$VENV/bin/vllm"
  echo "PYTHON=$VENV/bin/python3"
fi
echo "AGENT=$PWD/target/release/agent"
echo "COORDINATOR=$PWD/target/release/coordinator"
