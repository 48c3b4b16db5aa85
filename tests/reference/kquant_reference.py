"""gguf-py's dequantisers as the reference for Modula's Q4_K and Q6_K (issue #30).

Writes tests/fixtures/kquants/{q4_k,q6_k}.bin: random super-blocks (raw bytes, the scales
kept small so no value overflows), each followed by gguf-py's float32 dequantisation of it,
and a header `n_blocks` (u32). The Rust test `quant/tests/kquants.rs` dequantises the same
bytes and compares. Run:

    /tmp/torchvenv/bin/pip install gguf numpy
    /tmp/torchvenv/bin/python tests/reference/kquant_reference.py
"""
import os
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "kquants")


def blocks(kind, n, rng):
    out = []
    for _ in range(n):
        if kind == T.Q4_K:
            d, dmin = rng.uniform(0.001, 0.05, 2).astype(np.float16)
            rest = rng.integers(0, 256, 12 + 128, dtype=np.uint8).tobytes()
            out.append(d.tobytes() + dmin.tobytes() + rest)
        else:
            raw = rng.integers(0, 256, 128 + 64, dtype=np.uint8).tobytes()
            sc = rng.integers(-128, 128, 16).astype(np.int8).tobytes()
            d = np.float16(rng.uniform(0.0005, 0.01))
            out.append(raw + sc + d.tobytes())
    return b"".join(out)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(30)
    for kind, name, size in [(T.Q4_K, "q4_k", 144), (T.Q6_K, "q6_k", 210)]:
        n = 16
        raw = blocks(kind, n, rng)
        assert len(raw) == n * size
        vals = dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(n, size), kind)
        vals = np.asarray(vals, dtype=np.float32).reshape(-1)
        assert vals.size == n * 256
        with open(os.path.join(OUT, name + ".bin"), "wb") as f:
            f.write(struct.pack("<I", n))
            f.write(raw)
            f.write(vals.tobytes())
        print(name, n, "blocks", float(np.abs(vals).max()))


if __name__ == "__main__":
    main()
