"""PyTorch reference of Modula's dense baseline (train/src/model/dense.rs).

Writes the parity fixtures the Rust test `train/tests/pytorch_parity.rs` compares against,
tensor by tensor, without needing Python or torch at test time:

    tests/fixtures/dense_parity/<case>.weights.safetensors  weights, Modula names + metadata
    tests/fixtures/dense_parity/<case>.expect.safetensors   inputs, targets, logits, loss,
                                                            and grad.<name> for every weight

The forward is computed in float64 from the float32 weights, so the fixtures are the exact
answer up to float64 rounding; the Rust side runs in float32.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch safetensors
    /tmp/torchvenv/bin/python tests/reference/dense_reference.py
"""
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "dense_parity")


class Dense(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, f = c["d"], c["ffn"]
        if c["patch_dim"]:
            self.patch = torch.nn.Linear(c["patch_dim"], d)
        else:
            self.tok = torch.nn.Embedding(c["vocab"], d)
        self.pos = torch.nn.Embedding(c["max_seq"], d) if c["max_seq"] else None
        self.blocks = torch.nn.ModuleList()
        for _ in range(c["layers"]):
            b = torch.nn.Module()
            b.ln1 = torch.nn.LayerNorm(d, eps=1e-5)
            b.qkv = torch.nn.Linear(d, 3 * d)
            b.proj = torch.nn.Linear(d, d)
            b.ln2 = torch.nn.LayerNorm(d, eps=1e-5)
            b.up = torch.nn.Linear(d, f)
            b.down = torch.nn.Linear(f, d)
            self.blocks.append(b)
        self.lnf = torch.nn.LayerNorm(d, eps=1e-5)
        outs = c["classes"] or c["vocab"]
        self.head = torch.nn.Linear(d, outs, bias=bool(c["classes"]))

    def forward(self, x, B, T):
        c = self.c
        d, H = c["d"], c["heads"]
        hd = d // H
        h = self.patch(x) if c["patch_dim"] else self.tok(x)
        if self.pos is not None:
            h = h + self.pos.weight[:T][None]
        mask = torch.ones(T, T, dtype=torch.bool).tril() if c["causal"] else None
        for b in self.blocks:
            a = b.qkv(b.ln1(h))
            q, k, v = a.split(d, dim=-1)
            q, k, v = (z.view(B, T, H, hd).transpose(1, 2) for z in (q, k, v))
            s = q @ k.transpose(-1, -2) / math.sqrt(hd)
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)
            h = h + b.proj(o)
            h = h + b.down(F.gelu(b.up(b.ln2(h))))
        h = self.lnf(h)
        if c["classes"]:
            pool = c["pool"]
            h = h.mean(1) if pool == "mean" else (h[:, 0] if pool == "first" else h[:, -1])
        return self.head(h)

    def modula_state(self):
        """Parameters under Modula's tensor names and layouts."""
        c, s = self.c, {}
        if c["patch_dim"]:
            s["patch_embd.weight"] = self.patch.weight
            s["patch_embd.bias"] = self.patch.bias
        else:
            s["token_embd.weight"] = self.tok.weight
        if self.pos is not None:
            s["position_embd.weight"] = self.pos.weight
        for i, b in enumerate(self.blocks):
            p = f"blk.{i}."
            s[p + "attn_norm.weight"], s[p + "attn_norm.bias"] = b.ln1.weight, b.ln1.bias
            s[p + "attn_qkv.weight"], s[p + "attn_qkv.bias"] = b.qkv.weight, b.qkv.bias
            s[p + "attn_output.weight"], s[p + "attn_output.bias"] = b.proj.weight, b.proj.bias
            s[p + "ffn_norm.weight"], s[p + "ffn_norm.bias"] = b.ln2.weight, b.ln2.bias
            s[p + "ffn_up.weight"], s[p + "ffn_up.bias"] = b.up.weight, b.up.bias
            s[p + "ffn_down_t.weight"] = b.down.weight  # transposed when saved
            s[p + "ffn_down.bias"] = b.down.bias
        s["output_norm.weight"], s["output_norm.bias"] = self.lnf.weight, self.lnf.bias
        s["output.weight"] = self.head.weight
        if c["classes"]:
            s["output.bias"] = self.head.bias
        return s


def metadata(c, T):
    m = {
        "modula.model": "dense",
        "modula.embedding_length": str(c["d"]),
        "modula.block_count": str(c["layers"]),
        "modula.attention.head_count": str(c["heads"]),
        "modula.feed_forward_length": str(c["ffn"]),
        "modula.attention.causal": "true" if c["causal"] else "false",
        "modula.context_length": str(T),
    }
    if c["patch_dim"]:
        m["modula.input.patch_dim"] = str(c["patch_dim"])
    else:
        m["modula.vocab_size"] = str(c["vocab"])
    if c["max_seq"]:
        m["modula.position_length"] = str(c["max_seq"])
    if c["classes"]:
        m["modula.num_classes"] = str(c["classes"])
        m["modula.classify.pool"] = c["pool"]
    return m


def case(name, c, B, T, seed):
    torch.manual_seed(seed)
    model = Dense(c)
    with torch.no_grad():  # non-trivial norms and biases, so every gradient path is tested
        for n, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    m64 = Dense(c).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    if c["patch_dim"]:
        x = torch.rand(B, T, c["patch_dim"])
        inp = x.double()
    else:
        x = torch.randint(0, c["vocab"], (B, T))
        inp = x
    if c["classes"]:
        y = torch.randint(0, c["classes"], (B,))
    else:
        y = torch.randint(0, c["vocab"], (B, T))
        y[0, 2] = -100  # an ignored target
    logits = m64(inp, B, T)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, y.reshape(-1), ignore_index=-100)
    loss.backward()
    weights, expect = {}, {}
    for k, v in m64.modula_state().items():
        t = v.detach()
        g = v.grad
        if k.endswith("ffn_down_t.weight"):
            t, g = t.t(), g.t()
        weights[k] = t.float().contiguous()
        expect["grad." + k] = g.float().contiguous()
    if c["patch_dim"]:
        expect["input.features"] = x.float().contiguous()
    else:
        expect["input.tokens"] = x.to(torch.int64).contiguous()
    expect["targets"] = y.to(torch.int64).contiguous()
    expect["logits"] = flat.detach().float().contiguous()
    expect["loss"] = loss.detach().float().reshape(1)
    os.makedirs(OUT, exist_ok=True)
    save_file(weights, os.path.join(OUT, f"{name}.weights.safetensors"), metadata(c, T))
    save_file(expect, os.path.join(OUT, f"{name}.expect.safetensors"),
              {"batch": str(B), "seq": str(T), "torch": torch.__version__})
    print(f"{name}: loss {loss.item():.6f}, {sum(v.numel() for v in weights.values())} weights")


if __name__ == "__main__":
    base = dict(vocab=64, d=16, layers=2, heads=2, ffn=32, max_seq=8, causal=True,
                patch_dim=0, classes=0, pool="mean")
    case("lm", base, B=2, T=8, seed=1)
    case("image", dict(base, vocab=0, patch_dim=4, classes=3, causal=False, pool="mean",
                       max_seq=4), B=3, T=4, seed=2)
    case("tokens_last", dict(base, classes=5, pool="last", max_seq=0), B=2, T=6, seed=3)
