"""PyTorch eager training throughput of the dense reference model (the peer a user would
pick), for `benches/peers/train_compare.sh`.

Same model as Modula's dense baseline (the class in tests/reference/dense_reference.py,
checked for parity there): byte vocabulary, learned positions, pre-LN blocks, causal
softmax attention, GELU FFN, untied head; AdamW; cross-entropy on random KJV windows.
Prints one JSON line: median seconds per step over the timed steps and peak RSS.

    python torch_train.py --threads 1 --steps 12 --warmup 3 --data data/kjv.txt
"""
import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "reference"))
from dense_reference import Dense  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--steps", type=int, default=12)
ap.add_argument("--warmup", type=int, default=3)
ap.add_argument("--d", type=int, default=256)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--heads", type=int, default=4)
ap.add_argument("--ffn", type=int, default=512)
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--seq", type=int, default=128)
ap.add_argument("--data", default="data/kjv.txt")
a = ap.parse_args()

torch.set_num_threads(a.threads)
torch.manual_seed(1)
c = dict(vocab=256, d=a.d, layers=a.layers, heads=a.heads, ffn=a.ffn, max_seq=a.seq,
         causal=True, patch_dim=0, classes=0, pool="mean")
model = Dense(c)
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
data = torch.frombuffer(bytearray(open(a.data, "rb").read()), dtype=torch.uint8)
g = torch.Generator().manual_seed(1)
times, losses = [], []
for step in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    idx = torch.randint(0, len(data) - a.seq - 1, (a.batch,), generator=g)
    win = torch.stack([data[i:i + a.seq + 1] for i in idx.tolist()]).long()
    x, y = win[:, :-1], win[:, 1:]
    logits = model(x, a.batch, a.seq)
    loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    dt = time.perf_counter() - t0
    if step >= a.warmup:
        times.append(dt)
    losses.append(loss.item())
times.sort()
med = times[len(times) // 2]
print(json.dumps({
    "peer": "pytorch " + torch.__version__,
    "threads": a.threads,
    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    "median_step_s": med,
    "positions_per_s": a.batch * a.seq / med,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "first_loss": losses[0],
    "last_loss": losses[-1],
}))
