#!/usr/bin/env python3
"""Writes a tiny random-weight Llama into the folder given (no model hub is contacted), for
vLLM tests on CPU (scripts/vllm-cpu-setup.sh) and GPU (scripts/gpu-acceptance.sh). Needs numpy,
safetensors and tokenizers, which vLLM's own environment has.

    python make-tiny-model.py DIR
"""
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
