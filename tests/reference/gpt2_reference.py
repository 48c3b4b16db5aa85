"""Hugging Face transformers reference for Modula's GPT-2 engine (issue #30).

For each case it builds a small random-weight `GPT2LMHeadModel` with transformers (tied head,
and an untied variant), saves it as a Hugging Face directory (`save_pretrained`: config.json,
safetensors, tokenizer.json of a byte-level BPE trained with `tokenizers`), writes it as a
llama.cpp-layout GGUF with gguf-py (llama.cpp's `gpt2` names; GPT-2's Conv1D weights
`[in, out]` transposed to `[out, in]` as llama.cpp's converter does), and the expected
outputs computed by transformers in float64 from the float32 weights:

    tests/fixtures/gpt2_parity/<case>/model.gguf          F32 weights
    tests/fixtures/gpt2_parity/<case>/model-f16.gguf      F16 matrices, F32 norms and biases
    tests/fixtures/gpt2_parity/<case>/hf/                 the Hugging Face directory (gpt2_tied:
        f32 in one file; gpt2_untied: bf16, sharded with model.safetensors.index.json)
    tests/fixtures/gpt2_parity/<case>/expect.safetensors  as tests/reference/llama_reference.py

The Rust test `tests/gpt2_parity.rs` runs them with no Python. Run:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch transformers gguf safetensors tokenizers
    /tmp/torchvenv/bin/python tests/reference/gpt2_reference.py
"""
import os

import gguf
import numpy as np
import torch
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

import sys

sys.path.insert(0, os.path.dirname(__file__))
# the same texts, lengths and greedy loop as the Llama fixtures
from llama_reference import EVAL, GEN, PROMPT, TEXT, T, greedy  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gpt2_parity")

CASES = {
    # GPT-2 as published: tied head, FFN 4·d (n_inner unset)
    "gpt2_tied": dict(vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                      layer_norm_epsilon=1e-5, tie_word_embeddings=True),
    # an untied head, an FFN of another width, another epsilon
    "gpt2_untied": dict(vocab_size=288, n_embd=48, n_layer=3, n_head=3, n_positions=96,
                        n_inner=80, layer_norm_epsilon=1e-6, tie_word_embeddings=False),
}
HF_DIRS = {"gpt2_tied": (torch.float32, "10GB"), "gpt2_untied": (torch.bfloat16, "100KB")}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def train_tokenizer(vocab):
    """A byte-level BPE of at most `vocab` tokens, GPT-2 style: one special token
    `<|endoftext|>` (bos = eos)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def add_tokenizer(w, tok, n_vocab):
    import json
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    # padded to the embedding's rows as llama.cpp's converter does
    pad = len(tokens)
    tokens += [f"[PAD{i}]" for i in range(pad, n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 5 if i >= pad else 1
                       for i, t in enumerate(tokens)])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)


def write_gguf(path, cfg, sd, f16, tok):
    w = gguf.GGUFWriter(path, "gpt2")
    add_tokenizer(w, tok, cfg.vocab_size)
    w.add_name(f"modula parity {os.path.basename(os.path.dirname(path))}")
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(1 if f16 else 0)

    def put(name, t):
        a = t.detach().to(torch.float32).numpy()
        if f16 and a.ndim == 2:
            a = a.astype(np.float16)
        w.add_tensor(name, a)

    put("token_embd.weight", sd["transformer.wte.weight"])
    put("position_embd.weight", sd["transformer.wpe.weight"])
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(cfg.n_layer):
        for hf, cpp in names.items():
            for kind in ("weight", "bias"):
                t = sd[f"transformer.h.{i}.{hf}.{kind}"]
                if f"{hf}.{kind}" in CONV1D:
                    t = t.t().contiguous()
                put(f"blk.{i}.{cpp}.{kind}", t)
    put("output_norm.weight", sd["transformer.ln_f.weight"])
    put("output_norm.bias", sd["transformer.ln_f.bias"])
    if not cfg.tie_word_embeddings:
        put("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    for seed, (case, kw) in enumerate(sorted(CASES.items())):
        torch.manual_seed(300 + seed)
        cfg = GPT2Config(**kw, bos_token_id=0, eos_token_id=0)
        cfg._attn_implementation = "eager"
        model = GPT2LMHeadModel(cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".ln_" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
                else:
                    p.copy_(0.15 * torch.randn_like(p))
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        if cfg.tie_word_embeddings:
            assert torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
        d = os.path.join(OUT, case)
        os.makedirs(d, exist_ok=True)
        tok = train_tokenizer(cfg.vocab_size)
        hf = os.path.join(d, "hf")
        dtype, shard = HF_DIRS[case]
        m2 = GPT2LMHeadModel(cfg).eval()
        m2.load_state_dict(sd)
        m2.to(dtype).save_pretrained(hf, safe_serialization=True, max_shard_size=shard)
        tok.save(os.path.join(hf, "tokenizer.json"))
        # the published GPT-2 configs carry n_ctx (= n_positions), which llama.cpp's
        # converter reads and transformers 5 no longer writes
        import json
        with open(os.path.join(hf, "config.json")) as f:
            c = json.load(f)
        c["n_ctx"] = cfg.n_positions
        with open(os.path.join(hf, "config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
        if dtype != torch.float32:
            # the reference is the stored (rounded) weights, as Modula imports them
            sd = {k: v.to(dtype).to(torch.float32) for k, v in sd.items()}
            model.load_state_dict(sd)
        write_gguf(os.path.join(d, "model.gguf"), cfg, sd, False, tok)
        write_gguf(os.path.join(d, "model-f16.gguf"), cfg, sd, True, tok)
        ids = torch.randint(0, cfg.vocab_size, (1, T))
        m64 = model.double()
        with torch.no_grad():
            logits = m64(ids).logits[0].float().numpy()
            gen = greedy(m64, ids, GEN)
            # GPT-2 adds no bos: the prompt is its BPE ids
            pids = torch.tensor([tok.encode(PROMPT, add_special_tokens=False).ids])
            pgen = greedy(m64, pids, 16)
            eids = torch.tensor([tok.encode(EVAL, add_special_tokens=False).ids])
            eloss = m64(eids, labels=eids).loss.item()
        save_file({
            "input_ids": ids[0].numpy().astype(np.int32),
            "logits": logits.astype(np.float32),
            "greedy": gen.astype(np.int32),
            "prompt_ids": pids[0].numpy().astype(np.int32),
            "prompt_greedy": pgen.astype(np.int32),
            "eval_text": np.frombuffer(EVAL.encode(), dtype=np.uint8).copy(),
            "eval_tokens": np.array([eids.shape[1]], dtype=np.int32),
            "eval_loss": np.array([eloss], dtype=np.float64),
        }, os.path.join(d, "expect.safetensors"))
        print(case, "logits", logits.shape, "greedy", gen[:8].tolist(), "...")


if __name__ == "__main__":
    main()
