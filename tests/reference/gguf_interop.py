#!/usr/bin/env python3
"""Interoperability with llama.cpp's own GGUF implementation (the `gguf` PyPI package).

1. `check FILE...`: read files written by Modula with gguf.GGUFReader and check that every
   tensor's name, type, shape and bytes, and every metadata value, agree with what the file
   declares (the bytes are compared with the raw file at the tensor's offset, so the two
   readers agree on the layout).
2. `write OUT`: write a file with gguf.GGUFWriter (F32, F16, BF16, Q8_0, Q4_0 tensors and
   metadata of several types). The committed result is `tests/fixtures/gguf_py_written.gguf`;
   the Rust test `gguf_py_fixture_reads_correctly` checks Modula reads it (no Python needed).

3. `quant ORIG QUANT...`: every Q8_0/Q4_0/F16/BF16 tensor of each QUANT file (written by
   `modula quantize`) must equal gguf-py's own quantisation of ORIG's f32 tensor of the same
   name, byte for byte (gguf-py reimplements ggml's reference quantisers in numpy).

Usage: python3 gguf_interop.py check FILE... | write OUT | quant ORIG QUANT...
Needs: pip install gguf (0.19.0 was used for the fixture).
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize


def check(paths):
    for path in paths:
        r = gguf.GGUFReader(path)
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        arch = r.fields.get("general.architecture")
        assert arch is not None, f"{path}: no general.architecture"
        align = r.fields.get("general.alignment")
        alignment = int(align.parts[align.data[0]][0]) if align else 32
        n = 0
        for t in r.tensors:
            assert t.tensor_type in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_K, T.Q6_K), (t.name, t.tensor_type)
            assert t.data_offset % alignment == 0, (t.name, t.data_offset, alignment)
            nbytes = int(t.n_bytes)
            on_disk = raw[t.data_offset : t.data_offset + nbytes]
            data = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
            assert data.nbytes == nbytes, (t.name, data.nbytes, nbytes)
            assert np.array_equal(on_disk, data), t.name
            n += 1
        print(f"ok {path}: {n} tensors, {len(r.fields)} metadata fields, alignment {alignment}")


def quant(orig, paths):
    src = {t.name: t for t in gguf.GGUFReader(orig).tensors}
    for path in paths:
        r = gguf.GGUFReader(path)
        n = 0
        for t in r.tensors:
            if t.tensor_type == T.F32:
                continue
            o = src[t.name]
            assert o.tensor_type == T.F32, (t.name, o.tensor_type)
            shape = tuple(int(v) for v in reversed(o.shape.tolist()))
            x = np.asarray(o.data, dtype=np.float32).reshape(shape)
            want = np.ascontiguousarray(quantize(x, t.tensor_type)).view(np.uint8).reshape(-1)
            got = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
            assert got.nbytes == want.nbytes, (t.name, got.nbytes, want.nbytes)
            diff = int(np.count_nonzero(got != want))
            assert diff == 0, f"{path}: {t.name} ({t.tensor_type.name}): {diff} bytes differ"
            n += 1
        print(f"ok {path}: {n} quantised tensors byte-identical to gguf-py's quantisation")


def kquant(orig, paths):
    """Modula's Q4_K/Q6_K tensors, dequantised by gguf-py, against the f32 originals: the
    format is read as Modula wrote it (Modula's round-to-nearest quantiser is not ggml's
    scale search, so the bytes differ; the values must be within the types' error)."""
    from gguf.quants import dequantize
    src = {t.name: t for t in gguf.GGUFReader(orig).tensors}
    worst = {T.Q4_K: 0.12, T.Q6_K: 0.03}
    for path in paths:
        n = 0
        for t in gguf.GGUFReader(path).tensors:
            if t.tensor_type not in worst:
                continue
            o = src[t.name]
            x = np.asarray(o.data, dtype=np.float32).reshape(-1)
            y = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)
            assert x.size == y.size, (t.name, x.size, y.size)
            rel = float(np.sqrt(np.mean((x - y) ** 2) / max(np.mean(x ** 2), 1e-30)))
            assert rel < worst[t.tensor_type], f"{path}: {t.name}: relative RMSE {rel}"
            n += 1
        assert n > 0, f"{path}: no K-quant tensor"
        print(f"ok {path}: {n} K-quant tensors read by gguf-py within their types' error")


def write(out):
    w = gguf.GGUFWriter(out, arch="modula")
    w.add_uint32("modula.block_count", 3)
    w.add_float32("modula.norm_epsilon", 1e-5)
    w.add_bool("modula.ssm.bidirectional", True)
    w.add_string("general.name", "written by gguf-py")
    # gguf-py's add_array stores Python ints as i32; modula.nested.* must be u32 arrays.
    V = gguf.GGUFValueType
    w.add_key_value("modula.nested.depths", [1, 2, 3], V.ARRAY, sub_type=V.UINT32)
    w.add_int64("test.i64", -7)
    x = (np.arange(8 * 64, dtype=np.float32) / 64.0 - 4.0).reshape(8, 64)  # row-major [8, 64]
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    bf = quantize(x, T.BF16)
    w.add_tensor("bf16", bf, raw_shape=bf.shape, raw_dtype=T.BF16)
    for name, ty in (("q8_0", T.Q8_0), ("q4_0", T.Q4_0)):
        q = quantize(x, ty)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "check":
        check(sys.argv[2:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "quant":
        quant(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) >= 4 and sys.argv[1] == "kquant":
        kquant(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        sys.exit(__doc__)
