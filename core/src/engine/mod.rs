//! Token-by-token inference for the dense baseline (and its EMoE conversion) straight from
//! a mapped model file: no weight is copied, any supported weight type (F32, F16, BF16,
//! Q8_0, Q4_0) is used in place, and after [`DenseEngine::new`] a decode step allocates
//! nothing (all buffers, KV caches included, are sized once for `max_context`).
//!
//! One step: embedding row (+ position row) → per block: LayerNorm, fused QKV, one head at
//! a time append K/V to its cache and attend causally over it, output projection, residual;
//! LayerNorm, FFN (GELU; in an EMoE block only the top-k experts' rows by avg-k gates are
//! read and multiplied), residual → final LayerNorm → LM head logits. The same kernels as
//! the trainer; the trainer's forward on the same tokens agrees to float rounding (tests
//! in `modula-train`).

pub mod moduleformer;
#[cfg(feature = "std")]
pub mod paging;
pub mod seqboat;

pub use moduleformer::{MfEngine, MfSpec};
pub use seqboat::{SbEngine, SbSpec};

use crate::gguf::GgufError;
use crate::kernels::attention::{causal_attention, KvCache};
use crate::kernels::elementwise::{gelu, layer_norm};
use crate::kernels::linear::{linear, matmul_rows, MatRef};
use crate::kernels::routing::top_k;
use crate::model::Model;
use crate::Value;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// Shape of a dense LM read from the file's `modula.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseSpec {
    /// Vocabulary.
    pub vocab: usize,
    /// Width.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Heads.
    pub heads: usize,
    /// FFN width.
    pub ffn: usize,
    /// Rows of the position table (0: none).
    pub positions: usize,
    /// EMoE blocks (bit mask), experts and top-k.
    pub emoe_layers: u64,
    /// EMoE experts per converted FFN.
    pub emoe_experts: usize,
    /// EMoE experts per token.
    pub emoe_top_k: usize,
    /// SortedNet: nested depths (bit `l − 1` = the first `l` blocks; 0 = none declared).
    pub nested_depths: u64,
    /// SortedNet: nested FFN widths declared by the file, ascending (0-padded).
    pub nested_ffn: [u32; 8],
    /// SortedNet: nested head counts (bit `h − 1` = the first `h` heads; 0 = none declared).
    pub nested_heads: u64,
    /// The file stores attention head-major (`modula.attention.layout = "head_major"`):
    /// `attn_qkv` rows per head (q, k, v), the output projection transposed
    /// (`attn_output_t`), so a head prefix is a row prefix. Needed to run fewer heads.
    pub head_major: bool,
}

#[derive(Debug)]
struct BlockW<'a> {
    ln1: (&'a [f32], &'a [f32]),
    qkv: MatRef<'a>,
    qkv_b: &'a [f32],
    proj: MatRef<'a>,
    proj_b: &'a [f32],
    ln2: (&'a [f32], &'a [f32]),
    up: MatRef<'a>,
    up_b: &'a [f32],
    down_t: MatRef<'a>,
    down_b: &'a [f32],
    /// EMoE avg-k gates `[experts, d]` (empty for a plain block).
    gates: Vec<f32>,
}

/// The heap memory of a decode engine, by kind (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Key/value caches: 2 x blocks x heads x head width x positions, f32.
    pub kv_cache: u64,
    /// Work buffers: activations, FFN hidden units, attention scores, logits.
    pub work: u64,
    /// Tables derived from the weights when the engine is built: EMoE avg-k gates
    /// (from the keys), SeqBoat's EMA coefficients.
    pub gates: u64,
    /// The engine's per-block and per-cache tables.
    pub tables: u64,
}

impl ArenaPlan {
    /// All of it.
    pub fn total(&self) -> u64 {
        self.kv_cache + self.work + self.gates + self.tables
    }
}

/// A dense (or EMoE) LM ready to decode, borrowing its weights from a [`Model`].
#[derive(Debug)]
pub struct DenseEngine<'a> {
    spec: DenseSpec,
    max_context: usize,
    emb: MatRef<'a>,
    pos: Option<MatRef<'a>>,
    blocks: Vec<BlockW<'a>>,
    lnf: (&'a [f32], &'a [f32]),
    head: MatRef<'a>,
    caches: Vec<KvCache>,
    len: usize,
    /// The nested sub-model in use: (depth, FFN width).
    active: (usize, usize),
    /// Attention heads in use (all, or a prefix in head-major files).
    heads: usize,
    /// The largest sub-model this engine was built for.
    cap: (usize, usize),
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    u: Vec<f32>,
    scores: Vec<f32>,
    chosen: Vec<u32>,
    chosen_val: Vec<f32>,
    logits: Vec<f32>,
}

pub(crate) const EPS: f32 = 1e-5;

/// The checks every decode step makes: the token is in the vocabulary and the context
/// has room for it (a clear error, never a panic).
pub(crate) fn check_step(
    token: u32,
    vocab: usize,
    len: usize,
    max_context: usize,
) -> Result<(), String> {
    if token as usize >= vocab {
        return Err(format!(
            "token {token} is outside the vocabulary of {vocab}"
        ));
    }
    if len >= max_context {
        return Err(format!("the context of {max_context} positions is full"));
    }
    Ok(())
}

pub(crate) fn meta_u32<B: AsRef<[u8]>>(m: &Model<B>, key: &str) -> Result<usize, String> {
    m.get_u32(key)
        .map(|v| v as usize)
        .map_err(|e| e.to_string())
}

pub(crate) fn vector<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    name: &str,
    len: usize,
) -> Result<&'a [f32], String> {
    let t = m.tensor(name).map_err(|e| e.to_string())?;
    let v = t
        .as_f32_slice()
        .map_err(|e| format!("{e} (norms and biases must stay f32)"))?;
    if v.len() != len {
        return Err(format!(
            "tensor '{name}' has {} values, expected {len}",
            v.len()
        ));
    }
    Ok(v)
}

pub(crate) fn matrix<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<MatRef<'a>, String> {
    let t = m.tensor(name).map_err(|e| e.to_string())?;
    let w = t.as_matrix().map_err(|e: GgufError| e.to_string())?;
    if (w.rows(), w.cols()) != (rows, cols) {
        return Err(format!(
            "tensor '{name}' is [{}, {}], expected [{rows}, {cols}]",
            w.rows(),
            w.cols()
        ));
    }
    Ok(w)
}

impl DenseSpec {
    /// Read and check the architecture metadata of a dense LM file.
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, String> {
        if m.get_str("modula.model") != Some("dense") {
            return Err(format!(
                "not a dense model (modula.model = {:?})",
                m.get_str("modula.model")
            ));
        }
        if m.get_str("modula.task").is_some_and(|t| t != "lm") {
            return Err("the decode engine runs language models; this is a classifier".into());
        }
        if let Some(Value::Bool(false)) = m.get("modula.attention.causal") {
            return Err("the decode engine needs causal attention".into());
        }
        let opt = |k: &str| m.get(k).map_or(Ok(0), |_| meta_u32(m, k));
        let mut spec = DenseSpec {
            vocab: meta_u32(m, "modula.vocab_size")?,
            d: meta_u32(m, "modula.embedding_length")?,
            layers: meta_u32(m, "modula.block_count")?,
            heads: meta_u32(m, "modula.attention.head_count")?,
            ffn: meta_u32(m, "modula.feed_forward_length")?,
            positions: opt("modula.position_length")?,
            emoe_layers: 0,
            emoe_experts: 0,
            emoe_top_k: 0,
            nested_depths: 0,
            nested_ffn: [0; 8],
            nested_heads: 0,
            head_major: match m.get("modula.attention.layout") {
                None | Some(Value::Str("qkv")) => false,
                Some(Value::Str("head_major")) => true,
                Some(other) => {
                    return Err(format!(
                        "modula.attention.layout = {other:?} is not \"qkv\" or \"head_major\""
                    ))
                }
            },
        };
        if spec.heads == 0
            || !spec.d.is_multiple_of(spec.heads)
            || spec.vocab == 0
            || spec.layers > 64
        {
            return Err(format!(
                "inconsistent shape: d {} heads {} vocab {} layers {}",
                spec.d, spec.heads, spec.vocab, spec.layers
            ));
        }
        if let Some(Value::Array(a)) = m.get("modula.emoe.layers") {
            for v in a.iter() {
                match v {
                    Value::U32(l) if (l as usize) < spec.layers => spec.emoe_layers |= 1 << l,
                    other => return Err(format!("modula.emoe.layers: bad entry {other:?}")),
                }
            }
            spec.emoe_experts = meta_u32(m, "modula.expert.count")?;
            spec.emoe_top_k = meta_u32(m, "modula.expert.used_count")?;
            if spec.emoe_experts == 0
                || !spec.ffn.is_multiple_of(spec.emoe_experts)
                || spec.emoe_top_k == 0
                || spec.emoe_top_k > spec.emoe_experts
            {
                return Err(format!(
                    "EMoE: {} experts, top-{} do not fit an FFN of {}",
                    spec.emoe_experts, spec.emoe_top_k, spec.ffn
                ));
            }
        }
        if let Some(Value::Array(a)) = m.get("modula.nested.depths") {
            for v in a.iter() {
                match v {
                    Value::U32(l) if l >= 1 && (l as usize) <= spec.layers && l <= 64 => {
                        if (l as usize) < spec.layers {
                            spec.nested_depths |= 1 << (l - 1);
                        }
                    }
                    other => return Err(format!("modula.nested.depths: bad entry {other:?}")),
                }
            }
        }
        if let Some(Value::Array(a)) = m.get("modula.nested.ffn_widths") {
            let mut i = 0;
            for v in a.iter() {
                match v {
                    Value::U32(w) if w >= 1 && (w as usize) <= spec.ffn => {
                        if (w as usize) < spec.ffn {
                            if i == 8 {
                                return Err("modula.nested.ffn_widths: more than 8 widths".into());
                            }
                            spec.nested_ffn[i] = w;
                            i += 1;
                        }
                    }
                    other => return Err(format!("modula.nested.ffn_widths: bad entry {other:?}")),
                }
            }
        }
        if let Some(Value::Array(a)) = m.get("modula.nested.head_counts") {
            for v in a.iter() {
                match v {
                    Value::U32(h) if h >= 1 && (h as usize) <= spec.heads && h <= 64 => {
                        if (h as usize) < spec.heads {
                            spec.nested_heads |= 1 << (h - 1);
                        }
                    }
                    other => return Err(format!("modula.nested.head_counts: bad entry {other:?}")),
                }
            }
            if spec.nested_heads != 0 && !spec.head_major {
                return Err(
                    "modula.nested.head_counts needs modula.attention.layout = head_major".into(),
                );
            }
        }
        Ok(spec)
    }

    /// The heap memory (bytes) [`DenseEngine::with_capacity`]`(m, ctx, cap)` allocates —
    /// exactly, buffer by buffer — or why that engine cannot be built.
    pub fn plan(&self, ctx: usize, cap: (usize, usize)) -> Result<ArenaPlan, String> {
        let (depth, f) = cap;
        if depth == 0 || depth > self.layers || f == 0 || f > self.ffn {
            return Err(format!(
                "sub-model depth {depth} x FFN {f} is outside the model (depth {}, FFN {})",
                self.layers, self.ffn
            ));
        }
        if ctx == 0 || (self.positions > 0 && ctx > self.positions) {
            return Err(format!(
                "context {ctx} must be in 1..={} (the position table)",
                if self.positions > 0 {
                    self.positions
                } else {
                    usize::MAX
                }
            ));
        }
        let emoe_in = (0..depth)
            .filter(|&l| l < 64 && self.emoe_layers >> l & 1 == 1)
            .count();
        if f < self.ffn && emoe_in > 0 {
            return Err("narrower FFNs of EMoE blocks are not supported".into());
        }
        let u = if emoe_in > 0 {
            f.max(self.ffn / self.emoe_experts)
        } else {
            f
        };
        let (d, hd) = (self.d, self.d / self.heads);
        let top_k = self.emoe_top_k;
        Ok(ArenaPlan {
            kv_cache: (depth * self.heads * 2 * hd * ctx * 4) as u64,
            work: 4 * (7 * d + u + ctx.max(self.emoe_experts) + 2 * top_k + self.vocab) as u64,
            gates: (emoe_in * self.emoe_experts * d * 4) as u64,
            tables: (depth * core::mem::size_of::<BlockW<'_>>()
                + depth * self.heads * core::mem::size_of::<KvCache>()) as u64,
        })
    }

    /// Memory a process running sub-model `(depth, ffn)` for `ctx` positions needs: the
    /// bytes of the weights it reads from the mapped file (each tensor's prefix: the first
    /// `ffn` rows of the FFN tensors, the first `depth` blocks, the shared embedding, final
    /// norm and head) plus the arena of an engine built for that size
    /// ([`DenseSpec::plan`]).
    pub fn submodel_bytes<B: AsRef<[u8]>>(
        &self,
        m: &Model<B>,
        size: (usize, usize),
        ctx: usize,
    ) -> Result<(u64, u64), String> {
        self.submodel_bytes_heads(m, size, None, ctx)
    }

    /// [`DenseSpec::submodel_bytes`] running only the first `heads` attention heads
    /// (`None`: all; fewer need a head-major file): their rows of `attn_qkv` and of the
    /// transposed output projection. The arena does not depend on the head count.
    pub fn submodel_bytes_heads<B: AsRef<[u8]>>(
        &self,
        m: &Model<B>,
        size: (usize, usize),
        heads: Option<usize>,
        ctx: usize,
    ) -> Result<(u64, u64), String> {
        let (depth, f) = size;
        if depth == 0 || depth > self.layers || f == 0 || f > self.ffn {
            return Err(format!("sub-model {depth}x{f} is outside the model"));
        }
        let heads = heads.filter(|&h| h != self.heads);
        let weights = m
            .submodel(crate::model::NestedSpec {
                depth: Some(depth),
                ffn: Some(f),
                heads,
                ..Default::default()
            })
            .map_err(|e| e.to_string())?
            .weight_bytes();
        Ok((weights, self.plan(ctx, size)?.total()))
    }

    /// The largest declared nested sub-model (by the weight bytes it reads; the full model
    /// when none are declared) whose weights plus arena fit `budget` bytes at `ctx`
    /// positions, as `((depth, FFN width, heads), bytes)`; an impossible budget (below the
    /// smallest) is an error naming the sizes.
    pub fn pick_by_memory<B: AsRef<[u8]>>(
        &self,
        m: &Model<B>,
        budget: u64,
        ctx: usize,
    ) -> Result<((usize, usize, usize), u64), String> {
        let mut best: Option<((usize, usize, usize), u64)> = None;
        let mut smallest = u64::MAX;
        let heads = self.nested_head_list();
        for size in self.nested_grid() {
            for &h in &heads {
                let (w, a) = self.submodel_bytes_heads(m, size, Some(h), ctx)?;
                smallest = smallest.min(w + a);
                if w + a <= budget && best.is_none_or(|(_, b)| w + a > b) {
                    best = Some(((size.0, size.1, h), w + a));
                }
            }
        }
        best.ok_or_else(|| {
            format!(
                "impossible budget: {:.2} MiB, but the smallest sub-model needs {:.2} MiB (weights + arena at {ctx} positions)",
                budget as f64 / 1048576.0,
                smallest as f64 / 1048576.0
            )
        })
    }

    /// The head counts the file declares, ascending, ending with all heads.
    pub fn nested_head_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (1..self.heads.min(65))
            .filter(|&h| self.nested_heads >> (h - 1) & 1 == 1)
            .collect();
        v.push(self.heads);
        v
    }

    /// Every nested sub-model `(depth, ffn)` the file declares, smallest first, the full
    /// model last (just the full model when none are declared).
    pub fn nested_grid(&self) -> Vec<(usize, usize)> {
        let mut depths: Vec<usize> = (1..self.layers.min(64))
            .filter(|&l| self.nested_depths >> (l - 1) & 1 == 1)
            .collect();
        depths.push(self.layers);
        let mut widths: Vec<usize> = self
            .nested_ffn
            .iter()
            .map(|&w| w as usize)
            .filter(|&w| w > 0 && w < self.ffn)
            .collect();
        widths.sort_unstable();
        widths.push(self.ffn);
        depths
            .iter()
            .flat_map(|&d| widths.iter().map(move |&f| (d, f)))
            .collect()
    }
}

impl<'a> DenseEngine<'a> {
    /// Bind the weights of `m` (no copy) and allocate every buffer for up to
    /// `max_context` positions (at most the position table, if the model has one), able to
    /// run every nested size.
    pub fn new<B: AsRef<[u8]>>(m: &'a Model<B>, max_context: usize) -> Result<Self, String> {
        let s = DenseSpec::from_model(m)?;
        Self::with_capacity(m, max_context, (s.layers, s.ffn))
    }

    /// [`DenseEngine::new`] for sub-models up to `cap` = (depth, FFN width) only: binds the
    /// first `cap.0` blocks and allocates exactly [`DenseSpec::plan`]`(max_context, cap)`
    /// (KV caches for `cap.0` blocks, an FFN buffer of `cap.1`), so a process that runs one
    /// small sub-model pays for that sub-model's arena, not the full model's.
    pub fn with_capacity<B: AsRef<[u8]>>(
        m: &'a Model<B>,
        max_context: usize,
        cap: (usize, usize),
    ) -> Result<Self, String> {
        let s = DenseSpec::from_model(m)?;
        let d = s.d;
        s.plan(max_context, cap)?;
        let emoe_in = (0..cap.0).any(|l| l < 64 && s.emoe_layers >> l & 1 == 1);
        let u_len = if emoe_in {
            cap.1.max(s.ffn / s.emoe_experts)
        } else {
            cap.1
        };
        let f = s.ffn;
        let mut blocks = Vec::with_capacity(cap.0);
        for l in 0..cap.0 {
            let n = |t: &str| format!("blk.{l}.{t}");
            let up = matrix(m, &n("ffn_up.weight"), f, d)?;
            let gates = if l < 64 && s.emoe_layers >> l & 1 == 1 {
                // avg-k gates: block means of the keys (rows of ffn_up), computed once
                let (e_n, per) = (s.emoe_experts, f / s.emoe_experts);
                let mut g = vec![0f32; e_n * d];
                let mut row = vec![0f32; d];
                for r in 0..f {
                    crate::kernels::linear::widen_row(&up, r, &mut row);
                    for (gv, v) in g[(r / per) * d..(r / per + 1) * d].iter_mut().zip(&row) {
                        *gv += v / per as f32;
                    }
                }
                g
            } else {
                Vec::new()
            };
            blocks.push(BlockW {
                ln1: (
                    vector(m, &n("attn_norm.weight"), d)?,
                    vector(m, &n("attn_norm.bias"), d)?,
                ),
                qkv: matrix(m, &n("attn_qkv.weight"), 3 * d, d)?,
                qkv_b: vector(m, &n("attn_qkv.bias"), 3 * d)?,
                // head-major files: [d_in, d_out], so the first h heads are a row prefix
                proj: if s.head_major {
                    matrix(m, &n("attn_output_t.weight"), d, d)?
                } else {
                    matrix(m, &n("attn_output.weight"), d, d)?
                },
                proj_b: vector(m, &n("attn_output.bias"), d)?,
                ln2: (
                    vector(m, &n("ffn_norm.weight"), d)?,
                    vector(m, &n("ffn_norm.bias"), d)?,
                ),
                up,
                up_b: vector(m, &n("ffn_up.bias"), f)?,
                down_t: matrix(m, &n("ffn_down_t.weight"), f, d)?,
                down_b: vector(m, &n("ffn_down.bias"), d)?,
                gates,
            });
        }
        let hd = d / s.heads;
        Ok(DenseEngine {
            spec: s,
            max_context,
            emb: matrix(m, "token_embd.weight", s.vocab, d)?,
            pos: if s.positions > 0 {
                Some(matrix(m, "position_embd.weight", s.positions, d)?)
            } else {
                None
            },
            blocks,
            lnf: (
                vector(m, "output_norm.weight", d)?,
                vector(m, "output_norm.bias", d)?,
            ),
            head: matrix(m, "output.weight", s.vocab, d)?,
            caches: (0..cap.0 * s.heads)
                .map(|_| KvCache::new(hd, max_context))
                .collect(),
            len: 0,
            active: cap,
            heads: s.heads,
            cap,
            x: vec![0.0; d],
            h: vec![0.0; d],
            qkv: vec![0.0; 3 * d],
            att: vec![0.0; d],
            tmp: vec![0.0; d],
            u: vec![0.0; u_len],
            scores: vec![0.0; max_context.max(s.emoe_experts)],
            chosen: vec![0; s.emoe_top_k],
            chosen_val: vec![0.0; s.emoe_top_k],
            logits: vec![0.0; s.vocab],
        })
    }

    /// The architecture.
    pub fn spec(&self) -> DenseSpec {
        self.spec
    }

    /// Positions consumed so far.
    pub fn position(&self) -> usize {
        self.len
    }

    /// Capacity in positions.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Start a new sequence (keeps every buffer).
    pub fn reset(&mut self) {
        self.len = 0;
        self.caches.iter_mut().for_each(KvCache::clear);
    }

    /// Run the nested sub-model `(depth, ffn)` from the next request on (`None`: the full
    /// model): the first `depth` blocks and the first `ffn` rows of every FFN tensor —
    /// prefixes of the mapped weights, so nothing is loaded, copied or allocated. Any
    /// size within the model works; sizes the model was not trained for (see
    /// [`DenseSpec::nested_grid`]) are just truncations. Starts a new sequence.
    pub fn set_submodel(&mut self, size: Option<(usize, usize)>) -> Result<(), String> {
        let s = self.spec;
        let (depth, f) = size.unwrap_or(self.cap);
        if depth == 0 || depth > s.layers || f == 0 || f > s.ffn {
            return Err(format!(
                "sub-model depth {depth} x FFN {f} is outside the model (depth {}, FFN {})",
                s.layers, s.ffn
            ));
        }
        if f < s.ffn && (0..depth).any(|l| l < 64 && s.emoe_layers >> l & 1 == 1) {
            return Err("narrower FFNs of EMoE blocks are not supported".into());
        }
        if depth > self.cap.0 || f > self.cap.1 {
            return Err(format!(
                "sub-model depth {depth} x FFN {f} is beyond this engine's capacity (depth {} x FFN {}; it was planned for that)",
                self.cap.0, self.cap.1
            ));
        }
        self.active = (depth, f);
        self.reset();
        Ok(())
    }

    /// Run the first `heads` attention heads of every block from the next request on
    /// (`None`: all heads) — prefixes of `attn_qkv` and of the transposed output projection
    /// in a head-major file, so nothing is loaded, copied or allocated. Combines with
    /// [`DenseEngine::set_submodel`]. Starts a new sequence.
    pub fn set_heads(&mut self, heads: Option<usize>) -> Result<(), String> {
        let s = self.spec;
        let h = heads.unwrap_or(s.heads);
        if h == 0 || h > s.heads {
            return Err(format!("{h} heads is outside 1..={}", s.heads));
        }
        if h < s.heads && !s.head_major {
            return Err(format!(
                "this file does not nest heads (its attention is not stored head-major); it runs all {} heads",
                s.heads
            ));
        }
        self.heads = h;
        self.reset();
        Ok(())
    }

    /// Attention heads in use.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The sub-model in use: (depth, FFN width).
    pub fn submodel(&self) -> (usize, usize) {
        self.active
    }

    /// The largest sub-model this engine can run: (depth, FFN width).
    pub fn capacity(&self) -> (usize, usize) {
        self.cap
    }

    /// Heap bytes this engine holds, from its buffers' actual capacities (equals
    /// [`DenseSpec::plan`]`(max_context, capacity)`; the weights are not counted — they
    /// are the mapped file).
    pub fn arena_bytes(&self) -> ArenaPlan {
        let f4 = |v: &Vec<f32>| 4 * v.capacity() as u64;
        ArenaPlan {
            kv_cache: self.caches.iter().map(KvCache::heap_bytes).sum(),
            work: f4(&self.x)
                + f4(&self.h)
                + f4(&self.qkv)
                + f4(&self.att)
                + f4(&self.tmp)
                + f4(&self.u)
                + f4(&self.scores)
                + 4 * self.chosen.capacity() as u64
                + f4(&self.chosen_val)
                + f4(&self.logits),
            gates: self.blocks.iter().map(|b| f4(&b.gates)).sum(),
            tables: (self.blocks.capacity() * core::mem::size_of::<BlockW<'_>>()
                + self.caches.capacity() * core::mem::size_of::<KvCache>())
                as u64,
        }
    }

    /// Consume one token; returns the logits for the next one. Errors (never panics) on a
    /// token outside the vocabulary or a full context.
    pub fn step(&mut self, token: u32) -> Result<&[f32], String> {
        let s = self.spec;
        let (d, hd) = (s.d, s.d / s.heads);
        check_step(token, s.vocab, self.len, self.max_context)?;
        let ke = |e: crate::kernels::KernelError| e.to_string();
        crate::kernels::linear::widen_row(&self.emb, token as usize, &mut self.x);
        if let Some(p) = &self.pos {
            crate::kernels::linear::widen_row(p, self.len, &mut self.tmp);
            for (a, b) in self.x.iter_mut().zip(&self.tmp) {
                *a += b;
            }
        }
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let (depth, f) = self.active;
        for (l, b) in self.blocks[..depth].iter().enumerate() {
            layer_norm(&self.x, Some(b.ln1.0), Some(b.ln1.1), EPS, &mut self.h).map_err(ke)?;
            let nh = self.heads;
            if s.head_major {
                // head-major: the first nh heads' q, k, v are the first 3·nh·hd rows
                let rows = 3 * nh * hd;
                let w = if nh < s.heads {
                    b.qkv.prefix(rows, d).map_err(ke)?
                } else {
                    b.qkv
                };
                let out = &mut self.qkv[..rows];
                linear(&self.h, d, 1, &w, Some(&b.qkv_b[..rows]), out, rows).map_err(ke)?;
            } else {
                linear(&self.h, d, 1, &b.qkv, Some(b.qkv_b), &mut self.qkv, 3 * d).map_err(ke)?;
            }
            for hh in 0..nh {
                let c = &mut self.caches[l * s.heads + hh];
                let (q0, k0, v0) = if s.head_major {
                    (3 * hh * hd, (3 * hh + 1) * hd, (3 * hh + 2) * hd)
                } else {
                    (hh * hd, d + hh * hd, 2 * d + hh * hd)
                };
                c.append(&self.qkv[k0..k0 + hd], &self.qkv[v0..v0 + hd])
                    .map_err(ke)?;
                let n = c.len();
                causal_attention(
                    &self.qkv[q0..q0 + hd],
                    1,
                    c.keys(),
                    c.values(),
                    n,
                    hd,
                    scale,
                    &mut self.att[hh * hd..(hh + 1) * hd],
                    &mut self.scores,
                )
                .map_err(ke)?;
            }
            if s.head_major {
                // transposed projection: the first nh·hd rows meet the heads that ran
                let k = nh * hd;
                let w = if nh < s.heads {
                    b.proj.prefix(k, d).map_err(ke)?
                } else {
                    b.proj
                };
                matmul_rows(&self.att[..k], k, 1, &w, &mut self.tmp, d, false).map_err(ke)?;
                for ((a, v), bb) in self.x.iter_mut().zip(&self.tmp).zip(b.proj_b) {
                    *a += v + bb;
                }
            } else {
                linear(&self.att, d, 1, &b.proj, Some(b.proj_b), &mut self.tmp, d).map_err(ke)?;
                for (a, v) in self.x.iter_mut().zip(&self.tmp) {
                    *a += v;
                }
            }
            layer_norm(&self.x, Some(b.ln2.0), Some(b.ln2.1), EPS, &mut self.h).map_err(ke)?;
            if b.gates.is_empty() {
                let (up, down) = if f < s.ffn {
                    (
                        b.up.prefix(f, d).map_err(ke)?,
                        b.down_t.prefix(f, d).map_err(ke)?,
                    )
                } else {
                    (b.up, b.down_t)
                };
                let u = &mut self.u[..f];
                linear(&self.h, d, 1, &up, Some(&b.up_b[..f]), u, f).map_err(ke)?;
                gelu(u);
                matmul_rows(u, f, 1, &down, &mut self.tmp, d, false).map_err(ke)?;
            } else {
                // EMoE: only the top-k experts' rows are read
                let (e_n, k) = (s.emoe_experts, s.emoe_top_k);
                let per = s.ffn / e_n;
                let g = MatRef::f32(&b.gates, e_n, d).map_err(ke)?;
                linear(&self.h, d, 1, &g, None, &mut self.scores[..e_n], e_n).map_err(ke)?;
                top_k(
                    &self.scores[..e_n],
                    k,
                    &mut self.chosen,
                    &mut self.chosen_val,
                )
                .map_err(ke)?;
                self.tmp.fill(0.0);
                for &e in &self.chosen {
                    let r0 = e as usize * per;
                    let up = b.up.rows_range(r0, per).map_err(ke)?;
                    let down = b.down_t.rows_range(r0, per).map_err(ke)?;
                    let u = &mut self.u[..per];
                    linear(&self.h, d, 1, &up, Some(&b.up_b[r0..r0 + per]), u, per).map_err(ke)?;
                    gelu(u);
                    matmul_rows(u, per, 1, &down, &mut self.tmp, d, true).map_err(ke)?;
                }
            }
            for ((a, v), bb) in self.x.iter_mut().zip(&self.tmp).zip(b.down_b) {
                *a += v + bb;
            }
        }
        layer_norm(
            &self.x,
            Some(self.lnf.0),
            Some(self.lnf.1),
            EPS,
            &mut self.h,
        )
        .map_err(ke)?;
        linear(&self.h, d, 1, &self.head, None, &mut self.logits, s.vocab).map_err(ke)?;
        self.len += 1;
        Ok(&self.logits)
    }
}
