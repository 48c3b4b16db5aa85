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

use super::runner::{Blocks, Ends, RunHead, Runner};
use super::{layernorm_block, not_family, Bind};
use crate::arch::{Act, Family, FfnKind, FfnSpec, MixerSpec, Role, RouterKind};
use crate::error::Error;
use crate::kernels::attention::stick_breaking;
use crate::kernels::elementwise::{layer_norm, softmax};
use crate::kernels::expert_ffn::{moe_ffn, Expert, FfnScratch};
use crate::kernels::linear::{linear, linear_row, matmul_rows, MatRef, QuantizedRow};
use crate::kernels::routing::{top_k, Dispatch, Router};
use crate::model::Model;
use crate::ModelDesc;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Shape of a ModuleFormer LM read from the file's `modula.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// SortedNet: nested expert counts the file declares (ascending, 0-padded).
    pub nested_experts: [u32; 8],
    /// Epsilon of the LayerNorms (`modula.norm_epsilon`).
    pub eps: f32,
    /// FFN expert activation (`modula.activation`).
    pub act: Act,
}

impl MfSpec {
    /// Read and check the architecture metadata (through the one loader,
    /// [`ModelDesc::from_model`]).
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, Error> {
        Self::from_desc(&ModelDesc::from_model(m)?)
    }

    /// The ModuleFormer decoder's view of a description.
    pub fn from_desc(desc: &ModelDesc) -> Result<Self, Error> {
        let b = layernorm_block(desc, Family::ModuleFormer, "ModuleFormer")?;
        let not = || not_family(desc, "ModuleFormer");
        let (
            MixerSpec::StickBreaking(a),
            Some((
                _,
                FfnSpec {
                    width,
                    act,
                    kind: FfnKind::Moe { experts, top_k, .. },
                    ..
                },
            )),
        ) = (b.mixer, b.ffn)
        else {
            return Err(not());
        };
        let mut s = MfSpec {
            vocab: desc.vocab(),
            d: desc.d,
            layers: desc.layers(),
            att_experts: a.experts,
            att_k: a.top_k,
            heads: a.heads,
            head_dim: a.head_dim,
            shared_kv: a.shared_kv,
            ffn_experts: experts,
            ffn_k: top_k,
            ffn_hidden: width,
            router_hidden: match a.router {
                RouterKind::Mlp { hidden } => hidden,
                _ => 0,
            },
            renormalize: a.renormalize,
            nested_experts: [0; 8],
            eps: b.norm.eps,
            act,
        };
        for (i, &c) in desc
            .nesting
            .experts
            .iter()
            .filter(|&&c| c < experts)
            .take(8)
            .enumerate()
        {
            s.nested_experts[i] = c as u32;
        }
        Ok(s)
    }

    /// The nested expert counts the file declares, ascending, ending with all experts.
    pub fn nested_expert_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .nested_experts
            .iter()
            .map(|&c| c as usize)
            .filter(|&c| c > 0 && c < self.ffn_experts)
            .collect();
        v.sort_unstable();
        v.push(self.ffn_experts);
        v
    }

    /// Attention width of one expert.
    pub fn att_hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The exact heap an engine for this model holds at `ctx` positions
    /// ([`MfEngine::new`]; nested expert counts share it, so it does not depend on the
    /// size): the key/value caches, the work buffers, and the per-block tables (expert
    /// views, usage counters, the routers' rankings). Checked against a built engine by a
    /// byte-counting allocator (`train/tests/engine_no_alloc.rs`).
    pub fn plan(&self, ctx: usize) -> Result<super::ArenaPlan, Error> {
        use core::mem::size_of;
        if ctx == 0 {
            return Err(Error::input("the context must hold at least 1 position"));
        }
        let (l, d, da) = (self.layers, self.d, self.att_hidden());
        let (ea, ef) = (self.att_experts, self.ffn_experts);
        let e_max = ea.max(ef);
        let k_max = self.att_k.max(self.ffn_k);
        let rank_w = (k_max + LOOKAHEAD).min(e_max);
        let caches = if self.shared_kv { 1 } else { 2 };
        let f = size_of::<f32>();
        let work = f
            * (5 * d
                + 2 * da
                + 2 * da
                + self.ffn_hidden
                + self.router_hidden
                + e_max
                + 2 * k_max
                + 128
                + self.vocab
                + rank_w)
            + QuantizedRow::heap_bytes(d);
        let tables = l * size_of::<MfBlockW<'_>>()
            + l * (2 * ef + 2 * ea) * size_of::<MatRef<'_>>()
            + l * ef * size_of::<Expert<'_>>()
            + 2 * l * size_of::<Vec<f32>>()
            + 2 * l * size_of::<Vec<u64>>()
            + l * (ea + ef) * size_of::<u64>()
            + 2 * l * rank_w * size_of::<u32>()
            + 2 * l * size_of::<usize>();
        Ok(super::ArenaPlan {
            kv_cache: (caches * l * ctx * da * f) as u64,
            work: work as u64,
            gates: 0,
            tables: tables as u64,
        })
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
    /// The FFN experts for the grouped kernel (prefill).
    experts: Vec<Expert<'a>>,
}

/// A ModuleFormer LM ready to decode, borrowing its weights from a [`Model`].
#[derive(Debug)]
pub struct MfEngine<'a> {
    r: Runner<'a, MfBlocks<'a>>,
}

/// The blocks of a ModuleFormer LM for the [`Runner`]: weights, per-layer key/value
/// caches, the routers' counters and rankings, and the step's buffers.
#[derive(Debug)]
struct MfBlocks<'a> {
    spec: MfSpec,
    max_context: usize,
    blocks: Vec<MfBlockW<'a>>,
    /// Per layer: keys `[heads][max_context][head_dim]` (= the values when shared).
    keys: Vec<Vec<f32>>,
    /// Per layer: values (empty when K = V).
    values: Vec<Vec<f32>>,
    stop: Option<f32>,
    /// `h` quantised to Q8_0 once per sub-layer, for the router and the chosen experts.
    hq: QuantizedRow,
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
    /// Per router (block-major, attention then FFN): times each expert was chosen.
    usage: Vec<Vec<u64>>,
    /// Experts in use per mixture (attention, FFN): all, or a nested prefix.
    active: (usize, usize),
    /// Per router, for the last decoded token: the experts ranked by router probability,
    /// the chosen `k` first, then up to [`LOOKAHEAD`] runners-up (`rank_w` per router).
    ranked: Vec<u32>,
    ranked_len: Vec<usize>,
    rank_w: usize,
    rank_val: Vec<f32>,
}

/// Runners-up kept per router after the chosen experts: the experts an expert pager
/// prefetches (the likeliest next choices).
pub const LOOKAHEAD: usize = 2;

/// The router restricted to its first `e` experts (rows of its output layer).
fn restrict<'a>(r: &Router<'a>, e: usize) -> Result<Router<'a>, crate::kernels::KernelError> {
    Ok(match *r {
        Router::Linear { w } => Router::Linear {
            w: w.prefix(e, w.cols())?,
        },
        Router::Mlp { w1, b1, w2 } => Router::Mlp {
            w1,
            b1,
            w2: w2.prefix(e, w2.cols())?,
        },
    })
}

/// Router `out` of block `l` (with its hidden layer `hid` in an MLP router), restricted
/// later to the experts in use.
fn router<'a, B: AsRef<[u8]>>(
    t: &Bind<'a, B>,
    s: &MfSpec,
    l: usize,
    (hid, hid_b, out): (Role, Role, Role),
) -> Result<RouterW<'a>, Error> {
    let at = Some(l);
    let router = if s.router_hidden > 0 {
        Router::Mlp {
            w1: t.mat(hid, at)?,
            b1: t.vector(hid_b, at)?,
            w2: t.mat(out, at)?,
        }
    } else {
        Router::Linear { w: t.mat(out, at)? }
    };
    Ok(RouterW { router })
}

impl<'a> MfEngine<'a> {
    /// Bind the weights of `m` (no copy) and allocate every buffer for up to
    /// `max_context` positions.
    pub fn new<B: AsRef<[u8]>>(m: &'a Model<B>, max_context: usize) -> Result<Self, Error> {
        // the description once: the spec and the tensor table both come from it
        let desc = ModelDesc::from_model(m)?;
        let s = MfSpec::from_desc(&desc)?;
        if max_context == 0 {
            return Err(Error::input("the context must hold at least 1 position"));
        }
        let (d, da, df) = (s.d, s.att_hidden(), s.ffn_hidden);
        let t = Bind::new(m, &desc)?;
        drop(desc);
        let mut blocks = Vec::with_capacity(s.layers);
        for l in 0..s.layers {
            let at = Some(l);
            let experts = |role: Role, e: usize| -> Result<Vec<MatRef<'a>>, Error> {
                (0..e).map(|i| Ok(t.matrix(role, at, Some(i))?.0)).collect()
            };
            let up = experts(Role::FfnUp, s.ffn_experts)?;
            let down = experts(Role::FfnDown, s.ffn_experts)?;
            let grouped = up
                .iter()
                .zip(&down)
                .map(|(u, w)| Expert::new(*u, *w).map_err(Error::from))
                .collect::<Result<Vec<_>, _>>()?;
            blocks.push(MfBlockW {
                ln1: t.norm(Role::AttnNorm, Role::AttnNormBias, at)?,
                att_router: router(
                    &t,
                    &s,
                    l,
                    (
                        Role::AttnRouterHidden,
                        Role::AttnRouterHiddenBias,
                        Role::AttnRouter,
                    ),
                )?,
                kv: if s.shared_kv {
                    None
                } else {
                    Some((
                        t.mat(Role::AttnK, at)?,
                        t.vector(Role::AttnKBias, at)?,
                        t.mat(Role::AttnV, at)?,
                        t.vector(Role::AttnVBias, at)?,
                    ))
                },
                q: experts(Role::ExpertQ, s.att_experts)?,
                o: experts(Role::ExpertOut, s.att_experts)?,
                ln2: t.norm(Role::FfnNorm, Role::FfnNormBias, at)?,
                ffn_router: router(
                    &t,
                    &s,
                    l,
                    (Role::RouterHidden, Role::RouterHiddenBias, Role::Router),
                )?,
                up,
                down,
                experts: grouped,
            });
        }
        let cache = max_context
            .checked_mul(da)
            .ok_or_else(|| Error::input("context too large for this machine"))?;
        let e_max = s.att_experts.max(s.ffn_experts);
        let k_max = s.att_k.max(s.ffn_k);
        let ends = Ends {
            vocab: s.vocab,
            d,
            emb: t.mat(Role::TokenEmbd, None)?,
            pos: None,
            scale: None,
            norm: Some(t.final_norm()?),
            eps: s.eps,
            head: RunHead::Lm(t.mat(Role::Output, None)?),
        };
        let b = MfBlocks {
            spec: s,
            max_context,
            blocks,
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
            stop: None,
            hq: QuantizedRow::with_len(d),
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
            usage: (0..s.layers)
                .flat_map(|_| [vec![0u64; s.att_experts], vec![0u64; s.ffn_experts]])
                .collect(),
            active: (s.att_experts, s.ffn_experts),
            ranked: vec![0; 2 * s.layers * (k_max + LOOKAHEAD).min(e_max)],
            ranked_len: vec![0; 2 * s.layers],
            rank_w: (k_max + LOOKAHEAD).min(e_max),
            rank_val: vec![0.0; (k_max + LOOKAHEAD).min(e_max)],
        };
        Ok(MfEngine {
            r: Runner::new(ends, b, max_context, FfnScratch::default()),
        })
    }

    /// The heap this engine holds, from its buffers' capacities (equal to
    /// [`MfSpec::plan`] at its context).
    pub fn arena_bytes(&self) -> super::ArenaPlan {
        use core::mem::size_of;
        let f4 = |v: &Vec<f32>| (v.capacity() * size_of::<f32>()) as u64;
        let b = &self.r.blocks;
        let kv: u64 = b.keys.iter().chain(&b.values).map(f4).sum();
        let work = self.r.heap_bytes()
            + [
                &b.kv_tmp,
                &b.q,
                &b.att,
                &b.tmp,
                &b.acc,
                &b.u,
                &b.router_scratch,
                &b.probs,
                &b.chosen_val,
                &b.sb_scratch,
                &b.rank_val,
            ]
            .into_iter()
            .map(f4)
            .sum::<u64>()
            + (b.chosen.capacity() * size_of::<u32>()) as u64
            + b.hq.capacity_bytes() as u64;
        let blocks: usize = b
            .blocks
            .iter()
            .map(|b| {
                (b.up.capacity() + b.down.capacity() + b.q.capacity() + b.o.capacity())
                    * size_of::<MatRef<'_>>()
                    + b.experts.capacity() * size_of::<Expert<'_>>()
            })
            .sum();
        let tables = b.blocks.capacity() * size_of::<MfBlockW<'_>>()
            + blocks
            + (b.keys.capacity() + b.values.capacity()) * size_of::<Vec<f32>>()
            + b.usage.capacity() * size_of::<Vec<u64>>()
            + b.usage
                .iter()
                .map(|u| u.capacity() * size_of::<u64>())
                .sum::<usize>()
            + b.ranked.capacity() * size_of::<u32>()
            + b.ranked_len.capacity() * size_of::<usize>();
        super::ArenaPlan {
            kv_cache: kv,
            work,
            gates: 0,
            tables: tables as u64,
        }
    }

    /// For the last decoded token ([`MfEngine::step`]), router `slot` (block-major,
    /// attention then FFN): the chosen experts first, then up to [`LOOKAHEAD`] runners-up
    /// by router probability. Empty before the first step and after a batched prefill.
    pub fn ranked(&self, slot: usize) -> &[u32] {
        let b = &self.r.blocks;
        let w = b.rank_w;
        &b.ranked[slot * w..slot * w + b.ranked_len[slot]]
    }

    /// The architecture.
    pub fn spec(&self) -> MfSpec {
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

    /// Stop each stick-breaking walk once the used stick exceeds `τ` (older keys then
    /// weigh at most `e^{−τ}` in total); `None` (default) walks the whole context.
    pub fn set_stop(&mut self, stop: Option<f32>) {
        self.r.blocks.stop = stop;
    }

    /// Per router (block 0 attention, block 0 FFN, block 1 attention, …): how often each
    /// expert was chosen since the engine was made (or [`MfEngine::clear_usage`]).
    pub fn usage(&self) -> &[Vec<u64>] {
        &self.r.blocks.usage
    }

    /// Zero the usage counters.
    pub fn clear_usage(&mut self) {
        self.r.blocks.usage.iter_mut().for_each(|u| u.fill(0));
    }

    /// Start a new sequence (keeps every buffer).
    pub fn reset(&mut self) {
        self.r.reset();
    }

    /// Run the nested sub-model with the first `(attention, FFN)` experts of every mixture
    /// (routers restricted to them: the softmax and top-k run over those rows of the
    /// routers' output layers), from the next request on; `None`: all experts. Nothing is
    /// loaded, copied or allocated; the pages of the other experts are never touched.
    /// Starts a new sequence.
    pub fn set_submodel(&mut self, experts: Option<(usize, usize)>) -> Result<(), Error> {
        let s = self.r.blocks.spec;
        let (ea, ef) = experts.unwrap_or((s.att_experts, s.ffn_experts));
        if ea < s.att_k || ea > s.att_experts || ef < s.ffn_k || ef > s.ffn_experts {
            return Err(Error::input(format!(
                "sub-model of {ea} attention / {ef} FFN experts is outside {}..={} / {}..={}",
                s.att_k, s.att_experts, s.ffn_k, s.ffn_experts
            )));
        }
        self.r.blocks.active = (ea, ef);
        self.reset();
        Ok(())
    }

    /// Experts in use per mixture (attention, FFN).
    pub fn submodel(&self) -> (usize, usize) {
        self.r.blocks.active
    }
}

impl MfBlocks<'_> {
    /// Route the normed row `h` (`hq`: it quantised): softmax over all experts of router
    /// `r`, the top `k` into `chosen`/`chosen_val` (the gates), counted in `usage[slot]`.
    fn route(&mut self, l: usize, ffn: bool, h: &[f32]) -> Result<(), Error> {
        let b = &self.blocks[l];
        let (r, e, k) = if ffn {
            (&b.ffn_router, self.active.1, self.spec.ffn_k)
        } else {
            (&b.att_router, self.active.0, self.spec.att_k)
        };
        let router = restrict(&r.router, e)?;
        let probs = &mut self.probs[..e];
        router.logits_row(h, &self.hq, &mut self.router_scratch, probs)?;
        if probs.iter().any(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "block {l}: router logits are not finite"
            )));
        }
        softmax(probs);
        top_k(probs, k, &mut self.chosen[..k], &mut self.chosen_val[..k])?;
        if self.spec.renormalize {
            let sum: f32 = self.chosen_val[..k].iter().sum();
            if sum > 0.0 {
                self.chosen_val[..k].iter_mut().for_each(|g| *g /= sum);
            }
        }
        let slot = 2 * l + usize::from(ffn);
        let u = &mut self.usage[slot];
        for &c in &self.chosen[..k] {
            u[c as usize] += 1;
        }
        // the ranking for an expert pager: the chosen ones, then the likeliest others
        let r = (k + LOOKAHEAD).min(e).min(self.rank_w);
        let w = self.rank_w;
        top_k(
            probs,
            r,
            &mut self.ranked[slot * w..slot * w + r],
            &mut self.rank_val[..r],
        )?;
        self.ranked_len[slot] = r;
        Ok(())
    }

    /// Route `h: [n, d]` with router `r` of block `l`: the chosen experts and gates
    /// (`[n, k]` each), counted in the usage table.
    fn route_batch(
        &mut self,
        l: usize,
        ffn: bool,
        h: &[f32],
        n: usize,
    ) -> Result<(Vec<u32>, Vec<f32>), Error> {
        let s = self.spec;
        let b = &self.blocks[l];
        let (r, e, k) = if ffn {
            (&b.ffn_router, self.active.1, s.ffn_k)
        } else {
            (&b.att_router, self.active.0, s.att_k)
        };
        let router = restrict(&r.router, e)?;
        let mut scratch = vec![0f32; router.scratch_len(n)];
        let mut logits = vec![0f32; n * e];
        router.logits(h, n, &mut scratch, &mut logits)?;
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "block {l}: router logits are not finite"
            )));
        }
        let (mut chosen, mut gates) = (vec![0u32; n * k], vec![0f32; n * k]);
        for t in 0..n {
            let row = &mut logits[t * e..(t + 1) * e];
            softmax(row);
            let (c, g) = (
                &mut chosen[t * k..(t + 1) * k],
                &mut gates[t * k..(t + 1) * k],
            );
            top_k(row, k, c, g)?;
            if s.renormalize {
                let sum: f32 = g.iter().sum();
                if sum > 0.0 {
                    g.iter_mut().for_each(|v| *v /= sum);
                }
            }
        }
        let u = &mut self.usage[2 * l + usize::from(ffn)];
        for &c in &chosen {
            u[c as usize] += 1;
        }
        Ok((chosen, gates))
    }

    /// Block `l` over a prompt's rows (`n` > 1): every projection a product over the rows,
    /// experts grouped.
    #[allow(clippy::too_many_arguments)]
    fn prefill_block(
        &mut self,
        l: usize,
        pos: usize,
        n: usize,
        x: &mut [f32],
        h: &mut [f32],
        ffn_scratch: &mut FfnScratch,
    ) -> Result<(), Error> {
        let s = self.spec;
        let (d, da, dh, cap) = (s.d, s.att_hidden(), s.head_dim, self.max_context);
        let tc = pos + n;
        let scale = 1.0 / libm::sqrtf(dh as f32);
        let ln = |x: &[f32], g: (&[f32], &[f32]), h: &mut [f32]| -> Result<(), Error> {
            for (xr, hr) in x.chunks_exact(d).zip(h.chunks_exact_mut(d)) {
                layer_norm(xr, Some(g.0), Some(g.1), s.eps, hr)?;
            }
            Ok(())
        };
        ln(x, self.blocks[l].ln1, h)?;
        // keys/values of the new positions into the per-head caches
        let kv = match &self.blocks[l].kv {
            None => None,
            Some((kw, kb, vw, vb)) => {
                let (mut k, mut v) = (vec![0f32; n * da], vec![0f32; n * da]);
                linear(h, d, n, kw, Some(kb), &mut k, da)?;
                linear(h, d, n, vw, Some(vb), &mut v, da)?;
                Some((k, v))
            }
        };
        for i in 0..n {
            for hh in 0..s.heads {
                let dst = (hh * cap + pos + i) * dh;
                let src = i * da + hh * dh;
                match &kv {
                    None => self.keys[l][dst..dst + dh].copy_from_slice(&h[src..src + dh]),
                    Some((k, v)) => {
                        self.keys[l][dst..dst + dh].copy_from_slice(&k[src..src + dh]);
                        self.values[l][dst..dst + dh].copy_from_slice(&v[src..src + dh]);
                    }
                }
            }
        }
        // attention mixture: queries per (token, slot) by expert, attend per slot and
        // head over the cache, output projections by expert, gated
        let ka = s.att_k;
        let (chosen, gates) = self.route_batch(l, false, h, n)?;
        let disp = Dispatch::new(&chosen, self.active.0)?;
        let b = &self.blocks[l];
        let mut q = vec![0f32; n * ka * da];
        for e in 0..self.active.0 {
            let pairs = disp.pairs(e);
            if pairs.is_empty() {
                continue;
            }
            let mut xe = Vec::with_capacity(pairs.len() * d);
            for &p in pairs {
                let t = p as usize / ka;
                xe.extend_from_slice(&h[t * d..(t + 1) * d]);
            }
            let mut qe = vec![0f32; pairs.len() * da];
            linear(&xe, d, pairs.len(), &b.q[e], None, &mut qe, da)?;
            for (r, &p) in pairs.iter().enumerate() {
                let p = p as usize;
                q[p * da..(p + 1) * da].copy_from_slice(&qe[r * da..(r + 1) * da]);
            }
        }
        let mut o = vec![0f32; n * ka * da];
        let (mut qs, mut os) = (vec![0f32; n * dh], vec![0f32; n * dh]);
        for slot in 0..ka {
            for hh in 0..s.heads {
                for i in 0..n {
                    let src = (i * ka + slot) * da + hh * dh;
                    qs[i * dh..(i + 1) * dh].copy_from_slice(&q[src..src + dh]);
                }
                let base = hh * cap * dh;
                let keys = &self.keys[l][base..base + tc * dh];
                let vals = if s.shared_kv {
                    keys
                } else {
                    &self.values[l][base..base + tc * dh]
                };
                stick_breaking(
                    &qs,
                    n,
                    keys,
                    vals,
                    tc,
                    dh,
                    scale,
                    self.stop,
                    &mut os,
                    None,
                    &mut self.sb_scratch,
                )?;
                for i in 0..n {
                    let dst = (i * ka + slot) * da + hh * dh;
                    o[dst..dst + dh].copy_from_slice(&os[i * dh..(i + 1) * dh]);
                }
            }
        }
        for e in 0..self.active.0 {
            let pairs = disp.pairs(e);
            if pairs.is_empty() {
                continue;
            }
            let mut oe = Vec::with_capacity(pairs.len() * da);
            for &p in pairs {
                let p = p as usize;
                oe.extend_from_slice(&o[p * da..(p + 1) * da]);
            }
            let mut ye = vec![0f32; pairs.len() * d];
            matmul_rows(&oe, da, pairs.len(), &b.o[e], &mut ye, d, false)?;
            for (r, &p) in pairs.iter().enumerate() {
                let (p, t) = (p as usize, p as usize / ka);
                let g = gates[p];
                for (xv, yv) in x[t * d..(t + 1) * d]
                    .iter_mut()
                    .zip(&ye[r * d..(r + 1) * d])
                {
                    *xv += g * yv;
                }
            }
        }
        // FFN mixture (the grouped expert kernel)
        ln(x, self.blocks[l].ln2, h)?;
        let (chosen, gates) = self.route_batch(l, true, h, n)?;
        let mut y = vec![0f32; n * d];
        moe_ffn(
            h,
            n,
            &self.blocks[l].experts[..self.active.1],
            &chosen,
            &gates,
            s.act,
            &mut y,
            ffn_scratch,
        )?;
        for (xv, yv) in x.iter_mut().zip(&y) {
            *xv += yv;
        }
        Ok(())
    }

    /// Block `l` for one token at `pos` (the decode step): the normed row quantised once
    /// for the router and the chosen experts. Allocates nothing.
    fn step_block(
        &mut self,
        l: usize,
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
    ) -> Result<(), Error> {
        let s = self.spec;
        let (d, da, dh, df) = (s.d, s.att_hidden(), s.head_dim, s.ffn_hidden);
        let cap = self.max_context;
        let tc = pos + 1;
        let scale = 1.0 / libm::sqrtf(dh as f32);
        // ---- attention mixture
        let b = &self.blocks[l];
        layer_norm(x, Some(b.ln1.0), Some(b.ln1.1), s.eps, h)?;
        // quantised once for the router and the chosen experts (as each product would)
        self.hq.set(h);
        // this token's key/value into the per-head caches
        let (k_src, v_src): (&[f32], Option<&[f32]>) = match &b.kv {
            None => (&*h, None),
            Some((kw, kb, vw, vb)) => {
                let (kt, vt) = self.kv_tmp.split_at_mut(da);
                linear(h, d, 1, kw, Some(kb), kt, da)?;
                linear(h, d, 1, vw, Some(vb), vt, da)?;
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
        self.route(l, false, h)?;
        self.acc.fill(0.0);
        let b = &self.blocks[l];
        for slot in 0..s.att_k {
            let (e, g) = (self.chosen[slot] as usize, self.chosen_val[slot]);
            linear_row(h, &self.hq, &b.q[e], None, &mut self.q[..da])?;
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
                )?;
            }
            matmul_rows(&self.att, da, 1, &b.o[e], &mut self.tmp, d, false)?;
            for (a, v) in self.acc.iter_mut().zip(&self.tmp) {
                *a += g * v;
            }
        }
        for (a, v) in x.iter_mut().zip(&self.acc) {
            *a += v;
        }
        // ---- FFN mixture
        layer_norm(x, Some(b.ln2.0), Some(b.ln2.1), s.eps, h)?;
        self.hq.set(h);
        self.route(l, true, h)?;
        self.acc.fill(0.0);
        let b = &self.blocks[l];
        for slot in 0..s.ffn_k {
            let (e, g) = (self.chosen[slot] as usize, self.chosen_val[slot]);
            linear_row(h, &self.hq, &b.up[e], None, &mut self.u[..df])?;
            s.act.apply(&mut self.u);
            matmul_rows(&self.u, df, 1, &b.down[e], &mut self.tmp, d, false)?;
            for (a, v) in self.acc.iter_mut().zip(&self.tmp) {
                *a += g * v;
            }
        }
        for (a, v) in x.iter_mut().zip(&self.acc) {
            *a += v;
        }
        Ok(())
    }
}

impl Blocks for MfBlocks<'_> {
    type Work = FfnScratch;

    fn work(&self, _n: usize) -> FfnScratch {
        FfnScratch::default()
    }

    fn depth(&self) -> usize {
        self.spec.layers
    }

    /// The caches are written position by position, so a new sequence overwrites them.
    fn reset(&mut self) {}

    fn run(
        &mut self,
        l: usize,
        tokens: &[u32],
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
        w: &mut FfnScratch,
    ) -> Result<(), Error> {
        match tokens.len() {
            1 => self.step_block(l, pos, x, h),
            n => self.prefill_block(l, pos, n, x, h, w),
        }
    }
}

impl MfEngine<'_> {
    /// Consume a prompt in one pass (every block processes all its positions with matrix
    /// products, experts grouped); returns the logits after the last token — the same as
    /// calling [`MfEngine::step`] for each token, faster. Allocates its work buffers (the
    /// decode loop does not).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.r.prefill(tokens)
    }

    /// Consume one token; returns the logits for the next one. Errors (never panics) on a
    /// token outside the vocabulary or a full context.
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.r.step(token)
    }
}
