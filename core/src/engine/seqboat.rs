//! Streaming inference for causal SeqBoat models straight from a mapped file, with state
//! that does not grow with the sequence: per layer the EMA state (`N·d` floats) and a ring
//! of the last `w` activated tokens' keys, values and positions (`w·(z + e + 1)`), spec
//! A3. One token in, one state update out; after [`SbEngine::new`] a step allocates
//! nothing.
//!
//! One step, per layer: LayerNorm (pre-norm models); the EMA update (the core SIMD scan
//! with `L = 1`) plus the skip `ω⊙x̃`; `m = silu(·)`; `[u, c] = W_u m + b_u`; if
//! `u₁ > u₀ + b_act` the token is activated: `Z, R, V = silu(W_m m + b_m)`, attention over
//! the ring plus itself (softmax or relu², relative bias on original positions), the
//! output `W_h(O⊙R) + b_h` times `π₁`, and the token's key/value/position replace the
//! oldest in the ring; otherwise the attention unit is skipped entirely (its weights are
//! not read). Output `silu(c + G + x)`, LayerNorm after it (post-norm models). The
//! trainer's parallel forward over the same sequence agrees to float rounding (tests in
//! `modula-train`).
//!
//! Language models end with the final norm and the tied head; causal classifiers keep a
//! running mean of their final features over non-pad tokens and classify it on demand.
//! Bidirectional models and models without a band (`w = 0`) cannot stream in constant
//! memory and are refused.

use super::runner::{Blocks, Ends, RunHead, Runner};
use super::{layernorm_block, not_family, Bind};
use crate::arch::{Family, Gate, GauAttn, MixerSpec, Role, Task};
use crate::error::Error;
use crate::kernels::attention::{gau_local, GauFn};
use crate::kernels::elementwise::{layer_norm, silu, softmax};
use crate::kernels::ema::{ema_scan, EmaCoefs};
use crate::kernels::linear::{linear, linear_row, MatRef, QuantizedRow};
use crate::model::Model;
use crate::ModelDesc;
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

/// Shape of a SeqBoat model read from the file's `modula.*` metadata.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SbSpec {
    /// Vocabulary.
    pub vocab: usize,
    /// Classes (0: language model).
    pub classes: usize,
    /// Width d.
    pub d: usize,
    /// Layers.
    pub layers: usize,
    /// EMA expansion N.
    pub ndim: usize,
    /// Shared Q/K width z.
    pub z: usize,
    /// Value/gate width e.
    pub e: usize,
    /// Window w in activated tokens.
    pub window: usize,
    /// Causal.
    pub causal: bool,
    /// relu² attention (softmax otherwise).
    pub relu2: bool,
    /// Pre-norm (post-norm otherwise).
    pub prenorm: bool,
    /// Relative-bias range M.
    pub max_pos: usize,
    /// Gate mode: 0 learned, 1 always on, 2 off.
    pub gate: u8,
    /// Padding token.
    pub pad: Option<u32>,
    /// SortedNet: nested depths the file declares (bit `l − 1` = the first `l` layers).
    pub nested_depths: u64,
    /// Initial temperature scale (training only; kept so a file round-trips).
    pub temp_scale: f32,
    /// Epsilon of the LayerNorms (`modula.norm_epsilon`).
    pub eps: f32,
}

impl SbSpec {
    /// Read and check the architecture metadata (through the one loader,
    /// [`ModelDesc::from_model`]).
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self, Error> {
        Self::from_desc(&ModelDesc::from_model(m)?)
    }

    /// The SeqBoat decoder's view of a description.
    pub fn from_desc(desc: &ModelDesc) -> Result<Self, Error> {
        let b = layernorm_block(desc, Family::SeqBoat, "SeqBoat")?;
        let not = || not_family(desc, "SeqBoat");
        let MixerSpec::SeqBoat(sb) = b.mixer else {
            return Err(not());
        };
        let mut s = SbSpec {
            vocab: desc.vocab(),
            classes: match desc.task {
                Task::Classify { classes, .. } => classes,
                Task::Lm => 0,
            },
            d: desc.d,
            layers: desc.layers(),
            ndim: sb.ndim,
            z: sb.z,
            e: sb.e,
            window: sb.window,
            causal: sb.causal,
            relu2: sb.attn == GauAttn::Relu2,
            prenorm: sb.prenorm,
            max_pos: sb.max_pos,
            gate: match sb.gate {
                Gate::Learned => 0,
                Gate::Always => 1,
                Gate::Off => 2,
            },
            pad: sb.pad,
            nested_depths: 0,
            temp_scale: sb.temp_scale,
            eps: b.norm.eps,
        };
        for &l in &desc.nesting.depths {
            if l < s.layers && l <= 64 {
                s.nested_depths |= 1 << (l - 1);
            }
        }
        Ok(s)
    }

    /// The nested depths the file declares, ascending, ending with all layers.
    pub fn nested_depth_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (1..self.layers.min(65))
            .filter(|&l| self.nested_depths >> (l - 1) & 1 == 1)
            .collect();
        v.push(self.layers);
        v
    }

    /// The exact heap of an [`SbEngine`] for this model (no context: the state is
    /// constant): the streaming state as `kv_cache` (EMA states, the attention rings of
    /// keys, values and positions), the work buffers, the EMA coefficient tables derived
    /// from the weights as `gates`, and the per-layer tables. Checked against a built
    /// engine by a byte-counting allocator (`train/tests/engine_no_alloc.rs`).
    pub fn plan(&self) -> super::ArenaPlan {
        use core::mem::size_of;
        let (l, d, n, z, e, w) = (self.layers, self.d, self.ndim, self.z, self.e, self.window);
        let f = size_of::<f32>();
        let logits = self
            .classes
            .max(self.vocab * usize::from(self.classes == 0));
        // a classifier's running sum of features and its hidden layer
        let pool = if self.classes > 0 { 3 * d } else { 0 };
        super::ArenaPlan {
            kv_cache: (l * ((d * n + w * z + w * e) * f + w * size_of::<usize>())) as u64,
            work: (f * (5 * d + (2 + d) + (z + 2 * e) + 2 * z + (w + 1) + e + pool + logits)
                + QuantizedRow::heap_bytes(d)) as u64,
            gates: (l * 3 * d * n * f) as u64,
            tables: (l * (size_of::<SbLayerW<'_>>() + size_of::<LayerState>())) as u64,
        }
    }

    /// Floats of streaming state per sequence: `layers · (N·d + w·(z + e + 1))`.
    pub fn state_floats(&self) -> usize {
        self.layers * (self.ndim * self.d + self.window * (self.z + self.e + 1))
    }
}

#[derive(Debug)]
struct SbLayerW<'a> {
    norm: (&'a [f32], &'a [f32]),
    ema: EmaCoefs,
    omega: &'a [f32],
    gate_w: MatRef<'a>,
    gate_b: &'a [f32],
    log_temp: f32,
    in_w: MatRef<'a>,
    in_b: &'a [f32],
    qk_scale: &'a [f32],
    qk_offset: &'a [f32],
    rel: &'a [f32],
    out_w: MatRef<'a>,
    out_b: &'a [f32],
}

/// One layer's streaming state.
#[derive(Debug, Clone)]
struct LayerState {
    ema: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    pos: Vec<usize>,
    /// Tokens in the ring (≤ w).
    filled: usize,
    /// Slot the next token goes to.
    next: usize,
    activated: u64,
}

/// A causal SeqBoat model ready to stream, borrowing its weights from a [`Model`].
#[derive(Debug)]
pub struct SbEngine<'a> {
    r: Runner<'a, SbBlocks<'a>>,
}

/// The layers of a SeqBoat model for the [`Runner`]: weights, each layer's streaming
/// state, and the step's buffers.
#[derive(Debug)]
struct SbBlocks<'a> {
    spec: SbSpec,
    layers: Vec<SbLayerW<'a>>,
    state: Vec<LayerState>,
    act_bias: f32,
    /// Layers in use (SortedNet: a nested depth).
    depth: usize,
    y: Vec<f32>,
    /// `y` quantised once for the gate and the GAU's input projection.
    yq: QuantizedRow,
    uc: Vec<f32>,
    zrv: Vec<f32>,
    qv: Vec<f32>,
    kv: Vec<f32>,
    scores: Vec<f32>,
    o: Vec<f32>,
    gh: Vec<f32>,
}

/// A prompt's rows in a SeqBoat layer (empty for a step).
#[derive(Debug, Default)]
struct SbRows {
    y: Vec<f32>,
    uc: Vec<f32>,
    out: Vec<f32>,
}

impl<'a> SbEngine<'a> {
    /// Bind the weights of `m` (matrices in place, any supported type) and allocate the
    /// constant-size state.
    pub fn new<B: AsRef<[u8]>>(m: &'a Model<B>) -> Result<Self, Error> {
        // the description once: the spec and the tensor table both come from it
        let desc = ModelDesc::from_model(m)?;
        let s = SbSpec::from_desc(&desc)?;
        if !s.causal {
            return Err(Error::unsupported(
                "a bidirectional SeqBoat model cannot stream (its reverse EMA needs the future)",
            ));
        }
        if s.window == 0 {
            return Err(Error::unsupported(
                "a SeqBoat model without a band (window 0) attends to every activated token: \
                 its state grows with the sequence, so it cannot stream in constant memory",
            ));
        }
        let (d, n, z, e) = (s.d, s.ndim, s.z, s.e);
        let zw = z + 2 * e;
        // the ring is the one allocation the weights do not bound: refuse absurd windows
        if s.window
            .checked_mul(z + e + 1)
            .and_then(|r| r.checked_mul(s.layers))
            .is_none_or(|r| r > 1 << 28)
        {
            return Err(Error::input(format!(
                "window {} needs more than 1 GiB of streaming state per sequence",
                s.window
            )));
        }
        let t = Bind::new(m, &desc)?;
        drop(desc);
        let mut layers = Vec::with_capacity(s.layers);
        for l in 0..s.layers {
            let at = Some(l);
            let ema = EmaCoefs::from_raw(
                d,
                n,
                t.vector(Role::EmaDelta, at)?,
                t.vector(Role::EmaAlpha, at)?,
                t.vector(Role::EmaBeta, at)?,
                t.vector(Role::EmaGamma, at)?,
            )
            .map_err(Error::from)?;
            let lt = t.vector(Role::SbLogTemp, at)?[0];
            if !lt.is_finite() {
                return Err(Error::input(format!("blk.{l}.gate.log_temp is not finite")));
            }
            layers.push(SbLayerW {
                norm: t.norm(Role::AttnNorm, Role::AttnNormBias, at)?,
                ema,
                omega: t.vector(Role::EmaOmega, at)?,
                gate_w: t.mat(Role::SbGate, at)?,
                gate_b: t.vector(Role::SbGateBias, at)?,
                log_temp: lt,
                in_w: t.mat(Role::GauIn, at)?,
                in_b: t.vector(Role::GauInBias, at)?,
                qk_scale: t.vector(Role::GauQkScale, at)?,
                qk_offset: t.vector(Role::GauQkOffset, at)?,
                rel: t.vector(Role::GauRelBias, at)?,
                out_w: t.mat(Role::GauOut, at)?,
                out_b: t.vector(Role::GauOutBias, at)?,
            });
        }
        let final_norm = if s.prenorm {
            Some(t.final_norm()?)
        } else {
            None
        };
        let cls = if s.classes > 0 {
            Some((
                t.mat(Role::ClassifierHidden, None)?,
                t.vector(Role::ClassifierHiddenBias, None)?,
                t.mat(Role::Classifier, None)?,
            ))
        } else {
            None
        };
        let w = s.window;
        let state = (0..s.layers)
            .map(|_| LayerState {
                ema: vec![0.0; d * n],
                keys: vec![0.0; w * z],
                values: vec![0.0; w * e],
                pos: vec![0; w],
                filled: 0,
                next: 0,
                activated: 0,
            })
            .collect();
        let emb = t.mat(Role::TokenEmbd, None)?;
        let head = match cls {
            Some((w1, b1, w2)) => RunHead::MeanPool {
                w1,
                b1,
                w2,
                classes: s.classes,
                pad: s.pad,
            },
            None => RunHead::Lm(emb),
        };
        let ends = Ends {
            vocab: s.vocab,
            d,
            emb,
            pos: None,
            scale: (s.classes == 0).then(|| libm::sqrtf(d as f32)),
            norm: final_norm,
            eps: s.eps,
            head,
        };
        let b = SbBlocks {
            spec: s,
            layers,
            state,
            act_bias: 0.0,
            depth: s.layers,
            y: vec![0.0; d],
            yq: QuantizedRow::with_len(d),
            uc: vec![0.0; 2 + d],
            zrv: vec![0.0; zw],
            qv: vec![0.0; z],
            kv: vec![0.0; z],
            scores: vec![0.0; w + 1],
            o: vec![0.0; e],
            gh: vec![0.0; d],
        };
        Ok(SbEngine {
            r: Runner::new(ends, b, u32::MAX as usize, SbRows::default()),
        })
    }

    /// The architecture.
    pub fn spec(&self) -> SbSpec {
        self.r.blocks.spec
    }

    /// Tokens consumed since the last reset.
    pub fn position(&self) -> usize {
        self.r.len
    }

    /// Bias towards "skip" (`b_act`): a token runs the attention unit only if
    /// `u₁ > u₀ + b_act`. 0 is the trained behaviour.
    pub fn set_act_bias(&mut self, b: f32) -> Result<(), Error> {
        if !b.is_finite() {
            return Err(Error::input(format!("activation bias {b} is not finite")));
        }
        self.r.blocks.act_bias = b;
        Ok(())
    }

    /// Run the nested sub-model of the first `depth` layers (then the final norm and the
    /// head) from the next token on; `None`: all layers. Nothing is copied or allocated;
    /// the other layers' weights are never read. Starts a new sequence. The depths the file
    /// declares (`modula.nested.depths`) are the ones trained for it.
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

    /// Layers in use.
    pub fn depth(&self) -> usize {
        self.r.blocks.depth
    }

    /// Start a new sequence.
    pub fn reset(&mut self) {
        self.r.reset();
    }

    /// Per layer: tokens that ran the attention unit, and the non-pad tokens seen.
    pub fn activations(&self) -> (Vec<u64>, u64) {
        (
            self.r.blocks.state.iter().map(|s| s.activated).collect(),
            self.r.real,
        )
    }

    /// The heap this engine holds, from its buffers' capacities (equal to
    /// [`SbSpec::plan`]).
    pub fn arena_bytes(&self) -> super::ArenaPlan {
        use core::mem::size_of;
        let f4 = |v: &Vec<f32>| (v.capacity() * size_of::<f32>()) as u64;
        let b = &self.r.blocks;
        let kv = b
            .state
            .iter()
            .map(|st| {
                f4(&st.ema)
                    + f4(&st.keys)
                    + f4(&st.values)
                    + (st.pos.capacity() * size_of::<usize>()) as u64
            })
            .sum();
        let rows = self.r.step_work();
        let work = self.r.heap_bytes()
            + [
                &b.y, &b.uc, &b.zrv, &b.qv, &b.kv, &b.scores, &b.o, &b.gh, &rows.y, &rows.uc,
                &rows.out,
            ]
            .into_iter()
            .map(f4)
            .sum::<u64>()
            + b.yq.capacity_bytes() as u64;
        super::ArenaPlan {
            kv_cache: kv,
            work,
            gates: b.layers.iter().map(|l| l.ema.heap_bytes() as u64).sum(),
            tables: (b.layers.capacity() * size_of::<SbLayerW<'_>>()
                + b.state.capacity() * size_of::<LayerState>()) as u64,
        }
    }

    /// Bytes of streaming state per sequence (constant in the sequence length).
    pub fn state_bytes(&self) -> usize {
        self.r.blocks.spec.state_floats() * 4
    }
}

impl SbBlocks<'_> {
    /// Layer `l` for one token at `pos` (the decode step). Allocates nothing.
    fn step_layer(
        &mut self,
        l: usize,
        token: u32,
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
    ) -> Result<(), Error> {
        let s = self.spec;
        let (d, z, e) = (s.d, s.z, s.e);
        let pad = Some(token) == s.pad;
        let alpha = if s.relu2 {
            1.0 / s.window as f32
        } else {
            1.0 / libm::sqrtf(z as f32)
        };
        let lw = &self.layers[l];
        // input norm, pad masking
        if s.prenorm {
            layer_norm(x, Some(lw.norm.0), Some(lw.norm.1), s.eps, h)?;
        } else {
            h.copy_from_slice(x);
        }
        if pad {
            h.fill(0.0);
        }
        let st = &mut self.state[l];
        ema_scan(&lw.ema, h, 1, &mut st.ema, &mut self.y)?;
        for ((yv, w), hv) in self.y.iter_mut().zip(lw.omega).zip(h.iter()) {
            *yv += w * hv;
        }
        silu(&mut self.y);
        // quantised once for the gate and (when the token is activated) the GAU input
        self.yq.set(&self.y);
        linear_row(
            &self.y,
            &self.yq,
            &lw.gate_w,
            Some(lw.gate_b),
            &mut self.uc[..2 + d],
        )?;
        let diff = self.uc[1] - (self.uc[0] + self.act_bias);
        let act = !pad
            && match s.gate {
                0 => diff > 0.0,
                1 => true,
                _ => false,
            };
        // SSM path + residual
        for ((g, u), xv) in self.gh.iter_mut().zip(&self.uc[2..2 + d]).zip(x.iter()) {
            *g = u + xv;
        }
        if act {
            st.activated += 1;
            let tau = libm::expf(lw.log_temp);
            let g = if s.gate == 1 {
                1.0
            } else {
                1.0 / (1.0 + libm::expf(-diff / tau))
            };
            linear_row(
                &self.y,
                &self.yq,
                &lw.in_w,
                Some(lw.in_b),
                &mut self.zrv[..z + 2 * e],
            )?;
            silu(&mut self.zrv);
            for i in 0..z {
                let zv = self.zrv[i];
                self.qv[i] = zv * lw.qk_scale[i] + lw.qk_offset[i];
                self.kv[i] = zv * lw.qk_scale[z + i] + lw.qk_offset[z + i];
            }
            // keys: the ring, oldest first, then this token
            let w = s.window;
            let cnt = st.filled;
            let oldest = (st.next + w - cnt) % w;
            let m1 = s.max_pos as i64 - 1;
            let bias = |pj: usize| {
                let off = (pj as i64 - pos as i64).clamp(-m1, m1);
                lw.rel[(m1 + off) as usize]
            };
            for i in 0..=cnt {
                let (k, pj) = if i < cnt {
                    let slot = (oldest + i) % w;
                    (&st.keys[slot * z..(slot + 1) * z], st.pos[slot])
                } else {
                    (&self.kv[..], pos)
                };
                let sc = alpha * dot(&self.qv, k) + bias(pj);
                self.scores[i] = sc;
            }
            let sc = &mut self.scores[..=cnt];
            if s.relu2 {
                sc.iter_mut().for_each(|v| *v = v.max(0.0) * v.max(0.0));
            } else {
                // the SIMD softmax (was a scalar `expf` per key)
                softmax(sc);
            }
            self.o.fill(0.0);
            for i in 0..=cnt {
                let v = if i < cnt {
                    let slot = (oldest + i) % w;
                    &st.values[slot * e..(slot + 1) * e]
                } else {
                    &self.zrv[z + e..z + 2 * e]
                };
                let a = self.scores[i];
                for (o, vv) in self.o.iter_mut().zip(v) {
                    *o += a * vv;
                }
            }
            for i in 0..e {
                self.o[i] *= self.zrv[z + i];
            }
            linear(&self.o, e, 1, &lw.out_w, Some(lw.out_b), &mut self.y, d)?;
            for j in 0..d {
                self.gh[j] += g * self.y[j];
            }
            // this token into the ring
            let slot = st.next;
            st.keys[slot * z..(slot + 1) * z].copy_from_slice(&self.kv);
            st.values[slot * e..(slot + 1) * e].copy_from_slice(&self.zrv[z + e..z + 2 * e]);
            st.pos[slot] = pos;
            st.next = (slot + 1) % w;
            st.filled = (cnt + 1).min(w);
        }
        h.copy_from_slice(&self.gh);
        silu(h);
        if s.prenorm {
            x.copy_from_slice(h);
        } else {
            layer_norm(h, Some(lw.norm.0), Some(lw.norm.1), s.eps, x)?;
        }
        Ok(())
    }

    /// Layer `l` over a prompt's rows at positions `p0..`, with batched kernels: the SIMD
    /// EMA scan over all tokens, one matrix product for the gates, one for the activated
    /// tokens' projections, the band-attention kernel over the ring plus the activated
    /// tokens, one for the outputs. The streaming state is left exactly as after the steps.
    #[allow(clippy::too_many_arguments)]
    fn prefill_layer(
        &mut self,
        l: usize,
        tokens: &[u32],
        p0: usize,
        x: &mut [f32],
        h: &mut [f32],
        rows_buf: &mut SbRows,
    ) -> Result<(), Error> {
        let s = self.spec;
        let t = tokens.len();
        let (d, z, e, w) = (s.d, s.z, s.e, s.window);
        let zw = z + 2 * e;
        let f = if s.relu2 {
            GauFn::Relu2 { ell: w as f32 }
        } else {
            GauFn::Softmax {
                scale: 1.0 / libm::sqrtf(z as f32),
            }
        };
        let SbRows { y, uc, out } = rows_buf;
        let (y, uc, out) = (&mut y[..], &mut uc[..], &mut out[..]);
        let lw = &self.layers[l];
        for r in 0..t {
            let (src, dst) = (&x[r * d..(r + 1) * d], &mut h[r * d..(r + 1) * d]);
            if Some(tokens[r]) == s.pad {
                dst.fill(0.0);
            } else if s.prenorm {
                layer_norm(src, Some(lw.norm.0), Some(lw.norm.1), s.eps, dst)?;
            } else {
                dst.copy_from_slice(src);
            }
        }
        let st = &mut self.state[l];
        ema_scan(&lw.ema, h, t, &mut st.ema, y)?;
        for (r, yr) in y.chunks_exact_mut(d).enumerate() {
            for j in 0..d {
                yr[j] += lw.omega[j] * h[r * d + j];
            }
            // row by row, as `step` does (the SIMD tail falls on the same elements)
            silu(yr);
        }
        linear(y, d, t, &lw.gate_w, Some(lw.gate_b), uc, 2 + d)?;
        let tau = libm::expf(lw.log_temp);
        let mut rows = Vec::new();
        let mut gates = Vec::new();
        for r in 0..t {
            let u = &uc[r * (2 + d)..];
            let diff = u[1] - (u[0] + self.act_bias);
            let act = Some(tokens[r]) != s.pad
                && match s.gate {
                    0 => diff > 0.0,
                    1 => true,
                    _ => false,
                };
            if act {
                rows.push(r);
                gates.push(if s.gate == 1 {
                    1.0
                } else {
                    1.0 / (1.0 + libm::expf(-diff / tau))
                });
            }
        }
        let lc = rows.len();
        st.activated += lc as u64;
        // residual + SSM path
        for r in 0..t {
            for j in 0..d {
                out[r * d + j] = uc[r * (2 + d) + 2 + j] + x[r * d + j];
            }
        }
        if lc > 0 {
            let mut mh = vec![0f32; lc * d];
            for (k, &r) in rows.iter().enumerate() {
                mh[k * d..(k + 1) * d].copy_from_slice(&y[r * d..(r + 1) * d]);
            }
            let mut zrv = vec![0f32; lc * zw];
            linear(&mh, d, lc, &lw.in_w, Some(lw.in_b), &mut zrv, zw)?;
            zrv.chunks_exact_mut(zw).for_each(silu);
            // the ring (oldest first, no queries) followed by the new activated tokens
            let cnt = st.filled;
            let all = cnt + lc;
            let mut q = vec![0f32; all * z];
            let mut k = vec![0f32; all * z];
            let mut v = vec![0f32; all * e];
            let mut pos = vec![0u32; all];
            let oldest = (st.next + w - cnt) % w;
            for i in 0..cnt {
                let slot = (oldest + i) % w;
                k[i * z..(i + 1) * z].copy_from_slice(&st.keys[slot * z..(slot + 1) * z]);
                v[i * e..(i + 1) * e].copy_from_slice(&st.values[slot * e..(slot + 1) * e]);
                pos[i] = st.pos[slot] as u32;
            }
            for (kk, &r) in rows.iter().enumerate() {
                let i = cnt + kk;
                let zr = &zrv[kk * zw..(kk + 1) * zw];
                for c in 0..z {
                    q[i * z + c] = zr[c] * lw.qk_scale[c] + lw.qk_offset[c];
                    k[i * z + c] = zr[c] * lw.qk_scale[z + c] + lw.qk_offset[z + c];
                }
                v[i * e..(i + 1) * e].copy_from_slice(&zr[z + e..]);
                pos[i] = (p0 + r) as u32;
            }
            let mut o = vec![0f32; all * e];
            let mut scratch = vec![0f32; (w + 1).min(all)];
            gau_local(
                &q,
                &k,
                &v,
                &pos,
                z,
                e,
                w,
                true,
                f,
                Some(lw.rel),
                &mut o,
                &mut scratch,
            )?;
            let mut or = vec![0f32; lc * e];
            for kk in 0..lc {
                for c in 0..e {
                    or[kk * e + c] = o[(cnt + kk) * e + c] * zrv[kk * zw + z + c];
                }
            }
            let mut h = vec![0f32; lc * d];
            linear(&or, e, lc, &lw.out_w, Some(lw.out_b), &mut h, d)?;
            for (kk, &r) in rows.iter().enumerate() {
                for j in 0..d {
                    out[r * d + j] += gates[kk] * h[kk * d + j];
                }
            }
            // the ring keeps the last w activated tokens
            let keep = all.min(w);
            for i in all - keep..all {
                let slot = st.next;
                st.keys[slot * z..(slot + 1) * z].copy_from_slice(&k[i * z..(i + 1) * z]);
                st.values[slot * e..(slot + 1) * e].copy_from_slice(&v[i * e..(i + 1) * e]);
                st.pos[slot] = pos[i] as usize;
                st.next = (slot + 1) % w;
            }
            st.filled = (cnt + lc).min(w);
        }
        for r in 0..t {
            let o = &mut out[r * d..(r + 1) * d];
            silu(o);
            let xr = &mut x[r * d..(r + 1) * d];
            if s.prenorm {
                xr.copy_from_slice(o);
            } else {
                layer_norm(o, Some(lw.norm.0), Some(lw.norm.1), s.eps, xr)?;
            }
        }
        Ok(())
    }
}

impl Blocks for SbBlocks<'_> {
    type Work = SbRows;

    fn work(&self, n: usize) -> SbRows {
        let d = self.spec.d;
        SbRows {
            y: vec![0.0; n * d],
            uc: vec![0.0; n * (2 + d)],
            out: vec![0.0; n * d],
        }
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn reset(&mut self) {
        for st in &mut self.state {
            st.ema.fill(0.0);
            st.filled = 0;
            st.next = 0;
            st.activated = 0;
        }
    }

    fn run(
        &mut self,
        l: usize,
        tokens: &[u32],
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
        w: &mut SbRows,
    ) -> Result<(), Error> {
        match tokens {
            &[token] => self.step_layer(l, token, pos, x, h),
            _ => self.prefill_layer(l, tokens, pos, x, h, w),
        }
    }
}

impl SbEngine<'_> {
    /// Consume one token. For a language model returns the next-token logits; for a
    /// classifier returns an empty slice (see [`SbEngine::classify`]).
    pub fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        self.r.step(token)
    }

    /// Consume a whole prompt at once — the same result as [`SbEngine::step`] on each
    /// token (to float rounding), but layer by layer with batched kernels (parallel over
    /// queries in the band attention). The streaming state is left exactly as after the
    /// steps. Returns the last token's logits (language models) or an empty slice
    /// (classifiers). Allocates working buffers proportional to the prompt.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        self.r.prefill(tokens)
    }

    /// The final features of the last token (after the final norm of pre-norm models).
    pub fn features(&self) -> &[f32] {
        &self.r.feats
    }

    /// A classifier's logits for the sequence so far (mean of the final features over its
    /// non-pad tokens through the head).
    pub fn classify(&mut self) -> Result<&[f32], Error> {
        self.r.classify()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
