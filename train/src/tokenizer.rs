//! Tokenizers: Modula's byte vocabulary and byte-level BPE (GPT-2's scheme, as llama.cpp's
//! `tokenizer.ggml.model = "gpt2"` files and Hugging Face `tokenizers` define it), read
//! from a GGUF file's `tokenizer.ggml.*` metadata or from a `tokenizer.json`.
//!
//! Byte-level BPE: the text is split at special (control and user-defined) tokens, which
//! map to their ids whole; the rest is pre-tokenized by the file's [`PreTokenizer`]
//! (GPT-2's pattern: contractions, ` ?letters`, ` ?digits`, ` ?other`, whitespace runs — a
//! run followed by a non-space leaves its last character to the next piece; Llama 3's and
//! Qwen2's: letters with one leading non-letter, digits in threes or singly, punctuation
//! with its newlines, newline runs; SmolLM's: single digits, then GPT-2's), each piece's
//! UTF-8 bytes are mapped to
//! GPT-2's printable byte alphabet, and adjacent symbols merge by the file's merge ranks,
//! lowest first (leftmost on ties) until none applies. Decoding maps the symbols back to
//! bytes; [`StreamDecoder`] never yields a split UTF-8 sequence.
//!
//! Checked against the `tokenizers` library on Unicode, emoji, digits, whitespace runs and
//! special tokens (`train/tests/tokenizer.rs`, fixtures by
//! `tests/reference/tokenizer_reference.py`).

use crate::core::{Model, Value};
use std::collections::HashMap;

mod spm;
pub use spm::{Spm, SpmSpec};

/// A problem with a file's tokenizer: a clear message naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerError(pub String);

impl std::fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenizerError {}

fn err<T>(m: impl Into<String>) -> Result<T, TokenizerError> {
    Err(TokenizerError(m.into()))
}

/// How text becomes token ids.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// Modula's byte models: token = byte.
    Bytes,
    /// Byte-level BPE.
    Bpe(Box<Bpe>),
    /// SentencePiece-style BPE with byte fallback (llama.cpp's `llama` tokenizer).
    Spm(Box<Spm>),
}

/// How byte-level BPE text is split into pieces before merging (llama.cpp's
/// `tokenizer.ggml.pre` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2's pattern (`gpt-2`).
    Gpt2,
    /// Llama 3's (`llama-bpe`, `llama3`, `llama-v3`): digits in runs of at most three.
    Llama3,
    /// Qwen2's (`qwen2`): Llama 3's with single digits.
    Qwen2,
    /// SmolLM's (`smollm`): every digit alone, then GPT-2's pattern between them.
    SmolLm,
}

/// Llama 3's pattern; the regex crate has no look-ahead, so `\s+(?!\S)|\s+` is `\s+`
/// with the run's last character given back (see [`Bpe::pieces`]); `(?i:'s|…)` as llama.cpp
/// spells it (ASCII case only).
const LLAMA3_PATTERN: &str = r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
const QWEN2_PATTERN: &str = r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

impl PreTokenizer {
    /// The kind llama.cpp calls `name` (`None`: GPT-2's, as llama.cpp's default for files
    /// without the key is closest to it — with a warning there).
    pub fn from_name(name: Option<&str>) -> Result<Self, TokenizerError> {
        Ok(match name {
            // "gpt2" is what Modula 0.1 wrote for GPT-2's
            None | Some("gpt-2") | Some("gpt2") => PreTokenizer::Gpt2,
            Some("llama-bpe") | Some("llama3") | Some("llama-v3") => PreTokenizer::Llama3,
            Some("qwen2") => PreTokenizer::Qwen2,
            Some("smollm") => PreTokenizer::SmolLm,
            Some(o) => {
                return err(format!(
                    "tokenizer.ggml.pre = \"{o}\" is not a pre-tokenizer Modula runs \
                     (gpt-2, llama-bpe, qwen2, smollm)"
                ))
            }
        })
    }

    /// llama.cpp's name.
    pub fn name(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => "gpt-2",
            PreTokenizer::Llama3 => "llama-bpe",
            PreTokenizer::Qwen2 => "qwen2",
            PreTokenizer::SmolLm => "smollm",
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 | PreTokenizer::SmolLm => GPT2_PATTERN,
            PreTokenizer::Llama3 => LLAMA3_PATTERN,
            PreTokenizer::Qwen2 => QWEN2_PATTERN,
        }
    }
}

/// A byte-level BPE vocabulary as files store it: what `tokenizer.ggml.*` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BpeSpec {
    /// Token strings (byte-alphabet symbols; special tokens as their text).
    pub tokens: Vec<String>,
    /// llama.cpp token types (1 normal, 3 control, 4 user-defined, …).
    pub types: Vec<i32>,
    /// Merges, `"left right"`, by rank.
    pub merges: Vec<String>,
    /// Pre-tokenizer.
    pub pre: PreTokenizer,
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Prepend `bos` to a prompt.
    pub add_bos: bool,
}

/// A byte-level BPE vocabulary.
#[derive(Debug, Clone)]
pub struct Bpe {
    tokens: Vec<String>,
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens (control, user-defined), longest first.
    specials: Vec<(String, u32)>,
    is_special: Vec<bool>,
    /// The id of each byte's symbol.
    byte_id: [u32; 256],
    /// Symbol char → byte.
    char_byte: HashMap<char, u8>,
    /// Beginning/end of sequence ids.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Prepend `bos` when encoding a prompt (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    pre: regex::Regex,
    kind: PreTokenizer,
    digit: regex::Regex,
}

/// GPT-2's byte → printable char table: printable Latin-1 bytes map to themselves, the
/// others to U+0100 onwards in byte order.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        out[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    out
}

/// GPT-2's pre-tokenizer pattern without its look-ahead (`\s+(?!\S)` is applied after the
/// match, see [`Bpe::pieces`]).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

fn strings(m: &Model<impl AsRef<[u8]>>, key: &str) -> Result<Vec<String>, TokenizerError> {
    match m.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.to_string()),
                o => err(format!(
                    "{key}: an entry is {}, not a string",
                    o.type_description()
                )),
            })
            .collect(),
        Some(o) => err(format!(
            "{key} is {}, not an array of strings",
            o.type_description()
        )),
        None => err(format!("{key}: required key is missing")),
    }
}

fn id(m: &Model<impl AsRef<[u8]>>, key: &str, vocab: usize) -> Result<Option<u32>, TokenizerError> {
    match m.get(key) {
        None => Ok(None),
        Some(Value::U32(v)) if (v as usize) < vocab => Ok(Some(v)),
        Some(o) => err(format!("{key} = {o:?} is not a token id below {vocab}")),
    }
}

impl Tokenizer {
    /// The tokenizer of a model file: its `tokenizer.ggml.*` metadata, or Modula's byte
    /// vocabulary for Modula's own files (`modula.model`) without one. A file from
    /// elsewhere without a tokenizer, or with a kind Modula does not run, is an error that
    /// names it.
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, TokenizerError> {
        match m.get_str("tokenizer.ggml.model") {
            None if m.get_str("modula.model").is_some() => Ok(Tokenizer::Bytes),
            None => err(
                "the file has no tokenizer (tokenizer.ggml.model is missing): Modula cannot \
                 turn text into its token ids",
            ),
            Some("gpt2") => Ok(Tokenizer::Bpe(Box::new(Bpe::from_model(m)?))),
            Some("llama") => Ok(Tokenizer::Spm(Box::new(Spm::new(&SpmSpec::from_model(
                m,
            )?)?))),
            Some(o) => err(format!(
                "tokenizer.ggml.model = \"{o}\" is not a tokenizer Modula runs yet (gpt2: \
                 byte-level BPE; llama: SentencePiece-style BPE with byte fallback)"
            )),
        }
    }

    /// The tokenizer of a Hugging Face `tokenizer.json` (byte-level BPE; see
    /// [`BpeSpec::from_tokenizer_json`]); `bos`/`eos` as the model's config gives them.
    pub fn from_tokenizer_json(
        path: &std::path::Path,
        bos: Option<u32>,
        eos: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        let at = |e: String| TokenizerError(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
        let j: serde_json::Value = serde_json::from_str(&text).map_err(|e| at(e.to_string()))?;
        if j["model"]["byte_fallback"].as_bool() == Some(true) {
            let mut spec = SpmSpec::from_tokenizer_json(&j).map_err(|e| at(e.0))?;
            spec.bos = bos.or(spec.bos);
            spec.eos = eos.or(spec.eos);
            spec.add_bos = spec.bos.is_some();
            return Ok(Tokenizer::Spm(Box::new(
                Spm::new(&spec).map_err(|e| at(e.0))?,
            )));
        }
        let mut spec = BpeSpec::from_tokenizer_json(&j).map_err(|e| at(e.0))?;
        spec.bos = bos.or(spec.bos);
        spec.eos = eos.or(spec.eos);
        Ok(Tokenizer::Bpe(Box::new(
            Bpe::new(&spec).map_err(|e| at(e.0))?,
        )))
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Bpe(b) => b.tokens.len(),
            Tokenizer::Spm(s) => s.tokens.len(),
        }
    }

    /// The ids of `text` (raw bytes for the byte vocabulary; BPE text must be UTF-8), with
    /// the beginning-of-sequence token when the file asks for one and `prompt` is set.
    pub fn encode(&self, text: &[u8], prompt: bool) -> Result<Vec<u32>, TokenizerError> {
        match self {
            Tokenizer::Bytes => Ok(text.iter().map(|&b| u32::from(b)).collect()),
            Tokenizer::Bpe(b) => {
                let s = std::str::from_utf8(text).map_err(|e| {
                    TokenizerError(format!(
                        "the text is not UTF-8 ({e}); this model's BPE tokenizer reads UTF-8"
                    ))
                })?;
                let mut ids = Vec::new();
                if prompt && b.add_bos {
                    ids.extend(b.bos);
                }
                b.encode_into(s, &mut ids);
                Ok(ids)
            }
            Tokenizer::Spm(sp) => {
                let s = std::str::from_utf8(text).map_err(|e| {
                    TokenizerError(format!(
                        "the text is not UTF-8 ({e}); this model's tokenizer reads UTF-8"
                    ))
                })?;
                let mut ids = Vec::new();
                if prompt && sp.add_bos {
                    ids.extend(sp.bos);
                }
                // llama.cpp: a stretch of text first or after a special token gets the
                // space prefix
                let mut after_special = true;
                for (seg, special) in split_special(&sp.specials, s) {
                    match special {
                        Some(id) => {
                            ids.push(id);
                            after_special = true;
                        }
                        None => {
                            sp.encode_text(seg, after_special, &mut ids);
                            after_special = false;
                        }
                    }
                }
                Ok(ids)
            }
        }
    }

    /// The bytes of `ids` (special tokens as their text; a SentencePiece text without the
    /// space its encoding prefixed).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &i in ids {
            self.push_bytes(i, &mut out);
        }
        if let Tokenizer::Spm(s) = self {
            if s.add_space_prefix && out.first() == Some(&b' ') {
                out.remove(0);
            }
        }
        out
    }

    fn push_bytes(&self, id: u32, out: &mut Vec<u8>) {
        match self {
            Tokenizer::Bytes => out.push(id as u8),
            Tokenizer::Bpe(b) => b.push_bytes(id, out),
            Tokenizer::Spm(s) => s.push_bytes(id, out),
        }
    }

    /// The stored text of token `id` (a special token's name, e.g. `<s>`).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        match self {
            Tokenizer::Bytes => None,
            Tokenizer::Bpe(b) => b.tokens.get(id as usize).map(String::as_str),
            Tokenizer::Spm(s) => s.tokens.get(id as usize).map(String::as_str),
        }
    }

    /// Beginning and end of sequence ids, where the file names them.
    pub fn bos_eos(&self) -> (Option<u32>, Option<u32>) {
        match self {
            Tokenizer::Bytes => (None, None),
            Tokenizer::Bpe(b) => (b.bos, b.eos),
            Tokenizer::Spm(s) => (s.bos, s.eos),
        }
    }

    /// Is `id` the end-of-sequence token?
    pub fn is_eos(&self, id: u32) -> bool {
        match self {
            Tokenizer::Bytes => false,
            Tokenizer::Bpe(b) => b.eos == Some(id),
            Tokenizer::Spm(s) => s.eos == Some(id),
        }
    }
}

impl BpeSpec {
    /// `tokenizer.ggml.{tokens, token_type, merges, pre, bos_token_id, eos_token_id,
    /// add_bos_token}`.
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, TokenizerError> {
        let pre = PreTokenizer::from_name(m.get_str("tokenizer.ggml.pre"))?;
        let tokens = strings(m, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return err("tokenizer.ggml.tokens is empty");
        }
        let types: Vec<i32> = match m.get("tokenizer.ggml.token_type") {
            None => vec![1; n],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(t) => Ok(t),
                    Value::U32(t) => Ok(t.min(i32::MAX as u32) as i32),
                    o => err(format!(
                        "tokenizer.ggml.token_type: an entry is {}",
                        o.type_description()
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(o) => {
                return err(format!(
                    "tokenizer.ggml.token_type is {}",
                    o.type_description()
                ))
            }
        };
        let add_bos = match m.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(o) => {
                return err(format!(
                    "tokenizer.ggml.add_bos_token is {}",
                    o.type_description()
                ))
            }
        };
        Ok(BpeSpec {
            merges: strings(m, "tokenizer.ggml.merges")?,
            bos: id(m, "tokenizer.ggml.bos_token_id", n)?,
            eos: id(m, "tokenizer.ggml.eos_token_id", n)?,
            tokens,
            types,
            pre,
            add_bos,
        })
    }

    /// A Hugging Face `tokenizer.json` of a byte-level BPE: `model` (type BPE, vocab,
    /// merges), `added_tokens` (special ones become control tokens), the pre-tokenizer
    /// (GPT-2's ByteLevel; a Split by Llama 3's or Qwen2's pattern then ByteLevel; SmolLM's
    /// single Digits then ByteLevel) and, for `add_bos`, a post-processor that puts a token
    /// before `$A`. Ids for bos/eos are not in the file (the caller sets them from the
    /// model's config).
    pub fn from_tokenizer_json(t: &serde_json::Value) -> Result<Self, TokenizerError> {
        use serde_json::Value as Json;
        let m = &t["model"];
        if m["type"].as_str() != Some("BPE") {
            return err(format!(
                "tokenizer.json: model type {} is not run (byte-level BPE)",
                m["type"]
            ));
        }
        if m["byte_fallback"].as_bool() == Some(true) {
            return err(
                "tokenizer.json: a BPE with byte_fallback (SentencePiece-style, Llama 2) is not run yet",
            );
        }
        let pre = json_pre(&t["pre_tokenizer"])?;
        let (tokens, special) = json_tokens(t)?;
        let mut types = vec![1i32; tokens.len()];
        for (i, sp) in special {
            types[i] = if sp { 3 } else { 4 };
        }
        let merges: Vec<String> = m["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| match v {
                Json::String(s) => s.clone(),
                Json::Array(p) => p
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => String::new(),
            })
            .collect();
        // TemplateProcessing with a special token before $A: a bos is prepended
        let pp = &t["post_processor"];
        let single = if pp["type"].as_str() == Some("Sequence") {
            pp["processors"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["type"].as_str() == Some("TemplateProcessing"))
                .map(|p| p["single"].clone())
        } else if pp["type"].as_str() == Some("TemplateProcessing") {
            Some(pp["single"].clone())
        } else {
            None
        };
        let first_bos = single
            .as_ref()
            .and_then(|s| s.as_array())
            .and_then(|a| a.first())
            .and_then(|p| p["SpecialToken"]["id"].as_str())
            .and_then(|name| tokens.iter().position(|t| t == name));
        Ok(BpeSpec {
            add_bos: first_bos.is_some(),
            bos: first_bos.map(|i| i as u32),
            eos: None,
            tokens,
            types,
            merges,
            pre,
        })
    }

    /// Write as `tokenizer.ggml.*` (model `gpt2`, llama.cpp's names and types).
    pub fn write(&self, w: &mut crate::core::gguf::GgufWriter<'_>) -> Result<(), TokenizerError> {
        use crate::core::{MetaValue, ValueType};
        let strs = |v: &[String]| {
            MetaValue::Array(
                ValueType::String,
                v.iter().map(|s| MetaValue::String(s.clone())).collect(),
            )
        };
        let mut set =
            |k: &str, v: MetaValue| w.set(k, v).map_err(|e| TokenizerError(format!("{k}: {e}")));
        set("tokenizer.ggml.model", MetaValue::String("gpt2".into()))?;
        set(
            "tokenizer.ggml.pre",
            MetaValue::String(self.pre.name().into()),
        )?;
        set("tokenizer.ggml.tokens", strs(&self.tokens))?;
        set(
            "tokenizer.ggml.token_type",
            MetaValue::Array(
                ValueType::I32,
                self.types.iter().map(|&t| MetaValue::I32(t)).collect(),
            ),
        )?;
        set("tokenizer.ggml.merges", strs(&self.merges))?;
        if let Some(b) = self.bos {
            set("tokenizer.ggml.bos_token_id", MetaValue::U32(b))?;
        }
        if let Some(e) = self.eos {
            set("tokenizer.ggml.eos_token_id", MetaValue::U32(e))?;
        }
        set(
            "tokenizer.ggml.add_bos_token",
            MetaValue::Bool(self.add_bos),
        )?;
        Ok(())
    }
}

/// Added tokens: (id, special).
type Added = Vec<(usize, bool)>;

/// A `tokenizer.json`'s tokens by id (`model.vocab` and `added_tokens`), and the added
/// ones as (id, special).
fn json_tokens(t: &serde_json::Value) -> Result<(Vec<String>, Added), TokenizerError> {
    let Some(vocab) = t["model"]["vocab"].as_object() else {
        return err("tokenizer.json: model.vocab is missing");
    };
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut put = |id: u64, s: &str| -> Result<usize, TokenizerError> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < (1 << 24))
            .ok_or_else(|| TokenizerError(format!("tokenizer.json: token id {id} of {s:?}")))?;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
        }
        tokens[id] = Some(s.to_string());
        Ok(id)
    };
    for (s, id) in vocab {
        put(id.as_u64().unwrap_or(u64::MAX), s)?;
    }
    let mut added = Vec::new();
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(s)) = (a["id"].as_u64(), a["content"].as_str()) {
            added.push((put(id, s)?, a["special"].as_bool() == Some(true)));
        }
    }
    let Some(tokens) = tokens.into_iter().collect::<Option<Vec<String>>>() else {
        return err("tokenizer.json: the token ids are not 0..n without gaps");
    };
    Ok((tokens, added))
}

/// The pre-tokenizer of a `tokenizer.json`.
fn json_pre(pre: &serde_json::Value) -> Result<PreTokenizer, TokenizerError> {
    let ty = |p: &serde_json::Value| p["type"].as_str().unwrap_or("").to_string();
    let parts: Vec<&serde_json::Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        Some(_) => vec![pre],
        None => Vec::new(),
    };
    let byte_level = |p: &serde_json::Value, regex: bool| {
        ty(p) == "ByteLevel"
            && p["add_prefix_space"].as_bool() != Some(true)
            && p["use_regex"].as_bool().unwrap_or(true) == regex
    };
    let split_pattern = |p: &serde_json::Value| -> Option<String> {
        (ty(p) == "Split" && p["invert"].as_bool() != Some(true))
            .then(|| p["pattern"]["Regex"].as_str().map(str::to_string))
            .flatten()
    };
    let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let qwen2 = llama3.replace(r"\p{N}{1,3}", r"\p{N}");
    match parts.as_slice() {
        [b] if byte_level(b, true) => Ok(PreTokenizer::Gpt2),
        [s, b] if byte_level(b, false) && split_pattern(s).as_deref() == Some(llama3) => {
            Ok(PreTokenizer::Llama3)
        }
        [s, b] if byte_level(b, false) && split_pattern(s).as_deref() == Some(&qwen2) => {
            Ok(PreTokenizer::Qwen2)
        }
        [dg, b]
            if ty(dg) == "Digits"
                && dg["individual_digits"].as_bool() == Some(true)
                && byte_level(b, true) =>
        {
            Ok(PreTokenizer::SmolLm)
        }
        _ => err(format!(
            "tokenizer.json: pre-tokenizer {} is not one Modula runs (GPT-2's ByteLevel; \
             Llama 3's or Qwen2's Split + ByteLevel; SmolLM's Digits + ByteLevel)",
            serde_json::to_string(pre)
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        )),
    }
}

impl Bpe {
    /// Byte-level BPE from a file's `tokenizer.ggml.*` metadata.
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, TokenizerError> {
        Self::new(&BpeSpec::from_model(m)?)
    }

    /// Byte-level BPE from its stored form, checked: every byte has its symbol, every
    /// merge names tokens, ids are in range.
    pub fn new(spec: &BpeSpec) -> Result<Self, TokenizerError> {
        let tokens = spec.tokens.clone();
        let types = &spec.types;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return err("tokenizer.ggml.tokens is empty");
        }
        if types.len() != n {
            return err(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            ));
        }
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let chars = byte_chars();
        let mut byte_id = [0u32; 256];
        let mut char_byte = HashMap::with_capacity(256);
        for (b, &c) in chars.iter().enumerate() {
            char_byte.insert(c, b as u8);
            byte_id[b] = *ids.get(&c.to_string()).ok_or_else(|| {
                TokenizerError(format!(
                    "tokenizer.ggml.tokens lacks the symbol of byte {b:#04x} ('{c}'): not a byte-level BPE vocabulary"
                ))
            })?;
        }
        let mut merges = HashMap::new();
        for (rank, line) in spec.merges.iter().enumerate() {
            let (a, b) = line.split_once(' ').ok_or_else(|| {
                TokenizerError(format!(
                    "tokenizer.ggml.merges[{rank}] = {line:?} is not \"left right\""
                ))
            })?;
            let look = |s: &str| {
                ids.get(s).copied().ok_or_else(|| {
                    TokenizerError(format!(
                        "tokenizer.ggml.merges[{rank}] = {line:?}: {s:?} is not a token"
                    ))
                })
            };
            let (l, r, j) = (look(a)?, look(b)?, look(&format!("{a}{b}"))?);
            merges.entry((l, r)).or_insert((rank as u32, j));
        }
        // control (3) and user-defined (4) tokens are matched whole in the text
        let mut specials: Vec<(String, u32)> = tokens
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (t, &ty))| (ty == 3 || ty == 4) && !t.is_empty())
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let is_special = types.iter().map(|&t| t == 3 || t == 4).collect();
        let add_bos = spec.add_bos;
        let in_range = |k: &str, v: Option<u32>| match v {
            Some(i) if i as usize >= n => err(format!("{k} = {i} is not a token id below {n}")),
            _ => Ok(v),
        };
        let bos = in_range("tokenizer.ggml.bos_token_id", spec.bos)?;
        if add_bos && bos.is_none() {
            return err(
                "tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is missing",
            );
        }
        Ok(Bpe {
            pre: regex::Regex::new(spec.pre.pattern())
                .map_err(|e| TokenizerError(e.to_string()))?,
            kind: spec.pre,
            digit: regex::Regex::new(r"\p{N}").map_err(|e| TokenizerError(e.to_string()))?,
            eos: in_range("tokenizer.ggml.eos_token_id", spec.eos)?,
            bos,
            add_bos,
            tokens,
            merges,
            specials,
            is_special,
            byte_id,
            char_byte,
        })
    }

    fn split_special<'t>(&self, text: &'t str) -> Vec<(&'t str, Option<u32>)> {
        split_special(&self.specials, text)
    }

    /// The pre-tokenization of `text` into pieces.
    fn pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        if self.kind != PreTokenizer::SmolLm {
            return self.pattern_pieces(text);
        }
        // SmolLM: every digit a piece of its own, GPT-2's pattern on the text between
        let mut out = Vec::new();
        let mut at = 0;
        for m in self.digit.find_iter(text) {
            out.extend(self.pattern_pieces(&text[at..m.start()]));
            out.push(m.as_str());
            at = m.end();
        }
        out.extend(self.pattern_pieces(&text[at..]));
        out
    }

    /// The pattern's pieces of `text`.
    fn pattern_pieces<'t>(&self, text: &'t str) -> Vec<&'t str> {
        // Llama 3 / Qwen2: a whitespace run holding a newline is matched by `\s*[\r\n]+`,
        // before the `\s+(?!\S)` branch, and gives nothing back
        let newline_branch = matches!(self.kind, PreTokenizer::Llama3 | PreTokenizer::Qwen2);
        let mut out = Vec::new();
        let mut at = 0;
        while at < text.len() {
            let Some(m) = self.pre.find_at(text, at) else {
                break;
            };
            let mut end = m.end();
            let piece = &text[m.start()..end];
            // `\s+(?!\S)`: a whitespace run followed by a non-space leaves its last
            // character to the next piece (when the run is longer than one)
            if piece.chars().all(char::is_whitespace)
                && end < text.len()
                && !(newline_branch && piece.contains(['\r', '\n']))
            {
                let n = piece.chars().count();
                if n > 1 {
                    end -= piece.chars().last().map_or(0, char::len_utf8);
                }
            }
            out.push(&text[m.start()..end]);
            at = end;
        }
        out
    }

    fn encode_into(&self, text: &str, ids: &mut Vec<u32>) {
        for (seg, special) in self.split_special(text) {
            if let Some(id) = special {
                ids.push(id);
                continue;
            }
            for piece in self.pieces(seg) {
                self.bpe(piece, ids);
            }
        }
    }

    /// Merge the byte symbols of one piece.
    fn bpe(&self, piece: &str, ids: &mut Vec<u32>) {
        let mut w: Vec<u32> = piece.bytes().map(|b| self.byte_id[b as usize]).collect();
        loop {
            let best = w
                .windows(2)
                .enumerate()
                .filter_map(|(i, p)| self.merges.get(&(p[0], p[1])).map(|&(r, j)| (r, i, j)))
                .min();
            let Some((_, i, j)) = best else { break };
            w[i] = j;
            w.remove(i + 1);
        }
        ids.extend(w);
    }

    fn push_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(t) = self.tokens.get(id as usize) else {
            return;
        };
        if self.is_special[id as usize] {
            out.extend_from_slice(t.as_bytes());
            return;
        }
        for c in t.chars() {
            match self.char_byte.get(&c) {
                Some(&b) => out.push(b),
                None => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
}

/// `text` split at special tokens (longest first): (segment, Some(id)) for a special token.
fn split_special<'t>(specials: &[(String, u32)], text: &'t str) -> Vec<(&'t str, Option<u32>)> {
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if let Some((s, id)) = specials
            .iter()
            .find(|(s, _)| bytes[i..].starts_with(s.as_bytes()))
        {
            if start < i {
                out.push((&text[start..i], None));
            }
            out.push((&text[i..i + s.len()], Some(*id)));
            i += s.len();
            start = i;
        } else {
            i += 1;
        }
    }
    if start < bytes.len() {
        out.push((&text[start..], None));
    }
    out
}

/// Decodes ids one at a time into text that never ends inside a UTF-8 sequence: bytes of an
/// unfinished character wait for the next id ([`StreamDecoder::finish`] flushes them, as
/// U+FFFD if they never complete).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// The text that `id` completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        tok.push_bytes(id, &mut self.pending);
        let upto = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_some() => {
                // invalid (not merely unfinished): replace it and go on
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.pending.split_off(upto);
        String::from_utf8(std::mem::replace(&mut self.pending, rest)).unwrap_or_default()
    }

    /// Whatever is left.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_a_bijection() {
        let c = byte_chars();
        let mut seen = std::collections::HashSet::new();
        for (b, ch) in c.iter().enumerate() {
            assert!(seen.insert(*ch), "byte {b}");
            assert!(!ch.is_whitespace() && !ch.is_control(), "byte {b} → {ch:?}");
        }
        assert_eq!(c[b'A' as usize], 'A');
        assert_eq!(c[b' ' as usize], 'Ġ');
        assert_eq!(c[b'\n' as usize], 'Ċ');
    }
}
