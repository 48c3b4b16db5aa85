"""The `tokenizers` library as the reference for Modula's byte-level BPE (issue #30).

Trains a byte-level BPE tokenizer (GPT-2's pre-tokenizer, 400 tokens, three special tokens)
with Hugging Face `tokenizers` on a generated multilingual text, and writes

    tests/fixtures/tokenizer/bpe/tokenizer.json   the library's own file
    tests/fixtures/tokenizer/bpe/vocab.gguf       the same vocabulary as llama.cpp's
        tokenizer.ggml.* metadata (model gpt2, pre gpt2, tokens, token types, merges,
        bos/eos ids) on a file with no tensors
    tests/fixtures/tokenizer/bpe/cases.json       texts (Unicode, emoji, digits, whitespace
        runs, special tokens, contractions) with the library's ids and decoded strings

The Rust test `train/tests/tokenizer.rs` compares Modula's ids with these (no Python at test
time). Run:

    /tmp/torchvenv/bin/pip install tokenizers gguf
    /tmp/torchvenv/bin/python tests/reference/tokenizer_reference.py
"""
import json
import os
import random

import gguf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizer", "bpe")
SPECIAL = ["<|bos|>", "<|eos|>", "<|pad|>"]

WORDS = ("the quick brown fox jumps over the lazy dog and it's a day we'll remember; "
         "naïve café déjà vu — Straße Ölfeld, ŝi ĉiam; Привет мир, как дела? "
         "日本語のテキスト、中文文本。 한국어 문장 ; ελληνικά κείμενα; "
         "नमस्ते दुनिया; مرحبا بالعالم; emoji 😀🎉👍🏽 and 1234567 numbers 3.14 2024-12-07 ").split(" ")


def corpus(n, seed):
    r = random.Random(seed)
    lines = []
    for _ in range(n):
        k = r.randint(3, 14)
        ws = [r.choice(WORDS) for _ in range(k)]
        sep = r.choice([" ", " ", " ", "  ", "\n", "\t", "   "])
        lines.append(sep.join(ws))
    return lines


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus(3000, 1), trainer)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    merges = spec["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    for a in spec["added_tokens"]:
        tokens[a["id"]] = a["content"]
    types = [3 if t in SPECIAL else 1 for t in tokens]

    w = gguf.GGUFWriter(os.path.join(OUT, "vocab.gguf"), "llama")
    w.add_name("modula tokenizer fixture (no tensors)")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|bos|>"))
    w.add_eos_token_id(tokens.index("<|eos|>"))
    w.add_pad_token_id(tokens.index("<|pad|>"))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    texts = [
        "Hello world",
        "the quick brown fox jumps over the lazy dog",
        "it's we'll they've I'm you'd she's",
        "naïve café déjà vu — Straße",
        "Привет мир, как дела?",
        "日本語のテキスト、中文文本。",
        "नमस्ते दुनिया",
        "emoji 😀🎉👍🏽 done",
        "1234567 numbers 3.14 and 2024-12-07",
        "spaces   between\twords\n\nnew  lines   ",
        "   leading spaces",
        "trailing spaces   ",
        "\n\n\t mixed \u00a0nbsp\u2003em-space end",
        "<|bos|>special tokens<|eos|> inside <|pad|>text<|eos|>",
        "unseen: Ωmega ∑ ≈ ∞ ♥ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "",
        "a",
    ] + corpus(12, 7)
    cases = []
    for t in texts:
        enc = tok.encode(t, add_special_tokens=False)
        cases.append({"text": t, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab": len(tokens), "cases": cases}, f, ensure_ascii=False, indent=1)
    print(len(tokens), "tokens,", len(merges), "merges,", len(cases), "cases")


if __name__ == "__main__":
    main()
