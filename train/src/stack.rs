//! The trainer's block stack: a model's blocks are residual sub-layers (`x ← x + f(norm(x))`)
//! behind one interface, [`Layer`], bound by tensor *role* from `modula-core`'s block
//! specs ([`modula_core::arch::BlockSpec`]) and tensor table
//! ([`modula_core::arch::TensorSpec`]): the same description the engine and the file
//! loader read. A model keeps only what is its own (embedding, final norm, head, loss); the
//! blocks in between are a [`Stack`].
//!
//! Sub-layers: softmax multi-head attention ([`Attention`]), a feed-forward layer
//! ([`Ffn`]: dense, or EMoE — the same weights with avg-k expert masks over row blocks),
//! and a mixture of expert FFNs ([`Moe`], the top-k gate of m2mKD's students). The dense
//! model, its EMoE and SortedNet forms, and every m2mKD network (teacher, meta model,
//! students) run on it.
//!
//! The methods work on roles and prefixes, not on models: SortedNet nesting is an active
//! prefix per dimension ([`Run::heads`], [`Run::ffn`], the depth given to
//! [`Stack::forward`]); EMoE splits the rows of the tensors with roles `FfnUp`/`FfnDown`.
//! Every backward is the hand-derived one that was tested against finite differences;
//! each accumulates into the parameter gradients, and can skip them (a frozen sub-layer
//! only passes gradients through).

use crate::compute::{linear, matmul_rows, matmul_tn_acc};
use crate::layers::activation::{activation_backward, activation_forward};
use crate::layers::linear::linear_forward;
use crate::layers::mha::{
    linear_backward_maybe, mha_backward, mha_forward, MhaIdx, MhaSaved, MhaShape,
};
use crate::layers::norm::{layernorm_backward, layernorm_forward};
use crate::layers::router::gate_backward;
use crate::params::{ParamSpec, ParamStore};
use modula_core::arch::{
    Act, AttnLayout, BlockSpec, FfnKind, Layout, MixerSpec, NormKind, NormSpec, Role, TensorSpec,
};
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::par;
use modula_core::kernels::routing::top_k;
use modula_core::rng::SplitMix64;
use modula_core::Error;

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// The rows going through the stack: `b` sequences of `t` positions, residual width `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub t: usize,
    /// Residual width.
    pub d: usize,
}

impl Rows {
    /// Rows in all (`b·t`).
    pub fn n(&self) -> usize {
        self.b * self.t
    }
}

/// EMoE's training options of the published Tutel path (see [`crate::model::dense`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EmoeRun {
    /// Gaussian noise of std `noise / experts` on the gate scores (only with a seed).
    pub noise: f32,
    /// This step's noise seed (`None`: no noise; evaluation).
    pub noise_seed: Option<u64>,
    /// Capacity factor (0: none).
    pub capacity: f32,
    /// Weight of the auxiliary load-balancing loss (0: off).
    pub aux: f32,
}

/// What one forward runs: SortedNet prefixes, EMoE masking, test hooks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run<'a> {
    /// Attention heads that run (the first `h`; `None`: all).
    pub heads: Option<usize>,
    /// FFN hidden units that run (the first `f`; `None`: all).
    pub ffn: Option<usize>,
    /// EMoE layers apply their top-k masks with these options (`None`: they run densely —
    /// "merged back").
    pub emoe: Option<EmoeRun>,
    /// Fixed expert choices `[n·k]` per block index for mixture layers (a gradient check
    /// holds the piecewise-constant choices fixed).
    pub forced: &'a [(usize, Vec<u32>)],
    /// Rows that are real tokens, not padding (`[n]`; SeqBoat layers zero the others'
    /// inputs and never activate them).
    pub keep: &'a [bool],
    /// SeqBoat's inference-time bias towards "skip" (0 in training).
    pub act_bias: f32,
    /// Experts in use per mixture (ModuleFormer's nested prefix: attention, FFN; `None`:
    /// all).
    pub experts: Option<(usize, usize)>,
    /// Fixed SeqBoat activation decisions per block (`[n]` each; empty: the gate's).
    pub forced_act: &'a [Vec<bool>],
}

/// What a backward does besides passing the gradient to the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grads {
    /// Accumulate parameter gradients (false: a frozen sub-layer).
    pub params: bool,
    /// Scale of the auxiliary losses' gradients (the factor the loss gradient was scaled
    /// by, for gradient accumulation).
    pub aux_scale: f32,
}

impl Default for Grads {
    fn default() -> Self {
        Grads {
            params: true,
            aux_scale: 1.0,
        }
    }
}

/// One residual sub-layer: `x ← x + f(x)` with its norm inside.
pub trait Layer {
    /// Forward over `x: [n, d]` in place; returns what the backward needs besides the
    /// input (which the [`Stack`] keeps).
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error>;
    /// Backward: `dx` holds the gradient of the output and becomes the gradient of the
    /// input `x_in`; parameter gradients accumulate when `g.params`.
    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error>;
}

/// A LayerNorm's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norm {
    /// γ `[d]`.
    pub g: usize,
    /// β `[d]`.
    pub b: usize,
    /// ε.
    pub eps: f32,
}

/// LayerNorm output and statistics.
#[derive(Clone, Debug, Default)]
pub struct NormSaved {
    /// Normed rows `[n, w]`.
    pub y: Vec<f32>,
    pub(crate) mu: Vec<f32>,
    pub(crate) rs: Vec<f32>,
}

impl Norm {
    /// Forward over `x: [n, w]`.
    pub fn forward(
        &self,
        p: &ParamStore,
        x: &[f32],
        n: usize,
        w: usize,
    ) -> Result<NormSaved, Error> {
        let mut s = NormSaved {
            y: vec![0f32; n * w],
            mu: vec![0f32; n],
            rs: vec![0f32; n],
        };
        layernorm_forward(
            x,
            n,
            w,
            p.value(self.g),
            p.value(self.b),
            self.eps,
            &mut s.y,
            &mut s.mu,
            &mut s.rs,
        )?;
        Ok(s)
    }

    /// Backward: `dx += LN'(dy)` for the input `x`; γ/β gradients when `pg`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &mut ParamStore,
        s: &NormSaved,
        x: &[f32],
        n: usize,
        w: usize,
        dy: &[f32],
        dx: &mut [f32],
        pg: bool,
    ) {
        let (mut dg, mut db) = (vec![0f32; w], vec![0f32; w]);
        layernorm_backward(
            dy,
            x,
            n,
            w,
            p.value(self.g),
            &s.mu,
            &s.rs,
            dx,
            &mut dg,
            &mut db,
        );
        if pg {
            add(p.grad_mut(self.g), &dg);
            add(p.grad_mut(self.b), &db);
        }
    }
}

/// A linear layer `[out, in]` with an optional bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lin {
    /// Weight.
    pub w: usize,
    /// Bias.
    pub b: Option<usize>,
}

// ---------------------------------------------------------------------------------------
// attention

/// Pre-LN multi-head softmax attention with a fused QKV projection
/// ([`crate::layers::mha`]).
#[derive(Clone, Copy, Debug)]
pub struct Attention {
    /// Parameters.
    pub idx: MhaIdx,
    /// Heads.
    pub heads: usize,
    /// Causal mask.
    pub causal: bool,
}

impl Attention {
    fn shape(&self, r: Rows, run: &Run<'_>) -> MhaShape {
        MhaShape {
            b: r.b,
            t: r.t,
            d: r.d,
            heads: self.heads,
            active: run.heads.unwrap_or(self.heads),
            causal: self.causal,
        }
    }
}

impl Layer for Attention {
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error> {
        let s = self.shape(r, run);
        Ok(Saved::Attention(mha_forward(p, &self.idx, s, x)?, s.active))
    }

    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let Saved::Attention(s, active) = saved else {
            return Err(Error::input(
                "attention backward: saved activations of another layer",
            ));
        };
        let mut shape = self.shape(r, &Run::default());
        shape.active = *active;
        mha_backward(p, &self.idx, shape, s, x_in, dx, g.params)
    }
}

// ---------------------------------------------------------------------------------------
// feed-forward (dense and EMoE)

/// The down projection of an FFN, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Down {
    /// Weight: `[d, ffn]` ([`Layout::OutIn`]) or `[ffn, d]` ([`Layout::InOut`], so a
    /// nested width is a row prefix).
    pub w: usize,
    /// Bias `[d]`.
    pub b: Option<usize>,
    /// Stored layout.
    pub layout: Layout,
}

/// A pre-LN feed-forward sub-layer `x ← x + down(act(up(LN(x))))`; with `emoe`, the
/// hidden units are `experts` row blocks of which the top-k by avg-k gates (the mean key
/// of each block) are kept per token.
#[derive(Clone, Copy, Debug)]
pub struct Ffn {
    /// Block index (seeds EMoE's routing noise).
    pub block: usize,
    /// Norm before it.
    pub norm: Norm,
    /// Up projection `[ffn, d]` (rows are the keys).
    pub up: Lin,
    /// Down projection.
    pub down: Down,
    /// Activation.
    pub act: Act,
    /// Hidden width.
    pub width: usize,
    /// EMoE `(experts, top_k)`.
    pub emoe: Option<(usize, usize)>,
}

/// What an FFN forward keeps.
#[derive(Clone, Debug, Default)]
pub struct FfnSaved {
    /// Hidden width that ran.
    pub width: usize,
    norm: NormSaved,
    up: Vec<f32>,
    act: Vec<f32>,
    /// EMoE hidden-unit mask `[n, ffn]` (1 = kept; empty: unmasked).
    pub keep: Vec<f32>,
    /// EMoE experts selected per position `[n, top_k]` (empty: unmasked).
    pub sel: Vec<u32>,
    /// `∂aux/∂(FFN input)` `[n, d]` of EMoE's auxiliary loss (empty when off).
    aux_dh: Vec<f32>,
    /// The weighted auxiliary loss.
    pub aux: f64,
}

/// The avg-k gates of an EMoE layer: `G[e]` = the mean of the keys (rows of `up`,
/// `[experts·m, d]`) of expert `e`, `[experts, d]`.
pub fn emoe_gates(up: &[f32], experts: usize, d: usize) -> Vec<f32> {
    let e_n = experts.max(1);
    let m = up.len() / d.max(1) / e_n;
    let mut g = vec![0f32; e_n * d];
    for (e, ge) in g.chunks_exact_mut(d).enumerate() {
        for row in up[e * m * d..(e + 1) * m * d].chunks_exact(d) {
            add(ge, row);
        }
        let inv = 1.0 / m as f32;
        ge.iter_mut().for_each(|v| *v *= inv);
    }
    g
}

fn normal(rng: &mut SplitMix64) -> f32 {
    crate::model::dense::normal(rng)
}

impl Ffn {
    /// The width a run uses, checked.
    fn active(&self, run: &Run<'_>) -> Result<usize, Error> {
        let f = run.ffn.unwrap_or(self.width);
        if f == 0 || f > self.width {
            return Err(Error::input(format!(
                "FFN width {f} is outside 1..={}",
                self.width
            )));
        }
        if f < self.width && (self.down.layout != Layout::InOut || self.emoe.is_some()) {
            return Err(Error::input(format!(
                "a nested FFN width ({f} of {}) needs the down projection stored [ffn, d] and no EMoE layer",
                self.width
            )));
        }
        Ok(f)
    }

    /// Avg-k routing for FFN inputs `h: [n, d]`: the hidden-unit mask, the chosen experts,
    /// the auxiliary loss's input gradient and its value.
    #[allow(clippy::type_complexity)]
    fn route(
        &self,
        p: &ParamStore,
        (e_n, k): (usize, usize),
        o: EmoeRun,
        h: &[f32],
        n: usize,
        d: usize,
    ) -> Result<(Vec<f32>, Vec<u32>, Vec<f32>, f64), Error> {
        let f = self.width;
        let m = f / e_n;
        let g = emoe_gates(p.value(self.up.w), e_n, d);
        let mut scores = vec![0f32; n * e_n];
        linear(h, d, n, &MatRef::f32(&g, e_n, d)?, None, &mut scores, e_n)?;
        let noisy = o.noise > 0.0 && o.noise_seed.is_some();
        if let (true, Some(seed)) = (o.noise > 0.0, o.noise_seed) {
            let mut rng =
                SplitMix64(seed ^ (self.block as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let std = o.noise / e_n as f32;
            for v in scores.iter_mut() {
                *v += std * normal(&mut rng);
            }
        }
        let mut keep = vec![0f32; n * f];
        let mut sel = vec![0u32; n * k];
        let mut best = vec![0f32; n];
        let mut val = vec![0f32; k];
        for i in 0..n {
            top_k(
                &scores[i * e_n..(i + 1) * e_n],
                k,
                &mut sel[i * k..(i + 1) * k],
                &mut val,
            )?;
            best[i] = val[0];
        }
        // which (token, slot) pairs are kept: all, or up to each expert's capacity
        let mut kept = vec![true; n * k];
        if o.capacity > 0.0 {
            let cap = k * (o.capacity * n.div_ceil(e_n) as f32).floor() as usize;
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| best[b].total_cmp(&best[a]).then(a.cmp(&b)));
            let mut used = vec![0usize; e_n];
            for slot in 0..k {
                for &t in &order {
                    let e = sel[t * k + slot] as usize;
                    if used[e] < cap {
                        used[e] += 1;
                    } else {
                        kept[t * k + slot] = false;
                    }
                }
            }
        }
        for i in 0..n {
            for (slot, &e) in sel[i * k..(i + 1) * k].iter().enumerate() {
                if kept[i * k + slot] {
                    let e = e as usize;
                    keep[i * f + e * m..i * f + (e + 1) * m].fill(1.0);
                }
            }
        }
        // the auxiliary loss (published Tutel path), on the (noisy) scores
        let mut aux_dh = Vec::new();
        let mut aux = 0.0;
        if o.aux > 0.0 {
            let theta: Vec<u32> = (0..n).map(|i| sel[i * k + k - 1]).collect();
            let noise = if noisy { o.noise } else { 0.0 };
            let (v, ds) = crate::emoe::emoe_aux_loss(&scores, n, e_n, &theta, noise, o.aux);
            aux = v;
            aux_dh = vec![0f32; n * d];
            matmul_rows(
                &ds,
                e_n,
                n,
                &MatRef::f32(&g, e_n, d)?,
                &mut aux_dh,
                d,
                false,
            )?;
        }
        Ok((keep, sel, aux_dh, aux))
    }
}

impl Layer for Ffn {
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error> {
        let (d, n) = (r.d, r.n());
        let f = self.active(run)?;
        let norm = self.norm.forward(p, x, n, d)?;
        let mut up = vec![0f32; n * f];
        let ub = self.up.b.map(|b| &p.value(b)[..f]);
        linear_forward(&norm.y, n, &p.value(self.up.w)[..f * d], ub, f, d, &mut up)?;
        let mut act = up.clone();
        activation_forward(self.act, &mut act);
        let mut s = FfnSaved {
            width: f,
            ..FfnSaved::default()
        };
        if let (Some(ek), Some(o)) = (self.emoe, run.emoe) {
            let (keep, sel, aux_dh, aux) = self.route(p, ek, o, &norm.y, n, d)?;
            for (av, kv) in act.iter_mut().zip(&keep) {
                *av *= kv;
            }
            (s.keep, s.sel, s.aux_dh, s.aux) = (keep, sel, aux_dh, aux);
        }
        match self.down.layout {
            Layout::InOut => {
                let mut down = vec![0f32; n * d];
                let w = MatRef::f32(&p.value(self.down.w)[..f * d], f, d)?;
                matmul_rows(&act, f, n, &w, &mut down, d, false)?;
                match self.down.b {
                    Some(b) => {
                        let db = p.value(b);
                        for (xr, dr) in x.chunks_exact_mut(d).zip(down.chunks_exact(d)) {
                            for ((xv, dv), bv) in xr.iter_mut().zip(dr).zip(db) {
                                *xv += dv + bv;
                            }
                        }
                    }
                    None => add(x, &down),
                }
            }
            _ => {
                let mut y = vec![0f32; n * d];
                let b = self.down.b.map(|b| p.value(b));
                linear_forward(&act, n, p.value(self.down.w), b, d, f, &mut y)?;
                add(x, &y);
            }
        }
        (s.norm, s.up, s.act) = (norm, up, act);
        Ok(Saved::Ffn(s))
    }

    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let Saved::Ffn(s) = saved else {
            return Err(Error::input(
                "FFN backward: saved activations of another layer",
            ));
        };
        let (d, n, f, pg) = (r.d, r.n(), s.width, g.params);
        if f == 0 || f > self.width || s.up.len() != n * f || dx.len() != n * d {
            return Err(Error::input(
                "FFN backward: saved activations do not match the shape",
            ));
        }
        let mut dact = vec![0f32; n * f];
        match self.down.layout {
            Layout::InOut => {
                if let (Some(b), true) = (self.down.b, pg) {
                    let mut db = vec![0f32; d];
                    for row in dx.chunks_exact(d) {
                        add(&mut db, row);
                    }
                    add(p.grad_mut(b), &db);
                }
                let w = MatRef::f32(&p.value(self.down.w)[..f * d], f, d)?;
                linear(dx, d, n, &w, None, &mut dact, f)?;
                if pg {
                    let gw = &mut p.grad_mut(self.down.w)[..f * d];
                    matmul_tn_acc(&s.act, dx, n, f, d, gw)?;
                }
            }
            _ => {
                let mut db = vec![0f32; d];
                let (w, dw) = p.value_grad(self.down.w, self.down.w);
                let gr = pg.then_some((dw, self.down.b.map(|_| &mut db[..])));
                linear_backward_maybe(dx, &s.act, w, n, d, f, &mut dact, gr)?;
                if let (Some(b), true) = (self.down.b, pg) {
                    add(p.grad_mut(b), &db);
                }
            }
        }
        if !s.keep.is_empty() {
            for (gv, kv) in dact.iter_mut().zip(&s.keep) {
                *gv *= kv;
            }
        }
        let mut dup = vec![0f32; n * f];
        activation_backward(self.act, &dact, &s.up, &mut dup);
        let mut dh = vec![0f32; n * d];
        {
            let mut dbu = vec![0f32; f];
            let (w, dw) = p.value_grad(self.up.w, self.up.w);
            let gr = pg.then_some((&mut dw[..f * d], self.up.b.map(|_| &mut dbu[..])));
            linear_backward_maybe(&dup, &s.norm.y, &w[..f * d], n, f, d, &mut dh, gr)?;
            if !s.aux_dh.is_empty() {
                for (xv, v) in dh.iter_mut().zip(&s.aux_dh) {
                    *xv += g.aux_scale * v;
                }
            }
            if let (Some(b), true) = (self.up.b, pg) {
                add(&mut p.grad_mut(b)[..f], &dbu);
            }
        }
        self.norm.backward(p, &s.norm, x_in, n, d, &dh, dx, pg);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// mixture of expert FFNs

/// A pre-LN top-k mixture of expert FFNs (FastMoE's NaiveGate: a linear router with bias,
/// top-k of its logits, softmax renormalised over the chosen k; no noise, no capacity).
#[derive(Clone, Debug)]
pub struct Moe {
    /// Block index (keys [`Run::forced`]).
    pub block: usize,
    /// Norm before it.
    pub norm: Norm,
    /// Router `[experts, d]`.
    pub gate: Lin,
    /// Per expert: up `[ffn, d]` and down `[d, ffn]`.
    pub experts: Vec<(Lin, Lin)>,
    /// Experts per token.
    pub top_k: usize,
    /// Hidden width per expert.
    pub width: usize,
    /// Activation.
    pub act: Act,
}

/// One expert's (token·k + slot) pairs, pre-activations, activations and outputs.
type ExpertSaved = (Vec<u32>, Vec<f32>, Vec<f32>, Vec<f32>);

/// What a mixture forward keeps.
#[derive(Clone, Debug, Default)]
pub struct MoeSaved {
    norm: NormSaved,
    /// Router probabilities `[n, E]`.
    pub probs: Vec<f32>,
    /// Chosen experts `[n, k]`.
    pub sel: Vec<u32>,
    gates: Vec<f32>,
    /// Per expert: its (token·k + slot) pairs, pre-activations, activations and outputs.
    pub experts: Vec<ExpertSaved>,
}

/// Per expert's backward: (expert, dH rows, a = dy·y per pair, grads of up w/b, down w/b).
type ExpertGrad = (usize, Vec<f32>, Vec<f32>, [Vec<f32>; 4]);

/// `y = x Wᵀ (+ b)` for `x: [n, inp]`, a fresh `[n, out]`.
pub(crate) fn lin_fwd(
    p: &ParamStore,
    l: Lin,
    x: &[f32],
    n: usize,
    out: usize,
    inp: usize,
) -> Result<Vec<f32>, Error> {
    let mut y = vec![0f32; n * out];
    linear_forward(
        x,
        n,
        p.value(l.w),
        l.b.map(|b| p.value(b)),
        out,
        inp,
        &mut y,
    )?;
    Ok(y)
}

impl Layer for Moe {
    fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        x: &mut [f32],
    ) -> Result<Saved, Error> {
        let (e_n, k, d, f, n) = (self.experts.len(), self.top_k, r.d, self.width, r.n());
        let forced = run
            .forced
            .iter()
            .find(|(b, _)| *b == self.block)
            .map(|(_, v)| v.as_slice());
        let norm = self.norm.forward(p, x, n, d)?;
        let h = &norm.y;
        let logits = lin_fwd(p, self.gate, h, n, e_n, d)?;
        let mut probs = logits.clone();
        for row in probs.chunks_exact_mut(e_n) {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let mut s = 0.0;
            for v in row.iter_mut() {
                *v = (*v - m).exp();
                s += *v;
            }
            row.iter_mut().for_each(|v| *v /= s);
        }
        let mut sel = vec![0u32; n * k];
        let mut gates = vec![0f32; n * k];
        let mut val = vec![0f32; k];
        for i in 0..n {
            let s = &mut sel[i * k..(i + 1) * k];
            match forced {
                Some(f) if f.len() == n * k => s.copy_from_slice(&f[i * k..(i + 1) * k]),
                Some(_) => return Err(Error::input("forced expert choices of the wrong length")),
                None => top_k(&logits[i * e_n..(i + 1) * e_n], k, s, &mut val)?,
            }
            let pr = &probs[i * e_n..(i + 1) * e_n];
            let sum: f32 = s.iter().map(|&e| pr[e as usize]).sum();
            for (g, &e) in gates[i * k..(i + 1) * k].iter_mut().zip(s.iter()) {
                *g = pr[e as usize] / sum;
            }
        }
        let mut pairs: Vec<Vec<u32>> = vec![Vec::new(); e_n];
        for (pr, &e) in sel.iter().enumerate() {
            pairs[e as usize].push(pr as u32);
        }
        let res = par::map_indexed(e_n, |e| -> Result<_, Error> {
            let rows = &pairs[e];
            let mut he = Vec::with_capacity(rows.len() * d);
            for &pr in rows {
                let tok = pr as usize / k;
                he.extend_from_slice(&h[tok * d..(tok + 1) * d]);
            }
            let (up, down) = self.experts[e];
            let u = lin_fwd(p, up, &he, rows.len(), f, d)?;
            let mut a = u.clone();
            activation_forward(self.act, &mut a);
            let y = lin_fwd(p, down, &a, rows.len(), d, f)?;
            Ok((u, a, y))
        });
        let mut experts = Vec::with_capacity(e_n);
        for (e, r) in res.into_iter().enumerate() {
            let (u, a, y) = r?;
            for (row, &pr) in pairs[e].iter().enumerate() {
                let (pr, tok) = (pr as usize, pr as usize / k);
                let g = gates[pr];
                for (xv, yv) in x[tok * d..(tok + 1) * d]
                    .iter_mut()
                    .zip(&y[row * d..(row + 1) * d])
                {
                    *xv += g * yv;
                }
            }
            experts.push((std::mem::take(&mut pairs[e]), u, a, y));
        }
        Ok(Saved::Moe(MoeSaved {
            norm,
            probs,
            sel,
            gates,
            experts,
        }))
    }

    /// The gate gradient (spec 4.7): `∂L/∂r_j = w_j ⟨dy, E_j(x) − y⟩` for chosen j, 0
    /// otherwise — the renormalised-softmax gate backward.
    fn backward(
        &self,
        p: &mut ParamStore,
        r: Rows,
        saved: &Saved,
        x_in: &[f32],
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let Saved::Moe(m) = saved else {
            return Err(Error::input(
                "mixture backward: saved activations of another layer",
            ));
        };
        let (e_n, k, d, f, n, pg) = (
            self.experts.len(),
            self.top_k,
            r.d,
            self.width,
            r.n(),
            g.params,
        );
        if m.experts.len() != e_n || m.sel.len() != n * k || dx.len() != n * d {
            return Err(Error::input(
                "mixture backward: saved activations do not match the shape",
            ));
        }
        let h = &m.norm.y;
        let dy: &[f32] = dx;
        let mut dh = vec![0f32; n * d];
        let pv: &ParamStore = p;
        let res = par::map_indexed(e_n, |e| -> Result<Option<ExpertGrad>, Error> {
            let (rows, u, act, y) = &m.experts[e];
            let r = rows.len();
            if r == 0 {
                return Ok(None);
            }
            let mut he = Vec::with_capacity(r * d);
            let mut dye = Vec::with_capacity(r * d);
            let mut a = Vec::with_capacity(r);
            for (row, &pr) in rows.iter().enumerate() {
                let (pr, tok) = (pr as usize, pr as usize / k);
                he.extend_from_slice(&h[tok * d..(tok + 1) * d]);
                let g = m.gates[pr];
                let dyt = &dy[tok * d..(tok + 1) * d];
                dye.extend(dyt.iter().map(|v| g * v));
                a.push(
                    dyt.iter()
                        .zip(&y[row * d..(row + 1) * d])
                        .map(|(p, q)| p * q)
                        .sum::<f32>(),
                );
            }
            let mut gr = if pg {
                [
                    vec![0f32; f * d],
                    vec![0f32; f],
                    vec![0f32; d * f],
                    vec![0f32; d],
                ]
            } else {
                [vec![], vec![], vec![], vec![]]
            };
            let (up, down) = self.experts[e];
            let [guw, gub, gdw, gdb] = &mut gr;
            let mut dact = vec![0f32; r * f];
            let wd = pv.value(down.w);
            let gg = pg.then_some((&mut gdw[..], down.b.map(|_| &mut gdb[..])));
            linear_backward_maybe(&dye, act, wd, r, d, f, &mut dact, gg)?;
            let mut du = vec![0f32; r * f];
            activation_backward(self.act, &dact, u, &mut du);
            let mut dhe = vec![0f32; r * d];
            let wu = pv.value(up.w);
            let gg = pg.then_some((&mut guw[..], up.b.map(|_| &mut gub[..])));
            linear_backward_maybe(&du, &he, wu, r, f, d, &mut dhe, gg)?;
            Ok(Some((e, dhe, a, gr)))
        });
        let mut a_all = vec![0f32; n * k];
        for r in res {
            let Some((e, dhe, a, gr)) = r? else { continue };
            let rows = &m.experts[e].0;
            for (row, &pr) in rows.iter().enumerate() {
                let tok = pr as usize / k;
                add(
                    &mut dh[tok * d..(tok + 1) * d],
                    &dhe[row * d..(row + 1) * d],
                );
                a_all[pr as usize] = a[row];
            }
            if pg {
                let (up, down) = self.experts[e];
                add(p.grad_mut(up.w), &gr[0]);
                if let Some(b) = up.b {
                    add(p.grad_mut(b), &gr[1]);
                }
                add(p.grad_mut(down.w), &gr[2]);
                if let Some(b) = down.b {
                    add(p.grad_mut(b), &gr[3]);
                }
            }
        }
        let mut dlogits = vec![0f32; n * e_n];
        for i in 0..n {
            gate_backward(
                &m.probs[i * e_n..(i + 1) * e_n],
                &m.sel[i * k..(i + 1) * k],
                &a_all[i * k..(i + 1) * k],
                true,
                &mut dlogits[i * e_n..(i + 1) * e_n],
            );
        }
        {
            let mut db = vec![0f32; e_n];
            let (w, dw) = p.value_grad(self.gate.w, self.gate.w);
            let gg = pg.then_some((dw, self.gate.b.map(|_| &mut db[..])));
            linear_backward_maybe(&dlogits, h, w, n, e_n, d, &mut dh, gg)?;
            if let (Some(b), true) = (self.gate.b, pg) {
                add(p.grad_mut(b), &db);
            }
        }
        self.norm.backward(p, &m.norm, x_in, n, d, &dh, dx, pg);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// the stack

/// What a sub-layer's forward kept.
#[derive(Clone, Debug)]
pub enum Saved {
    /// Attention (and the heads that ran).
    Attention(MhaSaved, usize),
    /// FFN.
    Ffn(FfnSaved),
    /// Mixture of expert FFNs.
    Moe(MoeSaved),
    /// A SeqBoat layer.
    SeqBoat(Box<crate::model::seqboat::LayerActs>),
    /// A ModuleFormer mixture (attention or FFN experts).
    Mf(Box<crate::model::moduleformer::BlockActs>),
}

/// One sub-layer of the stack.
#[derive(Clone, Debug)]
pub enum Sublayer {
    /// Softmax attention.
    Attention(Attention),
    /// Dense or EMoE FFN.
    Ffn(Ffn),
    /// Mixture of expert FFNs.
    Moe(Moe),
    /// A SeqBoat layer (EMA, gate, gated attention on activated tokens; its own norm).
    SeqBoat(Box<crate::model::seqboat::SbLayer>),
    /// ModuleFormer's mixture of stick-breaking attention experts.
    MfAttention(Box<crate::model::moduleformer::MfMixture<false>>),
    /// ModuleFormer's mixture of FFN experts.
    MfFfn(Box<crate::model::moduleformer::MfMixture<true>>),
}

impl Sublayer {
    fn layer(&self) -> &dyn Layer {
        match self {
            Sublayer::Attention(l) => l,
            Sublayer::Ffn(l) => l,
            Sublayer::Moe(l) => l,
            Sublayer::SeqBoat(l) => &**l,
            Sublayer::MfAttention(l) => &**l,
            Sublayer::MfFfn(l) => &**l,
        }
    }
}

/// A model's blocks: each a list of sub-layers.
#[derive(Clone, Debug, Default)]
pub struct Stack {
    /// Sub-layers per block.
    pub blocks: Vec<Vec<Sublayer>>,
}

/// What a stack's forward kept: each sub-layer's input and saved state, in order.
#[derive(Clone, Debug, Default)]
pub struct StackSaved {
    rows: Option<Rows>,
    /// Blocks that ran.
    pub depth: usize,
    inputs: Vec<Vec<f32>>,
    /// Per sub-layer, in order.
    pub saved: Vec<Saved>,
    /// The block of each saved sub-layer.
    block_of: Vec<usize>,
}

impl StackSaved {
    /// Each saved sub-layer with the index of its block.
    pub fn by_block(&self) -> impl Iterator<Item = (usize, &Saved)> {
        self.block_of.iter().copied().zip(&self.saved)
    }

    /// The FFN state of block `l`, if it has one.
    pub fn ffn(&self, l: usize) -> Option<&FfnSaved> {
        self.by_block().find_map(|(b, s)| match s {
            Saved::Ffn(f) if b == l => Some(f),
            _ => None,
        })
    }

    /// Weighted auxiliary losses summed over sub-layers.
    pub fn aux(&self) -> f64 {
        self.saved.iter().fold(0.0, |acc, s| match s {
            Saved::Ffn(f) => acc + f.aux,
            _ => acc,
        })
    }
}

impl Stack {
    /// Forward through the first `depth` blocks over `x: [n, d]` in place.
    pub fn forward(
        &self,
        p: &ParamStore,
        r: Rows,
        run: &Run<'_>,
        depth: usize,
        x: &mut [f32],
    ) -> Result<StackSaved, Error> {
        if depth > self.blocks.len() || x.len() != r.n() * r.d {
            return Err(Error::input(format!(
                "stack: {depth} of {} blocks over {} values (not [{}, {}])",
                self.blocks.len(),
                x.len(),
                r.n(),
                r.d
            )));
        }
        let mut s = StackSaved {
            rows: Some(r),
            depth,
            ..StackSaved::default()
        };
        for (b, blk) in self.blocks[..depth].iter().enumerate() {
            for l in blk {
                s.block_of.push(b);
                s.inputs.push(x.to_vec());
                s.saved.push(l.layer().forward(p, r, run, x)?);
            }
        }
        Ok(s)
    }

    /// Backward of [`Stack::forward`]: `dx` holds the gradient of the output and becomes
    /// the gradient of the input.
    pub fn backward(
        &self,
        p: &mut ParamStore,
        s: &StackSaved,
        dx: &mut [f32],
        g: Grads,
    ) -> Result<(), Error> {
        let r = s
            .rows
            .ok_or_else(|| Error::input("stack backward without a forward"))?;
        let layers: Vec<&Sublayer> = self.blocks[..s.depth.min(self.blocks.len())]
            .iter()
            .flatten()
            .collect();
        if layers.len() != s.saved.len() || dx.len() != r.n() * r.d {
            return Err(Error::input(
                "stack backward: saved activations do not match the stack",
            ));
        }
        for (i, l) in layers.iter().enumerate().rev() {
            l.layer().backward(p, r, &s.saved[i], &s.inputs[i], dx, g)?;
        }
        Ok(())
    }

    /// Bind the sub-layers of `blocks` to the parameters named in `tensors` (by role;
    /// `prefix` is prepended to every name). Every sub-layer kind the trainer has is bound;
    /// a spec it cannot train is an error naming it.
    pub fn bind(
        blocks: &[BlockSpec],
        tensors: &[TensorSpec],
        params: &[ParamSpec],
        prefix: &str,
    ) -> Result<Stack, Error> {
        let find = |l: usize,
                    role: Role,
                    expert: Option<usize>|
         -> Result<Option<(usize, Layout)>, Error> {
            match tensors
                .iter()
                .find(|t| t.block == Some(l) && t.role == role && t.expert == expert)
            {
                None => Ok(None),
                Some(t) => {
                    let name = format!("{prefix}{}", t.name);
                    let i = params.iter().position(|s| s.name == name).ok_or_else(|| {
                        Error::input(format!("the trainer has no tensor '{name}'"))
                    })?;
                    if params[i].shape != t.shape {
                        return Err(Error::input(format!(
                            "tensor '{name}' is {:?}; the description needs {:?}",
                            params[i].shape, t.shape
                        )));
                    }
                    Ok(Some((i, t.layout)))
                }
            }
        };
        let need =
            |l: usize, role: Role, expert: Option<usize>| -> Result<(usize, Layout), Error> {
                find(l, role, expert)?.ok_or_else(|| {
                    Error::input(format!("block {l} has no tensor of role {role:?}"))
                })
            };
        let norm = |l: usize, g: Role, b: Role, spec: NormSpec| -> Result<Norm, Error> {
            if spec.kind != NormKind::LayerNorm {
                return Err(Error::input(format!(
                    "block {l}: the trainer has no {:?}",
                    spec.kind
                )));
            }
            Ok(Norm {
                g: need(l, g, None)?.0,
                b: need(l, b, None)?.0,
                eps: spec.eps,
            })
        };
        let lin = |l: usize, w: Role, b: Role, e: Option<usize>| -> Result<Lin, Error> {
            Ok(Lin {
                w: need(l, w, e)?.0,
                b: find(l, b, e)?.map(|x| x.0),
            })
        };
        let mut out = Stack::default();
        for (l, spec) in blocks.iter().enumerate() {
            let mut subs = Vec::new();
            match spec.mixer {
                MixerSpec::Attention(a) => {
                    if a.layout != AttnLayout::Qkv || a.kv_heads != a.heads || !a.bias {
                        return Err(Error::input(format!(
                            "block {l}: the trainer's attention has fused q|k|v rows with biases and no grouped heads"
                        )));
                    }
                    let n = norm(l, Role::AttnNorm, Role::AttnNormBias, spec.norm)?;
                    subs.push(Sublayer::Attention(Attention {
                        idx: MhaIdx {
                            ln_g: n.g,
                            ln_b: n.b,
                            qkv_w: need(l, Role::AttnQkv, None)?.0,
                            qkv_b: need(l, Role::AttnQkvBias, None)?.0,
                            proj_w: need(l, Role::AttnOut, None)?.0,
                            proj_b: need(l, Role::AttnOutBias, None)?.0,
                            eps: n.eps,
                        },
                        heads: a.heads,
                        causal: a.causal,
                    }));
                }
                other => {
                    return Err(Error::input(format!(
                        "block {l}: the block stack does not train a {} mixer yet",
                        match other {
                            MixerSpec::StickBreaking(_) => "stick-breaking",
                            MixerSpec::SeqBoat(_) => "SeqBoat",
                            MixerSpec::Attention(_) => "attention",
                        }
                    )))
                }
            }
            if let Some((ns, f)) = spec.ffn {
                if f.gated {
                    return Err(Error::input(format!(
                        "block {l}: the trainer has no gated FFN yet"
                    )));
                }
                let n = norm(l, Role::FfnNorm, Role::FfnNormBias, ns)?;
                match f.kind {
                    FfnKind::Dense | FfnKind::Emoe { .. } => {
                        let (dw, layout) = need(l, Role::FfnDown, None)?;
                        subs.push(Sublayer::Ffn(Ffn {
                            block: l,
                            norm: n,
                            up: lin(l, Role::FfnUp, Role::FfnUpBias, None)?,
                            down: Down {
                                w: dw,
                                b: find(l, Role::FfnDownBias, None)?.map(|x| x.0),
                                layout,
                            },
                            act: f.act,
                            width: f.width,
                            emoe: match f.kind {
                                FfnKind::Emoe { experts, top_k } => Some((experts, top_k)),
                                _ => None,
                            },
                        }));
                    }
                    FfnKind::Moe {
                        experts,
                        top_k,
                        renormalize,
                        ..
                    } => {
                        if !renormalize {
                            return Err(Error::input(format!(
                                "block {l}: the trainer's FFN mixture renormalises its gates"
                            )));
                        }
                        let mut ex = Vec::with_capacity(experts);
                        for e in 0..experts {
                            let up = lin(l, Role::FfnUp, Role::FfnUpBias, Some(e))?;
                            let (dw, layout) = need(l, Role::FfnDown, Some(e))?;
                            if layout != Layout::OutIn {
                                return Err(Error::input(format!(
                                    "block {l}: the trainer's mixture stores expert down projections [d, ffn]"
                                )));
                            }
                            let db = find(l, Role::FfnDownBias, Some(e))?.map(|x| x.0);
                            ex.push((up, Lin { w: dw, b: db }));
                        }
                        subs.push(Sublayer::Moe(Moe {
                            block: l,
                            norm: n,
                            gate: lin(l, Role::Router, Role::RouterBias, None)?,
                            experts: ex,
                            top_k,
                            width: f.width,
                            act: f.act,
                        }));
                    }
                }
            }
            out.blocks.push(subs);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::check_grad_steps;
    use crate::layers::rand_vec;
    use crate::params::ParamTable;
    use modula_core::arch::{AttentionSpec, FfnSpec, RouterKind};

    const LN: NormSpec = NormSpec {
        kind: NormKind::LayerNorm,
        eps: 1e-5,
    };

    /// Block 0: attention + a 3-expert top-2 mixture (biases); block 1: attention + an FFN
    /// without biases (tanh GELU); block 2: attention + a 4-expert EMoE FFN.
    fn specs(d: usize, f: usize) -> (Vec<BlockSpec>, Vec<TensorSpec>) {
        let attn = MixerSpec::Attention(AttentionSpec {
            heads: 2,
            kv_heads: 2,
            head_dim: d / 2,
            causal: true,
            bias: true,
            layout: AttnLayout::Qkv,
        });
        let ffn = |kind, bias, act| {
            Some((
                LN,
                FfnSpec {
                    width: f,
                    act,
                    gated: false,
                    bias,
                    kind,
                },
            ))
        };
        let moe = FfnKind::Moe {
            experts: 3,
            top_k: 2,
            router: RouterKind::Linear,
            renormalize: true,
        };
        let emoe = FfnKind::Emoe {
            experts: 4,
            top_k: 2,
        };
        let blocks = vec![
            BlockSpec {
                norm: LN,
                mixer: attn,
                ffn: ffn(moe, true, Act::Gelu),
            },
            BlockSpec {
                norm: LN,
                mixer: attn,
                ffn: ffn(FfnKind::Dense, false, Act::GeluTanh),
            },
            BlockSpec {
                norm: LN,
                mixer: attn,
                ffn: ffn(emoe, true, Act::Gelu),
            },
        ];
        let mut ts = Vec::new();
        for j in 0..3 {
            let mut add = |name: String, role, expert, shape: Vec<usize>, layout| {
                ts.push(TensorSpec {
                    name,
                    role,
                    block: Some(j),
                    expert,
                    shape,
                    layout,
                })
            };
            let b = |s: &str| format!("blk.{j}.{s}");
            let (v, m) = (Layout::Vector, Layout::OutIn);
            add(b("attn_norm.weight"), Role::AttnNorm, None, vec![d], v);
            add(b("attn_norm.bias"), Role::AttnNormBias, None, vec![d], v);
            add(b("attn_qkv.weight"), Role::AttnQkv, None, vec![3 * d, d], m);
            add(b("attn_qkv.bias"), Role::AttnQkvBias, None, vec![3 * d], v);
            add(b("attn_output.weight"), Role::AttnOut, None, vec![d, d], m);
            add(b("attn_output.bias"), Role::AttnOutBias, None, vec![d], v);
            add(b("ffn_norm.weight"), Role::FfnNorm, None, vec![d], v);
            add(b("ffn_norm.bias"), Role::FfnNormBias, None, vec![d], v);
            match j {
                0 => {
                    add(b("gate.weight"), Role::Router, None, vec![3, d], m);
                    add(b("gate.bias"), Role::RouterBias, None, vec![3], v);
                    for e in 0..3 {
                        let x = Some(e);
                        add(b(&format!("up.{e}.weight")), Role::FfnUp, x, vec![f, d], m);
                        add(b(&format!("up.{e}.bias")), Role::FfnUpBias, x, vec![f], v);
                        add(
                            b(&format!("down.{e}.weight")),
                            Role::FfnDown,
                            x,
                            vec![d, f],
                            m,
                        );
                        add(
                            b(&format!("down.{e}.bias")),
                            Role::FfnDownBias,
                            x,
                            vec![d],
                            v,
                        );
                    }
                }
                1 => {
                    add(b("up.weight"), Role::FfnUp, None, vec![f, d], m);
                    add(b("down.weight"), Role::FfnDown, None, vec![d, f], m);
                }
                _ => {
                    add(b("up.weight"), Role::FfnUp, None, vec![f, d], m);
                    add(b("up.bias"), Role::FfnUpBias, None, vec![f], v);
                    add(
                        b("down_t.weight"),
                        Role::FfnDown,
                        None,
                        vec![f, d],
                        Layout::InOut,
                    );
                    add(b("down.bias"), Role::FfnDownBias, None, vec![d], v);
                }
            }
        }
        (blocks, ts)
    }

    fn build(d: usize, f: usize) -> (Stack, ParamStore) {
        let (blocks, ts) = specs(d, f);
        let mut t = ParamTable::new();
        t.add_tensors(&ts, "m.").unwrap();
        let stack = Stack::bind(&blocks, &ts, t.specs(), "m.").unwrap();
        let mut p = t.build();
        let n = p.values.len();
        for (v, r) in p.values.iter_mut().zip(rand_vec(5, n)) {
            *v = 0.4 * r;
        }
        (stack, p)
    }

    #[test]
    fn a_mixed_stack_matches_finite_differences_and_can_be_frozen() {
        let (d, f) = (8, 8);
        let (stack, mut p) = build(d, f);
        let r = Rows { b: 2, t: 5, d };
        let n = r.n();
        let x0 = rand_vec(7, n * d);
        let w = rand_vec(9, n * d);
        // the mixture's choices of a first forward, held fixed under the probes
        let mut x = x0.clone();
        let s = stack.forward(&p, r, &Run::default(), 3, &mut x).unwrap();
        let Saved::Moe(m) = &s.saved[1] else {
            panic!("block 0's FFN is a mixture")
        };
        let forced = vec![(0usize, m.sel.clone())];
        // EMoE's auxiliary loss reaches the FFN input, not the gates (as published), so
        // the parameters are checked without it and the input with it
        for aux in [0.0, 0.05] {
            let run = Run {
                emoe: Some(EmoeRun {
                    aux,
                    ..EmoeRun::default()
                }),
                forced: &forced,
                ..Run::default()
            };
            let loss = |p: &ParamStore, x0: &[f32]| -> (f64, StackSaved) {
                let mut x = x0.to_vec();
                let s = stack.forward(p, r, &run, 3, &mut x).unwrap();
                let l = x.iter().zip(&w).map(|(a, b)| f64::from(a * b)).sum::<f64>() + s.aux();
                (l, s)
            };
            let (_, s) = loss(&p, &x0);
            let keep = s.ffn(2).unwrap().keep.clone();
            assert!(keep.contains(&0.0), "EMoE drops some units");
            p.grads.fill(0.0);
            let mut dx = w.clone();
            stack
                .backward(&mut p, &s, &mut dx, Grads::default())
                .unwrap();
            let steps = [1e-2, 3e-3];
            if aux == 0.0 {
                let grads = p.grads.clone();
                let mut vals = p.values.clone();
                let probe = p.clone();
                check_grad_steps(
                    "stack parameters",
                    &mut vals,
                    &grads,
                    |v| {
                        let mut q = probe.clone();
                        q.values.copy_from_slice(v);
                        let (l, s) = loss(&q, &x0);
                        assert_eq!(s.ffn(2).unwrap().keep, keep, "routing moved");
                        l
                    },
                    &steps,
                    2e-2,
                    1e-2,
                )
                .unwrap();
            }
            let mut xv = x0.clone();
            check_grad_steps(
                "stack input",
                &mut xv,
                &dx,
                |v| loss(&p, v).0,
                &steps,
                2e-2,
                1e-2,
            )
            .unwrap();
            // frozen: the same input gradient, no parameter gradient
            let before = p.grads.clone();
            let mut dx2 = w.clone();
            let g = Grads {
                params: false,
                aux_scale: 1.0,
            };
            stack.backward(&mut p, &s, &mut dx2, g).unwrap();
            assert_eq!(p.grads, before, "a frozen backward leaves the gradients");
            assert_eq!(dx2, dx, "and passes the same gradient to its input");
        }
    }

    #[test]
    fn nested_prefixes_and_bad_bindings_are_checked() {
        let (d, f) = (8, 8);
        let (stack, p) = build(d, f);
        let r = Rows { b: 1, t: 3, d };
        let mut x = rand_vec(3, 3 * d);
        // a width prefix needs [ffn, d] down projections and no EMoE: block 1 refuses
        let run = Run {
            ffn: Some(4),
            ..Run::default()
        };
        let e = stack.forward(&p, r, &run, 3, &mut x.clone()).unwrap_err();
        assert!(e.to_string().contains("nested FFN width"), "{e}");
        let run = Run {
            heads: Some(3),
            ..Run::default()
        };
        assert!(stack.forward(&p, r, &run, 1, &mut x.clone()).is_err());
        assert!(stack.forward(&p, r, &Run::default(), 4, &mut x).is_err());
        // depth 1 runs only block 0
        let s = stack.forward(&p, r, &Run::default(), 1, &mut x).unwrap();
        assert_eq!(s.saved.len(), 2);
        // bindings: a missing tensor, a wrong shape, a mixer the trainer lacks
        let (blocks, ts) = specs(d, f);
        let mut t = ParamTable::new();
        t.add_tensors(&ts[1..], "").unwrap();
        let e = Stack::bind(&blocks, &ts, t.specs(), "").unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_norm.weight"), "{e}");
        let mut bad = ts.clone();
        bad[2].shape = vec![3 * d, d + 1];
        let mut t = ParamTable::new();
        t.add_tensors(&ts, "").unwrap();
        let e = Stack::bind(&blocks, &bad, t.specs(), "").unwrap_err();
        assert!(e.to_string().contains("blk.0.attn_qkv.weight"), "{e}");
        let mut rms = blocks.clone();
        rms[1].norm.kind = NormKind::RmsNorm;
        assert!(Stack::bind(&rms, &ts, t.specs(), "").is_err());
    }
}
