//! The dense baseline transformer every modular model is compared with: token embedding,
//! `L` pre-LN blocks (multi-head causal softmax attention, GELU FFN), final LayerNorm,
//! untied LM head, cross-entropy on next-token targets. No positional embedding table: the
//! block's attention is causal softmax (positions enter only through causality), matching
//! what a byte model needs here; a learned position table is a listed follow-up.
//!
//! Tensor layouts follow the kernels: projections `[out, in]`, the FFN down projection
//! stored transposed (`ffn_down_t: [ffn, d]`) so a nested FFN width is a row prefix.
//! Forward saves every activation the backward needs (one `Activations` per batch).

use crate::layers::activation::activation_backward;
use crate::layers::attention::{causal_attention_backward, causal_attention_forward};
use crate::layers::linear::{linear_backward, linear_forward};
use crate::layers::loss::{cross_entropy, LossError};
use crate::layers::norm::{layernorm_backward, layernorm_forward};
use crate::params::{ParamStore, ParamTable};
use modula_core::kernels::expert_ffn::Activation;
use modula_core::kernels::isa;
use modula_core::kernels::linear::{linear, matmul_rows, matmul_tn_acc, MatRef};
use modula_core::rng::SplitMix64;

/// Model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseConfig {
    /// Vocabulary (256 for bytes).
    pub vocab: usize,
    /// Width d.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads (d must be a multiple).
    pub heads: usize,
    /// FFN hidden width.
    pub ffn: usize,
}

/// Parameter indices of one block.
#[derive(Clone, Copy, Debug)]
struct Block {
    ln1_g: usize,
    ln1_b: usize,
    qkv_w: usize,
    qkv_b: usize,
    proj_w: usize,
    proj_b: usize,
    ln2_g: usize,
    ln2_b: usize,
    up_w: usize,
    up_b: usize,
    down_t: usize,
    down_b: usize,
}

/// The dense model: its configuration, parameter indices and the parameter store.
#[derive(Clone, Debug)]
pub struct DenseModel {
    /// Shape.
    pub cfg: DenseConfig,
    /// Parameters, gradients and optimiser moments.
    pub params: ParamStore,
    wte: usize,
    blocks: Vec<Block>,
    lnf_g: usize,
    lnf_b: usize,
    head: usize,
}

/// Everything the forward saves for the backward, for one batch of `b` sequences of `t`.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    b: usize,
    t: usize,
    /// Per block: input to the block `[n, d]`.
    x_in: Vec<Vec<f32>>,
    ln1: Vec<Vec<f32>>,
    ln1_stats: Vec<(Vec<f32>, Vec<f32>)>,
    /// Per block, per sequence, per head: q, k, v `[t, dh]` and probs `[t, t]`.
    heads: Vec<Vec<[Vec<f32>; 4]>>,
    attn: Vec<Vec<f32>>,
    x_mid: Vec<Vec<f32>>,
    ln2: Vec<Vec<f32>>,
    ln2_stats: Vec<(Vec<f32>, Vec<f32>)>,
    up: Vec<Vec<f32>>,
    act: Vec<Vec<f32>>,
    x_out: Vec<f32>,
    lnf: Vec<f32>,
    lnf_stats: (Vec<f32>, Vec<f32>),
    logits: Vec<f32>,
}

const LN_EPS: f32 = 1e-5;

impl DenseModel {
    /// A model with GPT-2-style initialisation (N(0, 0.02); residual projections scaled by
    /// 1/√(2L); norms at γ = 1, β = 0), deterministic in `seed`.
    pub fn new(cfg: DenseConfig, seed: u64) -> Result<Self, String> {
        if cfg.heads == 0 || cfg.d % cfg.heads != 0 || cfg.d == 0 || cfg.vocab == 0 {
            return Err(format!(
                "d = {} must be a positive multiple of heads = {}",
                cfg.d, cfg.heads
            ));
        }
        let (d, f) = (cfg.d, cfg.ffn);
        let mut t = ParamTable::new();
        let wte = t.add("token_embd.weight", &[cfg.vocab, d], true)?;
        let mut blocks = Vec::new();
        for l in 0..cfg.layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            blocks.push(Block {
                ln1_g: t.add(&p("attn_norm.weight"), &[d], false)?,
                ln1_b: t.add(&p("attn_norm.bias"), &[d], false)?,
                qkv_w: t.add(&p("attn_qkv.weight"), &[3 * d, d], true)?,
                qkv_b: t.add(&p("attn_qkv.bias"), &[3 * d], false)?,
                proj_w: t.add(&p("attn_output.weight"), &[d, d], true)?,
                proj_b: t.add(&p("attn_output.bias"), &[d], false)?,
                ln2_g: t.add(&p("ffn_norm.weight"), &[d], false)?,
                ln2_b: t.add(&p("ffn_norm.bias"), &[d], false)?,
                up_w: t.add(&p("ffn_up.weight"), &[f, d], true)?,
                up_b: t.add(&p("ffn_up.bias"), &[f], false)?,
                down_t: t.add(&p("ffn_down_t.weight"), &[f, d], true)?,
                down_b: t.add(&p("ffn_down.bias"), &[d], false)?,
            });
        }
        let lnf_g = t.add("output_norm.weight", &[d], false)?;
        let lnf_b = t.add("output_norm.bias", &[d], false)?;
        let head = t.add("output.weight", &[cfg.vocab, d], true)?;
        let mut params = t.build();
        let mut rng = SplitMix64(seed);
        let resid = 0.02 / (2.0 * cfg.layers.max(1) as f32).sqrt();
        for (i, s) in params.specs().to_vec().iter().enumerate() {
            let v = params.value_mut(i);
            if s.name.ends_with("norm.weight") {
                v.fill(1.0);
            } else if s.name.ends_with(".bias") {
                v.fill(0.0);
            } else {
                let std = if s.name.contains("attn_output") || s.name.contains("ffn_down") {
                    resid
                } else {
                    0.02
                };
                for x in v.iter_mut() {
                    *x = std * normal(&mut rng);
                }
            }
        }
        Ok(DenseModel {
            cfg,
            params,
            wte,
            blocks,
            lnf_g,
            lnf_b,
            head,
        })
    }

    /// Forward over `tokens: [b, t]`; returns the mean next-token loss against
    /// `targets: [b, t]` and the saved activations.
    pub fn forward(
        &self,
        tokens: &[u32],
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(f64, Activations, Vec<f32>), String> {
        let c = self.cfg;
        let (d, n, hd) = (c.d, b * t, c.d / c.heads);
        if tokens.len() != n || targets.len() != n {
            return Err(format!("tokens and targets must be [{b}, {t}]"));
        }
        if let Some(&bad) = tokens.iter().find(|&&x| x as usize >= c.vocab) {
            return Err(format!(
                "token {bad} is outside the vocabulary of {}",
                c.vocab
            ));
        }
        let p = &self.params;
        let ke = |e: String| e;
        let mut a = Activations {
            b,
            t,
            ..Activations::default()
        };
        let mut x = vec![0f32; n * d];
        let emb = p.value(self.wte);
        for (i, &tok) in tokens.iter().enumerate() {
            x[i * d..(i + 1) * d].copy_from_slice(&emb[tok as usize * d..(tok as usize + 1) * d]);
        }
        let scale = 1.0 / (hd as f32).sqrt();
        for blk in &self.blocks {
            a.x_in.push(x.clone());
            let (mut h, mut mu, mut rs) = (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
            layernorm_forward(
                &x,
                n,
                d,
                p.value(blk.ln1_g),
                p.value(blk.ln1_b),
                LN_EPS,
                &mut h,
                &mut mu,
                &mut rs,
            )
            .map_err(|e| ke(e.to_string()))?;
            let mut qkv = vec![0f32; n * 3 * d];
            linear_forward(
                &h,
                n,
                p.value(blk.qkv_w),
                Some(p.value(blk.qkv_b)),
                3 * d,
                d,
                &mut qkv,
            )
            .map_err(|e| e.to_string())?;
            let mut attn = vec![0f32; n * d];
            let mut saved = Vec::new();
            for s in 0..b {
                for hh in 0..c.heads {
                    let mut qh = vec![0f32; t * hd];
                    let mut kh = vec![0f32; t * hd];
                    let mut vh = vec![0f32; t * hd];
                    for i in 0..t {
                        let row = &qkv[(s * t + i) * 3 * d..(s * t + i + 1) * 3 * d];
                        qh[i * hd..(i + 1) * hd].copy_from_slice(&row[hh * hd..(hh + 1) * hd]);
                        kh[i * hd..(i + 1) * hd]
                            .copy_from_slice(&row[d + hh * hd..d + (hh + 1) * hd]);
                        vh[i * hd..(i + 1) * hd]
                            .copy_from_slice(&row[2 * d + hh * hd..2 * d + (hh + 1) * hd]);
                    }
                    let (mut o, mut pr) = (vec![0f32; t * hd], vec![0f32; t * t]);
                    causal_attention_forward(&qh, &kh, &vh, t, hd, scale, &mut o, &mut pr)
                        .map_err(|e| e.to_string())?;
                    for i in 0..t {
                        attn[(s * t + i) * d + hh * hd..(s * t + i) * d + (hh + 1) * hd]
                            .copy_from_slice(&o[i * hd..(i + 1) * hd]);
                    }
                    saved.push([qh, kh, vh, pr]);
                }
            }
            let mut proj = vec![0f32; n * d];
            linear_forward(
                &attn,
                n,
                p.value(blk.proj_w),
                Some(p.value(blk.proj_b)),
                d,
                d,
                &mut proj,
            )
            .map_err(|e| e.to_string())?;
            for (xv, pv) in x.iter_mut().zip(&proj) {
                *xv += pv;
            }
            a.ln1.push(h);
            a.ln1_stats.push((mu, rs));
            a.heads.push(saved);
            a.attn.push(attn);
            a.x_mid.push(x.clone());
            let (mut h2, mut mu2, mut rs2) = (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
            layernorm_forward(
                &x,
                n,
                d,
                p.value(blk.ln2_g),
                p.value(blk.ln2_b),
                LN_EPS,
                &mut h2,
                &mut mu2,
                &mut rs2,
            )
            .map_err(|e| e.to_string())?;
            let mut up = vec![0f32; n * c.ffn];
            linear_forward(
                &h2,
                n,
                p.value(blk.up_w),
                Some(p.value(blk.up_b)),
                c.ffn,
                d,
                &mut up,
            )
            .map_err(|e| e.to_string())?;
            let mut act = up.clone();
            Activation::Gelu.apply_with(isa::active(), &mut act);
            let mut down = vec![0f32; n * d];
            matmul_rows(
                &act,
                c.ffn,
                n,
                &MatRef::f32(p.value(blk.down_t), c.ffn, d).map_err(|e| e.to_string())?,
                &mut down,
                d,
                false,
            )
            .map_err(|e| e.to_string())?;
            for (i, xv) in x.iter_mut().enumerate() {
                *xv += down[i] + p.value(blk.down_b)[i % d];
            }
            a.ln2.push(h2);
            a.ln2_stats.push((mu2, rs2));
            a.up.push(up);
            a.act.push(act);
        }
        let (mut hf, mut muf, mut rsf) = (vec![0f32; n * d], vec![0f32; n], vec![0f32; n]);
        layernorm_forward(
            &x,
            n,
            d,
            p.value(self.lnf_g),
            p.value(self.lnf_b),
            LN_EPS,
            &mut hf,
            &mut muf,
            &mut rsf,
        )
        .map_err(|e| e.to_string())?;
        let mut logits = vec![0f32; n * c.vocab];
        linear(
            &hf,
            d,
            n,
            &MatRef::f32(p.value(self.head), c.vocab, d).map_err(|e| e.to_string())?,
            None,
            &mut logits,
            c.vocab,
        )
        .map_err(|e| e.to_string())?;
        let mut dlogits = vec![0f32; n * c.vocab];
        let loss = cross_entropy(&logits, targets, c.vocab, &mut dlogits)
            .map_err(|e: LossError| e.to_string())?;
        a.x_out = x;
        a.lnf = hf;
        a.lnf_stats = (muf, rsf);
        a.logits = logits;
        Ok((loss, a, dlogits))
    }

    /// Backward from `dlogits` (as returned by [`DenseModel::forward`]), accumulating into
    /// the parameter gradients.
    pub fn backward(
        &mut self,
        tokens: &[u32],
        a: &Activations,
        dlogits: &[f32],
    ) -> Result<(), String> {
        let c = self.cfg;
        let (b, t) = (a.b, a.t);
        let (d, n, hd) = (c.d, b * t, c.d / c.heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let e = |e: modula_core::kernels::KernelError| e.to_string();
        let p = &mut self.params;
        // head: logits = lnf · Wᵀ
        let mut dx_f = vec![0f32; n * d];
        {
            let (w, gw) = p.value_grad(self.head, self.head);
            linear_backward(dlogits, &a.lnf, w, n, c.vocab, d, Some(&mut dx_f), gw, None)
                .map_err(e)?;
        }
        let mut dx = vec![0f32; n * d];
        {
            let (mut dg, mut db) = (vec![0f32; d], vec![0f32; d]);
            layernorm_backward(
                &dx_f,
                &a.x_out,
                n,
                d,
                p.value(self.lnf_g),
                &a.lnf_stats.0,
                &a.lnf_stats.1,
                &mut dx,
                &mut dg,
                &mut db,
            );
            add(p.grad_mut(self.lnf_g), &dg);
            add(p.grad_mut(self.lnf_b), &db);
        }
        for (l, blk) in self.blocks.iter().enumerate().rev() {
            // FFN: x = x_mid + down(act(up(ln2(x_mid)))) + down_b
            let mut db = vec![0f32; d];
            for row in dx.chunks_exact(d) {
                add(&mut db, row);
            }
            add(p.grad_mut(blk.down_b), &db);
            let mut dact = vec![0f32; n * c.ffn];
            linear(
                &dx,
                d,
                n,
                &MatRef::f32(p.value(blk.down_t), c.ffn, d).map_err(e)?,
                None,
                &mut dact,
                c.ffn,
            )
            .map_err(e)?;
            matmul_tn_acc(&a.act[l], &dx, n, c.ffn, d, p.grad_mut(blk.down_t)).map_err(e)?;
            let mut dup = vec![0f32; n * c.ffn];
            activation_backward(Activation::Gelu, &dact, &a.up[l], &mut dup);
            let mut dh2 = vec![0f32; n * d];
            let (w, dw) = p.value_grad(blk.up_w, blk.up_w);
            let mut dbu = vec![0f32; c.ffn];
            linear_backward(
                &dup,
                &a.ln2[l],
                w,
                n,
                c.ffn,
                d,
                Some(&mut dh2),
                dw,
                Some(&mut dbu),
            )
            .map_err(e)?;
            add(p.grad_mut(blk.up_b), &dbu);
            let (mut dg, mut dbb) = (vec![0f32; d], vec![0f32; d]);
            layernorm_backward(
                &dh2,
                &a.x_mid[l],
                n,
                d,
                p.value(blk.ln2_g),
                &a.ln2_stats[l].0,
                &a.ln2_stats[l].1,
                &mut dx,
                &mut dg,
                &mut dbb,
            );
            add(p.grad_mut(blk.ln2_g), &dg);
            add(p.grad_mut(blk.ln2_b), &dbb);
            // attention: x_mid = x_in + proj(attn(ln1(x_in)))
            let mut dattn = vec![0f32; n * d];
            let (w, dw) = p.value_grad(blk.proj_w, blk.proj_w);
            let mut dbp = vec![0f32; d];
            linear_backward(
                &dx,
                &a.attn[l],
                w,
                n,
                d,
                d,
                Some(&mut dattn),
                dw,
                Some(&mut dbp),
            )
            .map_err(e)?;
            add(p.grad_mut(blk.proj_b), &dbp);
            let mut dqkv = vec![0f32; n * 3 * d];
            for s in 0..b {
                for hh in 0..c.heads {
                    let [qh, kh, vh, pr] = &a.heads[l][s * c.heads + hh];
                    let mut dout = vec![0f32; t * hd];
                    for i in 0..t {
                        dout[i * hd..(i + 1) * hd].copy_from_slice(
                            &dattn[(s * t + i) * d + hh * hd..(s * t + i) * d + (hh + 1) * hd],
                        );
                    }
                    let (mut dq, mut dk, mut dv) =
                        (vec![0f32; t * hd], vec![0f32; t * hd], vec![0f32; t * hd]);
                    causal_attention_backward(
                        &dout, qh, kh, vh, pr, t, hd, scale, &mut dq, &mut dk, &mut dv,
                    );
                    for i in 0..t {
                        let row = &mut dqkv[(s * t + i) * 3 * d..(s * t + i + 1) * 3 * d];
                        add(&mut row[hh * hd..(hh + 1) * hd], &dq[i * hd..(i + 1) * hd]);
                        add(
                            &mut row[d + hh * hd..d + (hh + 1) * hd],
                            &dk[i * hd..(i + 1) * hd],
                        );
                        add(
                            &mut row[2 * d + hh * hd..2 * d + (hh + 1) * hd],
                            &dv[i * hd..(i + 1) * hd],
                        );
                    }
                }
            }
            let mut dh1 = vec![0f32; n * d];
            let (w, dw) = p.value_grad(blk.qkv_w, blk.qkv_w);
            let mut dbq = vec![0f32; 3 * d];
            linear_backward(
                &dqkv,
                &a.ln1[l],
                w,
                n,
                3 * d,
                d,
                Some(&mut dh1),
                dw,
                Some(&mut dbq),
            )
            .map_err(e)?;
            add(p.grad_mut(blk.qkv_b), &dbq);
            let (mut dg, mut dbb) = (vec![0f32; d], vec![0f32; d]);
            layernorm_backward(
                &dh1,
                &a.x_in[l],
                n,
                d,
                p.value(blk.ln1_g),
                &a.ln1_stats[l].0,
                &a.ln1_stats[l].1,
                &mut dx,
                &mut dg,
                &mut dbb,
            );
            add(p.grad_mut(blk.ln1_g), &dg);
            add(p.grad_mut(blk.ln1_b), &dbb);
        }
        // embedding: scatter-add rows
        let gw = p.grad_mut(self.wte);
        for (i, &tok) in tokens.iter().enumerate() {
            add(
                &mut gw[tok as usize * d..(tok as usize + 1) * d],
                &dx[i * d..(i + 1) * d],
            );
        }
        Ok(())
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SplitMix64) -> f32 {
    let u1 = rng.next_f32().max(1e-7);
    let u2 = rng.next_f32();
    libm::sqrtf(-2.0 * libm::logf(u1)) * libm::cosf(2.0 * core::f32::consts::PI * u2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, GradCheck};

    #[test]
    fn whole_model_gradients_match_finite_differences() {
        let cfg = DenseConfig {
            vocab: 11,
            d: 8,
            layers: 2,
            heads: 2,
            ffn: 12,
        };
        let mut m = DenseModel::new(cfg, 3).unwrap();
        // larger weights than the init so every path carries signal
        let mut r = SplitMix64(9);
        for v in m.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 11) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 1) % 11) as u32).collect();
        let (_, acts, dl) = m.forward(&tokens, &targets, b, t).unwrap();
        m.params.zero_grads();
        m.backward(&tokens, &acts, &dl).unwrap();
        let grads = m.params.grads.clone();
        let mut values = m.params.values.clone();
        let probe = m.clone();
        let f = |v: &[f32]| {
            let mut mm = probe.clone();
            mm.params.values.copy_from_slice(v);
            mm.forward(&tokens, &targets, b, t).unwrap().0
        };
        let cfg = GradCheck {
            eps: 1e-2,
            tol: 1e-2,
            floor: 1e-2,
        };
        check_grad("dense model (all parameters)", &mut values, &grads, f, cfg).unwrap();
        // and the same check notices one wrong gradient (here in block 0's qkv weight)
        let mut bad = grads.clone();
        bad[200] += 0.05;
        assert!(check_grad("dense model, corrupted", &mut values, &bad, f, cfg).is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        let cfg = DenseConfig {
            vocab: 11,
            d: 8,
            layers: 1,
            heads: 3,
            ffn: 12,
        };
        assert!(DenseModel::new(cfg, 1).is_err());
        let m = DenseModel::new(DenseConfig { heads: 2, ..cfg }, 1).unwrap();
        assert!(m.forward(&[1, 2], &[1, 2], 1, 3).is_err());
        assert!(m.forward(&[1, 20], &[1, 2], 1, 2).is_err());
        assert!(m.forward(&[1, 2], &[1, 20], 1, 2).is_err());
    }
}
