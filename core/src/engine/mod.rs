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

pub mod decoder;
pub mod llama;
pub mod moduleformer;
#[cfg(feature = "std")]
pub mod paging;
mod runner;
pub mod seqboat;

pub use decoder::{open, DecodeOptions, Decoder, Size};
pub use llama::{LlamaEngine, LlamaSpec};
pub use moduleformer::{MfEngine, MfSpec};
pub use seqboat::{SbEngine, SbSpec};

use crate::arch::{Act, AttnLayout, Family, FfnKind, Input, MixerSpec, NormKind, Positions, Task};
use crate::arch::{Layout, Role};
use crate::error::Error;
use crate::kernels::attention::{causal_attention, KvCache};
use crate::kernels::elementwise::{layer_norm, softmax};
use crate::kernels::linear::{linear, matmul_rows, MatRef};
use crate::kernels::routing::top_k;
use crate::model::Model;
use crate::ModelDesc;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use runner::{Blocks, Ends, RunHead, Runner};

/// Shape of a dense LM read from the file's `modula.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// Epsilon of the LayerNorms (`modula.norm_epsilon`).
    pub eps: f32,
    /// FFN activation (`modula.activation`).
    pub act: Act,
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

/// The blocks of a dense (or EMoE) LM for the [`Runner`]: their weights borrowed from the
/// mapped file, each block's key/value caches (one per head), and the nested size in use.
#[derive(Debug)]
struct DenseBlocks<'a> {
    spec: DenseSpec,
    blocks: Vec<BlockW<'a>>,
    /// Per block and head.
    caches: Vec<KvCache>,
    /// The nested sub-model in use: (depth, FFN width).
    active: (usize, usize),
    /// Attention heads in use (all, or a prefix in head-major files).
    heads: usize,
    /// FFN buffer width per row.
    u_len: usize,
    max_context: usize,
}

/// Query rows of a prompt whose attention scores are computed in one product.
const ATT_BLOCK: usize = 64;

/// Causal attention of one head's `n` query rows (`q`, rows `ldq` apart, at positions
/// `pos..pos + n`) over its cache `c` (which already holds them), into `out` (rows `ldo`
/// apart); `scores` holds `ATT_BLOCK` × the context. One row (a decode step): the attention
/// kernel over keys `0..=pos`. A prompt: blocks of `ATT_BLOCK` query rows at once — the
/// scores of a block against every key up to its last row are one product, each row's
/// softmax runs over its own causal prefix (row `i` sees keys `0..=pos + i`; the rest of its
/// scores are zeroed), and the weighted sum of values is a second product.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_cache(
    q: &[f32],
    ldq: usize,
    n: usize,
    pos: usize,
    c: &KvCache,
    hd: usize,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    scores: &mut [f32],
) -> Result<(), Error> {
    if n == 1 {
        let tc = pos + 1;
        causal_attention(
            &q[..hd],
            1,
            &c.keys()[..tc * hd],
            &c.values()[..tc * hd],
            tc,
            hd,
            scale,
            &mut out[..hd],
            scores,
        )?;
        return Ok(());
    }
    let mut i0 = 0;
    while i0 < n {
        let rows = ATT_BLOCK.min(n - i0);
        let tc = pos + i0 + rows;
        let keys = MatRef::f32(&c.keys()[..tc * hd], tc, hd)?;
        let vals = MatRef::f32(&c.values()[..tc * hd], tc, hd)?;
        let sc = &mut scores[..rows * tc];
        linear(&q[i0 * ldq..], ldq, rows, &keys, None, sc, tc)?;
        for (r, row) in sc.chunks_exact_mut(tc).enumerate() {
            let seen = pos + i0 + r + 1;
            let (live, future) = row.split_at_mut(seen);
            live.iter_mut().for_each(|v| *v *= scale);
            softmax(live);
            future.fill(0.0);
        }
        matmul_rows(sc, tc, rows, &vals, &mut out[i0 * ldo..], ldo, false)?;
        i0 += rows;
    }
    Ok(())
}

/// The blocks' work rows for `n` positions at once (`n = 1`: the decode step's buffers,
/// allocated once; a prompt's rows: allocated by [`DenseEngine::prefill`]).
#[derive(Debug)]
struct Rows {
    /// Projected q, k, v `[n, 3d]`.
    qkv: Vec<f32>,
    /// Attention outputs `[n, d]`.
    att: Vec<f32>,
    /// Sub-layer outputs `[n, d]` (also the position rows).
    tmp: Vec<f32>,
    /// FFN hidden units `[n, u_len]`.
    u: Vec<f32>,
    /// One row of attention scores (≥ context) or expert scores.
    scores: Vec<f32>,
    chosen: Vec<u32>,
    chosen_val: Vec<f32>,
}

impl Rows {
    fn new(n: usize, d: usize, u_len: usize, scores: usize, top_k: usize) -> Self {
        Rows {
            qkv: vec![0.0; n * 3 * d],
            att: vec![0.0; n * d],
            tmp: vec![0.0; n * d],
            u: vec![0.0; n * u_len],
            scores: vec![0.0; scores],
            chosen: vec![0; top_k],
            chosen_val: vec![0.0; top_k],
        }
    }

    fn heap_bytes(&self) -> u64 {
        let f4 = |v: &Vec<f32>| 4 * v.capacity() as u64;
        f4(&self.qkv)
            + f4(&self.att)
            + f4(&self.tmp)
            + f4(&self.u)
            + f4(&self.scores)
            + 4 * self.chosen.capacity() as u64
            + f4(&self.chosen_val)
    }
}

/// A dense (or EMoE) LM ready to decode, borrowing its weights from a [`Model`].
#[derive(Debug)]
pub struct DenseEngine<'a> {
    spec: DenseSpec,
    max_context: usize,
    /// The largest sub-model this engine was built for.
    cap: (usize, usize),
    r: Runner<'a, DenseBlocks<'a>>,
}

/// The checks every decode step makes: the token is in the vocabulary and the context
/// has room for it (a clear error, never a panic).
pub(crate) fn check_step(
    token: u32,
    vocab: usize,
    len: usize,
    max_context: usize,
) -> Result<(), Error> {
    if token as usize >= vocab {
        return Err(Error::input(format!(
            "token {token} is outside the vocabulary of {vocab}"
        )));
    }
    if len >= max_context {
        return Err(Error::ContextFull {
            capacity: max_context,
            used: len,
            needed: 1,
        });
    }
    Ok(())
}

/// The checks of a prompt: not empty, every token in the vocabulary, room for all of it.
pub(crate) fn check_prompt(
    tokens: &[u32],
    vocab: usize,
    len: usize,
    max_context: usize,
) -> Result<(), Error> {
    if tokens.is_empty() {
        return Err(Error::input("prefill needs at least one token"));
    }
    if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::input(format!(
            "token {t} is outside the vocabulary of {vocab}"
        )));
    }
    if len + tokens.len() > max_context {
        return Err(Error::ContextFull {
            capacity: max_context,
            used: len,
            needed: tokens.len(),
        });
    }
    Ok(())
}

/// A vector tensor (norm gains, biases): f32, exactly `len` values.
pub(crate) fn vector<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    name: &str,
    len: usize,
) -> Result<&'a [f32], Error> {
    let t = m.tensor(name)?;
    let v = t
        .as_f32_slice()
        .map_err(|e| Error::unsupported(format!("{e} (norms and biases must stay f32)")))?;
    if v.len() != len {
        return Err(Error::Shape {
            tensor: name.into(),
            expected: vec![len],
            got: vec![v.len()],
        });
    }
    Ok(v)
}

/// A matrix tensor of shape `[rows, cols]` in any supported type, as stored.
pub(crate) fn matrix<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<MatRef<'a>, Error> {
    let t = m.tensor(name)?;
    let w = t.as_matrix()?;
    if (w.rows(), w.cols()) != (rows, cols) {
        return Err(Error::Shape {
            tensor: name.into(),
            expected: vec![rows, cols],
            got: vec![w.rows(), w.cols()],
        });
    }
    Ok(w)
}

/// The tensors of a model description, bound as stored: every engine looks its weights up
/// here by role (and block, expert), never by a name of its own — the description's table
/// is the one place that knows names, shapes and layouts. Holds no names on the heap (each
/// entry borrows its name from the mapped file), so binding a model leaves nothing behind
/// in a bare-metal bump arena but this table.
pub(crate) struct Bind<'m, B> {
    m: &'m Model<B>,
    entries: Vec<Entry<'m>>,
}

struct Entry<'m> {
    role: Role,
    block: Option<usize>,
    expert: Option<usize>,
    name: &'m str,
    /// Rows, columns (a vector: its length, 1).
    shape: (usize, usize),
    layout: Layout,
}

impl<'m, B: AsRef<[u8]>> Bind<'m, B> {
    /// The table of `desc` over the file `m`; a described tensor the file lacks is
    /// [`Error::Container`] naming it.
    pub(crate) fn new(m: &'m Model<B>, desc: &ModelDesc) -> Result<Self, Error> {
        let mut entries = Vec::with_capacity(m.tensor_count());
        let mut err = None;
        desc.for_each_tensor(&mut |t| {
            if err.is_some() {
                return;
            }
            match m.tensor(&t.name) {
                Ok(v) => entries.push(Entry {
                    role: t.role,
                    block: t.block,
                    expert: t.expert,
                    name: v.name(),
                    shape: if t.layout == Layout::Vector {
                        (t.shape.iter().product(), 1)
                    } else {
                        (t.shape[0], t.shape.get(1).copied().unwrap_or(1))
                    },
                    layout: t.layout,
                }),
                Err(e) => err = Some(Error::from(e)),
            }
        });
        match err {
            Some(e) => Err(e),
            None => Ok(Bind { m, entries }),
        }
    }

    fn spec(
        &self,
        role: Role,
        block: Option<usize>,
        expert: Option<usize>,
    ) -> Result<&Entry<'m>, Error> {
        self.entries
            .iter()
            .find(|t| t.role == role && t.block == block && t.expert == expert)
            .ok_or_else(|| {
                let at = match (block, expert) {
                    (Some(l), Some(e)) => format!(" of block {l}, expert {e}"),
                    (Some(l), None) => format!(" of block {l}"),
                    _ => String::new(),
                };
                Error::unsupported(format!(
                    "this engine needs a {role:?} tensor{at}, which this architecture does not have"
                ))
            })
    }

    /// The matrix of `role` in any supported type, as stored, with its layout.
    pub(crate) fn matrix(
        &self,
        role: Role,
        block: Option<usize>,
        expert: Option<usize>,
    ) -> Result<(MatRef<'m>, Layout), Error> {
        let t = self.spec(role, block, expert)?;
        Ok((matrix(self.m, t.name, t.shape.0, t.shape.1)?, t.layout))
    }

    /// The model-level or block matrix of `role` (no expert).
    pub(crate) fn mat(&self, role: Role, block: Option<usize>) -> Result<MatRef<'m>, Error> {
        Ok(self.matrix(role, block, None)?.0)
    }

    /// The f32 vector of `role` (all its elements).
    pub(crate) fn vector(&self, role: Role, block: Option<usize>) -> Result<&'m [f32], Error> {
        let t = self.spec(role, block, None)?;
        vector(self.m, t.name, t.shape.0 * t.shape.1)
    }

    /// The final LayerNorm (gain and bias), or RMSNorm (gain) when the file has no bias.
    pub(crate) fn final_norm(&self) -> Result<runner::FinalNorm<'m>, Error> {
        let g = self.vector(Role::OutputNorm, None)?;
        Ok(match self.spec(Role::OutputNormBias, None, None) {
            Ok(_) => runner::FinalNorm::Layer(g, self.vector(Role::OutputNormBias, None)?),
            Err(_) => runner::FinalNorm::Rms(g),
        })
    }

    /// A norm's gain and bias.
    pub(crate) fn norm(
        &self,
        gain: Role,
        bias: Role,
        block: Option<usize>,
    ) -> Result<(&'m [f32], &'m [f32]), Error> {
        Ok((self.vector(gain, block)?, self.vector(bias, block)?))
    }
}

/// "Not a `what` model": the error for a description of another family or block shape.
pub(crate) fn not_family(desc: &ModelDesc, what: &str) -> Error {
    Error::metadata(
        "modula.model",
        format!(
            "not a {what} model (modula.model = {:?})",
            desc.family.name()
        ),
    )
}

/// The first block of a description of `family` whose norms this build's engines run
/// (LayerNorm); `what` names the family in the errors.
pub(crate) fn layernorm_block<'d>(
    desc: &'d ModelDesc,
    family: Family,
    what: &str,
) -> Result<&'d crate::arch::BlockSpec, Error> {
    if desc.family != family {
        return Err(not_family(desc, what));
    }
    let b = desc
        .blocks
        .first()
        .ok_or_else(|| Error::metadata("modula.block_count", "a model of 0 blocks"))?;
    if b.norm.kind != NormKind::LayerNorm {
        return Err(Error::unsupported(format!(
            "{what} files use LayerNorm (modula.norm = rmsnorm is not run by this engine)"
        )));
    }
    Ok(b)
}

impl DenseSpec {
    /// Read and check the architecture metadata of a dense LM file (through the one
    /// loader, [`ModelDesc::from_model`]).
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, Error> {
        Self::from_desc(&ModelDesc::from_model(m)?)
    }

    /// The dense decoder's view of a description: a causal language model of
    /// softmax-attention blocks with dense or EMoE FFNs.
    pub fn from_desc(desc: &ModelDesc) -> Result<Self, Error> {
        let first = layernorm_block(desc, Family::Dense, "dense")?;
        if desc.task != Task::Lm {
            return Err(Error::unsupported(
                "the decode engine runs language models; this is a classifier",
            ));
        }
        let Input::Tokens { vocab } = desc.input else {
            return Err(Error::unsupported(
                "the decode engine runs token models; this one reads feature vectors",
            ));
        };
        let (MixerSpec::Attention(att), Some((_, ffn))) = (first.mixer, first.ffn) else {
            return Err(Error::metadata(
                "modula.model",
                "a dense block is softmax attention + FFN",
            ));
        };
        if !att.causal {
            return Err(Error::unsupported(
                "the decode engine needs causal attention",
            ));
        }
        let mut spec = DenseSpec {
            vocab,
            d: desc.d,
            layers: desc.layers(),
            heads: att.heads,
            ffn: ffn.width,
            positions: match desc.positions {
                Positions::Learned { rows } => rows,
                Positions::None => 0,
                Positions::Rotary(_) => return Err(not_family(desc, "dense")),
            },
            emoe_layers: 0,
            emoe_experts: 0,
            emoe_top_k: 0,
            nested_depths: 0,
            nested_ffn: [0; 8],
            nested_heads: 0,
            head_major: att.layout == AttnLayout::HeadMajor,
            eps: first.norm.eps,
            act: ffn.act,
        };
        for (l, b) in desc.blocks.iter().enumerate() {
            if let Some((_, f)) = b.ffn {
                if let FfnKind::Emoe { experts, top_k } = f.kind {
                    spec.emoe_layers |= 1 << l;
                    spec.emoe_experts = experts;
                    spec.emoe_top_k = top_k;
                }
            }
        }
        let n = &desc.nesting;
        for &l in &n.depths {
            if l < spec.layers {
                spec.nested_depths |= 1 << (l - 1);
            }
        }
        for (i, &w) in n.ffn_widths.iter().filter(|&&w| w < spec.ffn).enumerate() {
            spec.nested_ffn[i] = w as u32;
        }
        for &h in &n.heads {
            if h < spec.heads {
                spec.nested_heads |= 1 << (h - 1);
            }
        }
        Ok(spec)
    }

    /// The heap memory (bytes) [`DenseEngine::with_capacity`]`(m, ctx, cap)` allocates —
    /// exactly, buffer by buffer — or why that engine cannot be built.
    pub fn plan(&self, ctx: usize, cap: (usize, usize)) -> Result<ArenaPlan, Error> {
        let (depth, f) = cap;
        if depth == 0 || depth > self.layers || f == 0 || f > self.ffn {
            return Err(Error::input(format!(
                "sub-model depth {depth} x FFN {f} is outside the model (depth {}, FFN {})",
                self.layers, self.ffn
            )));
        }
        if ctx == 0 {
            return Err(Error::input("context 0: it must hold at least 1 position"));
        }
        if self.positions > 0 && ctx > self.positions {
            return Err(Error::input(format!(
                "context {ctx} must be in 1..={} (the position table)",
                self.positions
            )));
        }
        let emoe_in = (0..depth)
            .filter(|&l| l < 64 && self.emoe_layers >> l & 1 == 1)
            .count();
        if f < self.ffn && emoe_in > 0 {
            return Err(Error::unsupported(
                "narrower FFNs of EMoE blocks are not supported",
            ));
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
            work: 4 * (8 * d + u + ctx.max(self.emoe_experts) + 2 * top_k + self.vocab) as u64,
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
    ) -> Result<(u64, u64), Error> {
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
    ) -> Result<(u64, u64), Error> {
        let (depth, f) = size;
        if depth == 0 || depth > self.layers || f == 0 || f > self.ffn {
            return Err(Error::input(format!(
                "sub-model {depth}x{f} is outside the model"
            )));
        }
        let heads = heads.filter(|&h| h != self.heads);
        let weights = m
            .submodel(crate::model::NestedSpec {
                depth: Some(depth),
                ffn: Some(f),
                heads,
                ..Default::default()
            })?
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
    ) -> Result<((usize, usize, usize), u64), Error> {
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
            Error::input(format!(
                "impossible budget: {:.2} MiB, but the smallest sub-model needs {:.2} MiB (weights + arena at {ctx} positions)",
                budget as f64 / 1048576.0,
                smallest as f64 / 1048576.0
            ))
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
    pub fn new<B: AsRef<[u8]>>(m: &'a Model<B>, max_context: usize) -> Result<Self, Error> {
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
    ) -> Result<Self, Error> {
        let desc = ModelDesc::from_model(m)?;
        let s = DenseSpec::from_desc(&desc)?;
        let d = s.d;
        s.plan(max_context, cap)?;
        let t = Bind::new(m, &desc)?;
        drop(desc);
        let emoe_in = (0..cap.0).any(|l| l < 64 && s.emoe_layers >> l & 1 == 1);
        let u_len = if emoe_in {
            cap.1.max(s.ffn / s.emoe_experts)
        } else {
            cap.1
        };
        let f = s.ffn;
        let mut blocks = Vec::with_capacity(cap.0);
        for l in 0..cap.0 {
            let at = Some(l);
            let up = t.mat(Role::FfnUp, at)?;
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
            // head-major files store the output projection [d_in, d_out] (InOut), so the
            // first h heads are a row prefix; the FFN's down projection is InOut too
            let (proj, proj_layout) = t.matrix(Role::AttnOut, at, None)?;
            let (down_t, down_layout) = t.matrix(Role::FfnDown, at, None)?;
            if (proj_layout == Layout::InOut) != s.head_major || down_layout != Layout::InOut {
                return Err(Error::unsupported(format!(
                    "block {l}: the dense engine runs attn_output as [out, in] (or transposed in head-major files) and ffn_down transposed; this file stores them {proj_layout:?} / {down_layout:?}"
                )));
            }
            blocks.push(BlockW {
                ln1: t.norm(Role::AttnNorm, Role::AttnNormBias, at)?,
                qkv: t.mat(Role::AttnQkv, at)?,
                qkv_b: t.vector(Role::AttnQkvBias, at)?,
                proj,
                proj_b: t.vector(Role::AttnOutBias, at)?,
                ln2: t.norm(Role::FfnNorm, Role::FfnNormBias, at)?,
                up,
                up_b: t.vector(Role::FfnUpBias, at)?,
                down_t,
                down_b: t.vector(Role::FfnDownBias, at)?,
                gates,
            });
        }
        let hd = d / s.heads;
        let ends = Ends {
            vocab: s.vocab,
            d,
            emb: t.mat(Role::TokenEmbd, None)?,
            pos: if s.positions > 0 {
                Some(t.mat(Role::PositionEmbd, None)?)
            } else {
                None
            },
            scale: None,
            norm: Some(t.final_norm()?),
            eps: s.eps,
            head: RunHead::Lm(t.mat(Role::Output, None)?),
        };
        let blocks = DenseBlocks {
            spec: s,
            blocks,
            caches: (0..cap.0 * s.heads)
                .map(|_| KvCache::new(hd, max_context))
                .collect(),
            active: cap,
            heads: s.heads,
            u_len,
            max_context,
        };
        let step = Rows::new(1, d, u_len, max_context.max(s.emoe_experts), s.emoe_top_k);
        Ok(DenseEngine {
            spec: s,
            max_context,
            cap,
            r: Runner::new(ends, blocks, max_context, step),
        })
    }

    /// The architecture.
    pub fn spec(&self) -> DenseSpec {
        self.spec
    }

    /// Positions consumed so far.
    pub fn position(&self) -> usize {
        self.r.len
    }

    /// Capacity in positions.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Start a new sequence (keeps every buffer).
    pub fn reset(&mut self) {
        self.r.reset();
    }

    /// Run the nested sub-model `(depth, ffn)` from the next request on (`None`: the full
    /// model): the first `depth` blocks and the first `ffn` rows of every FFN tensor —
    /// prefixes of the mapped weights, so nothing is loaded, copied or allocated. Any
    /// size within the model works; sizes the model was not trained for (see
    /// [`DenseSpec::nested_grid`]) are just truncations. Starts a new sequence.
    pub fn set_submodel(&mut self, size: Option<(usize, usize)>) -> Result<(), Error> {
        let s = self.spec;
        let (depth, f) = size.unwrap_or(self.cap);
        if depth == 0 || depth > s.layers || f == 0 || f > s.ffn {
            return Err(Error::input(format!(
                "sub-model depth {depth} x FFN {f} is outside the model (depth {}, FFN {})",
                s.layers, s.ffn
            )));
        }
        if f < s.ffn && (0..depth).any(|l| l < 64 && s.emoe_layers >> l & 1 == 1) {
            return Err(Error::unsupported(
                "narrower FFNs of EMoE blocks are not supported",
            ));
        }
        if depth > self.cap.0 || f > self.cap.1 {
            return Err(Error::input(format!(
                "sub-model depth {depth} x FFN {f} is beyond this engine's capacity (depth {} x FFN {}; it was planned for that)",
                self.cap.0, self.cap.1
            )));
        }
        self.r.blocks.active = (depth, f);
        self.reset();
        Ok(())
    }

    /// Run the first `heads` attention heads of every block from the next request on
    /// (`None`: all heads) — prefixes of `attn_qkv` and of the transposed output projection
    /// in a head-major file, so nothing is loaded, copied or allocated. Combines with
    /// [`DenseEngine::set_submodel`]. Starts a new sequence.
    pub fn set_heads(&mut self, heads: Option<usize>) -> Result<(), Error> {
        let s = self.spec;
        let h = heads.unwrap_or(s.heads);
        if h == 0 || h > s.heads {
            return Err(Error::input(format!(
                "{h} heads is outside 1..={}",
                s.heads
            )));
        }
        if h < s.heads && !s.head_major {
            return Err(Error::unsupported(format!(
                "this file does not nest heads (its attention is not stored head-major); it runs all {} heads",
                s.heads
            )));
        }
        self.r.blocks.heads = h;
        self.reset();
        Ok(())
    }

    /// Attention heads in use.
    pub fn heads(&self) -> usize {
        self.r.blocks.heads
    }

    /// The sub-model in use: (depth, FFN width).
    pub fn submodel(&self) -> (usize, usize) {
        self.r.blocks.active
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
        let b = &self.r.blocks;
        ArenaPlan {
            kv_cache: b.caches.iter().map(KvCache::heap_bytes).sum(),
            work: self.r.heap_bytes() + self.r.step_work().heap_bytes(),
            gates: b.blocks.iter().map(|b| f4(&b.gates)).sum(),
            tables: (b.blocks.capacity() * core::mem::size_of::<BlockW<'_>>()
                + b.caches.capacity() * core::mem::size_of::<KvCache>()) as u64,
        }
    }

    /// Consume one token; returns the logits for the next one. Errors (never panics) on a
    /// token outside the vocabulary or a full context. Allocates nothing.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.r.step(token)
    }

    /// Consume a prompt in one pass: every block runs its projections and FFN as matrix
    /// products over all the prompt's rows (the weights are read once per prompt, not once
    /// per token); attention per row over the cache, as a step does. Returns the logits
    /// after the last token — those of [`DenseEngine::step`] token by token, to float
    /// rounding (the products over many rows sum in another order). Allocates its rows
    /// (`n` × the step's work buffers); the decode loop that follows does not.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.r.prefill(tokens)
    }
}

/// Non-finite logits (NaN or infinite weights or activations) are an error in every engine,
/// never sampled from.
pub(crate) fn finite_logits(logits: &[f32]) -> Result<(), Error> {
    if logits.iter().any(|v| !v.is_finite()) {
        return Err(Error::non_finite(
            "the logits are not finite (NaN or infinite weights or activations)",
        ));
    }
    Ok(())
}

impl Blocks for DenseBlocks<'_> {
    type Work = Rows;

    fn work(&self, n: usize) -> Rows {
        let s = self.spec;
        Rows::new(
            n,
            s.d,
            self.u_len,
            (ATT_BLOCK * self.max_context).max(s.emoe_experts),
            s.emoe_top_k,
        )
    }

    fn depth(&self) -> usize {
        self.active.0
    }

    fn reset(&mut self) {
        self.caches.iter_mut().for_each(KvCache::clear);
    }

    /// Block `l` over `tokens` at positions `pos..pos + n` (keys and values appended to
    /// its caches): attention then FFN, each pre-norm and added to the residual rows.
    fn run(
        &mut self,
        l: usize,
        tokens: &[u32],
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
        b: &mut Rows,
    ) -> Result<(), Error> {
        let s = self.spec;
        let (d, hd, n) = (s.d, s.d / s.heads, tokens.len());
        let (f, nh) = (self.active.1, self.heads);
        let ulen = b.u.len() / n;
        let tmp = &mut b.tmp[..n * d];
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let ln = |x: &[f32], g: (&[f32], &[f32]), h: &mut [f32]| -> Result<(), Error> {
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                layer_norm(xr, Some(g.0), Some(g.1), s.eps, hr)?;
            }
            Ok(())
        };
        let bw = &self.blocks[l];
        {
            ln(x, bw.ln1, h)?;
            // q, k, v of every row: head-major files keep the first nh heads' q, k, v in
            // the first 3·nh·hd rows
            let w3 = if s.head_major { 3 * nh * hd } else { 3 * d };
            let qkv = &mut b.qkv[..n * w3];
            if s.head_major {
                let wm = if nh < s.heads {
                    bw.qkv.prefix(w3, d)?
                } else {
                    bw.qkv
                };
                linear(h, d, n, &wm, Some(&bw.qkv_b[..w3]), qkv, w3)?;
            } else {
                linear(h, d, n, &bw.qkv, Some(bw.qkv_b), qkv, w3)?;
            }
            let att = &mut b.att[..n * d];
            for hh in 0..nh {
                let (q0, k0, v0) = if s.head_major {
                    (3 * hh * hd, (3 * hh + 1) * hd, (3 * hh + 2) * hd)
                } else {
                    (hh * hd, d + hh * hd, 2 * d + hh * hd)
                };
                let c = &mut self.caches[l * s.heads + hh];
                for i in 0..n {
                    let r = &qkv[i * w3..(i + 1) * w3];
                    c.append(&r[k0..k0 + hd], &r[v0..v0 + hd])?;
                }
                attend_cache(
                    &qkv[q0..],
                    w3,
                    n,
                    pos,
                    c,
                    hd,
                    scale,
                    &mut att[hh * hd..],
                    d,
                    &mut b.scores,
                )?;
            }
            if s.head_major {
                // transposed projection: the first nh·hd rows meet the heads that ran
                let k = nh * hd;
                let wm = if nh < s.heads {
                    bw.proj.prefix(k, d)?
                } else {
                    bw.proj
                };
                matmul_rows(att, d, n, &wm, tmp, d, false)?;
                for (xr, tr) in x.chunks_exact_mut(d).zip(tmp.chunks_exact(d)) {
                    for ((a, v), bb) in xr.iter_mut().zip(tr).zip(bw.proj_b) {
                        *a += v + bb;
                    }
                }
            } else {
                linear(att, d, n, &bw.proj, Some(bw.proj_b), tmp, d)?;
                for (a, v) in x.iter_mut().zip(tmp.iter()) {
                    *a += v;
                }
            }
            ln(x, bw.ln2, h)?;
            if bw.gates.is_empty() {
                let (up, down) = if f < s.ffn {
                    (bw.up.prefix(f, d)?, bw.down_t.prefix(f, d)?)
                } else {
                    (bw.up, bw.down_t)
                };
                let u = &mut b.u[..n * ulen];
                linear(h, d, n, &up, Some(&bw.up_b[..f]), u, ulen)?;
                for r in u.chunks_exact_mut(ulen) {
                    s.act.apply(&mut r[..f]);
                }
                matmul_rows(u, ulen, n, &down, tmp, d, false)?;
            } else if n > 1 {
                // EMoE over a prompt: each row's top-k experts by the same per-row scores
                // as a step, then one product per expert over the rows that chose it (an
                // expert's rows are read once per prompt, not once per row)
                let (e_n, k) = (s.emoe_experts, s.emoe_top_k);
                let per = s.ffn / e_n;
                let g = MatRef::f32(&bw.gates, e_n, d)?;
                let mut chosen: Vec<Vec<u32>> = vec![Vec::new(); e_n];
                for i in 0..n {
                    let hr = &h[i * d..(i + 1) * d];
                    linear(hr, d, 1, &g, None, &mut b.scores[..e_n], e_n)?;
                    top_k(&b.scores[..e_n], k, &mut b.chosen, &mut b.chosen_val)?;
                    for &e in &b.chosen {
                        chosen[e as usize].push(i as u32);
                    }
                }
                tmp.fill(0.0);
                let (mut hg, mut ug, mut yg) = (Vec::new(), Vec::new(), Vec::new());
                for (e, rows) in chosen.iter().enumerate() {
                    if rows.is_empty() {
                        continue;
                    }
                    let m = rows.len();
                    hg.clear();
                    for &i in rows {
                        hg.extend_from_slice(&h[i as usize * d..(i as usize + 1) * d]);
                    }
                    let r0 = e * per;
                    let up = bw.up.rows_range(r0, per)?;
                    let down = bw.down_t.rows_range(r0, per)?;
                    ug.resize(m * per, 0.0);
                    linear(&hg, d, m, &up, Some(&bw.up_b[r0..r0 + per]), &mut ug, per)?;
                    for r in ug.chunks_exact_mut(per) {
                        s.act.apply(r);
                    }
                    yg.resize(m * d, 0.0);
                    matmul_rows(&ug, per, m, &down, &mut yg, d, false)?;
                    for (j, &i) in rows.iter().enumerate() {
                        let out = &mut tmp[i as usize * d..(i as usize + 1) * d];
                        for (o, v) in out.iter_mut().zip(&yg[j * d..(j + 1) * d]) {
                            *o += v;
                        }
                    }
                }
            } else {
                // EMoE: per row, only the top-k experts' rows are read
                let (e_n, k) = (s.emoe_experts, s.emoe_top_k);
                let per = s.ffn / e_n;
                let g = MatRef::f32(&bw.gates, e_n, d)?;
                for i in 0..n {
                    let hr = &h[i * d..(i + 1) * d];
                    let out = &mut tmp[i * d..(i + 1) * d];
                    linear(hr, d, 1, &g, None, &mut b.scores[..e_n], e_n)?;
                    top_k(&b.scores[..e_n], k, &mut b.chosen, &mut b.chosen_val)?;
                    out.fill(0.0);
                    for &e in &b.chosen {
                        let r0 = e as usize * per;
                        let up = bw.up.rows_range(r0, per)?;
                        let down = bw.down_t.rows_range(r0, per)?;
                        let u = &mut b.u[i * ulen..i * ulen + per];
                        linear(hr, d, 1, &up, Some(&bw.up_b[r0..r0 + per]), u, per)?;
                        s.act.apply(u);
                        matmul_rows(u, per, 1, &down, out, d, true)?;
                    }
                }
            }
            for (xr, tr) in x.chunks_exact_mut(d).zip(tmp.chunks_exact(d)) {
                for ((a, v), bb) in xr.iter_mut().zip(tr).zip(bw.down_b) {
                    *a += v + bb;
                }
            }
        }
        Ok(())
    }
}
