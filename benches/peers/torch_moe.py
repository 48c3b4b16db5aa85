"""PyTorch eager peer for ModuleFormer training and decoding throughput
(`benches/peers/moe_compare.sh`).

The same model as `modula train --arch moduleformer` (spec Part A; forward checked against
the Rust implementation through tests/reference/molm_reference.py's math): byte vocabulary,
no positions, pre-LN blocks of a mixture of stick-breaking attention experts
(K = V = LN1(x), one head of width d per expert, per-expert query/output projections) and
a mixture of tanh-GELU FFN experts without biases, MLP routers (d -> G -> E, exact GELU),
softmax over all experts, top-k, gates = probabilities, MI load-balancing loss. Written
the way an eager PyTorch MoE is usually written: a loop over experts with index_select /
index_add_, stick-breaking as masked [T, T] matrices with a reverse cumulative sum
(O(T^2) memory per head, not the released code's O(T^3) suffix-sum matmul).

    python torch_moe.py train --threads 1 --steps 12 --warmup 3 --data data/kjv.txt
    python torch_moe.py decode --threads 1 --tokens 128 --prompt 16

Prints one JSON line (median step time -> positions/s, or decode tokens/s; peak RSS).
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["train", "decode"])
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--steps", type=int, default=12)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--d", type=int, default=256)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--experts", type=int, default=8)
ap.add_argument("--top_k", type=int, default=2)
ap.add_argument("--ffn", type=int, default=256)
ap.add_argument("--router", type=int, default=64)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--aux_mi", type=float, default=0.01)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--prompt", type=int, default=16)
ap.add_argument("--data", default="data/kjv.txt")
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(1)


class Router(torch.nn.Module):
    def __init__(self, d, g, e):
        super().__init__()
        self.l1 = torch.nn.Linear(d, g)
        self.l2 = torch.nn.Linear(g, e, bias=False)

    def forward(self, x):
        logits = self.l2(F.gelu(self.l1(x)))
        return logits, torch.softmax(logits, -1)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def mi_loss(logits, probs):
    pbar = probs.mean(0)
    h_marg = -(pbar * torch.log(pbar + 1e-8)).sum()
    h_cond = -(probs * torch.log_softmax(logits, -1)).sum(-1).mean()
    return h_cond - h_marg


class Block(torch.nn.Module):
    def __init__(self, d, e, f, g):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.ar = Router(d, g, e)
        self.fr = Router(d, g, e)
        self.wq = torch.nn.Parameter(torch.empty(e, d, d).uniform_(-1 / d, 1 / d))
        self.wo = torch.nn.Parameter(torch.empty(e, d, d).uniform_(-1 / d, 1 / d))
        self.wi = torch.nn.Parameter(torch.empty(e, d, f).uniform_(-1 / d, 1 / d))
        self.wd = torch.nn.Parameter(torch.empty(e, f, d).uniform_(-1 / f, 1 / f))

    def experts(self, x, probs, k, fn):
        """y[n] = sum_s g[n,s] fn(e, x[rows]) over the top-k experts, loop over experts."""
        gates, idx = torch.topk(probs, k, -1)
        y = torch.zeros_like(x)
        flat_idx, flat_g = idx.reshape(-1), gates.reshape(-1)
        tok = torch.arange(x.shape[0]).repeat_interleave(k)
        for e in range(probs.shape[-1]):
            sel = (flat_idx == e).nonzero(as_tuple=True)[0]
            if sel.numel() == 0:
                continue
            rows = tok[sel]
            out = fn(e, x.index_select(0, rows), rows, sel % k)
            y.index_add_(0, rows, out * flat_g[sel, None])
        return y

    def forward(self, x, B, T):
        d = x.shape[-1]
        h = self.ln1(x)
        logits, probs = self.ar(h)
        aux = mi_loss(logits, probs)
        kv = h.view(B, T, d)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        scale = 1 / math.sqrt(d)
        # map: queries per (token, slot); attend per slot over the shared K = V
        k = a.top_k
        gates, idx = torch.topk(probs, k, -1)
        q = torch.zeros(B * T, k, d)
        tok = torch.arange(B * T).repeat_interleave(k)
        flat_idx = idx.reshape(-1)
        for e in range(probs.shape[-1]):
            sel = (flat_idx == e).nonzero(as_tuple=True)[0]
            if sel.numel():
                q.view(-1, d).index_copy_(0, sel, h.index_select(0, tok[sel]) @ self.wq[e])
        q = q.view(B, T, k, d).permute(0, 2, 1, 3)  # [B, k, T, d]
        z = torch.einsum("bktd,bsd->bkts", q, kv) * scale
        sp = torch.where(mask, F.softplus(z), torch.zeros_like(z))
        suffix = torch.flip(torch.cumsum(torch.flip(sp, [-1]), -1), [-1])
        A = torch.where(mask, torch.exp(z - suffix), torch.zeros_like(z))
        o = torch.einsum("bkts,bsd->bktd", A, kv).permute(0, 2, 1, 3).reshape(B * T * k, d)
        y = torch.zeros_like(x)
        flat_g = gates.reshape(-1)
        for e in range(probs.shape[-1]):
            sel = (flat_idx == e).nonzero(as_tuple=True)[0]
            if sel.numel():
                y.index_add_(0, tok[sel], (o.index_select(0, sel) @ self.wo[e]) * flat_g[sel, None])
        x = x + y
        h = self.ln2(x)
        logits, probs = self.fr(h)
        aux = aux + mi_loss(logits, probs)
        x = x + self.experts(h, probs, k, lambda e, xs, rows, slot: gelu_tanh(xs @ self.wi[e]) @ self.wd[e])
        return x, aux


class MoLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(256, a.d)
        self.blocks = torch.nn.ModuleList(
            [Block(a.d, a.experts, a.ffn, a.router) for _ in range(a.layers)])
        self.lnf = torch.nn.LayerNorm(a.d)
        self.head = torch.nn.Linear(a.d, 256, bias=False)

    def forward(self, ids):
        B, T = ids.shape
        x = self.emb(ids).view(B * T, a.d)
        aux = 0
        for b in self.blocks:
            x, l = b(x, B, T)
            aux = aux + l
        return self.head(self.lnf(x)), aux

    @torch.no_grad()
    def step(self, tok, cache):
        """One decode step with a K = V cache per layer ([t, d])."""
        x = self.emb.weight[tok][None]
        scale = 1 / math.sqrt(a.d)
        for li, b in enumerate(self.blocks):
            h = b.ln1(x)
            cache[li] = torch.cat([cache[li], h]) if cache[li] is not None else h
            kv = cache[li]
            _, probs = b.ar(h)
            gates, idx = torch.topk(probs[0], a.top_k)
            y = torch.zeros_like(x)
            for g, e in zip(gates, idx):
                q = h @ b.wq[e]
                z = (kv @ q[0]) * scale  # [t]
                s = torch.flip(torch.cumsum(torch.flip(F.softplus(z), [0]), 0), [0])
                y += g * ((torch.exp(z - s) @ kv)[None] @ b.wo[e])
            x = x + y
            h = b.ln2(x)
            _, probs = b.fr(h)
            gates, idx = torch.topk(probs[0], a.top_k)
            y = torch.zeros_like(x)
            for g, e in zip(gates, idx):
                y += g * (gelu_tanh(h @ b.wi[e]) @ b.wd[e])
            x = x + y
        return self.head(self.lnf(x))[0]


model = MoLM()
if a.mode == "train":
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    data = torch.frombuffer(bytearray(open(a.data, "rb").read()), dtype=torch.uint8)
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        idx = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=g)
        win = torch.stack([data[i:i + a.seq + 1] for i in idx.tolist()]).long()
        logits, aux = model(win[:, :-1])
        loss = F.cross_entropy(logits, win[:, 1:].reshape(-1)) + a.aux_mi * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"positions_per_s": a.batch * a.seq / med, "loss": loss.item(),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
else:
    cache = [None] * a.layers
    tok = 65
    for _ in range(a.prompt):
        logits = model.step(tok, cache)
    t0 = time.perf_counter()
    for _ in range(a.tokens):
        tok = int(torch.argmax(logits))
        logits = model.step(tok, cache)
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens_per_s": a.tokens / dt,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
