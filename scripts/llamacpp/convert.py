"""Run llama.cpp's own convert_hf_to_gguf.py on a Hugging Face directory.

    python scripts/llamacpp/convert.py LLAMA_CPP_DIR HF_DIR OUT.gguf [OUTTYPE] [PRE]

The converter recognises a BPE tokenizer's pre-tokenizer by a hash of its output on a
fixed text, which only the published tokenizers have; the small tokenizers the parity
fixtures train are byte-level BPEs with GPT-2's pre-tokenizer, so the hash lookup is
answered with PRE (default `gpt-2`). Nothing else of the converter is changed.
"""
import os
import sys

lc, hf, out = sys.argv[1:4]
outtype = sys.argv[4] if len(sys.argv) > 4 else "f32"
pre = sys.argv[5] if len(sys.argv) > 5 else "gpt-2"
sys.path.insert(0, os.path.join(lc, "gguf-py"))
sys.path.insert(0, lc)
import convert_hf_to_gguf as c  # noqa: E402

try:  # the converter split into a package (conversion/) in 2026
    from conversion.base import TextModel as base  # noqa: E402
except ImportError:
    base = getattr(c, "TextModel", None) or c.Model
base.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py", hf, "--outfile", out, "--outtype", outtype]
c.main()
