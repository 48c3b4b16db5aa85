"""PyTorch reference of a ModuleFormer (MoLM) language model with the Hugging Face
checkpoint layout, written from the method spec (`spec_moduleformer_emoe.md`, Part A:
A.1-A.6b), not from the official code (which is not installable here).

For each case it writes, under tests/fixtures/molm_parity/<case>/:

    config.json          HF ModuleFormerConfig keys (n_embd, n_layer, n_head, att_hidden,
                         ffd_hidden, n_att_experts, k_att, n_mlp_experts, k_mlp,
                         gating_size, gate_type, activation_function, ...)
    model.safetensors    float32 weights under the HF names and layouts: expert weights
                         [experts, in, out]; routers as nn.Linear [out, in]
    expect.safetensors   input_ids [B, T] (int64) and logits [B, T, vocab] (float32,
                         computed in float64 from the float32 weights)

The Rust test `train/tests/molm_parity.rs` imports the checkpoint with
`modula_train::model::mf_io::read_molm` and compares logits (1e-4 relative), with no
Python at test time. Run:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch safetensors
    /tmp/torchvenv/bin/python tests/reference/molm_reference.py
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "molm_parity")


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def make_weights(c, gen):
    d, Da, Df, G = c["n_embd"], c["att_hidden"], c["ffd_hidden"], c["gating_size"]
    Ea, Ef, V = c["n_att_experts"], c["n_mlp_experts"], c["vocab_size"]

    def normal(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    def uniform(*shape, a):
        return (torch.rand(*shape, generator=gen) * 2 - 1) * a

    w = {"transformer.wte.weight": normal(V, d, std=0.5)}
    identity_kv = Da == d and c["n_head"] == 1
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"] = 1.0 + normal(d, std=0.1)
            w[p + ln + ".bias"] = normal(d, std=0.1)
        # expert weights [experts, in, out]; larger than the released init so every expert
        # matters in the comparison
        w[p + "attn.q_proj.experts.weight"] = uniform(Ea, d, Da, a=1.0 / math.sqrt(d))
        w[p + "attn.q_proj.output_experts.weight"] = uniform(Ea, Da, d, a=1.0 / math.sqrt(Da))
        w[p + "mlpf.experts.weight"] = uniform(Ef, d, Df, a=1.0 / math.sqrt(d))
        w[p + "mlpf.output_experts.weight"] = uniform(Ef, Df, d, a=1.0 / math.sqrt(Df))
        for gate, E in (("attn.q_proj.gate", Ea), ("mlpf.gate", Ef)):
            w[p + gate + ".w_gate.0.weight"] = normal(G, d, std=0.3)
            w[p + gate + ".w_gate.0.bias"] = normal(G, std=0.3)
            w[p + gate + ".w_gate.3.weight"] = normal(E, G, std=0.3)
        if not identity_kv:
            for proj in ("k_proj", "v_proj"):
                w[p + f"attn.{proj}.weight"] = normal(Da, d, std=1.0 / math.sqrt(d))
                w[p + f"attn.{proj}.bias"] = normal(Da, std=0.1)
    w["transformer.ln_f.weight"] = 1.0 + normal(d, std=0.1)
    w["transformer.ln_f.bias"] = normal(d, std=0.1)
    w["lm_head.weight"] = normal(V, d, std=0.3)
    return {k: v.float().contiguous() for k, v in w.items()}


def router(w, p, h, k):
    """MLP router: softmax over all experts, top-k (sorted), gates = probabilities."""
    u = F.linear(h, w[p + ".w_gate.0.weight"], w[p + ".w_gate.0.bias"])
    logits = F.linear(F.gelu(u), w[p + ".w_gate.3.weight"])
    probs = torch.softmax(logits, dim=-1)
    gates, idx = torch.topk(probs, k, dim=-1)
    return gates, idx


def stick_breaking(q, k, v, scale):
    """q: [T, dh], k, v: [T, dh] -> [T, dh]; A_ij = sigma(z_ij) prod_{l=j+1..i}(1-sigma(z_il))
    in log space: log A_ij = z_ij - sum_{l=j..i} softplus(z_il), j <= i (current token
    included, mass not renormalised)."""
    T = q.shape[0]
    z = (q @ k.T) * scale
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    sp = torch.where(mask, F.softplus(z), torch.zeros_like(z))
    # inclusive suffix sums over j (from j up to i)
    suffix = torch.flip(torch.cumsum(torch.flip(sp, [1]), 1), [1])
    logA = z - suffix
    A = torch.where(mask, torch.exp(logA), torch.zeros_like(z))
    return A @ v


def forward(c, w, ids):
    w = {k: v.double() for k, v in w.items()}
    B, T = ids.shape
    d, Da, H = c["n_embd"], c["att_hidden"], c["n_head"]
    dh = Da // H
    scale = 1.0 / math.sqrt(dh)
    identity_kv = Da == d and H == 1
    x = w["transformer.wte.weight"][ids]  # [B, T, d]
    for i in range(c["n_layer"]):
        p = f"transformer.h.{i}."
        h = F.layer_norm(x, (d,), w[p + "ln_1.weight"], w[p + "ln_1.bias"], 1e-5)
        gates, idx = router(w, p + "attn.q_proj.gate", h, c["k_att"])
        if identity_kv:
            K = V = h
        else:
            K = F.linear(h, w[p + "attn.k_proj.weight"], w[p + "attn.k_proj.bias"])
            V = F.linear(h, w[p + "attn.v_proj.weight"], w[p + "attn.v_proj.bias"])
        Wq = w[p + "attn.q_proj.experts.weight"]
        Wo = w[p + "attn.q_proj.output_experts.weight"]
        y = torch.zeros_like(x)
        for b in range(B):
            for s in range(c["k_att"]):
                e = idx[b, :, s]  # [T]
                q = torch.einsum("td,tdo->to", h[b], Wq[e])  # [T, Da]
                o = torch.cat(
                    [
                        stick_breaking(
                            q[:, hh * dh:(hh + 1) * dh],
                            K[b, :, hh * dh:(hh + 1) * dh],
                            V[b, :, hh * dh:(hh + 1) * dh],
                            scale,
                        )
                        for hh in range(H)
                    ],
                    dim=-1,
                )
                y[b] += gates[b, :, s:s + 1] * torch.einsum("ta,tad->td", o, Wo[e])
        x = x + y
        h = F.layer_norm(x, (d,), w[p + "ln_2.weight"], w[p + "ln_2.bias"], 1e-5)
        gates, idx = router(w, p + "mlpf.gate", h, c["k_mlp"])
        Wi = w[p + "mlpf.experts.weight"]
        Wout = w[p + "mlpf.output_experts.weight"]
        y = torch.zeros_like(x)
        for s in range(c["k_mlp"]):
            e = idx[:, :, s]  # [B, T]
            u = torch.einsum("btd,btdf->btf", h, Wi[e])
            y += gates[:, :, s:s + 1] * torch.einsum("btf,btfd->btd", gelu_new(u), Wout[e])
        x = x + y
    x = F.layer_norm(x, (d,), w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], 1e-5)
    return F.linear(x, w["lm_head.weight"])


def config(**kw):
    c = {
        "model_type": "moduleformer",
        "architectures": ["ModuleFormerForCausalLM"],
        "vocab_size": 50,
        "n_embd": 16,
        "n_layer": 2,
        "n_head": 1,
        "att_hidden": 16,
        "ffd_hidden": 24,
        "n_att_experts": 4,
        "k_att": 2,
        "n_mlp_experts": 5,
        "k_mlp": 2,
        "gating_size": 8,
        "gate_type": "mlp",
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "block_size": 32,
        "history_length": 32,
        "aux_loss_type": "mi",
        "aux_loss_weight": 0.0,
        "sample_topk": 0,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "moe_pdrop": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "tie_word_embeddings": False,
    }
    c.update(kw)
    return c


def main():
    cases = {
        # the MoLM case: one head of width d per attention expert, K = V = ln_1(x)
        "molm": config(),
        # general case: 2 heads of width 10, shared K/V projections with bias
        "kvproj": config(n_head=2, att_hidden=20, n_att_experts=3, k_att=1, k_mlp=3),
    }
    gen = torch.Generator().manual_seed(1234)
    for name, c in cases.items():
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        w = make_weights(c, gen)
        ids = torch.randint(0, c["vocab_size"], (2, 11), generator=gen)
        logits = forward(c, w, ids)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
        save_file(w, os.path.join(d, "model.safetensors"))
        save_file(
            {"input_ids": ids.to(torch.int64), "logits": logits.float().contiguous()},
            os.path.join(d, "expect.safetensors"),
        )
        print(f"{name}: {len(w)} tensors, logits {tuple(logits.shape)}, max |logit| {logits.abs().max():.3f}")


if __name__ == "__main__":
    main()
