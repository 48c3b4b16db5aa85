"""`tokenizers` (and, where built, llama.cpp) as the reference for Modula's
SentencePiece-style BPE with byte fallback — Llama 2's and TinyLlama's tokenizer (issue #30).

Trains a byte-fallback BPE with Hugging Face `tokenizers` on a generated multilingual text
(a small alphabet, so rare characters fall back to bytes), lays it out as Llama 2's
`tokenizer.json` is laid out (ids 0–2 `<unk>`, `<s>`, `</s>`; 3–258 the `<0xXX>` byte tokens;
normalizer Prepend("▁") + Replace(" ", "▁"); no pre-tokenizer; byte fallback), and writes

    tests/fixtures/tokenizer/spm/tokenizer.json   the library's file
    tests/fixtures/tokenizer/spm/vocab.gguf       the same vocabulary as llama.cpp's
        tokenizer.ggml.* metadata (model llama, tokens, scores = minus the rank of the first
        merge making the token, token types, bos/eos/unk ids) on a file with no tensors
    tests/fixtures/tokenizer/spm/cases.json       texts with the library's ids and decoded
        strings; with `--peer PATH` (scripts/llamacpp/peer built by
        scripts/llamacpp/build.sh) also llama.cpp's ids of the same texts from vocab.gguf

Run:

    /tmp/torchvenv/bin/python tests/reference/spm_reference.py [--peer /tmp/llamacpp/build/bin/peer]
"""
import json
import os
import subprocess
import sys

import gguf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

sys.path.insert(0, os.path.dirname(__file__))
from tokenizer_reference import corpus  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizer", "spm")
SPECIAL = ["<unk>", "<s>", "</s>"]


def main():
    peer = sys.argv[sys.argv.index("--peer") + 1] if "--peer" in sys.argv else None
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # train on words (as SentencePiece does: no piece spans a ▁ inside), encode without
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tok.train_from_iterator(corpus(3000, 2), trainers.BpeTrainer(
        vocab_size=520, special_tokens=SPECIAL, limit_alphabet=70, show_progress=False))
    spec = json.loads(tok.to_str())
    trained = spec["model"]["vocab"]
    vocab = {s: i for i, s in enumerate(SPECIAL)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for s, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if s not in vocab:
            vocab[s] = len(vocab)
    spec["model"]["vocab"] = vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    spec["added_tokens"] = [dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False,
                                 normalized=False, special=True) for i, s in enumerate(SPECIAL)]
    spec["pre_tokenizer"] = None
    spec["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.save(os.path.join(OUT, "tokenizer.json"))

    tokens = [None] * len(vocab)
    for s, i in vocab.items():
        tokens[i] = s
    scores = [0.0] * len(tokens)
    seen = set()
    for rank, m in enumerate(spec["model"]["merges"]):
        merged = "".join(m) if isinstance(m, list) else m.replace(" ", "", 1)
        i = vocab.get(merged)
        if i is not None and i not in seen:
            scores[i] = -float(rank)
            seen.add(i)
    types = [2 if t == "<unk>" else 3 if t in SPECIAL else 6 if t.startswith("<0x") and len(t) == 6 else 1
             for t in tokens]
    path = os.path.join(OUT, "vocab.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("modula SentencePiece-style tokenizer fixture (no tensors)")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    texts = [
        "Hello world", "the quick brown fox jumps over the lazy dog",
        "it's we'll they've I'm you'd she's", "naïve café déjà vu — Straße",
        "Привет мир, как дела?", "日本語のテキスト、中文文本。", "emoji 😀🎉👍🏽 done",
        "1234567 numbers 3.14 and 2024-12-07", "spaces   between\twords\n\nnew  lines   ",
        "   leading spaces", "trailing spaces   ", "\n\n\t mixed \u00a0nbsp\u2003em-space end",
        "<s>special tokens</s> inside <s>text</s>", "unseen: Ωmega ∑ ≈ ∞ ♥ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a", " ",
    ] + corpus(12, 9)
    cases = []
    for t in texts:
        enc = tok.encode(t, add_special_tokens=False)
        c = {"text": t, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)}
        if peer:
            r = subprocess.run([peer, path, "tokenize", t], capture_output=True, text=True, check=True)
            c["llamacpp_ids"] = json.loads(r.stdout)["ids"]
        cases.append(c)
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab": len(tokens), "cases": cases}, f, ensure_ascii=False, indent=1)
    same = sum(c.get("llamacpp_ids") == c["ids"] for c in cases)
    print(len(tokens), "tokens,", len(cases), "cases;", f"llama.cpp = tokenizers on {same}" if peer else "")
    for c in cases:
        if peer and c["llamacpp_ids"] != c["ids"]:
            print("differs:", repr(c["text"][:40]), c["ids"][:12], c["llamacpp_ids"][:12])


if __name__ == "__main__":
    main()
