"""Quantised files in Modula and in llama.cpp: logits of the same token ids, one decode step
per token, from each runtime, against the f32 file's logits in the same runtime.

    bash scripts/llamacpp/build.sh /tmp/llamacpp
    cargo build --release -p edge-demo --example logits
    python3 scripts/llamacpp/kquant_interop.py /tmp/llamacpp/build/bin/peer \
        target/release/examples/logits F32.gguf IDS QUANT.gguf...

Prints a markdown table: for each quantised file, max |Δ logit| / max |logit| of Modula
against llama.cpp on that file, and of each runtime against its own f32 logits (the
quantisation error). Runtimes that agree far better than either moves from f32 read the
file the same way; greedy tokens of two correct runtimes can still differ where the
activations' 8-bit rounding (which neither does in the other's order) meets a near tie.
"""
import json
import subprocess
import sys

import numpy as np

peer, logits, f32, ids = sys.argv[1:5]
files = sys.argv[5:]


def run(*args):
    r = subprocess.run(args, capture_output=True, text=True, check=True)
    return np.array(json.loads(r.stdout)["logits"], dtype=np.float64)


def rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def argmax_same(a, b):
    return int((a.argmax(axis=1) == b.argmax(axis=1)).sum())


base_m, base_l = run(logits, f32, ids), run(peer, f32, "logits", ids)
n = base_m.shape[0]
print(f"f32 file: Modula vs llama.cpp {rel(base_m, base_l):.1e}, argmax equal at "
      f"{argmax_same(base_m, base_l)}/{n} positions")
print()
print("| file | Modula vs llama.cpp | Modula vs its f32 | llama.cpp vs its f32 | argmax equal (Modula, llama.cpp) |")
print("|---|---:|---:|---:|---|")
for f in files:
    m, l = run(logits, f, ids), run(peer, f, "logits", ids)
    print(f"| {f.split('/')[-1]} | {rel(m, l):.1e} | {rel(m, base_m):.1e} | {rel(l, base_l):.1e} | "
          f"{argmax_same(m, l)}/{n} |")
