//! Fuzz the tokenizers: any byte string that parses as GGUF (its `tokenizer.ggml.*` and
//! `tokenizer.chat_template` metadata) or as JSON (a `tokenizer.json`) must give a
//! tokenizer or a clear error — never a panic, an out-of-bounds read (ASan), a hang or an
//! unbounded allocation — and a tokenizer must encode, decode and stream-decode fixed texts
//! (Unicode, special-token look-alikes, whitespace runs), and a chat template render or
//! fail within its step budget.
//!
//! Run: `cargo +nightly fuzz run tokenizer_load fuzz/seeds-tokenizer -- -max_total_time=60`
//! (seeds: the tokenizer fixtures; see `scripts/fuzz.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use modula_train::core::Model;
use modula_train::tokenizer::{StreamDecoder, Tokenizer};

const TEXTS: [&str; 4] = [
    "Hello world, naïve café 😀 12345",
    "<s>x</s> <|endoftext|> <|im_start|>user\n",
    "   \n\n\t ▁▁ <0x41> [PAD3]",
    "",
];

fn exercise(t: &Tokenizer) {
    for text in TEXTS {
        for prompt in [false, true] {
            if let Ok(ids) = t.encode(text.as_bytes(), prompt) {
                let _ = t.decode(&ids);
                let mut s = StreamDecoder::default();
                for &id in &ids {
                    let _ = s.push(t, id);
                }
                let _ = s.finish();
            }
        }
    }
    // ids outside the vocabulary decode to nothing, never a panic
    let _ = t.decode(&[u32::MAX, t.vocab() as u32]);
    let _ = t.bos_eos();
    let _ = t.token_text(0);
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        let dir = std::env::temp_dir().join(format!("modula-fuzz-tok-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("tokenizer.json");
        if std::fs::write(&p, data).is_ok() {
            if let Ok(t) = Tokenizer::from_tokenizer_json(&p, Some(1), Some(2)) {
                exercise(&t);
            }
        }
        return;
    }
    let Ok(m) = Model::from_bytes(data) else {
        return;
    };
    if let Ok(t) = Tokenizer::from_model(&m) {
        exercise(&t);
    }
    if let Some(tpl) = modula_train::chat::template_of(&m) {
        let msgs = [modula_train::chat::Message {
            role: "user".into(),
            content: "hi".into(),
        }];
        let _ = modula_train::chat::render(&tpl, &msgs, "<s>", "</s>", true);
    }
});
