//! The pre-LN multi-head softmax attention sub-layer of a transformer block, shared by the
//! dense baseline and the m2mKD stages: `x ← x + proj(MHA(LN(x)))` with a fused QKV
//! projection (`[3d, d]`, rows q | k | v, heads contiguous inside each) and biases.
//!
//! One task per (sequence, head) on the kernel pool; every number is computed by one task
//! in a fixed order, so results are bit-identical for any thread count. The backward can
//! skip the parameter gradients (`param_grads = false`): a frozen sub-layer that only
//! passes gradients through (m2mKD's meta suffix) does the activation products alone.

use super::attention::{attention_backward, attention_forward};
use super::linear::{linear_backward, linear_forward};
use super::norm::{layernorm_backward, layernorm_forward};
use crate::compute::matmul_rows;
use crate::params::ParamStore;
use modula_core::kernels::linear::MatRef;
use modula_core::kernels::{par, KernelError};
use modula_core::Error;

/// LayerNorm ε of every block.
pub const LN_EPS: f32 = 1e-5;

/// Parameter indices of one attention sub-layer in a [`ParamStore`].
#[derive(Clone, Copy, Debug)]
pub struct MhaIdx {
    /// LN γ `[d]`.
    pub ln_g: usize,
    /// LN β `[d]`.
    pub ln_b: usize,
    /// `[3d, d]`.
    pub qkv_w: usize,
    /// `[3d]`.
    pub qkv_b: usize,
    /// `[d, d]`.
    pub proj_w: usize,
    /// `[d]`.
    pub proj_b: usize,
    /// The norm's ε ([`LN_EPS`] in the trainer's own models; a file's `modula.norm_epsilon`).
    pub eps: f32,
}

/// Shape of the sub-layer's input: `b` sequences of `t`, width `d`, `heads` heads.
#[derive(Clone, Copy, Debug)]
pub struct MhaShape {
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub t: usize,
    /// Width.
    pub d: usize,
    /// Heads (divides d).
    pub heads: usize,
    /// Heads that run (SortedNet nested heads: the first `active` heads; the others'
    /// outputs are zero, so the output projection sees only the matching input columns and
    /// only those heads' q/k/v rows and projection columns receive gradient). `heads` for
    /// the full sub-layer.
    pub active: usize,
    /// Causal mask.
    pub causal: bool,
}

/// What the forward keeps for the backward.
#[derive(Clone, Debug, Default)]
pub struct MhaSaved {
    ln: Vec<f32>,
    mu: Vec<f32>,
    rs: Vec<f32>,
    /// Per (sequence, head): q, k, v `[t, dh]` and probabilities `[t, t]`.
    heads: Vec<[Vec<f32>; 4]>,
    attn: Vec<f32>,
}

/// `dx += dy W` (`dy: [m, n]`, `w: [n, k]`, `dx: [m, k]`) and, when `grads` is given,
/// `dw += dyᵀ x`, `db += Σ dy` — the backward of a linear layer whose weights may be frozen.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_maybe(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dx: &mut [f32],
    grads: Option<(&mut [f32], Option<&mut [f32]>)>,
) -> Result<(), KernelError> {
    match grads {
        Some((dw, db)) => linear_backward(dy, x, w, m, n, k, Some(dx), dw, db),
        None => matmul_rows(dy, n, m, &MatRef::f32(w, n, k)?, dx, k, true),
    }
}

/// Forward: `x: [b·t, d]` is updated in place to `x + proj(MHA(LN(x)))`.
pub fn mha_forward(
    p: &ParamStore,
    ix: &MhaIdx,
    s: MhaShape,
    x: &mut [f32],
) -> Result<MhaSaved, Error> {
    let MhaShape {
        b,
        t,
        d,
        heads,
        active,
        causal,
    } = s;
    if heads == 0 || d % heads != 0 || x.len() != b * t * d {
        return Err(Error::input(format!(
            "attention: input of {} values is not [{b}·{t}, {d}] with {heads} heads dividing d",
            x.len()
        )));
    }
    if active == 0 || active > heads {
        return Err(Error::input(format!(
            "attention: {active} active heads is outside 1..={heads}"
        )));
    }
    let (n, hd) = (b * t, d / heads);
    let (mut h, mut mu, mut rs) = (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
    layernorm_forward(
        x,
        n,
        d,
        p.value(ix.ln_g),
        p.value(ix.ln_b),
        ix.eps,
        &mut h,
        &mut mu,
        &mut rs,
    )?;
    let mut qkv = vec![0f32; n * 3 * d];
    linear_forward(
        &h,
        n,
        p.value(ix.qkv_w),
        Some(p.value(ix.qkv_b)),
        3 * d,
        d,
        &mut qkv,
    )?;
    let scale = 1.0 / (hd as f32).sqrt();
    let results = par::map_indexed(b * active, |task| {
        let (sq, hh) = (task / active, task % active);
        let mut qkvh: [Vec<f32>; 3] = [vec![0f32; t * hd], vec![0f32; t * hd], vec![0f32; t * hd]];
        for i in 0..t {
            let row = &qkv[(sq * t + i) * 3 * d..(sq * t + i + 1) * 3 * d];
            for (part, dst) in qkvh.iter_mut().enumerate() {
                let o = part * d + hh * hd;
                dst[i * hd..(i + 1) * hd].copy_from_slice(&row[o..o + hd]);
            }
        }
        let [qh, kh, vh] = qkvh;
        let (mut o, mut pr) = (vec![0f32; t * hd], vec![0f32; t * t]);
        let r = attention_forward(&qh, &kh, &vh, t, hd, scale, causal, &mut o, &mut pr);
        r.map(|()| ([qh, kh, vh, pr], o)).map_err(Error::from)
    });
    let mut attn = vec![0f32; n * d];
    let mut saved = Vec::with_capacity(b * active);
    for (task, r) in results.into_iter().enumerate() {
        let (sv, o) = r?;
        let (sq, hh) = (task / active, task % active);
        for i in 0..t {
            let dst = (sq * t + i) * d + hh * hd;
            attn[dst..dst + hd].copy_from_slice(&o[i * hd..(i + 1) * hd]);
        }
        saved.push(sv);
    }
    let mut proj = vec![0f32; n * d];
    linear_forward(
        &attn,
        n,
        p.value(ix.proj_w),
        Some(p.value(ix.proj_b)),
        d,
        d,
        &mut proj,
    )?;
    for (xv, pv) in x.iter_mut().zip(&proj) {
        *xv += pv;
    }
    Ok(MhaSaved {
        ln: h,
        mu,
        rs,
        heads: saved,
        attn,
    })
}

/// Backward. `x_in: [b·t, d]` is the sub-layer's input; `dx` holds the gradient of its
/// output and receives the branch's contribution (`dx += ∂/∂x_in` through LN, attention
/// and the projections), so on return it is the gradient of the input. Parameter
/// gradients are accumulated only when `param_grads`.
pub fn mha_backward(
    p: &mut ParamStore,
    ix: &MhaIdx,
    s: MhaShape,
    saved: &MhaSaved,
    x_in: &[f32],
    dx: &mut [f32],
    param_grads: bool,
) -> Result<(), Error> {
    let MhaShape {
        b,
        t,
        d,
        heads,
        active,
        causal: _,
    } = s;
    let (n, hd) = (b * t, d / heads);
    if active == 0
        || active > heads
        || saved.heads.len() != b * active
        || dx.len() != n * d
        || x_in.len() != n * d
    {
        return Err(Error::input(
            "attention backward: saved activations do not match the shape",
        ));
    }
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dattn = vec![0f32; n * d];
    {
        let (w, dw) = p.value_grad(ix.proj_w, ix.proj_w);
        let mut dbp = vec![0f32; d];
        let g = param_grads.then_some((dw, Some(&mut dbp[..])));
        linear_backward_maybe(dx, &saved.attn, w, n, d, d, &mut dattn, g)?;
        if param_grads {
            add(p.grad_mut(ix.proj_b), &dbp);
        }
    }
    let grads = par::map_indexed(b * active, |task| {
        let (sq, hh) = (task / active, task % active);
        let [qh, kh, vh, pr] = &saved.heads[task];
        let mut dout = vec![0f32; t * hd];
        for i in 0..t {
            let src = (sq * t + i) * d + hh * hd;
            dout[i * hd..(i + 1) * hd].copy_from_slice(&dattn[src..src + hd]);
        }
        let mut g: [Vec<f32>; 3] = [vec![0f32; t * hd], vec![0f32; t * hd], vec![0f32; t * hd]];
        let [dq, dk, dv] = &mut g;
        attention_backward(&dout, qh, kh, vh, pr, t, hd, scale, dq, dk, dv).map(|()| g)
    });
    let mut dqkv = vec![0f32; n * 3 * d];
    for (task, g) in grads.into_iter().enumerate() {
        let g = g?;
        let (sq, hh) = (task / active, task % active);
        for i in 0..t {
            let row = &mut dqkv[(sq * t + i) * 3 * d..(sq * t + i + 1) * 3 * d];
            for (part, src) in g.iter().enumerate() {
                let o = part * d + hh * hd;
                row[o..o + hd].copy_from_slice(&src[i * hd..(i + 1) * hd]);
            }
        }
    }
    let mut dh = vec![0f32; n * d];
    {
        let (w, dw) = p.value_grad(ix.qkv_w, ix.qkv_w);
        let mut dbq = vec![0f32; 3 * d];
        let g = param_grads.then_some((dw, Some(&mut dbq[..])));
        linear_backward_maybe(&dqkv, &saved.ln, w, n, 3 * d, d, &mut dh, g)?;
        if param_grads {
            add(p.grad_mut(ix.qkv_b), &dbq);
        }
    }
    let (mut dg, mut dbb) = (vec![0f32; d], vec![0f32; d]);
    layernorm_backward(
        &dh,
        x_in,
        n,
        d,
        p.value(ix.ln_g),
        &saved.mu,
        &saved.rs,
        dx,
        &mut dg,
        &mut dbb,
    );
    if param_grads {
        add(p.grad_mut(ix.ln_g), &dg);
        add(p.grad_mut(ix.ln_b), &dbb);
    }
    Ok(())
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}
