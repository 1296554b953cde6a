#!/usr/bin/env bash
# The first time multitenant meets a real GPU node: four checks, each printed as one line,
# PASS, FAIL, or SKIP with the reason the node could not be checked for it. Exits 1 when a
# check failed (a SKIP is not a failure), 0 otherwise.
#
#   1. doctor: `agent doctor` sees a GPU through NVML, and the engine's PyTorch initialises
#      CUDA on its driver (its `cuda` check);
#   2. NVML sampling: a 6 s simulated trial on this node writes gpu.jsonl samples with
#      utilization, memory, power and, where the GPU has one, an energy counter that grows;
#   3. MPS: an mps trial starts its MPS daemon, finds a vLLM tenant among its clients and
#      quits the daemon (needs nvidia-cuda-mps-control and vLLM);
#   4. two tenants: a solo + timeslice + mps experiment of two vLLM tenants of a tiny model,
#      every trial finished with completed requests; it prints the compute mode each trial ran
#      in (timeslice should be DEFAULT and mps EXCLUSIVE_PROCESS; the agent sets them only as
#      root) for the reader to check.
# docs/gpu-first-contact.md lists what else only hardware can confirm.
#
#   scripts/gpu-acceptance.sh            # binaries from target/release
# Environment: AGENT, COORDINATOR (the binaries), VLLM (default: vllm on PATH), MODEL (a model
# folder; default: a tiny random-weight Llama made on the spot with vLLM's Python, no hub
# contacted), OUT (where the experiments go; default: a new temporary folder).
set -uo pipefail
cd "$(dirname "$0")/.."

agent=${AGENT:-target/release/agent}
coordinator=${COORDINATOR:-target/release/coordinator}
vllm=${VLLM:-vllm}
out=${OUT:-$(mktemp -d -t gpu-acceptance.XXXXXX)}
mkdir -p "$out"
failed=0

pass() { printf 'PASS  %-14s %s\n' "$1" "$2"; }
fail() { printf 'FAIL  %-14s %s\n' "$1" "$2"; failed=1; }
skip() { printf 'SKIP  %-14s skipped, because %s\n' "$1" "$2"; }
indent() { sed 's/^/      | /'; }

for binary in "$agent" "$coordinator"; do
  if ! [ -x "$binary" ]; then
    echo "no $binary: build with \`cargo build --release -p agent -p coordinator\` (or set AGENT, COORDINATOR)" >&2
    exit 2
  fi
done
echo "gpu-acceptance: experiments in $out"

# The one experiment folder a `coordinator run --output-dir $1` made.
experiment_dir() { find "$1" -mindepth 1 -maxdepth 1 -type d | head -n 1; }

# Runs config $2 into $out/$1; its terminal output goes to $out/$1.log.
run_experiment() {
  "$coordinator" run "$2" --output-dir "$out/$1" > "$out/$1.log" 2>&1
}

# 1. doctor
gpu=0
report=$("$agent" doctor --vllm "$vllm" 2>&1)
echo "$report" | indent
if grep -q '^ok      gpu ' <<< "$report"; then
  gpu=1
  pass doctor "$(grep '^ok      gpu ' <<< "$report" | sed 's/^ok      gpu  *//')"
else
  fail doctor "no GPU through NVML: $(grep '^missing gpu ' <<< "$report" | sed 's/^missing gpu  *//')"
fi
have_mps=0
grep -q '^ok      mps ' <<< "$report" && have_mps=1
have_vllm=0
grep -q '^ok      vllm ' <<< "$report" && have_vllm=1
if grep -q '^FAIL    cuda ' <<< "$report"; then
  fail cuda "$(grep '^FAIL    cuda ' <<< "$report" | sed 's/^FAIL    cuda  *//')"
  have_vllm=0
fi

# 2. NVML sampling during a simulated trial
if [ "$gpu" = 1 ]; then
  cat > "$out/sampling.yaml" <<'YAML'
name: gpu-sampling
workloads:
  w: {arrival: {kind: constant, rate: 20}, data: {prompt_tokens: 16, output_tokens: 16}, warmup: 0s, duration: 6s}
nodes:
  - {name: node, trials: [solo], tenants: [{name: sim, engine: {kind: simulated}, workload: w}]}
YAML
  if run_experiment sampling "$out/sampling.yaml"; then
    samples=$(find "$out/sampling" -name gpu.jsonl | head -n 1)
    if [ -z "$samples" ]; then
      fail sampling "the trial wrote no gpu.jsonl (see $out/sampling.log)"
    elif verdict=$(python3 - "$samples" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
samples = [r for r in rows if r.get("type") == "gpu_sample"]
need = ["utilization_gpu_pct", "memory_used_bytes", "power_mw"]
missing = [k for k in need if not any(s.get(k) is not None for s in samples)]
if len(samples) < 3:
    sys.exit(f"only {len(samples)} samples in 6 s")
if missing:
    sys.exit("no sample has " + ", ".join(missing))
energy = [s["energy_mj"] for s in samples if s.get("energy_mj") is not None]
if not energy:
    used = "energy skipped, because this GPU has no energy counter (NVML: not supported)"
elif energy[-1] <= energy[0]:
    sys.exit(f"the energy counter did not grow ({energy[0]} to {energy[-1]} mJ)")
else:
    used = f"{energy[-1] - energy[0]} mJ used"
power = max(s.get("power_mw") or 0 for s in samples) / 1000
print(f"{len(samples)} samples of {len({s['gpu'] for s in samples})} GPU(s); up to {power:.0f} W; {used}")
PY
    ); then
      pass sampling "$verdict"
    else
      fail sampling "$verdict"
    fi
  else
    fail sampling "the simulated experiment failed: $(tail -n 3 "$out/sampling.log" | tr '\n' ' ')"
  fi
else
  skip sampling "NVML sees no GPU (step 1)"
fi

# The model vLLM serves in steps 3 and 4.
model=${MODEL:-}
if [ "$have_vllm" = 1 ] && [ -z "$model" ]; then
  # The Python of vLLM's own environment: the interpreter its launcher names, else python3
  # beside it (a venv has python3; not every one has python).
  launcher=$(command -v "$vllm" || echo "$vllm")
  python=$(head -n 1 "$launcher" | sed -n 's/^#!\([^ ]*python[^ ]*\)$/\1/p')
  [ -n "$python" ] || python=$(dirname "$(readlink -f "$launcher")")/python3
  model="$out/tiny-model"
  mkdir -p "$model"
  if ! "$python" scripts/make-tiny-model.py "$model" > "$out/tiny-model.log" 2>&1; then
    echo "      | cannot make a tiny model with $python: $(tail -n 1 "$out/tiny-model.log")"
    model=""
  fi
fi

# A vllm tenant of the tiny model; $1 its name, $2 its share of GPU memory.
tenant() {
  cat <<YAML
      - name: $1
        workload: w
        engine:
          kind: vllm
          model: $model
          served_model_name: tiny-$1
          executable: $vllm
          gpu_memory_fraction: $2
          startup_timeout: 600s
          args: [--max-model-len, "2048", --enforce-eager]
          env: {HF_HUB_OFFLINE: "1", TRANSFORMERS_OFFLINE: "1"}
YAML
}

workload() {
  cat <<YAML
workloads:
  w: {api: completions, ignore_eos: true, arrival: {kind: concurrency, n: 4}, data: {prompt_tokens: 32, output_tokens: 64, tokenizer: $model/tokenizer.json}, warmup: 2s, duration: $1}
YAML
}

# 3. MPS with a vLLM client
if [ "$gpu" = 0 ]; then
  skip mps "NVML sees no GPU (step 1)"
elif [ "$have_mps" = 0 ]; then
  skip mps "nvidia-cuda-mps-control is not on this node (agent doctor: mps missing)"
elif [ "$have_vllm" = 0 ] || [ -z "$model" ]; then
  skip mps "vLLM ($vllm) or a model for it is not on this node"
else
  { echo "name: gpu-mps"; workload 8s; echo "nodes:"; echo "  - name: node"; echo "    trials: [mps]"; echo "    tenants:"; tenant a 0.3; } > "$out/mps.yaml"
  run_experiment mps "$out/mps.yaml"
  stream=$(find "$out/mps" -path '*/mps/agent.jsonl' | head -n 1)
  if [ -z "$stream" ]; then
    fail mps "no mps trial was recorded: $(tail -n 3 "$out/mps.log" | tr '\n' ' ')"
  elif verdict=$(python3 - "$stream" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
states = [r["state"] for r in rows if r.get("type") == "mps"]
details = {r["state"]: r["detail"] for r in rows if r.get("type") == "mps"}
if states != ["started", "verified", "stopped"]:
    sys.exit(f"MPS went {states}: {details}")
print(f"daemon started, {details['verified']}, daemon quit")
PY
  ); then
    pass mps "$verdict"
  else
    fail mps "$verdict (see $stream)"
  fi
fi

# 4. Two vLLM tenants, alone and under MPS
if [ "$gpu" = 0 ]; then
  skip two-tenants "NVML sees no GPU (step 1)"
elif [ "$have_vllm" = 0 ] || [ -z "$model" ]; then
  skip two-tenants "vLLM ($vllm) or a model for it is not on this node"
else
  trials="[solo, timeslice, mps]"
  [ "$have_mps" = 1 ] || trials="[solo, timeslice]"
  { echo "name: gpu-two-tenants"; workload 10s; echo "nodes:"; echo "  - name: node"; echo "    trials: $trials"; echo "    tenants:"; tenant a 0.3; tenant b 0.3; } > "$out/two.yaml"
  run_experiment two "$out/two.yaml"
  dir=$(experiment_dir "$out/two")
  if [ -z "$dir" ] || ! [ -f "$dir/summary.json" ]; then
    fail two-tenants "no summary: $(tail -n 3 "$out/two.log" | tr '\n' ' ')"
  elif verdict=$(python3 - "$dir/summary.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
trials = summary["nodes"][0]["trials"]
bad = [f"{t['trial']}: {t['state']} ({t.get('reason')})" for t in trials if t["state"] != "finished"]
idle = [f"{t['trial']}/{x['tenant']}" for t in trials for x in t["tenants"] if not x["completed"]]
if bad or idle:
    sys.exit("; ".join(bad + [f"{i} completed nothing" for i in idle]))
def ttft(t, name):
    x = next(x for x in t["tenants"] if x["tenant"] == name)
    return (x.get("ttft_ms") or {}).get("p50")
shared = trials[-1]
print(f"{', '.join(t['trial'] for t in trials)} finished; {shared['trial']} TTFT p50 a {ttft(shared, 'a')} ms, b {ttft(shared, 'b')} ms")
PY
  ) && verdict="$verdict; $(python3 - "$dir" <<'PY'
import json, pathlib, sys
# The compute mode each shared trial ran in, from the agent's compute_mode events.
said = []
for stream in sorted(pathlib.Path(sys.argv[1]).glob("nodes/*/*/agent.jsonl")):
    rows = [json.loads(l) for l in open(stream)]
    modes = [f"{r['state']} {r['mode']}" for r in rows if r.get("type") == "compute_mode"]
    if modes:
        said.append(f"{stream.parent.name}: {', '.join(modes)}")
print("; ".join(said) or "no compute-mode events (nvidia-smi missing)")
PY
  )"; then
    pass two-tenants "$verdict"
  else
    fail two-tenants "$verdict (see $dir)"
  fi
  [ "$have_mps" = 1 ] || echo "      | (timeslice instead of mps: this node has no MPS)"
fi

exit "$failed"
