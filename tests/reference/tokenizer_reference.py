"""The `tokenizers` library as the reference for Modula's byte-level BPE (issue #30).

Trains byte-level BPE tokenizers (400 tokens, three special tokens) with Hugging Face
`tokenizers` on a generated multilingual text, one per pre-tokenizer llama.cpp names —
GPT-2's (`gpt-2`, in `bpe/`), Llama 3's (`llama-bpe`, in `bpe-llama3/`), Qwen2's (`qwen2`, in
`bpe-qwen2/`) and SmolLM's (`smollm`: single digits, then GPT-2's; in `bpe-smollm/`) — each
configured as the published tokenizer.json files configure it, and writes to each directory

    tokenizer.json   the library's own file
    vocab.gguf       the same vocabulary as llama.cpp's tokenizer.ggml.* metadata (model
        gpt2, pre as above, tokens, token types, merges, bos/eos ids) on a file with no tensors
    cases.json       texts (Unicode, emoji, digits, whitespace runs and newlines, special
        tokens, contractions in any case) with the library's ids and decoded strings

The Rust test `train/tests/tokenizer.rs` compares Modula's ids with these (no Python at test
time). Run:

    /tmp/torchvenv/bin/pip install tokenizers gguf
    /tmp/torchvenv/bin/python tests/reference/tokenizer_reference.py
"""
import json
import os
import random

import gguf
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

BASE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tokenizer")
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")


def pre_tokenizer(kind):
    """The pre-tokenizer of each kind as the published tokenizer.json files have it."""
    if kind == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    pat = {"llama-bpe": LLAMA3, "qwen2": QWEN2}[kind]
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


KINDS = {"gpt-2": "bpe", "llama-bpe": "bpe-llama3", "qwen2": "bpe-qwen2", "smollm": "bpe-smollm"}
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


def build(kind):
    OUT = os.path.join(BASE, KINDS[kind])
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(kind)
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
    w.add_tokenizer_pre(kind)
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
        "ab  \nx and x  \n  y\r\n\r\nz \n\n\n",
        "IT'S WE'LL THEY'VE I'M YOU'D She'S l'Été",
        "12345678 9 10 100 1000 3,141,592 ٣٤٥ ½",
        "tabs\t\tand\t\n\tnewlines\n   \n",
        "?!... ((x)) --> <== \"quoted\" 'single'",
    ] + corpus(12, 7)
    cases = []
    for t in texts:
        enc = tok.encode(t, add_special_tokens=False)
        cases.append({"text": t, "ids": enc.ids, "decoded": tok.decode(enc.ids, skip_special_tokens=False)})
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab": len(tokens), "cases": cases}, f, ensure_ascii=False, indent=1)
    print(kind, len(tokens), "tokens,", len(merges), "merges,", len(cases), "cases")


if __name__ == "__main__":
    for k in KINDS:
        build(k)
