"""Modula's files and tokenizers in llama.cpp, against transformers / tokenizers.

    bash scripts/llamacpp/build.sh /tmp/llamacpp
    cargo build --release -p edge-demo
    python3 scripts/llamacpp/interop.py /tmp/llamacpp/build/bin/peer target/release/modula

Prints a markdown table (docs/results.md, "llama.cpp interop"):
- the parity fixtures' GGUF files (written by gguf-py in llama.cpp's layout) and the files
  `modula import --hf` writes from the same Hugging Face directories, run by llama.cpp:
  logits at every position against transformers' (max |Δ| / max |logit|) and the 32 greedy
  tokens after the input;
- the `tokenize` ids of llama.cpp on every tokenizer fixture's cases (GPT-2's, Llama 3's,
  Qwen2's and SmolLM's pre-tokenizers) against the `tokenizers` library's.
Needs numpy and safetensors.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

peer, modula = sys.argv[1], sys.argv[2]
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIX = os.path.join(ROOT, "tests", "fixtures")
CASES = [("llama_parity", "llama_gqa"), ("llama_parity", "llama3_rope"), ("llama_parity", "llama_tied_linear"),
         ("llama_parity", "qwen2_bias"), ("gpt2_parity", "gpt2_tied"), ("gpt2_parity", "gpt2_untied")]


def call(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    return json.loads(r.stdout), None


def check(path, e):
    ids = ",".join(str(int(i)) for i in e["input_ids"])
    out, err = call(peer, path, "logits", ids)
    if err:
        return f"fails: {err}", ""
    got = np.array(out["logits"], dtype=np.float64)
    want = e["logits"].astype(np.float64)
    rel = np.abs(got - want).max() / np.abs(want).max()
    g, err = call(peer, path, "greedy", ids, str(len(e["greedy"])))
    same = 0
    for a, b in zip(g["ids"], e["greedy"].tolist()):
        if a != b:
            break
        same += 1
    return f"{rel:.1e}", f"{same}/{len(e['greedy'])}"


print("| file | source | llama.cpp logits vs transformers | greedy tokens equal |")
print("|---|---|---|---|")
tmp = tempfile.mkdtemp()
for group, case in CASES:
    d = os.path.join(FIX, group, case)
    e = load_file(os.path.join(d, "expect.safetensors"))
    rel, same = check(os.path.join(d, "model.gguf"), e)
    print(f"| {case} | gguf-py (fixture) | {rel} | {same} |")
    if os.path.isdir(os.path.join(d, "hf")):
        out = os.path.join(tmp, case + ".gguf")
        r = subprocess.run([modula, "import", "--hf", os.path.join(d, "hf"), "--out", out],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"| {case} | modula import | import fails: {r.stderr.strip()} | |")
            continue
        rel, same = check(out, e)
        print(f"| {case} | `modula import --hf` | {rel} | {same} |")

print()
print("| tokenizer (pre) | cases | llama.cpp ids = tokenizers ids |")
print("|---|---|---|")
for kind in ["bpe", "bpe-llama3", "bpe-qwen2", "bpe-smollm"]:
    d = os.path.join(FIX, "tokenizer", kind)
    cases = json.load(open(os.path.join(d, "cases.json"), encoding="utf-8"))["cases"]
    ok, bad = 0, []
    for c in cases:
        out, err = call(peer, os.path.join(d, "vocab.gguf"), "tokenize", c["text"])
        if out is not None and out["ids"] == c["ids"]:
            ok += 1
        else:
            bad.append(c["text"][:30])
    print(f"| {kind} | {len(cases)} | {ok} of {len(cases)}" + (f" (differs: {bad[:3]})" if bad else "") + " |")
