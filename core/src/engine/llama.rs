//! Llama-family and GPT-2 decoding (llama.cpp's `llama`, `qwen2` and `gpt2` files) straight
//! from the mapped file: no weight is copied, every supported weight type runs as stored,
//! and after [`LlamaEngine::new`] a decode step allocates nothing.
//!
//! One block, on the `Runner`'s residual rows: RMSNorm; q, k, v (Qwen2: with biases) for
//! all rows in one product each; rotary embeddings of q and k at each row's position (the
//! pairs the file's architecture uses: adjacent for `llama`, whose converter permutes the
//! Hugging Face rows, halves for `qwen2`); k and v appended to the caches of the key/value
//! heads; each query head attends causally over the cache of the key/value head its group
//! shares (grouped-query attention); output projection; residual; RMSNorm;
//! `down(silu(gate x) ⊙ up x)`; residual. Embedding, final RMSNorm and the head (tied to the
//! embedding when the file has no `output.weight`) are the runner's.
//!
//! GPT-2 is the same block with its own choices: LayerNorm (gain and bias) for RMSNorm,
//! learned positions (the runner adds `position_embd`) for rotary ones, q, k and v as the
//! three row ranges of the fused `attn_qkv` (and of its bias), a bias on the output
//! projection, and `down(gelu_tanh(up x + b)) + b` for SwiGLU.

use super::runner::{Blocks, Ends, RunHead, Runner};
use super::{attend_cache, not_family, ArenaPlan, Bind, ATT_BLOCK};
use crate::arch::{
    Act, AttnLayout, Family, FfnKind, MixerSpec, NormKind, Positions, Role, RopeStyle,
};
use crate::error::Error;
use crate::kernels::attention::KvCache;
use crate::kernels::elementwise::{layer_norm, rms_norm};
use crate::kernels::linear::{linear, MatRef};
use crate::model::Model;
use crate::ModelDesc;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Shape of a Llama-family or GPT-2 model, from its description.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaSpec {
    /// [`Family::Llama`] or [`Family::Gpt2`].
    pub family: Family,
    /// Vocabulary.
    pub vocab: usize,
    /// Width.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// FFN width.
    pub ffn: usize,
    /// RMSNorm (Llama) or LayerNorm (GPT-2).
    pub norm: NormKind,
    /// Norm epsilon.
    pub eps: f32,
    /// Rows of the learned position table (GPT-2; 0: rotary positions).
    pub positions: usize,
    /// q, k, v are the row ranges of one fused projection (GPT-2).
    pub fused_qkv: bool,
    /// The output projection and the FFN's products carry biases (GPT-2).
    pub biases: bool,
    /// FFN activation.
    pub act: Act,
    /// Gated FFN (`down(act(gate x) ⊙ up x)`; Llama) or plain (`down(act(up x))`; GPT-2).
    pub gated: bool,
    /// Rotary base.
    pub theta: f32,
    /// Rotary pairing.
    pub style: RopeStyle,
    /// Linear position scaling (1: none).
    pub rope_scale: f32,
    /// Per-pair frequency divisors from `rope_freqs.weight` (Llama 3.1's scaling).
    pub rope_factors: bool,
    /// q, k, v carry biases (Qwen2).
    pub qkv_bias: bool,
    /// The head is the token embedding.
    pub tied: bool,
    /// The context the model was trained for, if the file says.
    pub context_length: Option<usize>,
}

impl LlamaSpec {
    /// The spec of a Llama-family file.
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, Error> {
        Self::from_desc(&ModelDesc::from_model(m)?)
    }

    /// The spec of a Llama-family or GPT-2 description.
    pub fn from_desc(desc: &ModelDesc) -> Result<Self, Error> {
        if !matches!(desc.family, Family::Llama | Family::Gpt2) {
            return Err(not_family(desc, "llama"));
        }
        let b = desc
            .blocks
            .first()
            .ok_or_else(|| Error::metadata("llama.block_count", "a model of 0 blocks"))?;
        let (MixerSpec::Attention(a), Some((_, f))) = (b.mixer, b.ffn) else {
            return Err(not_family(desc, "llama"));
        };
        let gpt2 = desc.family == Family::Gpt2;
        let (rope, positions) = match desc.positions {
            Positions::Rotary(r) if !gpt2 => (r, 0),
            Positions::Learned { rows } if gpt2 => (
                crate::arch::Rope {
                    theta: 10000.0,
                    dim: a.head_dim,
                    style: RopeStyle::Adjacent,
                    scale: 1.0,
                    factors: false,
                },
                rows,
            ),
            _ => return Err(not_family(desc, desc.family.name())),
        };
        let ok = if gpt2 {
            a.layout == AttnLayout::Qkv
                && b.norm.kind == NormKind::LayerNorm
                && !f.gated
                && f.bias
                && a.bias
        } else {
            a.layout == AttnLayout::Split && b.norm.kind == NormKind::RmsNorm && f.gated
        };
        if !ok || f.kind != FfnKind::Dense {
            return Err(not_family(desc, desc.family.name()));
        }
        Ok(LlamaSpec {
            family: desc.family,
            norm: b.norm.kind,
            positions,
            fused_qkv: gpt2,
            biases: gpt2,
            act: f.act,
            gated: f.gated,
            vocab: desc.vocab(),
            d: desc.d,
            layers: desc.layers(),
            heads: a.heads,
            kv_heads: a.kv_heads,
            head_dim: a.head_dim,
            ffn: f.width,
            eps: b.norm.eps,
            theta: rope.theta,
            style: rope.style,
            rope_scale: rope.scale,
            rope_factors: rope.factors,
            qkv_bias: a.bias,
            tied: desc.head == crate::arch::Head::Tied,
            context_length: desc.context_length,
        })
    }

    /// The exact heap of a [`LlamaEngine`] at `ctx` positions: the key/value caches, the
    /// work buffers of one row, the rotary tables (`gates`: cos and sin per position and
    /// pair), the per-block tables.
    pub fn plan(&self, ctx: usize) -> Result<ArenaPlan, Error> {
        use core::mem::size_of;
        if ctx == 0 {
            return Err(Error::input("context 0: it must hold at least 1 position"));
        }
        let (d, hd, f) = (self.d, self.head_dim, self.ffn);
        let (wq, wkv) = (self.heads * hd, self.kv_heads * hd);
        let cache = ctx
            .checked_mul(hd)
            .and_then(|c| c.checked_mul(2 * 4 * self.layers * self.kv_heads))
            .ok_or_else(|| Error::input(format!("context {ctx} is too large for this machine")))?;
        // runner: x, h, feats, logits; blocks' row: q, k, v, att, tmp, gate (gated FFNs),
        // up, scores
        let gate = if self.gated { f } else { 0 };
        let work = 4 * (3 * d + self.vocab + 2 * wq + 2 * wkv + d + gate + f + ctx);
        Ok(ArenaPlan {
            kv_cache: cache as u64,
            work: work as u64,
            gates: if self.positions > 0 {
                0
            } else {
                (2 * ctx * (hd / 2) * 4) as u64
            },
            tables: (self.layers * size_of::<LBlockW<'_>>()
                + self.layers * self.kv_heads * size_of::<KvCache>()) as u64,
        })
    }
}

#[derive(Debug)]
struct LBlockW<'a> {
    ln1: (&'a [f32], Option<&'a [f32]>),
    q: (MatRef<'a>, Option<&'a [f32]>),
    k: (MatRef<'a>, Option<&'a [f32]>),
    v: (MatRef<'a>, Option<&'a [f32]>),
    o: (MatRef<'a>, Option<&'a [f32]>),
    ln2: (&'a [f32], Option<&'a [f32]>),
    gate: Option<MatRef<'a>>,
    up: (MatRef<'a>, Option<&'a [f32]>),
    down: (MatRef<'a>, Option<&'a [f32]>),
}

/// The block's norm (gain, and bias for LayerNorm) of each row of `x` into `h`.
fn norm_rows(
    s: &LlamaSpec,
    (g, b): (&[f32], Option<&[f32]>),
    x: &[f32],
    h: &mut [f32],
) -> Result<(), Error> {
    for (xr, hr) in x.chunks_exact(s.d).zip(h.chunks_exact_mut(s.d)) {
        if s.norm == NormKind::LayerNorm {
            layer_norm(xr, Some(g), b, s.eps, hr)?;
        } else {
            rms_norm(xr, Some(g), s.eps, hr)?;
        }
    }
    Ok(())
}

/// The blocks for the `Runner`: weights, the caches of every key/value head, the rotary
/// tables.
#[derive(Debug)]
struct LlamaBlocks<'a> {
    spec: LlamaSpec,
    blocks: Vec<LBlockW<'a>>,
    /// Per block and key/value head.
    caches: Vec<KvCache>,
    depth: usize,
    max_context: usize,
    /// `cos`, `sin` of position `p`, pair `i` at `p · half + i`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Work rows of a block for `n` positions.
#[derive(Debug)]
struct LRows {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
}

impl LRows {
    fn new(s: &LlamaSpec, n: usize, scores: usize) -> Self {
        let (wq, wkv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        LRows {
            q: vec![0.0; n * wq],
            k: vec![0.0; n * wkv],
            v: vec![0.0; n * wkv],
            att: vec![0.0; n * wq],
            tmp: vec![0.0; n * s.d],
            gate: vec![0.0; if s.gated { n * s.ffn } else { 0 }],
            up: vec![0.0; n * s.ffn],
            scores: vec![0.0; scores],
        }
    }

    fn heap_bytes(&self) -> u64 {
        [
            &self.q,
            &self.k,
            &self.v,
            &self.att,
            &self.tmp,
            &self.gate,
            &self.up,
            &self.scores,
        ]
        .into_iter()
        .map(|v| 4 * v.capacity() as u64)
        .sum()
    }
}

/// Rotate the `heads` head vectors of width `hd` in `row` by the angles of one position.
fn rope(row: &mut [f32], heads: usize, hd: usize, style: RopeStyle, cos: &[f32], sin: &[f32]) {
    let half = hd / 2;
    for h in row[..heads * hd].chunks_exact_mut(hd) {
        for i in 0..half {
            let (a, b) = match style {
                RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                RopeStyle::Half => (i, i + half),
            };
            let (x0, x1) = (h[a], h[b]);
            h[a] = x0 * cos[i] - x1 * sin[i];
            h[b] = x1 * cos[i] + x0 * sin[i];
        }
    }
}

impl Blocks for LlamaBlocks<'_> {
    type Work = LRows;

    fn work(&self, n: usize) -> LRows {
        LRows::new(&self.spec, n, ATT_BLOCK * self.max_context)
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn reset(&mut self) {
        self.caches.iter_mut().for_each(KvCache::clear);
    }

    fn run(
        &mut self,
        l: usize,
        tokens: &[u32],
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
        w: &mut LRows,
    ) -> Result<(), Error> {
        let s = self.spec;
        let (d, hd, n, f) = (s.d, s.head_dim, tokens.len(), s.ffn);
        let (nq, nkv) = (s.heads, s.kv_heads);
        let (wq, wkv) = (nq * hd, nkv * hd);
        let group = nq / nkv;
        let half = hd / 2;
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let bw = &self.blocks[l];
        norm_rows(&s, bw.ln1, x, h)?;
        let (q, k, v) = (&mut w.q[..n * wq], &mut w.k[..n * wkv], &mut w.v[..n * wkv]);
        linear(h, d, n, &bw.q.0, bw.q.1, q, wq)?;
        linear(h, d, n, &bw.k.0, bw.k.1, k, wkv)?;
        linear(h, d, n, &bw.v.0, bw.v.1, v, wkv)?;
        for i in (0..n).filter(|_| s.positions == 0) {
            let p = pos + i;
            let (c, sn) = (
                &self.cos[p * half..(p + 1) * half],
                &self.sin[p * half..(p + 1) * half],
            );
            rope(&mut q[i * wq..(i + 1) * wq], nq, hd, s.style, c, sn);
            rope(&mut k[i * wkv..(i + 1) * wkv], nkv, hd, s.style, c, sn);
        }
        for g in 0..nkv {
            let c = &mut self.caches[l * nkv + g];
            for i in 0..n {
                let o = i * wkv + g * hd;
                c.append(&k[o..o + hd], &v[o..o + hd])?;
            }
        }
        let att = &mut w.att[..n * wq];
        for hh in 0..nq {
            let c = &self.caches[l * nkv + hh / group];
            let q0 = hh * hd;
            attend_cache(
                &q[q0..],
                wq,
                n,
                pos,
                c,
                hd,
                scale,
                &mut att[q0..],
                wq,
                &mut w.scores,
            )?;
        }
        let tmp = &mut w.tmp[..n * d];
        linear(att, wq, n, &bw.o.0, bw.o.1, tmp, d)?;
        for (a, b) in x.iter_mut().zip(tmp.iter()) {
            *a += b;
        }
        norm_rows(&s, bw.ln2, x, h)?;
        let up = &mut w.up[..n * f];
        linear(h, d, n, &bw.up.0, bw.up.1, up, f)?;
        let hidden = match &bw.gate {
            Some(gw) => {
                let gate = &mut w.gate[..n * f];
                linear(h, d, n, gw, None, gate, f)?;
                s.act.apply(gate);
                for (g, u) in gate.iter_mut().zip(up.iter()) {
                    *g *= u;
                }
                gate
            }
            None => {
                s.act.apply(up);
                up
            }
        };
        linear(hidden, f, n, &bw.down.0, bw.down.1, tmp, d)?;
        for (a, b) in x.iter_mut().zip(tmp.iter()) {
            *a += b;
        }
        Ok(())
    }
}

/// A Llama-family LM ready to decode, borrowing its weights from a [`Model`].
#[derive(Debug)]
pub struct LlamaEngine<'a> {
    r: Runner<'a, LlamaBlocks<'a>>,
}

impl<'a> LlamaEngine<'a> {
    /// Bind the weights of `m` (no copy, any supported type) and allocate every buffer for
    /// up to `max_context` positions.
    pub fn new<B: AsRef<[u8]>>(m: &'a Model<B>, max_context: usize) -> Result<Self, Error> {
        let desc = ModelDesc::from_model(m)?;
        let s = LlamaSpec::from_desc(&desc)?;
        s.plan(max_context)?;
        let t = Bind::new(m, &desc)?;
        drop(desc);
        let (d, hd) = (s.d, s.head_dim);
        let lin = |role: Role, bias: Role, l: usize, has: bool| -> Result<_, Error> {
            let w = t.mat(role, Some(l))?;
            let b = if has {
                Some(t.vector(bias, Some(l))?)
            } else {
                None
            };
            Ok((w, b))
        };
        let norm = |gain: Role, bias: Role, l: usize| -> Result<_, Error> {
            let b = if s.norm == NormKind::LayerNorm {
                Some(t.vector(bias, Some(l))?)
            } else {
                None
            };
            Ok((t.vector(gain, Some(l))?, b))
        };
        let (wq, wkv) = (s.heads * hd, s.kv_heads * hd);
        let mut blocks = Vec::with_capacity(s.layers);
        for l in 0..s.layers {
            let at = Some(l);
            let (q, k, v) = if s.fused_qkv {
                // GPT-2: q, k, v are the row ranges of the fused projection and its bias
                let w = t.mat(Role::AttnQkv, at)?;
                let b = t.vector(Role::AttnQkvBias, at)?;
                let part = |r0: usize, rows: usize| -> Result<_, Error> {
                    Ok((w.rows_range(r0, rows)?, Some(&b[r0..r0 + rows])))
                };
                (part(0, wq)?, part(wq, wkv)?, part(wq + wkv, wkv)?)
            } else {
                (
                    lin(Role::AttnQ, Role::AttnQBias, l, s.qkv_bias)?,
                    lin(Role::AttnK, Role::AttnKBias, l, s.qkv_bias)?,
                    lin(Role::AttnV, Role::AttnVBias, l, s.qkv_bias)?,
                )
            };
            blocks.push(LBlockW {
                ln1: norm(Role::AttnNorm, Role::AttnNormBias, l)?,
                q,
                k,
                v,
                o: lin(Role::AttnOut, Role::AttnOutBias, l, s.biases)?,
                ln2: norm(Role::FfnNorm, Role::FfnNormBias, l)?,
                gate: if s.gated {
                    Some(t.mat(Role::FfnGate, at)?)
                } else {
                    None
                },
                up: lin(Role::FfnUp, Role::FfnUpBias, l, s.biases)?,
                down: lin(Role::FfnDown, Role::FfnDownBias, l, s.biases)?,
            });
        }
        // the rotary angles, in f64 then rounded: pair i turns by p / scale · θ^(−2i/hd)
        let half = hd / 2;
        let rot = if s.positions > 0 { 0 } else { max_context };
        if s.positions > 0 && max_context > s.positions {
            return Err(Error::input(format!(
                "context {max_context} exceeds the model's {} learned positions",
                s.positions
            )));
        }
        let (mut cos, mut sin) = (vec![0f32; rot * half], vec![0f32; rot * half]);
        let factors = if s.rope_factors {
            let f = t.vector(Role::RopeFreqs, None)?;
            if let Some(bad) = f.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
                return Err(Error::metadata(
                    "rope_freqs.weight",
                    format!("rope_freqs.weight holds {bad}: each factor must be positive"),
                ));
            }
            Some(f)
        } else {
            None
        };
        for p in 0..rot {
            for i in 0..half {
                let mut inv = libm::pow(f64::from(s.theta), -((2 * i) as f64) / hd as f64);
                if let Some(f) = factors {
                    inv /= f64::from(f[i]);
                }
                let a = p as f64 / f64::from(s.rope_scale) * inv;
                cos[p * half + i] = libm::cos(a) as f32;
                sin[p * half + i] = libm::sin(a) as f32;
            }
        }
        let emb = t.mat(Role::TokenEmbd, None)?;
        let head = if s.tied {
            emb
        } else {
            t.mat(Role::Output, None)?
        };
        let ends = Ends {
            vocab: s.vocab,
            d,
            emb,
            pos: if s.positions > 0 {
                Some(t.mat(Role::PositionEmbd, None)?)
            } else {
                None
            },
            scale: None,
            norm: Some(t.final_norm()?),
            eps: s.eps,
            head: RunHead::Lm(head),
        };
        let b = LlamaBlocks {
            spec: s,
            blocks,
            caches: (0..s.layers * s.kv_heads)
                .map(|_| KvCache::new(hd, max_context))
                .collect(),
            depth: s.layers,
            max_context,
            cos,
            sin,
        };
        let step = LRows::new(&s, 1, max_context);
        Ok(LlamaEngine {
            r: Runner::new(ends, b, max_context, step),
        })
    }

    /// [`Family::Llama`] or [`Family::Gpt2`].
    pub fn family(&self) -> Family {
        self.r.blocks.spec.family
    }

    /// The architecture.
    pub fn spec(&self) -> LlamaSpec {
        self.r.blocks.spec
    }

    /// Positions consumed so far.
    pub fn position(&self) -> usize {
        self.r.len
    }

    /// Capacity in positions.
    pub fn max_context(&self) -> usize {
        self.r.capacity
    }

    /// Start a new sequence (keeps every buffer).
    pub fn reset(&mut self) {
        self.r.reset();
    }

    /// Run the first `depth` blocks (then the final norm and head) from the next request on
    /// (`None`: all). A truncation, not a trained nested size. Starts a new sequence.
    pub fn set_depth(&mut self, depth: Option<usize>) -> Result<(), Error> {
        let layers = self.r.blocks.spec.layers;
        let d = depth.unwrap_or(layers);
        if d == 0 || d > layers {
            return Err(Error::input(format!("depth {d} is outside 1..={layers}")));
        }
        self.r.blocks.depth = d;
        self.reset();
        Ok(())
    }

    /// Blocks in use.
    pub fn depth(&self) -> usize {
        self.r.blocks.depth
    }

    /// Heap bytes this engine holds (equal to [`LlamaSpec::plan`] at its context).
    pub fn arena_bytes(&self) -> ArenaPlan {
        let b = &self.r.blocks;
        let f4 = |v: &Vec<f32>| 4 * v.capacity() as u64;
        ArenaPlan {
            kv_cache: b.caches.iter().map(KvCache::heap_bytes).sum(),
            work: self.r.heap_bytes() + self.r.step_work().heap_bytes(),
            gates: f4(&b.cos) + f4(&b.sin),
            tables: (b.blocks.capacity() * core::mem::size_of::<LBlockW<'_>>()
                + b.caches.capacity() * core::mem::size_of::<KvCache>()) as u64,
        }
    }

    /// Consume one token; the logits for the next. Allocates nothing.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.r.step(token)
    }

    /// Consume a prompt in one pass (products over all its rows); the logits after its
    /// last token, those of [`LlamaEngine::step`] token by token to float rounding.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.r.prefill(tokens)
    }
}
