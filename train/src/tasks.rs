//! Every data set the trainer can use, behind one [`Dataset`] trait: byte-level text (any
//! file, or the KJV text), Fashion-MNIST images cut into patches, and three generated tasks
//! that need no download — ListOps (the Long Range Arena grammar), associative recall (dense,
//! and sparse with distant keys) and copy. Each batch is deterministic in the RNG state.
//!
//! | name | kind | inputs | targets |
//! |---|---|---|---|
//! | text (`PATH`, `kjv`) | LM | bytes `[b, t]` | next byte |
//! | `fashion-mnist` | classify (10) | patches `[b, t, p²]`, `t = (28/p)²` | class |
//! | `listops` | classify (10) | 16 tokens, left-padded to `t` | value of the expression |
//! | `recall` | LM, last position only | `k₁ v₁ … k_P v_P ? k` | the value stored under `k` |
//! | `sparse-recall` | LM, last position only | noise with `P` pairs far back, `? k` | the value stored under `k` |
//! | `copy` | LM, second half only | `x₁ … x_m SEP x₁ … x_{m−1}` | `x₁ … x_m` |

use crate::data::{ByteText, DataError, Split};
use crate::layers::loss::IGNORE;
use crate::model::dense::{Input, Pool};
use modula_core::rng::SplitMix64;
use std::io::Read;
use std::path::Path;

/// A batch of `b` sequences of `t`.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Token ids `[b, t]` (empty for feature inputs).
    pub tokens: Vec<u32>,
    /// Features `[b, t, dim]` (empty for token inputs).
    pub features: Vec<f32>,
    /// `[b, t]` (LM; [`IGNORE`] where no loss is taken) or `[b]` (classifier).
    pub targets: Vec<u32>,
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub t: usize,
}

impl Batch {
    /// A batch of token inputs.
    pub fn of_tokens(tokens: Vec<u32>, targets: Vec<u32>, b: usize, t: usize) -> Self {
        Batch {
            tokens,
            features: Vec::new(),
            targets,
            b,
            t,
        }
    }

    /// The model input.
    pub fn input(&self) -> Input<'_> {
        if self.features.is_empty() {
            Input::Tokens(&self.tokens)
        } else {
            Input::Features(&self.features)
        }
    }
}

/// What a data set asks of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskShape {
    /// Token vocabulary (0 for feature inputs).
    pub vocab: usize,
    /// Feature width of one position (0 for token inputs).
    pub patch_dim: usize,
    /// 0: next-token (LM) targets; otherwise one class per sequence.
    pub classes: usize,
    /// Fixed sequence length, or `None` when any `t` works (text).
    pub seq: Option<usize>,
    /// Suggested attention mask.
    pub causal: bool,
    /// Suggested classifier pooling.
    pub pool: Pool,
}

/// A source of training and validation batches.
pub trait Dataset: Send + Sync {
    /// Short description for logs.
    fn describe(&self) -> String;
    /// What a model for this data looks like.
    fn shape(&self) -> TaskShape;
    /// `b` examples of the split, drawn with `rng`.
    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError>;
    /// The validation batches an evaluation uses: for finite validation sets, the first
    /// `max_batches·b` examples in order; otherwise `max_batches` random batches drawn from
    /// `seed`.
    fn eval_batches(
        &self,
        b: usize,
        t: usize,
        max_batches: usize,
        seed: u64,
    ) -> Result<Vec<Batch>, DataError> {
        let mut rng = SplitMix64(seed);
        (0..max_batches.max(1))
            .map(|_| self.batch(Split::Val, b, t, &mut rng))
            .collect()
    }
}

impl Dataset for ByteText {
    fn describe(&self) -> String {
        format!(
            "byte text: {} training bytes, {} validation bytes",
            self.split(Split::Train).len(),
            self.split(Split::Val).len()
        )
    }

    fn shape(&self) -> TaskShape {
        TaskShape {
            vocab: 256,
            patch_dim: 0,
            classes: 0,
            seq: None,
            causal: true,
            pool: Pool::Last,
        }
    }

    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError> {
        let (tokens, targets) = ByteText::batch(self, split, b, t, rng)?;
        Ok(Batch::of_tokens(tokens, targets, b, t))
    }
}

/// The shape of a generated next-token task over `vocab` tokens of fixed length `seq`.
fn generated_lm(vocab: usize, seq: usize) -> TaskShape {
    TaskShape {
        vocab,
        patch_dim: 0,
        classes: 0,
        seq: Some(seq),
        causal: true,
        pool: Pool::Last,
    }
}

/// The generator of a batch: training draws advance the sampler itself; validation draws
/// come from a stream derived from it with `salt` (same distribution, other draws).
fn draws<'a>(
    split: Split,
    rng: &'a mut SplitMix64,
    salt: u64,
    val: &'a mut SplitMix64,
) -> &'a mut SplitMix64 {
    match split {
        Split::Train => rng,
        Split::Val => {
            *val = SplitMix64(rng.next_u64() ^ salt);
            val
        }
    }
}

fn fixed_len(name: &str, want: usize, t: usize) -> Result<(), DataError> {
    if t == want {
        Ok(())
    } else {
        Err(DataError::Invalid(format!(
            "{name} examples are {want} positions long, not {t}"
        )))
    }
}

// ---------------------------------------------------------------------------------------
// ListOps

/// ListOps token ids: 0 pad, 1..=10 the digits 0–9, then the operators and `]`.
pub mod listops_tokens {
    /// Padding.
    pub const PAD: u32 = 0;
    /// `[MIN`.
    pub const MIN: u32 = 11;
    /// `[MAX`.
    pub const MAX: u32 = 12;
    /// `[MED`.
    pub const MED: u32 = 13;
    /// `[SM` (sum mod 10).
    pub const SM: u32 = 14;
    /// `]`.
    pub const CLOSE: u32 = 15;
    /// Vocabulary size.
    pub const VOCAB: usize = 16;
}

/// The Long Range Arena ListOps task (`../shared/papers/spec_seqboat_sortednet.md`, Part D):
/// operator node with probability 0.25 below `max_depth`, `k ∈ [2, max_args]` children,
/// operators MIN, MAX, MED (floor of the median), SM (sum mod 10); trees kept only when
/// `min_len < len < max_len`; the label is the root value. Parentheses are dropped (15
/// tokens + pad); expressions are left-padded to exactly `seq` positions, so the last
/// position always holds the end of the expression (natural for causal, last-position
/// pooling).
/// Training examples are drawn fresh from the RNG; the validation set is a fixed list
/// drawn from its own seed (not deduplicated against training draws: with short
/// expressions a validation tree can also occur in training; measured in the tests).
#[derive(Clone, Debug)]
pub struct ListOps {
    /// Deepest operator nesting (root at depth 1).
    pub max_depth: u32,
    /// Most children of an operator.
    pub max_args: u32,
    /// Exclusive lower bound on the expression length.
    pub min_len: usize,
    /// Positions per example (exclusive upper bound on the length is `seq + 1`).
    pub seq: usize,
    val: Vec<(Vec<u32>, u32)>,
}

impl ListOps {
    /// The task with `val_size` validation examples drawn from `seed`.
    pub fn new(
        max_depth: u32,
        max_args: u32,
        min_len: usize,
        seq: usize,
        val_size: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if max_depth < 2 || max_args < 2 || min_len + 1 >= seq {
            return Err(DataError::Invalid(format!(
                "listops needs depth >= 2, args >= 2 and min_len + 1 < seq (got depth \
                 {max_depth}, args {max_args}, min_len {min_len}, seq {seq})"
            )));
        }
        let mut t = ListOps {
            max_depth,
            max_args,
            min_len,
            seq,
            val: Vec::new(),
        };
        let mut rng = SplitMix64(seed ^ 0x11570b5);
        t.val = (0..val_size)
            .map(|_| t.sample(&mut rng))
            .collect::<Result<_, _>>()?;
        Ok(t)
    }

    /// Small CPU setting of the spec: depth ≤ 6, ≤ 5 arguments, 20 < len < seq + 1.
    pub fn small(seq: usize, seed: u64) -> Result<Self, DataError> {
        Self::new(6, 5, 20.min(seq / 2), seq, 2000, seed)
    }

    fn node(&self, depth: u32, rng: &mut SplitMix64, out: &mut Vec<u32>, budget: usize) -> u32 {
        use listops_tokens::*;
        if out.len() > budget {
            // already too long: finish cheaply, the tree will be rejected
            out.push(1);
            return 0;
        }
        if depth < self.max_depth && rng.next_f32() < 0.25 {
            let k = 2 + rng.below(u64::from(self.max_args - 1)) as u32;
            let op = rng.below(4) as u32;
            out.push(MIN + op);
            let mut vals: Vec<u32> = (0..k)
                .map(|_| self.node(depth + 1, rng, out, budget))
                .collect();
            out.push(CLOSE);
            match op {
                0 => vals.iter().copied().min().unwrap_or(0),
                1 => vals.iter().copied().max().unwrap_or(0),
                2 => {
                    vals.sort_unstable();
                    let m = vals.len();
                    if m % 2 == 1 {
                        vals[m / 2]
                    } else {
                        (vals[m / 2 - 1] + vals[m / 2]) / 2
                    }
                }
                _ => vals.iter().sum::<u32>() % 10,
            }
        } else {
            let v = rng.below(10) as u32;
            out.push(v + 1);
            v
        }
    }

    /// One accepted example: tokens (unpadded) and label.
    pub fn sample(&self, rng: &mut SplitMix64) -> Result<(Vec<u32>, u32), DataError> {
        for _ in 0..100_000 {
            let mut toks = Vec::new();
            let v = self.node(1, rng, &mut toks, self.seq + 1);
            if self.min_len < toks.len() && toks.len() <= self.seq {
                return Ok((toks, v));
            }
        }
        Err(DataError::Invalid(format!(
            "listops: no expression with {} < length <= {} in 100000 draws; widen the range",
            self.min_len, self.seq
        )))
    }

    fn push(&self, toks: &[u32], label: u32, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        x.extend(std::iter::repeat_n(
            listops_tokens::PAD,
            self.seq - toks.len(),
        ));
        x.extend_from_slice(toks);
        y.push(label);
    }

    /// Evaluate a token sequence (unpadded) — the reference semantics, for tests.
    pub fn evaluate(tokens: &[u32]) -> Option<u32> {
        use listops_tokens::*;
        let mut stack: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut result = None;
        for &tok in tokens {
            match tok {
                1..=10 => match stack.last_mut() {
                    Some((_, args)) => args.push(tok - 1),
                    None => result = Some(tok - 1),
                },
                MIN..=SM => stack.push((tok, Vec::new())),
                CLOSE => {
                    let (op, mut a) = stack.pop()?;
                    a.sort_unstable();
                    let v = match op {
                        MIN => *a.first()?,
                        MAX => *a.last()?,
                        MED if a.len() % 2 == 1 => a[a.len() / 2],
                        MED => (a[a.len() / 2 - 1] + a[a.len() / 2]) / 2,
                        _ => a.iter().sum::<u32>() % 10,
                    };
                    match stack.last_mut() {
                        Some((_, args)) => args.push(v),
                        None => result = Some(v),
                    }
                }
                _ => return None,
            }
        }
        if stack.is_empty() {
            result
        } else {
            None
        }
    }
}

impl Dataset for ListOps {
    fn describe(&self) -> String {
        format!(
            "listops: depth <= {}, args <= {}, {} < length <= {}, {} validation examples",
            self.max_depth,
            self.max_args,
            self.min_len,
            self.seq,
            self.val.len()
        )
    }

    fn shape(&self) -> TaskShape {
        TaskShape {
            vocab: listops_tokens::VOCAB,
            patch_dim: 0,
            classes: 10,
            seq: Some(self.seq),
            causal: true,
            pool: Pool::Last,
        }
    }

    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError> {
        fixed_len("listops", self.seq, t)?;
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b));
        for _ in 0..b {
            match split {
                Split::Train => {
                    let (toks, v) = self.sample(rng)?;
                    self.push(&toks, v, &mut x, &mut y);
                }
                Split::Val => {
                    if self.val.is_empty() {
                        return Err(DataError::Invalid("listops has no validation set".into()));
                    }
                    let (toks, v) = &self.val[rng.below(self.val.len() as u64) as usize];
                    self.push(toks, *v, &mut x, &mut y);
                }
            }
        }
        Ok(Batch::of_tokens(x, y, b, t))
    }

    fn eval_batches(
        &self,
        b: usize,
        t: usize,
        max_batches: usize,
        _seed: u64,
    ) -> Result<Vec<Batch>, DataError> {
        fixed_len("listops", self.seq, t)?;
        let mut out = Vec::new();
        for chunk in self.val.chunks(b.max(1)).take(max_batches.max(1)) {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for (toks, v) in chunk {
                self.push(toks, *v, &mut x, &mut y);
            }
            out.push(Batch::of_tokens(x, y, chunk.len(), t));
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Associative recall and copy

/// Associative recall: `P` distinct keys with random values, a query marker and one of
/// the keys; the target at the last position is that key's value (no loss elsewhere).
/// Tokens: keys `0..K`, values `K..2K`, marker `2K`. `t = 2P + 2`.
#[derive(Clone, Copy, Debug)]
pub struct Recall {
    /// Distinct keys (and values).
    pub keys: usize,
    /// Sequence length (even, ≥ 4; `P = t/2 − 1` pairs, at most `keys`).
    pub seq: usize,
}

impl Recall {
    /// Checked constructor.
    pub fn new(keys: usize, seq: usize) -> Result<Self, DataError> {
        if seq < 4 || !seq.is_multiple_of(2) || seq / 2 - 1 > keys || keys < 2 {
            return Err(DataError::Invalid(format!(
                "recall needs an even seq >= 4 with seq/2 - 1 <= keys (got seq {seq}, keys {keys})"
            )));
        }
        Ok(Recall { keys, seq })
    }
}

impl Dataset for Recall {
    fn describe(&self) -> String {
        format!(
            "associative recall: {} pairs from {} keys",
            self.seq / 2 - 1,
            self.keys
        )
    }

    fn shape(&self) -> TaskShape {
        generated_lm(2 * self.keys + 1, self.seq)
    }

    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError> {
        fixed_len("recall", self.seq, t)?;
        let mut vrng = SplitMix64(0);
        let rng = draws(split, rng, 0x5eed_f7a1, &mut vrng);
        let k = self.keys;
        let pairs = t / 2 - 1;
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let mut keys: Vec<u32> = (0..k as u32).collect();
            for i in 0..pairs {
                let j = i + rng.below((k - i) as u64) as usize;
                keys.swap(i, j);
            }
            let vals: Vec<u32> = (0..pairs)
                .map(|_| (k as u64 + rng.below(k as u64)) as u32)
                .collect();
            for i in 0..pairs {
                x.push(keys[i]);
                x.push(vals[i]);
            }
            let q = rng.below(pairs as u64) as usize;
            x.push(2 * k as u32);
            x.push(keys[q]);
            y.extend(std::iter::repeat_n(IGNORE, t - 1));
            y.push(vals[q]);
        }
        Ok(Batch::of_tokens(x, y, b, t))
    }
}

/// Sparse associative recall with distant keys (spec C1b): `t` positions of noise digits
/// `0..10`; `pairs` (key, value) pairs — distinct keys from their own 8 symbols `10..18`,
/// values digits — placed at random non-overlapping positions in the first `span`
/// positions; the sequence ends with the marker `18` and one of the keys; the target at
/// the last position is that key's value (no loss elsewhere). The pairs are far from the
/// query, so a local window of `w ≪ t − span` positions cannot see them.
#[derive(Clone, Copy, Debug)]
pub struct SparseRecall {
    /// Sequence length.
    pub seq: usize,
    /// Pairs per sequence (≤ 8).
    pub pairs: usize,
    /// The pairs lie in positions `0..span`.
    pub span: usize,
}

impl SparseRecall {
    /// Noise digits and values.
    pub const DIGITS: u32 = 10;
    /// Distinct keys.
    pub const KEYS: u32 = 8;
    /// The query marker.
    pub const QUERY: u32 = 18;

    /// Checked constructor; `span` defaults to `t·200/256` (the spec's 200 of 256).
    pub fn new(seq: usize, pairs: usize) -> Result<Self, DataError> {
        let span = seq * 200 / 256;
        if pairs == 0 || pairs > Self::KEYS as usize || seq < 8 || 4 * pairs + 1 > span {
            return Err(DataError::Invalid(format!(
                "sparse recall needs 1..=8 pairs with 4·pairs < {span} (the first 200/256 of \
                 seq {seq}; got {pairs} pairs)"
            )));
        }
        Ok(SparseRecall { seq, pairs, span })
    }
}

impl Dataset for SparseRecall {
    fn describe(&self) -> String {
        format!(
            "sparse recall: {} pairs in the first {} of {} noise positions, query at the end",
            self.pairs, self.span, self.seq
        )
    }

    fn shape(&self) -> TaskShape {
        generated_lm(Self::QUERY as usize + 1, self.seq)
    }

    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError> {
        fixed_len("sparse recall", self.seq, t)?;
        let mut vrng = SplitMix64(0);
        let rng = draws(split, rng, 0x5ba7_5e11, &mut vrng);
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let mut seq: Vec<u32> = (0..t)
                .map(|_| rng.below(u64::from(Self::DIGITS)) as u32)
                .collect();
            let mut keys: Vec<u32> = (0..Self::KEYS).collect();
            for i in 0..self.pairs {
                let j = i + rng.below((keys.len() - i) as u64) as usize;
                keys.swap(i, j);
            }
            // pair slots: distinct, non-overlapping starts in 0..span-1
            let mut starts: Vec<usize> = Vec::with_capacity(self.pairs);
            while starts.len() < self.pairs {
                let p = rng.below((self.span - 1) as u64) as usize;
                if starts.iter().all(|&q| p.abs_diff(q) >= 2) {
                    starts.push(p);
                }
            }
            let mut vals = Vec::with_capacity(self.pairs);
            for (i, &p) in starts.iter().enumerate() {
                let v = rng.below(u64::from(Self::DIGITS)) as u32;
                seq[p] = keys[i] + Self::DIGITS;
                seq[p + 1] = v;
                vals.push(v);
            }
            let q = rng.below(self.pairs as u64) as usize;
            seq[t - 2] = Self::QUERY;
            seq[t - 1] = keys[q] + Self::DIGITS;
            x.extend_from_slice(&seq);
            y.extend(std::iter::repeat_n(IGNORE, t - 1));
            y.push(vals[q]);
        }
        Ok(Batch::of_tokens(x, y, b, t))
    }
}

/// Copy: `m` random symbols, a separator, then the same symbols; the loss is on the copy.
/// Tokens: symbols `0..V`, separator `V`. `t = 2m`.
#[derive(Clone, Copy, Debug)]
pub struct Copy {
    /// Symbols.
    pub symbols: usize,
    /// Sequence length (even, ≥ 4).
    pub seq: usize,
}

impl Copy {
    /// Checked constructor.
    pub fn new(symbols: usize, seq: usize) -> Result<Self, DataError> {
        if seq < 4 || !seq.is_multiple_of(2) || symbols < 2 {
            return Err(DataError::Invalid(format!(
                "copy needs an even seq >= 4 and >= 2 symbols (got seq {seq}, symbols {symbols})"
            )));
        }
        Ok(Copy { symbols, seq })
    }
}

impl Dataset for Copy {
    fn describe(&self) -> String {
        format!(
            "copy: {} symbols from {}, then the copy",
            self.seq / 2,
            self.symbols
        )
    }

    fn shape(&self) -> TaskShape {
        generated_lm(self.symbols + 1, self.seq)
    }

    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError> {
        fixed_len("copy", self.seq, t)?;
        let mut vrng = SplitMix64(0);
        let rng = draws(split, rng, 0xc09e5, &mut vrng);
        let m = t / 2;
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let s: Vec<u32> = (0..m)
                .map(|_| rng.below(self.symbols as u64) as u32)
                .collect();
            x.extend_from_slice(&s);
            x.push(self.symbols as u32);
            x.extend_from_slice(&s[..m - 1]);
            // position i predicts token i + 1: positions m (SEP) .. 2m−1 predict x₁ .. x_m
            y.extend(std::iter::repeat_n(IGNORE, m));
            y.extend_from_slice(&s);
        }
        Ok(Batch::of_tokens(x, y, b, t))
    }
}

// ---------------------------------------------------------------------------------------
// Fashion-MNIST

/// Fashion-MNIST (IDX files, gzip-compressed or not) as sequences of `p × p` patches,
/// pixels scaled to [0, 1]. Training examples are drawn at random; the test set is the
/// validation split.
#[derive(Clone, Debug)]
pub struct FashionMnist {
    train_x: Vec<u8>,
    train_y: Vec<u8>,
    val_x: Vec<u8>,
    val_y: Vec<u8>,
    rows: usize,
    cols: usize,
    /// Patch side.
    pub patch: usize,
    /// Name in descriptions (`fashion-mnist`, or `generated`).
    pub name: &'static str,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |e: std::io::Error| DataError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parse an IDX file: magic `0x0000_08_NN` (unsigned bytes, `NN` dimensions), big-endian
/// dimensions, then the data. Returns (dimensions, data).
pub fn parse_idx(bytes: &[u8], what: &str) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |m: String| DataError::Invalid(format!("{what}: {m}"));
    if bytes.len() < 4 {
        return Err(bad("shorter than an IDX header".into()));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 8 {
        return Err(bad(format!(
            "wrong IDX magic {:02x}{:02x}{:02x}{:02x} (expected 000008nn: unsigned bytes)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    let nd = bytes[3] as usize;
    if nd == 0 || nd > 4 || bytes.len() < 4 + 4 * nd {
        return Err(bad(format!("{nd} dimensions or a truncated header")));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("dimensions overflow".into()))?;
    let data = &bytes[4 + 4 * nd..];
    if data.len() != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} bytes of data, the file has {}",
            data.len()
        )));
    }
    Ok((dims, data.to_vec()))
}

impl FashionMnist {
    /// Load `train-images-idx3-ubyte(.gz)`, `train-labels-idx1-ubyte(.gz)`,
    /// `t10k-images-idx3-ubyte(.gz)` and `t10k-labels-idx1-ubyte(.gz)` from `dir`.
    pub fn from_dir(dir: &Path, patch: usize) -> Result<Self, DataError> {
        let find = |stem: &str| {
            let gz = dir.join(format!("{stem}.gz"));
            if gz.exists() {
                gz
            } else {
                dir.join(stem)
            }
        };
        let load = |stem: &str| {
            let p = find(stem);
            let bytes = read_maybe_gz(&p)?;
            parse_idx(&bytes, &p.display().to_string())
        };
        let (tx_d, train_x) = load("train-images-idx3-ubyte")?;
        let (ty_d, train_y) = load("train-labels-idx1-ubyte")?;
        let (vx_d, val_x) = load("t10k-images-idx3-ubyte")?;
        let (vy_d, val_y) = load("t10k-labels-idx1-ubyte")?;
        Self::from_parts(
            (tx_d, train_x),
            (ty_d, train_y),
            (vx_d, val_x),
            (vy_d, val_y),
            patch,
        )
    }

    /// From parsed IDX parts (images `[n, rows, cols]`, labels `[n]`).
    pub fn from_parts(
        train_x: (Vec<usize>, Vec<u8>),
        train_y: (Vec<usize>, Vec<u8>),
        val_x: (Vec<usize>, Vec<u8>),
        val_y: (Vec<usize>, Vec<u8>),
        patch: usize,
    ) -> Result<Self, DataError> {
        let bad = |m: String| DataError::Invalid(format!("fashion-mnist: {m}"));
        for (x, y, name) in [(&train_x, &train_y, "training"), (&val_x, &val_y, "test")] {
            if x.0.len() != 3 || y.0.len() != 1 || x.0[0] != y.0[0] || x.0[0] == 0 {
                return Err(bad(format!(
                    "{name} images {:?} and labels {:?} do not match ([n, rows, cols] and [n])",
                    x.0, y.0
                )));
            }
            if let Some(i) = y.1.iter().position(|&l| l >= 10) {
                return Err(bad(format!(
                    "{name} label {} at index {i} is out of range 0..10",
                    y.1[i]
                )));
            }
        }
        let (rows, cols) = (train_x.0[1], train_x.0[2]);
        if (val_x.0[1], val_x.0[2]) != (rows, cols) {
            return Err(bad("training and test images differ in size".into()));
        }
        if patch == 0 || rows % patch != 0 || cols % patch != 0 {
            return Err(bad(format!(
                "patch size {patch} does not divide the {rows}x{cols} images"
            )));
        }
        Ok(FashionMnist {
            train_x: train_x.1,
            train_y: train_y.1,
            val_x: val_x.1,
            val_y: val_y.1,
            rows,
            cols,
            patch,
            name: "fashion-mnist",
        })
    }

    /// A generated image set (no download): 8×8 images of 4 classes, class `c` with
    /// brightness level `c` and a brighter quadrant `c`, plus uniform noise; `train` and
    /// `test` images, deterministic in `seed`.
    pub fn generated(
        train: usize,
        test: usize,
        seed: u64,
        patch: usize,
    ) -> Result<Self, DataError> {
        let make = |n: usize, seed: u64| {
            let mut r = SplitMix64(seed);
            let (mut x, mut y) = (Vec::with_capacity(n * 64), Vec::with_capacity(n));
            for _ in 0..n {
                let c = r.below(4) as usize;
                for row in 0..8 {
                    for col in 0..8 {
                        let on = (row / 4) * 2 + col / 4 == c;
                        let v = 20.0
                            + 50.0 * c as f32
                            + if on { 40.0 } else { 0.0 }
                            + 30.0 * r.next_f32();
                        x.push(v as u8);
                    }
                }
                y.push(c as u8);
            }
            ((vec![n, 8, 8], x), (vec![n], y))
        };
        let (tx, ty) = make(train, seed);
        let (vx, vy) = make(test, seed ^ 0x7e57);
        let mut d = Self::from_parts(tx, ty, vx, vy, patch)?;
        d.name = "generated 8x8 images, 4 classes";
        Ok(d)
    }

    /// The first `train` training and `test` test images (0 = all of them): smaller
    /// studies on the same data.
    pub fn subset(&self, train: usize, test: usize) -> Result<Self, DataError> {
        let px = self.rows * self.cols;
        let take = |n: usize, have: usize, what: &str| -> Result<usize, DataError> {
            match n {
                0 => Ok(have),
                n if n <= have => Ok(n),
                n => Err(DataError::Invalid(format!(
                    "fashion-mnist: {n} {what} images asked, the data has {have}"
                ))),
            }
        };
        let tr = take(train, self.train_y.len(), "training")?;
        let te = take(test, self.val_y.len(), "test")?;
        Ok(FashionMnist {
            train_x: self.train_x[..tr * px].to_vec(),
            train_y: self.train_y[..tr].to_vec(),
            val_x: self.val_x[..te * px].to_vec(),
            val_y: self.val_y[..te].to_vec(),
            ..self.clone()
        })
    }

    /// A shifted copy of the test set (the out-of-distribution set of the m2mKD study,
    /// the analogue of ImageNet-R / the spec's digits-R): every test image rotated by
    /// U(−30°, 30°), rescaled by U(0.8, 1.15) about the centre (bilinear, zero outside),
    /// contrast multiplied by U(0.6, 1.0), Gaussian noise of σ = 0.12 added, clamped to
    /// [0, 1]. Deterministic in `seed` and the image index; labels unchanged.
    pub fn shifted(&self, seed: u64) -> Self {
        let (h, w) = (self.rows, self.cols);
        let px = h * w;
        let mut out = Vec::with_capacity(self.val_x.len());
        let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
        for (i, img) in self.val_x.chunks_exact(px).enumerate() {
            let mut r = SplitMix64(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let th = (r.next_f32() * 60.0 - 30.0).to_radians();
            let sc = 0.8 + 0.35 * r.next_f32();
            let contrast = 0.6 + 0.4 * r.next_f32();
            let (sn, cs) = th.sin_cos();
            let at = |y: isize, x: isize| -> f32 {
                if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                    0.0
                } else {
                    f32::from(img[y as usize * w + x as usize]) / 255.0
                }
            };
            for y in 0..h {
                for x in 0..w {
                    // inverse map: output pixel -> source position
                    let (dy, dx) = (y as f32 - cy, x as f32 - cx);
                    let sx = (cs * dx + sn * dy) / sc + cx;
                    let sy = (-sn * dx + cs * dy) / sc + cy;
                    let (x0, y0) = (sx.floor(), sy.floor());
                    let (fx, fy) = (sx - x0, sy - y0);
                    let (x0, y0) = (x0 as isize, y0 as isize);
                    let v = (1.0 - fy) * ((1.0 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                        + fy * ((1.0 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1));
                    let u1 = r.next_f32().max(1e-7);
                    let u2 = r.next_f32();
                    let noise = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos();
                    let v = (v * contrast + 0.12 * noise).clamp(0.0, 1.0);
                    out.push((v * 255.0).round() as u8);
                }
            }
        }
        FashionMnist {
            val_x: out,
            ..self.clone()
        }
    }

    /// Positions per image.
    pub fn seq(&self) -> usize {
        (self.rows / self.patch) * (self.cols / self.patch)
    }

    fn push(&self, img: &[u8], out: &mut Vec<f32>) {
        let p = self.patch;
        for pr in 0..self.rows / p {
            for pc in 0..self.cols / p {
                for r in 0..p {
                    let row = (pr * p + r) * self.cols + pc * p;
                    out.extend(img[row..row + p].iter().map(|&v| f32::from(v) / 255.0));
                }
            }
        }
    }

    fn make(&self, split: Split, idx: impl Iterator<Item = usize>, t: usize) -> Batch {
        let (xs, ys) = match split {
            Split::Train => (&self.train_x, &self.train_y),
            Split::Val => (&self.val_x, &self.val_y),
        };
        let px = self.rows * self.cols;
        let (mut f, mut y) = (Vec::new(), Vec::new());
        for i in idx {
            self.push(&xs[i * px..(i + 1) * px], &mut f);
            y.push(u32::from(ys[i]));
        }
        Batch {
            tokens: Vec::new(),
            b: y.len(),
            features: f,
            targets: y,
            t,
        }
    }
}

impl Dataset for FashionMnist {
    fn describe(&self) -> String {
        format!(
            "{}: {} training and {} test images, {}x{} patches ({} per image)",
            self.name,
            self.train_y.len(),
            self.val_y.len(),
            self.patch,
            self.patch,
            self.seq()
        )
    }

    fn shape(&self) -> TaskShape {
        TaskShape {
            vocab: 0,
            patch_dim: self.patch * self.patch,
            classes: 10,
            seq: Some(self.seq()),
            causal: false,
            pool: Pool::Mean,
        }
    }

    fn batch(
        &self,
        split: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<Batch, DataError> {
        fixed_len("fashion-mnist", self.seq(), t)?;
        let n = match split {
            Split::Train => self.train_y.len(),
            Split::Val => self.val_y.len(),
        } as u64;
        let idx: Vec<usize> = (0..b).map(|_| rng.below(n) as usize).collect();
        Ok(self.make(split, idx.into_iter(), t))
    }

    fn eval_batches(
        &self,
        b: usize,
        t: usize,
        max_batches: usize,
        _seed: u64,
    ) -> Result<Vec<Batch>, DataError> {
        fixed_len("fashion-mnist", self.seq(), t)?;
        let n = self.val_y.len();
        let b = b.max(1);
        Ok((0..n.div_ceil(b).min(max_batches.max(1)))
            .map(|c| self.make(Split::Val, c * b..((c + 1) * b).min(n), t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sparse_recall_targets_the_queried_value_far_from_the_query() {
        let task = SparseRecall::new(256, 4).unwrap();
        let mut rng = SplitMix64(3);
        let b = task.batch(Split::Train, 64, 256, &mut rng).unwrap();
        for s in 0..64 {
            let x = &b.tokens[s * 256..(s + 1) * 256];
            let y = &b.targets[s * 256..(s + 1) * 256];
            assert!(y[..255].iter().all(|&v| v == IGNORE));
            assert_eq!(x[254], SparseRecall::QUERY);
            let key = x[255];
            assert!((10..18).contains(&key));
            let keys: Vec<usize> = (0..254).filter(|&i| (10..18).contains(&x[i])).collect();
            assert_eq!(keys.len(), 4, "four keys, distinct positions");
            let at = keys.iter().copied().find(|&i| x[i] == key).unwrap();
            assert!(at + 1 < task.span, "pairs lie in the first span");
            assert_eq!(y[255], x[at + 1], "target = the value after the key");
            assert!(254 - at > 50, "far from the query");
        }
        assert!(SparseRecall::new(256, 9).is_err());
        assert!(SparseRecall::new(16, 4).is_err());
        assert!(task.batch(Split::Train, 1, 128, &mut rng).is_err());
    }

    #[test]
    fn listops_labels_are_the_value_of_the_expression() {
        let lo = ListOps::small(64, 1).unwrap();
        let mut rng = SplitMix64(5);
        let batch = lo.batch(Split::Train, 50, 64, &mut rng).unwrap();
        assert_eq!(batch.tokens.len(), 50 * 64);
        let mut lens = Vec::new();
        for (s, &label) in batch.targets.iter().enumerate() {
            let seq = &batch.tokens[s * 64..(s + 1) * 64];
            let start = seq.iter().position(|&x| x != 0).unwrap();
            assert!(seq[..start].iter().all(|&x| x == 0), "left padding");
            assert_eq!(ListOps::evaluate(&seq[start..]), Some(label));
            lens.push(64 - start);
        }
        assert!(lens.iter().all(|&l| l > 20 && l <= 64));
        // every label occurs in a larger sample, and the validation set is fixed
        let many = lo.batch(Split::Train, 1000, 64, &mut rng).unwrap();
        for c in 0..10 {
            assert!(many.targets.contains(&c), "class {c} never drawn");
        }
        let v1 = lo.eval_batches(100, 64, 3, 0).unwrap();
        let v2 = ListOps::small(64, 1)
            .unwrap()
            .eval_batches(100, 64, 3, 9)
            .unwrap();
        assert_eq!(v1.len(), 3);
        assert_eq!(v1[2].tokens, v2[2].tokens);
        assert!(lo.batch(Split::Train, 1, 63, &mut rng).is_err());
        assert!(ListOps::new(6, 5, 70, 64, 10, 1).is_err());
    }

    #[test]
    fn listops_reference_semantics() {
        use listops_tokens::*;
        // [MAX 2 9] = 9; [MED 1 2 3 4] = floor(2.5) = 2; [SM 7 [MIN 5 3] ] = 0
        assert_eq!(ListOps::evaluate(&[MAX, 3, 10, CLOSE]), Some(9));
        assert_eq!(ListOps::evaluate(&[MED, 2, 3, 4, 5, CLOSE]), Some(2));
        assert_eq!(
            ListOps::evaluate(&[SM, 8, MIN, 6, 4, CLOSE, CLOSE]),
            Some(0)
        );
        assert_eq!(ListOps::evaluate(&[SM, 8]), None);
    }

    #[test]
    fn recall_and_copy_targets() {
        let r = Recall::new(8, 12).unwrap();
        let mut rng = SplitMix64(3);
        let b = r.batch(Split::Train, 20, 12, &mut rng).unwrap();
        for s in 0..20 {
            let x = &b.tokens[s * 12..(s + 1) * 12];
            let y = &b.targets[s * 12..(s + 1) * 12];
            assert!(y[..11].iter().all(|&v| v == IGNORE));
            assert_eq!(x[10], 16, "query marker");
            let pos = (0..5).find(|&i| x[2 * i] == x[11]).unwrap();
            assert_eq!(y[11], x[2 * pos + 1]);
        }
        assert!(Recall::new(4, 12).is_err());
        let c = Copy::new(10, 8).unwrap();
        let b = c.batch(Split::Val, 3, 8, &mut rng).unwrap();
        for s in 0..3 {
            let x = &b.tokens[s * 8..(s + 1) * 8];
            let y = &b.targets[s * 8..(s + 1) * 8];
            assert_eq!(x[4], 10);
            assert_eq!(&y[4..], &x[..4], "the copy is the target from SEP on");
            assert_eq!(&x[5..], &x[..3], "the input continues the copy");
            assert!(y[..4].iter().all(|&v| v == IGNORE));
        }
        assert!(Copy::new(10, 7).is_err());
    }

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn idx_and_fashion_errors() {
        let img = idx(&[2, 4, 4], &(0..32).collect::<Vec<u8>>());
        let lab = idx(&[2], &[3, 9]);
        let p = |b: &[u8]| parse_idx(b, "t").unwrap();
        let f = FashionMnist::from_parts(p(&img), p(&lab), p(&img), p(&lab), 2).unwrap();
        assert_eq!(f.seq(), 4);
        let ev = f.eval_batches(1, 4, 10, 0).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].targets, vec![9]);
        // the first patch of image 1: pixels 16, 17, 20, 21
        let want: Vec<f32> = [16u8, 17, 20, 21]
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(&ev[1].features[..4], &want[..]);
        let mut bad = img.clone();
        bad[2] = 9;
        assert!(parse_idx(&bad, "t")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert!(parse_idx(&img[..20], "t").is_err());
        let badlab = idx(&[2], &[3, 10]);
        let e = FashionMnist::from_parts(p(&img), p(&badlab), p(&img), p(&lab), 2).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        assert!(FashionMnist::from_parts(p(&img), p(&lab), p(&img), p(&lab), 3).is_err());
        let e = FashionMnist::from_dir(Path::new("/nonexistent"), 7).unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }
}
