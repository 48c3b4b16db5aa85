"""Hugging Face transformers reference for Modula's Llama-family engine (issue #30).

For each case it builds a small random-weight model with transformers' own
`LlamaForCausalLM` / `Qwen2ForCausalLM` (configuration variants: grouped-query attention,
tied and separate heads, linear rope scaling, Qwen2's q/k/v biases), writes it as a
llama.cpp-layout GGUF with gguf-py (llama.cpp's tensor and key names; for the `llama`
architecture the query and key rows permuted as llama.cpp's converter does, so its
adjacent-pair rotary embedding equals transformers' rotate-half), and the expected
outputs computed by transformers in float64 from the float32 weights:

    tests/fixtures/llama_parity/<case>/model.gguf          F32 weights
    tests/fixtures/llama_parity/<case>/model-f16.gguf      F16 matrices, F32 norms
    tests/fixtures/llama_parity/<case>/hf/                 for llama_gqa (f32, one file) and
        qwen2_bias (bf16, sharded with model.safetensors.index.json): save_pretrained's
        config.json and safetensors, and tokenizer.json
    tests/fixtures/llama_parity/<case>/expect.safetensors  input_ids [T] (int32),
        logits [T, vocab] (float32), greedy [32] (int32: transformers' greedy continuation),
        prompt_ids, prompt_greedy [16]: PROMPT encoded by the model's tokenizer, and
        transformers' greedy continuation of it; eval_text (bytes), eval_tokens, eval_loss:
        transformers' mean next-token NLL of EVAL as one window (bos first)

Each GGUF carries a byte-level BPE tokenizer trained with `tokenizers` on a small text, as
llama.cpp's tokenizer.ggml.* metadata (model gpt2), so `modula run` can be checked end to
end: text in, the same greedy ids as transformers out.

The Rust test `train/tests/llama_parity.rs` runs them with no Python. Run:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch transformers gguf safetensors
    /tmp/torchvenv/bin/python tests/reference/llama_reference.py
"""
import os

import gguf
import numpy as np
import torch
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "llama_parity")
T, GEN = 20, 32
PROMPT = "Once upon a time, the old miller's daughter"
EVAL = "the king came by one day, and the miller said: my daughter can spin straw into gold."
TEXT = ("once upon a time there was an old miller who had a beautiful daughter. the king "
        "came by one day and the miller said: my daughter can spin straw into gold! ") * 20

CASES = {
    # grouped-query attention (4 query heads on 2 key/value heads), separate head
    "llama_gqa": ("llama", dict(vocab_size=384, hidden_size=64, intermediate_size=160,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=128,
                                tie_word_embeddings=False)),
    # SmolLM-style: tied embeddings, multi-head, a large base and linear rope scaling
    "llama_tied_linear": ("llama", dict(vocab_size=320, hidden_size=48, intermediate_size=96,
                                        num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3,
                                        rope_theta=500000.0, rms_norm_eps=1e-6, max_position_embeddings=256,
                                        tie_word_embeddings=True,
                                        rope_scaling={"rope_type": "linear", "factor": 2.0})),
    # Qwen2: q/k/v biases, grouped-query attention (6 on 2), rotate-half in the file
    "qwen2_bias": ("qwen2", dict(vocab_size=352, hidden_size=96, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                                 rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
                                 tie_word_embeddings=False)),
    # Llama 3.1's rope scaling (per-pair divisors in rope_freqs.weight): head width 16 and a
    # short original context, so the scaled, blended and unscaled pairs all occur
    "llama3_rope": ("llama", dict(vocab_size=300, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=128,
                                  tie_word_embeddings=True,
                                  rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 32})),
}
# each case's seed, fixed (adding a case changes no other fixture)
SEEDS = {"llama_gqa": 100, "llama_tied_linear": 101, "qwen2_bias": 102, "llama3_rope": 103}


# a TinyLlama-style chat template (bos written by the template, Python's .strip()), in
# llama_tied_linear's files; rendered as transformers does (jinja2, trim_blocks, lstrip_blocks)
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
                 "{{ '<|user|>\n' + message['content'].strip() + eos_token }}\n"
                 "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
                 "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
                 "{% endfor %}")
CHAT_SYSTEM, CHAT_USER = "You are a miller.", "  What can your daughter spin?  "


def render_chat():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    msgs = [{"role": "system", "content": CHAT_SYSTEM}, {"role": "user", "content": CHAT_USER}]
    return env.from_string(CHAT_TEMPLATE).render(messages=msgs, bos_token="<s>", eos_token="</s>",
                                                 add_generation_prompt=True)


# cases also saved as Hugging Face directories: (dtype, max shard size)
HF_DIRS = {"llama_gqa": (torch.float32, "10GB"), "qwen2_bias": (torch.bfloat16, "200KB"),
           "llama3_rope": (torch.float32, "10GB")}


def permute(w, n_head):
    """llama.cpp's converter: rotate-half rows → adjacent-pair rows, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def train_tokenizer(vocab):
    """A byte-level BPE of at most `vocab` tokens (the first two: bos, eos)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def add_tokenizer(w, tok, n_vocab):
    import json
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    # padded to the embedding's rows as llama.cpp's converter does (llama.cpp needs one
    # token per row)
    pad = len(tokens)
    tokens += [f"[PAD{i}]" for i in range(pad, n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in ("<s>", "</s>") else 5 if i >= pad else 1
                       for i, t in enumerate(tokens)])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)


def write_gguf(path, arch, cfg, sd, f16, tok, extra=None):
    w = gguf.GGUFWriter(path, arch)
    add_tokenizer(w, tok, cfg.vocab_size)
    if extra:
        extra(w)
    w.add_name(f"modula parity {os.path.basename(os.path.dirname(path))}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rs = cfg.rope_parameters  # transformers 5: rope_theta and the scaling in one dict
    w.add_rope_freq_base(rs["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    if rs.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    if rs.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_factors(cfg))
    w.add_file_type(1 if f16 else 0)

    def put(name, t, matrix=True):
        a = t.detach().to(torch.float32).numpy()
        if f16 and matrix and a.ndim == 2:
            a = a.astype(np.float16)
        w.add_tensor(name, a)

    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = permute(q, nh), permute(k, nkv)
        put(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"], False)
        put(f"blk.{i}.attn_q.weight", q)
        put(f"blk.{i}.attn_k.weight", k)
        put(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        if arch == "qwen2":
            for n in "qkv":
                put(f"blk.{i}.attn_{n}.bias", sd[p + f"self_attn.{n}_proj.bias"], False)
        put(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"], False)
        put(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    put("output_norm.weight", sd["model.norm.weight"], False)
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_factors(cfg):
    """rope_freqs.weight as llama.cpp's converter computes it (conversion/llama.py)."""
    import math
    rs = cfg.rope_parameters
    dim = cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (rs["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < old / high:
            out.append(1.0)
        elif wl > old / low:
            out.append(factor)
        else:
            sm = (old / wl - low) / (high - low)
            out.append(1 / ((1 - sm) / factor + sm))
    return np.array(out, dtype=np.float32)


def greedy(model, ids, n):
    """n greedy tokens after `ids`, one full forward pass per token (no generate(): it would
    treat a token equal to the pad id as padding)."""
    out = ids
    for _ in range(n):
        nxt = model(out).logits[0, -1].argmax()
        out = torch.cat([out, nxt.view(1, 1)], dim=1)
    return out[0, ids.shape[1]:].numpy()


def main():
    for case, (arch, kw) in sorted(CASES.items()):
        torch.manual_seed(SEEDS[case])
        if arch == "llama":
            cfg, cls = LlamaConfig(**kw), LlamaForCausalLM
        else:
            cfg, cls = Qwen2Config(**kw), Qwen2ForCausalLM
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.15 * torch.randn_like(p))
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        d = os.path.join(OUT, case)
        os.makedirs(d, exist_ok=True)
        tok = train_tokenizer(cfg.vocab_size)
        if case in HF_DIRS:
            # the Hugging Face directory itself, for `modula import --hf`
            hf = os.path.join(d, "hf")
            dtype, shard = HF_DIRS[case]
            m2 = cls(cfg).eval()
            m2.load_state_dict(sd)
            m2.to(dtype).save_pretrained(hf, safe_serialization=True, max_shard_size=shard)
            tok.save(os.path.join(hf, "tokenizer.json"))
        chat = (lambda w: w.add_chat_template(CHAT_TEMPLATE)) if case == "llama_tied_linear" else None
        write_gguf(os.path.join(d, "model.gguf"), arch, cfg, sd, False, tok, chat)
        write_gguf(os.path.join(d, "model-f16.gguf"), arch, cfg, sd, True, tok)
        ids = torch.randint(0, cfg.vocab_size, (1, T))
        m64 = model.double()
        with torch.no_grad():
            logits = m64(ids).logits[0].float().numpy()
            gen = greedy(m64, ids, GEN)
            # the prompt as `modula run` encodes it: bos, then the BPE ids
            pids = torch.tensor([[0] + tok.encode(PROMPT, add_special_tokens=False).ids])
            pgen = greedy(m64, pids, 16)
            # eval: one window of EVAL's tokens (bos first), transformers' mean NLL
            eids = torch.tensor([[0] + tok.encode(EVAL, add_special_tokens=False).ids])
            eloss = m64(eids, labels=eids).loss.item()
            extra = {}
            if chat:
                # the rendered conversation (it starts with <s>), and its greedy continuation
                cids = torch.tensor([tok.encode(render_chat(), add_special_tokens=False).ids])
                extra = {"chat_text": np.frombuffer(render_chat().encode(), dtype=np.uint8).copy(),
                         "chat_ids": cids[0].numpy().astype(np.int32),
                         "chat_greedy": greedy(m64, cids, 12).astype(np.int32)}
        save_file({
            **extra,
            "input_ids": ids[0].numpy().astype(np.int32),
            "logits": logits.astype(np.float32),
            "greedy": gen.astype(np.int32),
            "prompt_ids": pids[0].numpy().astype(np.int32),
            "prompt_greedy": pgen.astype(np.int32),
            "eval_text": np.frombuffer(EVAL.encode(), dtype=np.uint8).copy(),
            "eval_tokens": np.array([eids.shape[1]], dtype=np.int32),
            "eval_loss": np.array([eloss], dtype=np.float64),
        }, os.path.join(d, "expect.safetensors"))
        print(case, arch, "logits", logits.shape, "greedy", gen[:8].tolist(), "...")


def bad_files():
    """Small llama files each broken one way, with the words the error must contain
    (tests/fixtures/llama_parity/bad/cases.json)."""
    import json
    d = os.path.join(OUT, "bad")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=True)
    sd = {k: v.clone() for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    tok = train_tokenizer(64)
    cases = {}

    def make(name, words, edit=None, arch="llama", extra=None):
        path = os.path.join(d, name + ".gguf")
        s2 = {k: v.clone() for k, v in sd.items()}
        if edit:
            edit(s2)
        write_gguf(path, arch, cfg, s2, False, tok, extra)
        cases[name] = words

    make("nan_weight", ["not finite"], lambda s2: s2["model.layers.0.mlp.up_proj.weight"].__setitem__((0, 0), float("nan")))
    make("misshapen_k", ["blk.0.attn_k.weight"], lambda s2: s2.__setitem__(
        "model.layers.0.self_attn.k_proj.weight", torch.zeros(16, 16)))
    make("unknown_arch", ["general.architecture", "falcon"], arch="falcon")
    make("yarn_rope", ["llama.rope.scaling.type", "yarn"],
         extra=lambda w: (w.add_rope_scaling_type(gguf.RopeScalingType.YARN), w.add_rope_scaling_factor(4.0)))
    make("sliding_window", ["llama.attention.sliding_window"],
         extra=lambda w: w.add_uint32("llama.attention.sliding_window", 16))
    with open(os.path.join(d, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
    bad_files()
