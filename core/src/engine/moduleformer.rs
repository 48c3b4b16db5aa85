//! Token-by-token inference for ModuleFormer (MoLM) LMs straight from a mapped file: no
//! weight is copied, any supported weight type is used in place, and after
//! [`MfEngine::new`] a step allocates nothing.
//!
//! One step: embedding row → per block: LayerNorm; the attention router (MLP or linear
//! logits, softmax over all experts, top-k, gates = probabilities unless the file says
//! `modula.expert.renormalize`); the shared key/value of the new token appended to the
//! layer's cache — **one `d`-vector per token when K = V = LN1(x)** (the MoLM case), keys
//! and values otherwise; for each chosen expert its query projection, stick-breaking
//! attention per head over the cache (walking back from the current token), its output
//! projection, times the gate; residual; LayerNorm; the FFN router; the chosen FFN experts
//! (tanh-GELU, no biases) times their gates; residual → final LayerNorm → LM head.
//!
//! Only the chosen experts' weights are read: each expert is its own tensors in its own
//! page group of the file, so the pages of unchosen experts are never touched.
//! Stick-breaking attention can stop early once the remaining stick is below `e^{−τ}`
//! ([`MfEngine::set_stop`]); off by default (exact, as the trainer).

use super::{matrix, meta_u32, vector, EPS};
use crate::kernels::attention::stick_breaking;
use crate::kernels::elementwise::{gelu_tanh, layer_norm, softmax};
use crate::kernels::linear::{linear, matmul_rows, MatRef};
use crate::kernels::routing::{top_k, Router};
use crate::model::Model;
use crate::Value;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

/// Shape of a ModuleFormer LM read from the file's `modula.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MfSpec {
    /// Vocabulary.
    pub vocab: usize,
    /// Width d.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention experts and experts per token.
    pub att_experts: usize,
    /// Attention top-k.
    pub att_k: usize,
    /// Heads per attention expert.
    pub heads: usize,
    /// Head width (`D_a = heads · head_dim`).
    pub head_dim: usize,
    /// K = V = LN1(x) (no key/value projections).
    pub shared_kv: bool,
    /// FFN experts.
    pub ffn_experts: usize,
    /// FFN top-k.
    pub ffn_k: usize,
    /// FFN expert width.
    pub ffn_hidden: usize,
    /// Router MLP hidden width (0: linear routers).
    pub router_hidden: usize,
    /// Gates renormalised over the chosen experts.
    pub renormalize: bool,
}

impl MfSpec {
    /// Read and check the architecture metadata.
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, String> {
        if m.get_str("modula.model") != Some("moduleformer") {
            return Err(format!(
                "not a ModuleFormer model (modula.model = {:?})",
                m.get_str("modula.model")
            ));
        }
        let flag = |k: &str| match m.get(k) {
            Some(Value::Bool(b)) => Ok(b),
            _ => Err(format!("missing or non-bool {k}")),
        };
        let router_hidden = match m.get_str("modula.expert.router") {
            Some("mlp") => meta_u32(m, "modula.expert.gating_size")?,
            Some("linear") => 0,
            other => {
                return Err(format!(
                    "modula.expert.router = {other:?}: use mlp or linear"
                ))
            }
        };
        let s = MfSpec {
            vocab: meta_u32(m, "modula.vocab_size")?,
            d: meta_u32(m, "modula.embedding_length")?,
            layers: meta_u32(m, "modula.block_count")?,
            att_experts: meta_u32(m, "modula.attention.expert_count")?,
            att_k: meta_u32(m, "modula.attention.expert_used_count")?,
            heads: meta_u32(m, "modula.attention.head_count")?,
            head_dim: meta_u32(m, "modula.attention.head_dim")?,
            shared_kv: flag("modula.attention.shared_kv")?,
            ffn_experts: meta_u32(m, "modula.expert.count")?,
            ffn_k: meta_u32(m, "modula.expert.used_count")?,
            ffn_hidden: meta_u32(m, "modula.feed_forward_length")?,
            router_hidden,
            renormalize: flag("modula.expert.renormalize")?,
        };
        let bad = s.vocab == 0
            || s.d == 0
            || s.heads == 0
            || s.head_dim == 0
            || s.att_k == 0
            || s.att_k > s.att_experts
            || s.ffn_k == 0
            || s.ffn_k > s.ffn_experts
            || s.ffn_hidden == 0
            || (s.shared_kv && s.heads.checked_mul(s.head_dim) != Some(s.d));
        if bad {
            return Err(format!("inconsistent ModuleFormer shape: {s:?}"));
        }
        Ok(s)
    }

    /// Attention width of one expert.
    pub fn att_hidden(&self) -> usize {
        self.heads * self.head_dim
    }
}

#[derive(Debug)]
struct RouterW<'a> {
    router: Router<'a>,
}

#[derive(Debug)]
struct MfBlockW<'a> {
    ln1: (&'a [f32], &'a [f32]),
    att_router: RouterW<'a>,
    kv: Option<(MatRef<'a>, &'a [f32], MatRef<'a>, &'a [f32])>,
    q: Vec<MatRef<'a>>,
    o: Vec<MatRef<'a>>,
    ln2: (&'a [f32], &'a [f32]),
    ffn_router: RouterW<'a>,
    up: Vec<MatRef<'a>>,
    down: Vec<MatRef<'a>>,
}

/// A ModuleFormer LM ready to decode, borrowing its weights from a [`Model`].
#[derive(Debug)]
pub struct MfEngine<'a> {
    spec: MfSpec,
    max_context: usize,
    emb: MatRef<'a>,
    blocks: Vec<MfBlockW<'a>>,
    lnf: (&'a [f32], &'a [f32]),
    head: MatRef<'a>,
    /// Per layer: keys `[heads][max_context][head_dim]` (= the values when shared).
    keys: Vec<Vec<f32>>,
    /// Per layer: values (empty when K = V).
    values: Vec<Vec<f32>>,
    len: usize,
    stop: Option<f32>,
    x: Vec<f32>,
    h: Vec<f32>,
    kv_tmp: Vec<f32>,
    q: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    acc: Vec<f32>,
    u: Vec<f32>,
    router_scratch: Vec<f32>,
    probs: Vec<f32>,
    chosen: Vec<u32>,
    chosen_val: Vec<f32>,
    sb_scratch: Vec<f32>,
    logits: Vec<f32>,
    /// Per router (block-major, attention then FFN): times each expert was chosen.
    usage: Vec<Vec<u64>>,
}

fn router<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    s: &MfSpec,
    prefix: &str,
    e: usize,
) -> Result<RouterW<'a>, String> {
    let router = if s.router_hidden > 0 {
        Router::Mlp {
            w1: matrix(m, &format!("{prefix}_hid.weight"), s.router_hidden, s.d)?,
            b1: vector(m, &format!("{prefix}_hid.bias"), s.router_hidden)?,
            w2: matrix(m, &format!("{prefix}.weight"), e, s.router_hidden)?,
        }
    } else {
        Router::Linear {
            w: matrix(m, &format!("{prefix}.weight"), e, s.d)?,
        }
    };
    Ok(RouterW { router })
}

impl<'a> MfEngine<'a> {
    /// Bind the weights of `m` (no copy) and allocate every buffer for up to
    /// `max_context` positions.
    pub fn new<B: AsRef<[u8]>>(m: &'a Model<B>, max_context: usize) -> Result<Self, String> {
        let s = MfSpec::from_model(m)?;
        if max_context == 0 {
            return Err("the context must hold at least 1 position".into());
        }
        let (d, da, df) = (s.d, s.att_hidden(), s.ffn_hidden);
        let mut blocks = Vec::with_capacity(s.layers);
        for l in 0..s.layers {
            let n = |t: &str| format!("blk.{l}.{t}");
            let experts = |kind: &str, e: usize, rows: usize| -> Result<Vec<MatRef<'a>>, String> {
                (0..e)
                    .map(|i| matrix(m, &format!("blk.{l}.{kind}.{i}.weight"), rows, d))
                    .collect()
            };
            blocks.push(MfBlockW {
                ln1: (
                    vector(m, &n("attn_norm.weight"), d)?,
                    vector(m, &n("attn_norm.bias"), d)?,
                ),
                att_router: router(m, &s, &n("attn_router"), s.att_experts)?,
                kv: if s.shared_kv {
                    None
                } else {
                    Some((
                        matrix(m, &n("attn_k.weight"), da, d)?,
                        vector(m, &n("attn_k.bias"), da)?,
                        matrix(m, &n("attn_v.weight"), da, d)?,
                        vector(m, &n("attn_v.bias"), da)?,
                    ))
                },
                q: experts("attn_q", s.att_experts, da)?,
                o: experts("attn_output_t", s.att_experts, da)?,
                ln2: (
                    vector(m, &n("ffn_norm.weight"), d)?,
                    vector(m, &n("ffn_norm.bias"), d)?,
                ),
                ffn_router: router(m, &s, &n("ffn_router"), s.ffn_experts)?,
                up: experts("ffn_up", s.ffn_experts, df)?,
                down: experts("ffn_down_t", s.ffn_experts, df)?,
            });
        }
        let cache = max_context
            .checked_mul(da)
            .ok_or("context too large for this machine")?;
        let e_max = s.att_experts.max(s.ffn_experts);
        let k_max = s.att_k.max(s.ffn_k);
        Ok(MfEngine {
            spec: s,
            max_context,
            emb: matrix(m, "token_embd.weight", s.vocab, d)?,
            blocks,
            lnf: (
                vector(m, "output_norm.weight", d)?,
                vector(m, "output_norm.bias", d)?,
            ),
            head: matrix(m, "output.weight", s.vocab, d)?,
            keys: (0..s.layers).map(|_| vec![0.0; cache]).collect(),
            values: (0..s.layers)
                .map(|_| {
                    if s.shared_kv {
                        Vec::new()
                    } else {
                        vec![0.0; cache]
                    }
                })
                .collect(),
            len: 0,
            stop: None,
            x: vec![0.0; d],
            h: vec![0.0; d],
            kv_tmp: vec![0.0; 2 * da],
            q: vec![0.0; da],
            att: vec![0.0; da],
            tmp: vec![0.0; d],
            acc: vec![0.0; d],
            u: vec![0.0; df],
            router_scratch: vec![0.0; s.router_hidden],
            probs: vec![0.0; e_max],
            chosen: vec![0; k_max],
            chosen_val: vec![0.0; k_max],
            sb_scratch: vec![0.0; 128],
            logits: vec![0.0; s.vocab],
            usage: (0..s.layers)
                .flat_map(|_| [vec![0u64; s.att_experts], vec![0u64; s.ffn_experts]])
                .collect(),
        })
    }

    /// The architecture.
    pub fn spec(&self) -> MfSpec {
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

    /// Stop each stick-breaking walk once the used stick exceeds `τ` (older keys then
    /// weigh at most `e^{−τ}` in total); `None` (default) walks the whole context.
    pub fn set_stop(&mut self, stop: Option<f32>) {
        self.stop = stop;
    }

    /// Per router (block 0 attention, block 0 FFN, block 1 attention, …): how often each
    /// expert was chosen since the engine was made (or [`MfEngine::clear_usage`]).
    pub fn usage(&self) -> &[Vec<u64>] {
        &self.usage
    }

    /// Zero the usage counters.
    pub fn clear_usage(&mut self) {
        self.usage.iter_mut().for_each(|u| u.fill(0));
    }

    /// Start a new sequence (keeps every buffer).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Route `self.h`: softmax over all experts of router `r`, the top `k` into
    /// `chosen`/`chosen_val` (the gates), counted in `usage[slot]`.
    fn route(&mut self, l: usize, ffn: bool) -> Result<(), String> {
        let ke = |e: crate::kernels::KernelError| e.to_string();
        let b = &self.blocks[l];
        let (r, e, k) = if ffn {
            (&b.ffn_router, self.spec.ffn_experts, self.spec.ffn_k)
        } else {
            (&b.att_router, self.spec.att_experts, self.spec.att_k)
        };
        let probs = &mut self.probs[..e];
        r.router
            .logits(&self.h, 1, &mut self.router_scratch, probs)
            .map_err(ke)?;
        if probs.iter().any(|v| !v.is_finite()) {
            return Err(format!("block {l}: router logits are not finite"));
        }
        softmax(probs);
        top_k(probs, k, &mut self.chosen[..k], &mut self.chosen_val[..k]).map_err(ke)?;
        if self.spec.renormalize {
            let sum: f32 = self.chosen_val[..k].iter().sum();
            if sum > 0.0 {
                self.chosen_val[..k].iter_mut().for_each(|g| *g /= sum);
            }
        }
        let u = &mut self.usage[2 * l + usize::from(ffn)];
        for &c in &self.chosen[..k] {
            u[c as usize] += 1;
        }
        Ok(())
    }

    /// Consume one token; returns the logits for the next one. Errors (never panics) on a
    /// token outside the vocabulary or a full context.
    pub fn step(&mut self, token: u32) -> Result<&[f32], String> {
        let s = self.spec;
        let (d, da, dh, df) = (s.d, s.att_hidden(), s.head_dim, s.ffn_hidden);
        if token as usize >= s.vocab {
            return Err(format!(
                "token {token} is outside the vocabulary of {}",
                s.vocab
            ));
        }
        if self.len >= self.max_context {
            return Err(format!(
                "the context of {} positions is full",
                self.max_context
            ));
        }
        let ke = |e: crate::kernels::KernelError| e.to_string();
        crate::kernels::linear::widen_row(&self.emb, token as usize, &mut self.x);
        let (pos, cap) = (self.len, self.max_context);
        let tc = pos + 1;
        let scale = 1.0 / libm::sqrtf(dh as f32);
        for l in 0..s.layers {
            // ---- attention mixture
            let b = &self.blocks[l];
            layer_norm(&self.x, Some(b.ln1.0), Some(b.ln1.1), EPS, &mut self.h).map_err(ke)?;
            // this token's key/value into the per-head caches
            let (k_src, v_src): (&[f32], Option<&[f32]>) = match &b.kv {
                None => (&self.h, None),
                Some((kw, kb, vw, vb)) => {
                    let (kt, vt) = self.kv_tmp.split_at_mut(da);
                    linear(&self.h, d, 1, kw, Some(kb), kt, da).map_err(ke)?;
                    linear(&self.h, d, 1, vw, Some(vb), vt, da).map_err(ke)?;
                    (&self.kv_tmp[..da], Some(&self.kv_tmp[da..]))
                }
            };
            for hh in 0..s.heads {
                let dst = (hh * cap + pos) * dh;
                self.keys[l][dst..dst + dh].copy_from_slice(&k_src[hh * dh..(hh + 1) * dh]);
                if let Some(v) = v_src {
                    self.values[l][dst..dst + dh].copy_from_slice(&v[hh * dh..(hh + 1) * dh]);
                }
            }
            self.route(l, false)?;
            self.acc.fill(0.0);
            let b = &self.blocks[l];
            for slot in 0..s.att_k {
                let (e, g) = (self.chosen[slot] as usize, self.chosen_val[slot]);
                linear(&self.h, d, 1, &b.q[e], None, &mut self.q, da).map_err(ke)?;
                for hh in 0..s.heads {
                    let base = hh * cap * dh;
                    let keys = &self.keys[l][base..base + tc * dh];
                    let vals = if s.shared_kv {
                        keys
                    } else {
                        &self.values[l][base..base + tc * dh]
                    };
                    stick_breaking(
                        &self.q[hh * dh..(hh + 1) * dh],
                        1,
                        keys,
                        vals,
                        tc,
                        dh,
                        scale,
                        self.stop,
                        &mut self.att[hh * dh..(hh + 1) * dh],
                        None,
                        &mut self.sb_scratch,
                    )
                    .map_err(ke)?;
                }
                matmul_rows(&self.att, da, 1, &b.o[e], &mut self.tmp, d, false).map_err(ke)?;
                for (a, v) in self.acc.iter_mut().zip(&self.tmp) {
                    *a += g * v;
                }
            }
            for (a, v) in self.x.iter_mut().zip(&self.acc) {
                *a += v;
            }
            // ---- FFN mixture
            layer_norm(&self.x, Some(b.ln2.0), Some(b.ln2.1), EPS, &mut self.h).map_err(ke)?;
            self.route(l, true)?;
            self.acc.fill(0.0);
            let b = &self.blocks[l];
            for slot in 0..s.ffn_k {
                let (e, g) = (self.chosen[slot] as usize, self.chosen_val[slot]);
                linear(&self.h, d, 1, &b.up[e], None, &mut self.u, df).map_err(ke)?;
                gelu_tanh(&mut self.u);
                matmul_rows(&self.u, df, 1, &b.down[e], &mut self.tmp, d, false).map_err(ke)?;
                for (a, v) in self.acc.iter_mut().zip(&self.tmp) {
                    *a += g * v;
                }
            }
            for (a, v) in self.x.iter_mut().zip(&self.acc) {
                *a += v;
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
