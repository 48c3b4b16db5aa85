//! SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral v0.1): llama.cpp's
//! `tokenizer.ggml.model = "llama"`.
//!
//! Encoding, as llama.cpp's SPM tokenizer does: each stretch of text between special tokens
//! gets a leading space (`add_space_prefix`), spaces become `▁` (U+2581), the text starts as
//! one symbol per character, and repeatedly the adjacent pair whose concatenation is a token
//! with the highest score (leftmost on ties) is merged; a final symbol that is a token is its
//! id, any other is spelled as its UTF-8 bytes' `<0xXX>` tokens (the unknown token where a
//! byte has none). From a `tokenizer.json` (a `BPE` with `byte_fallback`), a merged token's
//! score is minus the rank of the first merge that makes it, so the highest score is the
//! earliest merge — the order Hugging Face's BPE applies them in.

use super::{err, TokenizerError};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// A SentencePiece-style vocabulary.
#[derive(Debug, Clone)]
pub struct Spm {
    pub(super) tokens: Vec<String>,
    scores: Vec<f32>,
    ids: HashMap<String, u32>,
    /// Control (3) and user-defined (4) tokens, longest first: matched whole in the text.
    pub(super) specials: Vec<(String, u32)>,
    types: Vec<i32>,
    byte_id: [Option<u32>; 256],
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Prepend `bos` to a prompt.
    pub add_bos: bool,
    /// Each stretch of text gets a leading space.
    pub add_space_prefix: bool,
}

/// The stored form: what `tokenizer.ggml.*` holds for model `llama`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmSpec {
    /// Pieces (`▁` for spaces; `<0xXX>` byte tokens).
    pub tokens: Vec<String>,
    /// Scores (higher merges first).
    pub scores: Vec<f32>,
    /// llama.cpp token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    pub types: Vec<i32>,
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
    /// Unknown.
    pub unk: Option<u32>,
    /// Prepend `bos` to a prompt.
    pub add_bos: bool,
    /// Prepend a space to each stretch of text.
    pub add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        // the highest score first, then the leftmost
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// Check and index a stored vocabulary.
    pub fn new(s: &SpmSpec) -> Result<Self, TokenizerError> {
        let n = s.tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return err("tokenizer.ggml.tokens is empty");
        }
        if s.scores.len() != n || s.types.len() != n {
            return err(format!(
                "tokenizer.ggml.scores / token_type have {} / {} entries for {n} tokens",
                s.scores.len(),
                s.types.len()
            ));
        }
        if let Some(i) = s.scores.iter().position(|v| !v.is_finite()) {
            return err(format!("tokenizer.ggml.scores[{i}] is not finite"));
        }
        for (k, v) in [("bos", s.bos), ("eos", s.eos), ("unk", s.unk)] {
            if let Some(i) = v.filter(|&i| i as usize >= n) {
                return err(format!(
                    "tokenizer.ggml.{k}_token_id = {i} is not a token id below {n}"
                ));
            }
        }
        if s.add_bos && s.bos.is_none() {
            return err("tokenizer.ggml.add_bos_token is set but there is no bos token");
        }
        let mut ids = HashMap::with_capacity(n);
        let mut byte_id = [None; 256];
        for (i, t) in s.tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
            if s.types[i] == 6 {
                let b = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        TokenizerError(format!(
                            "tokenizer.ggml.tokens[{i}] = {t:?} is a byte token but not <0xXX>"
                        ))
                    })?;
                byte_id[b as usize].get_or_insert(i as u32);
            }
        }
        let mut specials: Vec<(String, u32)> = s
            .tokens
            .iter()
            .zip(&s.types)
            .enumerate()
            .filter(|(_, (t, &ty))| (ty == 3 || ty == 4) && !t.is_empty())
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(Spm {
            tokens: s.tokens.clone(),
            scores: s.scores.clone(),
            ids,
            specials,
            types: s.types.clone(),
            byte_id,
            bos: s.bos,
            eos: s.eos,
            unk: s.unk,
            add_bos: s.add_bos,
            add_space_prefix: s.add_space_prefix,
        })
    }

    /// The ids of one stretch of text (no special tokens in it); `prefix`: give it the
    /// leading space.
    pub(super) fn encode_text(&self, text: &str, prefix: bool, out: &mut Vec<u32>) {
        let mut t = String::with_capacity(text.len() + 3);
        if prefix && self.add_space_prefix {
            t.push('\u{2581}');
        }
        for c in text.chars() {
            t.push(if c == ' ' { '\u{2581}' } else { c });
        }
        if t.is_empty() {
            return;
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, c)) in t.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        let add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], l: usize, r: usize| {
            let (a, b) = (&syms[l], &syms[r]);
            let s = &t[a.start..a.start + a.len + b.len];
            if let Some(&id) = self.ids.get(s) {
                heap.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size: s.len(),
                });
            }
        };
        for i in 1..syms.len() {
            add(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(nx) = syms[r].next {
                syms[nx].prev = Some(l);
            }
            if let Some(p) = syms[l].prev {
                add(&mut heap, &syms, p, l);
            }
            if let Some(nx) = syms[l].next {
                add(&mut heap, &syms, l, nx);
            }
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let s = &t[syms[k].start..syms[k].start + syms[k].len];
            match self.ids.get(s) {
                Some(&id) => out.push(id),
                None => {
                    for b in s.bytes() {
                        out.extend(self.byte_id[b as usize].or(self.unk));
                    }
                }
            }
            i = syms[k].next;
        }
    }

    /// The bytes of one id: pieces with `▁` as spaces, byte tokens as their byte, control
    /// tokens as their text.
    pub(super) fn push_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(t) = self.tokens.get(id as usize) else {
            return;
        };
        match self.types[id as usize] {
            6 => {
                if let Some(b) = self.byte_id.iter().position(|&x| x == Some(id)) {
                    out.push(b as u8);
                }
            }
            3 | 4 => out.extend_from_slice(t.as_bytes()),
            _ => out.extend_from_slice(t.replace('\u{2581}', " ").as_bytes()),
        }
    }
}

impl SpmSpec {
    /// A Hugging Face `tokenizer.json` of a byte-fallback BPE (Llama 2's): vocabulary,
    /// merges (a merged token scores minus the rank of its first merge; others 0),
    /// added tokens (special: control), `<0xXX>` byte tokens, the unknown token, and a
    /// `Prepend("▁")` normalizer for the space prefix.
    pub fn from_tokenizer_json(t: &serde_json::Value) -> Result<Self, TokenizerError> {
        let m = &t["model"];
        let (tokens, added) = super::json_tokens(t)?;
        let ids: HashMap<&str, usize> = tokens
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let mut scores = vec![0f32; tokens.len()];
        let mut scored = vec![false; tokens.len()];
        for (rank, v) in m["merges"].as_array().into_iter().flatten().enumerate() {
            let pair = match v {
                serde_json::Value::String(s) => s.replacen(' ', "", 1),
                serde_json::Value::Array(p) => p.iter().filter_map(|x| x.as_str()).collect(),
                _ => String::new(),
            };
            if let Some(&i) = ids.get(pair.as_str()) {
                if !scored[i] {
                    scores[i] = -(rank as f32);
                    scored[i] = true;
                }
            }
        }
        let is_byte = |s: &str| {
            s.len() == 6
                && s.starts_with("<0x")
                && s.ends_with('>')
                && u8::from_str_radix(&s[3..5], 16).is_ok()
        };
        let unk_name = m["unk_token"].as_str();
        let mut types: Vec<i32> = tokens
            .iter()
            .map(|s| {
                if is_byte(s) {
                    6
                } else if Some(s.as_str()) == unk_name {
                    2
                } else {
                    1
                }
            })
            .collect();
        for (i, special) in added {
            if types[i] != 6 && types[i] != 2 {
                types[i] = if special { 3 } else { 4 };
            }
        }
        let norm = serde_json::to_string(&t["normalizer"]).unwrap_or_default();
        Ok(SpmSpec {
            unk: unk_name.and_then(|u| ids.get(u)).map(|&i| i as u32),
            scores,
            types,
            bos: None,
            eos: None,
            add_bos: false,
            add_space_prefix: norm.contains("\"Prepend\"") || norm.contains("\"prepend\""),
            tokens,
        })
    }
}

impl SpmSpec {
    /// `tokenizer.ggml.{tokens, scores, token_type, bos/eos/unknown_token_id,
    /// add_bos_token, add_space_prefix}` of a `llama` tokenizer.
    pub fn from_model<B: AsRef<[u8]>>(m: &crate::core::Model<B>) -> Result<Self, TokenizerError> {
        use crate::core::Value;
        let tokens = super::strings(m, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        let nums = |key: &str| -> Result<Option<Vec<f64>>, TokenizerError> {
            match m.get(key) {
                None => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::F32(x) => Ok(f64::from(x)),
                        Value::I32(x) => Ok(f64::from(x)),
                        Value::U32(x) => Ok(f64::from(x)),
                        o => err(format!("{key}: an entry is {}", o.type_description())),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(o) => err(format!("{key} is {}", o.type_description())),
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool, TokenizerError> {
            match m.get(key) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(b),
                Some(o) => err(format!("{key} is {}", o.type_description())),
            }
        };
        Ok(SpmSpec {
            scores: nums("tokenizer.ggml.scores")?
                .ok_or_else(|| {
                    TokenizerError(
                        "tokenizer.ggml.scores: required for a llama (SentencePiece) tokenizer"
                            .into(),
                    )
                })?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            types: nums("tokenizer.ggml.token_type")?
                .map_or_else(|| vec![1; n], |v| v.into_iter().map(|t| t as i32).collect()),
            bos: super::id(m, "tokenizer.ggml.bos_token_id", n)?,
            eos: super::id(m, "tokenizer.ggml.eos_token_id", n)?,
            unk: super::id(m, "tokenizer.ggml.unknown_token_id", n)?,
            // llama.cpp's defaults for SentencePiece vocabularies
            add_bos: flag("tokenizer.ggml.add_bos_token", true)?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true)?,
            tokens,
        })
    }

    /// Write as `tokenizer.ggml.*` (model `llama`).
    pub fn write(&self, w: &mut crate::core::gguf::GgufWriter<'_>) -> Result<(), TokenizerError> {
        use crate::core::{MetaValue, ValueType};
        let mut set =
            |k: &str, v: MetaValue| w.set(k, v).map_err(|e| TokenizerError(format!("{k}: {e}")));
        set("tokenizer.ggml.model", MetaValue::String("llama".into()))?;
        set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(
                ValueType::String,
                self.tokens
                    .iter()
                    .map(|s| MetaValue::String(s.clone()))
                    .collect(),
            ),
        )?;
        set(
            "tokenizer.ggml.scores",
            MetaValue::Array(
                ValueType::F32,
                self.scores.iter().map(|&v| MetaValue::F32(v)).collect(),
            ),
        )?;
        set(
            "tokenizer.ggml.token_type",
            MetaValue::Array(
                ValueType::I32,
                self.types.iter().map(|&t| MetaValue::I32(t)).collect(),
            ),
        )?;
        for (k, v) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
        ] {
            if let Some(v) = v {
                set(&format!("tokenizer.ggml.{k}"), MetaValue::U32(v))?;
            }
        }
        set(
            "tokenizer.ggml.add_bos_token",
            MetaValue::Bool(self.add_bos),
        )?;
        set(
            "tokenizer.ggml.add_space_prefix",
            MetaValue::Bool(self.add_space_prefix),
        )?;
        Ok(())
    }
}
