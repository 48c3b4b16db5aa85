//! Modular networks for m2mKD: a network is a list of *modules* (stages); each module is a
//! group of pre-LN transformer blocks — dense GELU FFN or a V-MoE-style top-k mixture of
//! expert FFNs — and owns the input embedding when it is the first module, the final norm
//! and head when it is the last, and linear "stitches" (LayerNorm + Linear) when its width
//! differs from the width of the network it is plugged into.
//!
//! All modules of a [`Net`] share one [`ParamStore`] with names `mod.{i}.…`, so a network
//! that holds only module `i` (a teacher or student module) has exactly the names of that
//! module inside the whole network: splitting and assembling are copies by name, checked
//! both ways (nothing silently dropped except the stitches, which are reported).
//!
//! Every forward keeps what its backward needs; the backward can skip parameter gradients
//! (a frozen meta suffix only passes gradients through).

use crate::layers::linear::linear_backward;
use crate::layers::mha::{linear_backward_maybe, LN_EPS};
use crate::params::{ParamStore, ParamTable};
use crate::stack::{Grads, Norm, NormSaved, Rows, Run, Saved, Stack, StackSaved};
use crate::tasks::{Batch, TaskShape};
use modula_core::arch::{
    Act, AttentionSpec, AttnLayout, BlockSpec, FfnKind, FfnSpec, Layout, MixerSpec, NormKind,
    NormSpec, Role, RouterKind, TensorSpec,
};
use modula_core::Error;

/// Shape of one module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageCfg {
    /// Position of the module in the whole network (0-based).
    pub index: usize,
    /// Modules in the whole network.
    pub of: usize,
    /// Width inside the module.
    pub d: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN hidden width (per expert in MoE blocks).
    pub ffn: usize,
    /// Blocks.
    pub blocks: usize,
    /// Bit `j` set: block `j` has a mixture-of-experts FFN.
    pub moe: u64,
    /// Experts per MoE block.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Width of the hidden stream entering the module (ignored for the first module, which
    /// embeds the input); a pre-stitch maps it to `d` when it differs.
    pub in_width: usize,
    /// Width of the hidden stream leaving the module (ignored for the last module, which
    /// emits logits); a post-stitch maps `d` to it when it differs.
    pub out_width: usize,
}

impl StageCfg {
    /// Whether this module embeds the input.
    pub fn first(&self) -> bool {
        self.index == 0
    }
    /// Whether this module emits the logits.
    pub fn last(&self) -> bool {
        self.index + 1 == self.of
    }
    /// Whether block `j` is a mixture of experts.
    pub fn is_moe(&self, j: usize) -> bool {
        j < 64 && self.moe >> j & 1 == 1
    }
    fn stitch_in(&self) -> bool {
        !self.first() && self.in_width != self.d
    }
    fn stitch_out(&self) -> bool {
        !self.last() && self.out_width != self.d
    }
    fn check(&self) -> Result<(), Error> {
        let i = self.index;
        if self.of == 0 || i >= self.of {
            return Err(Error::input(format!(
                "module {i} of {} does not exist",
                self.of
            )));
        }
        if self.d == 0 || self.heads == 0 || !self.d.is_multiple_of(self.heads) {
            return Err(Error::input(format!(
                "module {i}: width {} must be a positive multiple of the {} heads",
                self.d, self.heads
            )));
        }
        if self.blocks == 0 || self.blocks > 64 || self.ffn == 0 {
            return Err(Error::input(format!(
                "module {i}: {} blocks (1..=64) with FFN width {} (> 0)",
                self.blocks, self.ffn
            )));
        }
        if self.blocks < 64 && self.moe >> self.blocks != 0 {
            return Err(Error::input(format!(
                "module {i}: MoE mask names blocks it does not have"
            )));
        }
        if self.of > 4096 || self.experts > 4096 {
            return Err(Error::input(format!(
                "module {i}: {} modules and {} experts (at most 4096 each)",
                self.of, self.experts
            )));
        }
        if self.moe != 0 && (self.experts < 2 || self.top_k == 0 || self.top_k > self.experts) {
            return Err(Error::input(format!(
                "module {i}: {} experts with top-{} (need >= 2 experts, 1 <= k <= experts)",
                self.experts, self.top_k
            )));
        }
        if (!self.first() && self.in_width == 0) || (!self.last() && self.out_width == 0) {
            return Err(Error::input(format!(
                "module {i}: interface widths must be positive"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Lin {
    w: usize,
    b: usize,
}

#[derive(Clone, Copy, Debug)]
enum Embed {
    /// Token table `[vocab, d]`.
    Tokens(usize),
    /// Patch projection.
    Patches(Lin),
}

#[derive(Clone, Debug)]
struct Stitch {
    ln: Lin,
    lin: Lin,
}

/// One module's parameter indices.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Shape.
    pub cfg: StageCfg,
    stitch_in: Option<Stitch>,
    embed: Option<Embed>,
    pos: Option<usize>,
    /// The blocks (attention; dense or mixture FFN), bound by role.
    stack: Stack,
    stitch_out: Option<Stitch>,
    head_ln: Option<Lin>,
    head: Option<Lin>,
}

/// A network made of consecutive modules `first..first + stages.len()` of a whole network,
/// with one parameter store.
#[derive(Clone, Debug)]
pub struct Net {
    /// The task (input kind, classes, sequence length, mask, pooling).
    pub task: TaskShape,
    /// The modules, in order.
    pub stages: Vec<Stage>,
    /// Parameters of all modules.
    pub params: ParamStore,
    /// Test hook: fixed expert choices per (module, block) (`[n·k]`) instead of the
    /// router's top-k — a gradient check holds the piecewise-constant choices fixed.
    pub forced: Vec<((usize, usize), Vec<u32>)>,
}

/// The input of a module: the task's input (first module) or a hidden stream `[b·t, w]`.
#[derive(Clone, Copy, Debug)]
pub enum StageInput<'a> {
    /// The batch (tokens or patch features).
    Batch(&'a Batch),
    /// Hidden states.
    Hidden(&'a [f32]),
}

/// A LayerNorm's output and statistics (the block stack's).
type LnSaved = NormSaved;

/// What one module's forward keeps for its backward, and its output.
#[derive(Clone, Debug, Default)]
pub struct StageActs {
    b: usize,
    t: usize,
    stitch_in: Option<(Vec<f32>, LnSaved)>,
    blocks: StackSaved,
    x_out: Vec<f32>,
    stitch_out: Option<LnSaved>,
    head_ln: Option<LnSaved>,
    pooled: Vec<f32>,
    /// Hidden states `[b·t, out_width]` or logits (`[b, classes]` / `[b·t, vocab]`).
    pub out: Vec<f32>,
    /// Per MoE block: tokens per expert (first choices and later ones together).
    pub expert_load: Vec<Vec<u32>>,
}

impl StageActs {
    /// Per MoE block: the expert-load balance `H(load)/ln E` of the top-k assignments
    /// (1 = every expert got the same number of tokens) and the mean per-token router
    /// entropy `H(p)/ln E` (0 = every token certain).
    pub fn router_usage(&self) -> Vec<(f32, f32)> {
        self.moe()
            .map(|(_, m)| {
                let e = m.experts.len();
                let ln = (e.max(2) as f64).ln();
                let total: usize = m.experts.iter().map(|x| x.0.len()).sum();
                let balance = -m
                    .experts
                    .iter()
                    .map(|x| x.0.len() as f64 / total.max(1) as f64)
                    .filter(|&f| f > 0.0)
                    .map(|f| f * f.ln())
                    .sum::<f64>();
                let n = m.probs.len() / e.max(1);
                let (ent, _) = crate::layers::router::router_entropy(&m.probs, n, e);
                ((balance / ln) as f32, (ent.conditional / ln) as f32)
            })
            .collect()
    }

    /// The expert choices `[n·k]` of every MoE block, keyed by block index.
    pub fn selections(&self) -> Vec<(usize, Vec<u32>)> {
        self.moe().map(|(j, m)| (j, m.sel.clone())).collect()
    }

    /// The mixture sub-layers' saved states with their block indices.
    fn moe(&self) -> impl Iterator<Item = (usize, &crate::stack::MoeSaved)> {
        self.blocks.by_block().filter_map(|(j, s)| match s {
            Saved::Moe(m) => Some((j, m)),
            _ => None,
        })
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// The block stack's LayerNorm over a stitch's or the head's norm parameters.
fn norm_of(ln: Lin) -> Norm {
    Norm {
        g: ln.w,
        b: ln.b,
        eps: LN_EPS,
    }
}

fn ln_fwd(p: &ParamStore, ln: Lin, x: &[f32], n: usize, d: usize) -> Result<LnSaved, Error> {
    norm_of(ln).forward(p, x, n, d)
}

/// `dx += LN backward(dy)`; parameter gradients when `pg`.
#[allow(clippy::too_many_arguments)]
fn ln_bwd(
    p: &mut ParamStore,
    ln: Lin,
    s: &LnSaved,
    x: &[f32],
    n: usize,
    d: usize,
    dy: &[f32],
    dx: &mut [f32],
    pg: bool,
) {
    norm_of(ln).backward(p, s, x, n, d, dy, dx, pg);
}

fn lin_fwd(
    p: &ParamStore,
    l: Lin,
    x: &[f32],
    n: usize,
    out: usize,
    inp: usize,
) -> Result<Vec<f32>, Error> {
    let l = crate::stack::Lin {
        w: l.w,
        b: Some(l.b),
    };
    crate::stack::lin_fwd(p, l, x, n, out, inp)
}

/// `dx += dy W`; `dW, db` when `pg`.
#[allow(clippy::too_many_arguments)]
fn lin_bwd(
    p: &mut ParamStore,
    l: Lin,
    x: &[f32],
    n: usize,
    out: usize,
    inp: usize,
    dy: &[f32],
    dx: Option<&mut [f32]>,
    pg: bool,
) -> Result<(), Error> {
    let mut db = vec![0f32; out];
    let (w, dw) = p.value_grad(l.w, l.w);
    match (dx, pg) {
        (Some(dx), pg) => {
            let g = pg.then_some((dw, Some(&mut db[..])));
            linear_backward_maybe(dy, x, w, n, out, inp, dx, g)?;
        }
        (None, true) => {
            linear_backward(dy, x, w, n, out, inp, None, dw, Some(&mut db))?;
        }
        (None, false) => return Ok(()),
    }
    if pg {
        add(p.grad_mut(l.b), &db);
    }
    Ok(())
}

fn lin(t: &mut ParamTable, pre: &str, name: &str, out: usize, inp: usize) -> Result<Lin, Error> {
    Ok(Lin {
        w: t.add(&format!("{pre}{name}.weight"), &[out, inp], true)?,
        b: t.add(&format!("{pre}{name}.bias"), &[out], false)?,
    })
}

fn norm(t: &mut ParamTable, pre: &str, name: &str, w: usize) -> Result<Lin, Error> {
    Ok(Lin {
        w: t.add(&format!("{pre}{name}.weight"), &[w], false)?,
        b: t.add(&format!("{pre}{name}.bias"), &[w], false)?,
    })
}

/// The blocks of module `c` as the trainer's block stack reads them: pre-LN blocks of
/// softmax attention (fused q | k | v with biases) and a GELU FFN — dense, or a top-k
/// mixture of expert FFNs with a linear router (`ffn_gate_inp`, with bias) — and their
/// tensors under names relative to the module (`blk.{j}.…`), in the order they are
/// declared.
fn stage_blocks(c: &StageCfg, causal: bool) -> (Vec<BlockSpec>, Vec<TensorSpec>) {
    let (d, f) = (c.d, c.ffn);
    let norm = NormSpec {
        kind: NormKind::LayerNorm,
        eps: LN_EPS,
    };
    let mut specs = Vec::with_capacity(c.blocks);
    let mut ts = Vec::new();
    for j in 0..c.blocks {
        let moe = c.is_moe(j);
        specs.push(BlockSpec {
            norm,
            mixer: MixerSpec::Attention(AttentionSpec {
                heads: c.heads,
                kv_heads: c.heads,
                head_dim: d / c.heads,
                causal,
                bias: true,
                layout: AttnLayout::Qkv,
            }),
            ffn: Some((
                norm,
                FfnSpec {
                    width: f,
                    act: Act::Gelu,
                    gated: false,
                    bias: true,
                    kind: if moe {
                        FfnKind::Moe {
                            experts: c.experts,
                            top_k: c.top_k,
                            router: RouterKind::Linear,
                            renormalize: true,
                        }
                    } else {
                        FfnKind::Dense
                    },
                },
            )),
        });
        let mut add = |name: String, role: Role, expert: Option<usize>, shape: Vec<usize>| {
            let layout = if shape.len() == 1 {
                Layout::Vector
            } else {
                Layout::OutIn
            };
            ts.push(TensorSpec {
                name,
                role,
                block: Some(j),
                expert,
                shape,
                layout,
            });
        };
        let b = |s: &str| format!("blk.{j}.{s}");
        add(b("attn_norm.weight"), Role::AttnNorm, None, vec![d]);
        add(b("attn_norm.bias"), Role::AttnNormBias, None, vec![d]);
        add(b("attn_qkv.weight"), Role::AttnQkv, None, vec![3 * d, d]);
        add(b("attn_qkv.bias"), Role::AttnQkvBias, None, vec![3 * d]);
        add(b("attn_output.weight"), Role::AttnOut, None, vec![d, d]);
        add(b("attn_output.bias"), Role::AttnOutBias, None, vec![d]);
        add(b("ffn_norm.weight"), Role::FfnNorm, None, vec![d]);
        add(b("ffn_norm.bias"), Role::FfnNormBias, None, vec![d]);
        if moe {
            add(
                b("ffn_gate_inp.weight"),
                Role::Router,
                None,
                vec![c.experts, d],
            );
            add(
                b("ffn_gate_inp.bias"),
                Role::RouterBias,
                None,
                vec![c.experts],
            );
            for e in 0..c.experts {
                let x = Some(e);
                add(b(&format!("ffn_up.{e}.weight")), Role::FfnUp, x, vec![f, d]);
                add(b(&format!("ffn_up.{e}.bias")), Role::FfnUpBias, x, vec![f]);
                add(
                    b(&format!("ffn_down.{e}.weight")),
                    Role::FfnDown,
                    x,
                    vec![d, f],
                );
                add(
                    b(&format!("ffn_down.{e}.bias")),
                    Role::FfnDownBias,
                    x,
                    vec![d],
                );
            }
        } else {
            add(b("ffn_up.weight"), Role::FfnUp, None, vec![f, d]);
            add(b("ffn_up.bias"), Role::FfnUpBias, None, vec![f]);
            add(b("ffn_down.weight"), Role::FfnDown, None, vec![d, f]);
            add(b("ffn_down.bias"), Role::FfnDownBias, None, vec![d]);
        }
    }
    (specs, ts)
}

impl Net {
    /// A network of the modules `cfgs` (consecutive indices of one whole network) for
    /// `task`, initialised deterministically from `seed` (N(0, 0.02); residual output
    /// projections scaled by 1/√(2·blocks); norms γ = 1, β = 0; biases 0).
    pub fn new(task: TaskShape, cfgs: &[StageCfg], seed: u64) -> Result<Net, Error> {
        let (t, stages) = Self::layout(task, cfgs)?;
        let mut params = t.build();
        let blocks: usize = cfgs.iter().map(|c| c.blocks).sum::<usize>() * cfgs[0].of / cfgs.len();
        crate::model::dense::gpt2_init(&mut params, seed, blocks);
        Ok(Net {
            task,
            stages,
            params,
            forced: Vec::new(),
        })
    }

    /// The parameter table and module indices of a network (nothing allocated).
    fn layout(task: TaskShape, cfgs: &[StageCfg]) -> Result<(ParamTable, Vec<Stage>), Error> {
        if cfgs.is_empty() {
            return Err(Error::input("a network needs at least one module"));
        }
        if task.seq.is_none() || task.seq == Some(0) {
            return Err(Error::input("m2mKD networks need a fixed sequence length"));
        }
        for (a, b) in cfgs.iter().zip(cfgs.iter().skip(1)) {
            if b.index != a.index + 1 || a.of != b.of {
                return Err(Error::input("modules of a network must be consecutive"));
            }
            if a.out_width != b.in_width {
                return Err(Error::input(format!(
                    "module {} emits width {} but module {} takes {}",
                    a.index, a.out_width, b.index, b.in_width
                )));
            }
        }
        let mut t = ParamTable::new();
        let mut stages = Vec::new();
        let seq = task.seq.unwrap_or(0);
        let outs = if task.classes > 0 {
            task.classes
        } else {
            task.vocab
        };
        for c in cfgs {
            c.check()?;
            let pre = format!("mod.{}.", c.index);
            let d = c.d;
            let t = &mut t;
            let stitch_in = if c.stitch_in() {
                Some(Stitch {
                    ln: norm(t, &pre, "stitch_in_norm", c.in_width)?,
                    lin: lin(t, &pre, "stitch_in", d, c.in_width)?,
                })
            } else {
                None
            };
            let embed = match (c.first(), task.patch_dim) {
                (false, _) => None,
                (true, 0) => Some(Embed::Tokens(t.add(
                    &format!("{pre}token_embd.weight"),
                    &[task.vocab, d],
                    true,
                )?)),
                (true, pd) => Some(Embed::Patches(lin(t, &pre, "patch_embd", d, pd)?)),
            };
            let pos = if c.first() {
                Some(t.add(&format!("{pre}position_embd.weight"), &[seq, d], true)?)
            } else {
                None
            };
            let (specs, tensors) = stage_blocks(c, task.causal);
            t.add_tensors(&tensors, &pre)?;
            let stack = Stack::bind(&specs, &tensors, t.specs(), &pre)?;
            let stitch_out = if c.stitch_out() {
                Some(Stitch {
                    ln: norm(t, &pre, "stitch_out_norm", d)?,
                    lin: lin(t, &pre, "stitch_out", c.out_width, d)?,
                })
            } else {
                None
            };
            let (head_ln, head) = if c.last() {
                (
                    Some(norm(t, &pre, "output_norm", d)?),
                    Some(lin(t, &pre, "output", outs, d)?),
                )
            } else {
                (None, None)
            };
            stages.push(Stage {
                cfg: c.clone(),
                stitch_in,
                embed,
                pos,
                stack,
                stitch_out,
                head_ln,
                head,
            });
        }
        Ok((t, stages))
    }

    /// Index of the first module.
    pub fn first_module(&self) -> usize {
        self.stages[0].cfg.index
    }

    /// Logits per row of the last module (classes or vocabulary).
    pub fn outputs(&self) -> usize {
        if self.task.classes > 0 {
            self.task.classes
        } else {
            self.task.vocab
        }
    }
}

impl Net {
    fn stage_pos(&self, module: usize) -> Result<usize, Error> {
        let first = self.first_module();
        module
            .checked_sub(first)
            .filter(|&s| s < self.stages.len())
            .ok_or_else(|| {
                Error::input(format!(
                    "module {module} is not in this network (modules {first}..{})",
                    first + self.stages.len()
                ))
            })
    }

    /// Forward of module `module` (its index in the whole network) over `b` sequences of
    /// `t`.
    pub fn forward_stage(
        &self,
        module: usize,
        input: StageInput<'_>,
        b: usize,
        t: usize,
    ) -> Result<StageActs, Error> {
        let st = &self.stages[self.stage_pos(module)?];
        let c = &st.cfg;
        let p = &self.params;
        let (d, n) = (c.d, b * t);
        if Some(t) != self.task.seq {
            return Err(Error::input(format!(
                "sequences of {t} positions; this network takes {:?}",
                self.task.seq
            )));
        }
        let mut a = StageActs {
            b,
            t,
            ..StageActs::default()
        };
        let mut x = match (input, st.embed) {
            (StageInput::Batch(batch), Some(emb)) => {
                if (batch.b, batch.t) != (b, t) {
                    return Err(Error::input("batch shape does not match"));
                }
                let mut x = vec![0f32; n * d];
                match emb {
                    Embed::Tokens(table) => {
                        if batch.tokens.len() != n {
                            return Err(Error::input(format!(
                                "expected {n} tokens, got {} (is the input an image?)",
                                batch.tokens.len()
                            )));
                        }
                        let tab = p.value(table);
                        for (i, &tok) in batch.tokens.iter().enumerate() {
                            let r = tok as usize;
                            if r >= self.task.vocab {
                                return Err(Error::input(format!(
                                    "token {tok} is outside the vocabulary"
                                )));
                            }
                            x[i * d..(i + 1) * d].copy_from_slice(&tab[r * d..(r + 1) * d]);
                        }
                    }
                    Embed::Patches(l) => {
                        let pd = self.task.patch_dim;
                        if batch.features.len() != n * pd {
                            return Err(Error::input(format!(
                                "expected {n}x{pd} features, got {}",
                                batch.features.len()
                            )));
                        }
                        x = lin_fwd(p, l, &batch.features, n, d, pd)?;
                    }
                }
                if let Some(pos) = st.pos {
                    let tab = p.value(pos);
                    for (i, row) in x.chunks_exact_mut(d).enumerate() {
                        add(row, &tab[(i % t) * d..(i % t + 1) * d]);
                    }
                }
                x
            }
            (StageInput::Hidden(h), None) => {
                if h.len() != n * c.in_width {
                    return Err(Error::input(format!(
                        "module {}: hidden input of {} values is not [{n}, {}]",
                        c.index,
                        h.len(),
                        c.in_width
                    )));
                }
                match &st.stitch_in {
                    Some(s) => {
                        let ln = ln_fwd(p, s.ln, h, n, c.in_width)?;
                        let x = lin_fwd(p, s.lin, &ln.y, n, d, c.in_width)?;
                        a.stitch_in = Some((h.to_vec(), ln));
                        x
                    }
                    None => h.to_vec(),
                }
            }
            _ => {
                return Err(Error::input(format!(
                    "module {} takes {}",
                    c.index,
                    if c.first() {
                        "the task input"
                    } else {
                        "a hidden stream"
                    }
                )))
            }
        };
        let forced: Vec<(usize, Vec<u32>)> = self
            .forced
            .iter()
            .filter(|((m, _), _)| *m == c.index)
            .map(|((_, j), v)| (*j, v.clone()))
            .collect();
        let run = Run {
            forced: &forced,
            ..Run::default()
        };
        a.blocks = st
            .stack
            .forward(p, Rows { b, t, d }, &run, st.stack.blocks.len(), &mut x)?;
        a.expert_load = a
            .moe()
            .map(|(_, m)| m.experts.iter().map(|x| x.0.len() as u32).collect())
            .collect();
        if let (Some(hl), Some(head)) = (st.head_ln, st.head) {
            let ln = ln_fwd(p, hl, &x, n, d)?;
            let outs = self.outputs();
            a.out = if self.task.classes > 0 {
                a.pooled = crate::model::dense::pool_forward(self.task.pool, &ln.y, b, t, d);
                lin_fwd(p, head, &a.pooled, b, outs, d)?
            } else {
                lin_fwd(p, head, &ln.y, n, outs, d)?
            };
            a.head_ln = Some(ln);
        } else if let Some(s) = &st.stitch_out {
            let ln = ln_fwd(p, s.ln, &x, n, d)?;
            a.out = lin_fwd(p, s.lin, &ln.y, n, c.out_width, d)?;
            a.stitch_out = Some(ln);
        } else {
            a.out = x.clone();
        }
        a.x_out = x;
        Ok(a)
    }

    /// Backward of [`Net::forward_stage`] from `dout` (the gradient of `acts.out`).
    /// Parameter gradients accumulate only when `param_grads`; returns the gradient of a
    /// hidden input when `want_input` (None for the first module).
    pub fn backward_stage(
        &mut self,
        module: usize,
        input: StageInput<'_>,
        acts: &StageActs,
        dout: &[f32],
        param_grads: bool,
        want_input: bool,
    ) -> Result<Option<Vec<f32>>, Error> {
        let si = self.stage_pos(module)?;
        let st = self.stages[si].clone();
        let c = &st.cfg;
        let task = self.task;
        let outs = self.outputs();
        let p = &mut self.params;
        let pg = param_grads;
        let (b, t, d) = (acts.b, acts.t, c.d);
        let n = b * t;
        if dout.len() != acts.out.len() || acts.blocks.depth != st.stack.blocks.len() {
            return Err(Error::input(format!(
                "module {}: backward does not match the forward",
                c.index
            )));
        }
        let mut dx = vec![0f32; n * d];
        if let (Some(hl), Some(head), Some(ln)) = (st.head_ln, st.head, &acts.head_ln) {
            let mut dln = vec![0f32; n * d];
            if task.classes > 0 {
                let mut dpool = vec![0f32; b * d];
                lin_bwd(
                    p,
                    head,
                    &acts.pooled,
                    b,
                    outs,
                    d,
                    dout,
                    Some(&mut dpool),
                    pg,
                )?;
                crate::model::dense::pool_backward(task.pool, &dpool, b, t, d, &mut dln);
            } else {
                lin_bwd(p, head, &ln.y, n, outs, d, dout, Some(&mut dln), pg)?;
            }
            ln_bwd(p, hl, ln, &acts.x_out, n, d, &dln, &mut dx, pg);
        } else if let (Some(s), Some(ln)) = (&st.stitch_out, &acts.stitch_out) {
            let mut dln = vec![0f32; n * d];
            lin_bwd(p, s.lin, &ln.y, n, c.out_width, d, dout, Some(&mut dln), pg)?;
            ln_bwd(p, s.ln, ln, &acts.x_out, n, d, &dln, &mut dx, pg);
        } else {
            dx.copy_from_slice(dout);
        }
        st.stack.backward(
            p,
            &acts.blocks,
            &mut dx,
            Grads {
                params: pg,
                aux_scale: 1.0,
            },
        )?;
        match (input, st.embed) {
            (StageInput::Batch(batch), Some(emb)) => {
                if pg {
                    if let Some(pos) = st.pos {
                        let gp = p.grad_mut(pos);
                        for (i, row) in dx.chunks_exact(d).enumerate() {
                            add(&mut gp[(i % t) * d..(i % t + 1) * d], row);
                        }
                    }
                    match emb {
                        Embed::Tokens(table) => {
                            let g = p.grad_mut(table);
                            for (i, &tok) in batch.tokens.iter().enumerate() {
                                let r = tok as usize;
                                add(&mut g[r * d..(r + 1) * d], &dx[i * d..(i + 1) * d]);
                            }
                        }
                        Embed::Patches(l) => {
                            let pd = task.patch_dim;
                            lin_bwd(p, l, &batch.features, n, d, pd, &dx, None, true)?;
                        }
                    }
                }
                Ok(None)
            }
            (StageInput::Hidden(_), None) => match (&st.stitch_in, &acts.stitch_in) {
                (Some(s), Some((h, ln))) => {
                    let w = c.in_width;
                    let mut dln = vec![0f32; n * w];
                    lin_bwd(p, s.lin, &ln.y, n, d, w, &dx, Some(&mut dln), pg)?;
                    if !want_input && !pg {
                        return Ok(None);
                    }
                    let mut dh = vec![0f32; n * w];
                    ln_bwd(p, s.ln, ln, h, n, w, &dln, &mut dh, pg);
                    Ok(want_input.then_some(dh))
                }
                _ => Ok(want_input.then_some(dx)),
            },
            _ => Err(Error::input("input kind does not match the module")),
        }
    }
}

impl Net {
    /// Forward through every module of this network in order; the first takes `input`,
    /// each next one the previous one's output. The last entry's `out` is the output.
    pub fn forward_all(
        &self,
        input: StageInput<'_>,
        b: usize,
        t: usize,
    ) -> Result<Vec<StageActs>, Error> {
        let mut acts: Vec<StageActs> = Vec::with_capacity(self.stages.len());
        for s in 0..self.stages.len() {
            let module = self.first_module() + s;
            let a = match acts.last() {
                None => self.forward_stage(module, input, b, t)?,
                Some(prev) => self.forward_stage(module, StageInput::Hidden(&prev.out), b, t)?,
            };
            acts.push(a);
        }
        Ok(acts)
    }

    /// Backward of [`Net::forward_all`] from the gradient of the last output; returns the
    /// gradient of a hidden input when `want_input`.
    pub fn backward_all(
        &mut self,
        input: StageInput<'_>,
        acts: &[StageActs],
        dout: &[f32],
        param_grads: bool,
        want_input: bool,
    ) -> Result<Option<Vec<f32>>, Error> {
        if acts.len() != self.stages.len() {
            return Err(Error::input("backward: activations of another network"));
        }
        let mut g = dout.to_vec();
        for s in (0..self.stages.len()).rev() {
            let module = self.first_module() + s;
            let inp = if s == 0 {
                input
            } else {
                StageInput::Hidden(&acts[s - 1].out)
            };
            let want = s > 0 || want_input;
            match self.backward_stage(module, inp, &acts[s], &g, param_grads, want)? {
                Some(d) => g = d,
                None => return Ok(None),
            }
        }
        Ok(Some(g))
    }

    /// Copy every tensor of `src` whose name this network also has (same shape required).
    /// Returns the names of `src` that were not copied (not in this network). Fails when a
    /// tensor of this network is missing from `src` unless `allow_missing`.
    pub fn load_from(&mut self, src: &Net, allow_missing: bool) -> Result<Vec<String>, Error> {
        let mut dropped = Vec::new();
        let mut filled = vec![false; self.params.specs().len()];
        for (i, s) in src.params.specs().iter().enumerate() {
            match self.params.index_of(&s.name) {
                Some(j) => {
                    let want = &self.params.specs()[j].shape;
                    if want != &s.shape {
                        return Err(Error::input(format!(
                            "tensor '{}' is {:?} in the source and {:?} here",
                            s.name, s.shape, want
                        )));
                    }
                    self.params
                        .value_mut(j)
                        .copy_from_slice(src.params.value(i));
                    filled[j] = true;
                }
                None => dropped.push(s.name.clone()),
            }
        }
        if !allow_missing {
            if let Some(j) = filled.iter().position(|f| !f) {
                return Err(Error::input(format!(
                    "tensor '{}' is not in the source network ({} of {} missing)",
                    self.params.specs()[j].name,
                    filled.iter().filter(|f| !**f).count(),
                    filled.len()
                )));
            }
        }
        Ok(dropped)
    }
}

impl Net {
    /// A trained dense baseline (`modula train --arch dense`) split into `modules`
    /// modules of contiguous blocks — the embedding with the first, the final norm and
    /// head with the last — as a whole network of this crate's modules (issue #11's "split
    /// a trained dense teacher"). The tensors are the same numbers under module names (the
    /// FFN down projection transposed back to `[d, ffn]`; a model without a position table
    /// gets a zero one, an LM head without bias a zero bias), so the network computes what
    /// the dense model computes.
    pub fn from_dense(
        dense: &crate::model::dense::DenseModel,
        task: TaskShape,
        modules: usize,
    ) -> Result<Net, Error> {
        let c = dense.cfg;
        if c.emoe_layers != 0 {
            return Err(Error::input("an EMoE model is not a dense teacher"));
        }
        if modules == 0 || !c.layers.is_multiple_of(modules) {
            return Err(Error::input(format!(
                "{} blocks do not split into {modules} modules of equal size",
                c.layers
            )));
        }
        let outs = if task.classes > 0 {
            task.classes
        } else {
            task.vocab
        };
        let fits = c.patch_dim == task.patch_dim
            && (task.patch_dim > 0 || c.vocab == task.vocab)
            && c.classes == task.classes
            && c.outputs() == outs
            && c.causal == task.causal
            && (c.classes == 0 || c.pool == task.pool)
            && (c.max_seq == 0 || Some(c.max_seq) >= task.seq);
        if !fits {
            return Err(Error::input(format!(
                "the dense model (vocab {}, patches {}, classes {}, causal {}, pool {}, positions {}) does not fit the data {task:?}",
                c.vocab, c.patch_dim, c.classes, c.causal, c.pool.name(), c.max_seq
            )));
        }
        let k = c.layers / modules;
        let cfgs: Vec<StageCfg> = (0..modules)
            .map(|i| StageCfg {
                index: i,
                of: modules,
                d: c.d,
                heads: c.heads,
                ffn: c.ffn,
                blocks: k,
                moe: 0,
                experts: 0,
                top_k: 0,
                in_width: c.d,
                out_width: c.d,
            })
            .collect();
        let mut net = Net::new(task, &cfgs, 0)?;
        let seq = task.seq.unwrap_or(0);
        let specs = net.params.specs().to_vec();
        for (i, sp) in specs.iter().enumerate() {
            let (m, rest) = sp
                .name
                .strip_prefix("mod.")
                .and_then(|r| r.split_once('.'))
                .ok_or_else(|| Error::input("unexpected tensor name"))?;
            let m: usize = m
                .parse()
                .map_err(|_| Error::input("unexpected tensor name"))?;
            let src = match rest.strip_prefix("blk.") {
                Some(b) => {
                    let (j, t) = b
                        .split_once('.')
                        .ok_or_else(|| Error::input("unexpected tensor name"))?;
                    let l = m * k
                        + j.parse::<usize>()
                            .map_err(|_| Error::input("unexpected tensor name"))?;
                    format!(
                        "blk.{l}.{}",
                        t.replace("ffn_down.weight", "ffn_down_t.weight")
                    )
                }
                None => rest.to_string(),
            };
            let dst = net.params.value_mut(i);
            match dense.params.index_of(&src) {
                Some(j) => {
                    let v = dense.params.value(j);
                    if src.ends_with("ffn_down_t.weight") {
                        // [f, d] -> [d, f]
                        for r in 0..c.d {
                            for f in 0..c.ffn {
                                dst[r * c.ffn + f] = v[f * c.d + r];
                            }
                        }
                    } else if src == "position_embd.weight" {
                        dst.copy_from_slice(&v[..seq * c.d]);
                    } else if v.len() == dst.len() {
                        dst.copy_from_slice(v);
                    } else {
                        return Err(Error::input(format!("tensor '{src}' has another size")));
                    }
                }
                None if src == "position_embd.weight" || src == "output.bias" => dst.fill(0.0),
                None => return Err(Error::input(format!("the dense model has no '{src}'"))),
            }
        }
        Ok(net)
    }
}

/// Metadata key of the model kind.
pub const KIND: &str = "m2mkd-net";

impl Net {
    /// Write the network (its task, modules and parameters) atomically to `path` as GGUF:
    /// `modula.model = "m2mkd-net"`, `modula.m2m.task` and `modula.m2m.modules` (JSON),
    /// one f32 tensor per parameter under its `mod.{i}.…` name.
    pub fn write_gguf(&self, path: &std::path::Path) -> Result<u64, Error> {
        use modula_core::gguf::GgufWriter;
        use modula_core::MetaValue;
        let t = self.task;
        let task = serde_json::json!({
            "vocab": t.vocab, "patch_dim": t.patch_dim, "classes": t.classes,
            "seq": t.seq.unwrap_or(0), "causal": t.causal, "pool": t.pool.name(),
        });
        let mods: Vec<serde_json::Value> = self
            .stages
            .iter()
            .map(|s| {
                let c = &s.cfg;
                serde_json::json!({
                    "index": c.index, "of": c.of, "d": c.d, "heads": c.heads, "ffn": c.ffn,
                    "blocks": c.blocks, "moe": c.moe, "experts": c.experts, "top_k": c.top_k,
                    "in_width": c.in_width, "out_width": c.out_width,
                })
            })
            .collect();
        let mut w = GgufWriter::new();
        let e = |e: modula_core::gguf::GgufError| Error::from(e);
        w.set("general.architecture", MetaValue::String("modula".into()))
            .map_err(e)?;
        w.set("modula.model", MetaValue::String(KIND.into()))
            .map_err(e)?;
        w.set("modula.m2m.task", MetaValue::String(task.to_string()))
            .map_err(e)?;
        w.set(
            "modula.m2m.modules",
            MetaValue::String(serde_json::Value::Array(mods).to_string()),
        )
        .map_err(e)?;
        for (i, s) in self.params.specs().iter().enumerate() {
            w.add_f32(&s.name, &s.shape, self.params.value(i))
                .map_err(e)?;
        }
        w.write_to(path).map_err(e)
    }

    /// Read a network written by [`Net::write_gguf`]; every tensor must be present with
    /// its shape and finite, and nothing else may be in the file.
    pub fn read_gguf(path: &std::path::Path) -> Result<Net, Error> {
        let ctx = |m: String| Error::input(format!("{}: {m}", path.display()));
        let file = modula_core::Model::open(path).map_err(|e| ctx(e.to_string()))?;
        let s = |k: &str| -> Result<String, Error> {
            file.get(k)
                .and_then(|v| v.as_str().map(str::to_string))
                .ok_or_else(|| ctx(format!("no '{k}' string (not an m2mKD network file)")))
        };
        if s("modula.model")? != KIND {
            return Err(ctx(format!("not an m2mKD network ('{KIND}')")));
        }
        let parse = |k: &str| -> Result<serde_json::Value, Error> {
            serde_json::from_str(&s(k)?).map_err(|e| ctx(format!("'{k}': {e}")))
        };
        let (task, mods) = (parse("modula.m2m.task")?, parse("modula.m2m.modules")?);
        let num = |v: &serde_json::Value, k: &str| -> Result<usize, Error> {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|x| usize::try_from(x).ok())
                .filter(|&x| x <= 1 << 24 || k == "moe")
                .ok_or_else(|| ctx(format!("'{k}' missing or out of range")))
        };
        let seq = num(&task, "seq")?;
        let shape = TaskShape {
            vocab: num(&task, "vocab")?,
            patch_dim: num(&task, "patch_dim")?,
            classes: num(&task, "classes")?,
            seq: (seq > 0).then_some(seq),
            causal: task
                .get("causal")
                .and_then(serde_json::Value::as_bool)
                .ok_or_else(|| ctx("'causal' missing".into()))?,
            pool: crate::model::dense::Pool::parse(
                task.get("pool")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or(""),
            )
            .map_err(|e| ctx(e.to_string()))?,
        };
        let list = mods
            .as_array()
            .ok_or_else(|| ctx("'modula.m2m.modules' is not a list".into()))?;
        if list.is_empty() || list.len() > 4096 {
            return Err(ctx(format!("{} modules (1..=4096)", list.len())));
        }
        let mut cfgs = Vec::new();
        for m in list {
            cfgs.push(StageCfg {
                index: num(m, "index")?,
                of: num(m, "of")?,
                d: num(m, "d")?,
                heads: num(m, "heads")?,
                ffn: num(m, "ffn")?,
                blocks: num(m, "blocks")?,
                moe: m
                    .get("moe")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| ctx("'moe' missing".into()))?,
                experts: num(m, "experts")?,
                top_k: num(m, "top_k")?,
                in_width: num(m, "in_width")?,
                out_width: num(m, "out_width")?,
            });
        }
        // the declared sizes must fit the file before anything is allocated
        let declared = Net::layout(shape, &cfgs)
            .map_err(|e| ctx(e.to_string()))?
            .0
            .elements() as u128;
        let bytes = std::fs::metadata(path)
            .map_err(|e| ctx(e.to_string()))?
            .len();
        if declared * 4 > u128::from(bytes) {
            return Err(ctx(format!(
                "the header declares {declared} parameters, more than the file's {bytes} bytes hold"
            )));
        }
        let mut net = Net::new(shape, &cfgs, 0).map_err(|e| ctx(e.to_string()))?;
        let specs = net.params.specs().to_vec();
        for (i, sp) in specs.iter().enumerate() {
            let t = file.tensor(&sp.name).map_err(|e| ctx(e.to_string()))?;
            if t.shape() != sp.shape {
                return Err(ctx(format!(
                    "tensor '{}' has shape {:?}, expected {:?}",
                    sp.name,
                    t.shape(),
                    sp.shape
                )));
            }
            let data = t.to_f32_vec().map_err(|e| ctx(e.to_string()))?;
            if let Some(j) = data.iter().position(|v| !v.is_finite()) {
                return Err(ctx(format!(
                    "tensor '{}' holds a non-finite value at {j}",
                    sp.name
                )));
            }
            net.params.value_mut(i).copy_from_slice(&data);
        }
        let extra = file.tensors().count();
        if extra != specs.len() {
            return Err(ctx(format!(
                "the file has {extra} tensors, the network {}",
                specs.len()
            )));
        }
        Ok(net)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, check_grad_steps, GradCheck};
    use crate::layers::loss::IGNORE;
    use crate::model::dense::Pool;
    use modula_core::rng::SplitMix64;

    pub(crate) fn image_task() -> TaskShape {
        TaskShape {
            vocab: 0,
            patch_dim: 4,
            classes: 3,
            seq: Some(5),
            causal: false,
            pool: Pool::Mean,
        }
    }

    pub(crate) fn lm_task() -> TaskShape {
        TaskShape {
            vocab: 7,
            patch_dim: 0,
            classes: 0,
            seq: Some(5),
            causal: true,
            pool: Pool::Last,
        }
    }

    /// Module `i` of `of`: width `d` inside, `io` outside, `blocks` blocks, MoE mask.
    pub(crate) fn cfg(
        i: usize,
        of: usize,
        d: usize,
        io: usize,
        blocks: usize,
        moe: u64,
    ) -> StageCfg {
        StageCfg {
            index: i,
            of,
            d,
            heads: 2,
            ffn: 6,
            blocks,
            moe,
            experts: 3,
            top_k: 2,
            in_width: io,
            out_width: io,
        }
    }

    pub(crate) fn batch(task: TaskShape, b: usize, seed: u64) -> Batch {
        let t = task.seq.unwrap();
        let mut r = SplitMix64(seed);
        if task.patch_dim > 0 {
            Batch {
                tokens: Vec::new(),
                features: (0..b * t * task.patch_dim).map(|_| r.next_f32()).collect(),
                targets: (0..b)
                    .map(|_| r.below(task.classes as u64) as u32)
                    .collect(),
                b,
                t,
            }
        } else {
            let v = task.vocab as u64;
            let mut y: Vec<u32> = (0..b * t).map(|_| r.below(v) as u32).collect();
            y[1] = IGNORE;
            Batch::of_tokens((0..b * t).map(|_| r.below(v) as u32).collect(), y, b, t)
        }
    }

    fn perturb(net: &mut Net, seed: u64) {
        let mut r = SplitMix64(seed);
        for v in net.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
    }

    /// Every parameter of `net` (and the hidden input when it has one) against finite
    /// differences of `Σ r ⊙ out`, with the expert choices held fixed.
    fn check_net(name: &str, mut net: Net, hidden_in: Option<usize>) {
        perturb(&mut net, 5);
        let bt = batch(net.task, 2, 7);
        let (b, t) = (bt.b, bt.t);
        let mut h: Vec<f32> = hidden_in
            .map(|w| crate::layers::rand_vec(11, b * t * w))
            .unwrap_or_default();
        let input = |h: &[f32]| -> Vec<f32> { h.to_vec() };
        let acts = {
            let hh = input(&h);
            let inp = if hidden_in.is_some() {
                StageInput::Hidden(&hh)
            } else {
                StageInput::Batch(&bt)
            };
            net.forward_all(inp, b, t).unwrap()
        };
        let mut forced = Vec::new();
        for (s, a) in acts.iter().enumerate() {
            for (j, sel) in a.selections() {
                forced.push(((net.first_module() + s, j), sel));
            }
        }
        net.forced = forced;
        let out_len = acts.last().unwrap().out.len();
        let r = crate::layers::rand_vec(13, out_len);
        net.params.zero_grads();
        let dinput = {
            let inp = if hidden_in.is_some() {
                StageInput::Hidden(&h)
            } else {
                StageInput::Batch(&bt)
            };
            net.backward_all(inp, &acts, &r, true, hidden_in.is_some())
                .unwrap()
        };
        // the frozen backward gives the same input gradient and touches no parameter
        if let Some(g) = &dinput {
            let mut frozen = net.clone();
            frozen.params.zero_grads();
            let g2 = frozen
                .backward_all(StageInput::Hidden(&h), &acts, &r, false, true)
                .unwrap()
                .unwrap();
            assert!(frozen.params.grads.iter().all(|&v| v == 0.0));
            for (a, b) in g.iter().zip(&g2) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + a.abs()),
                    "{name}: {a} vs {b}"
                );
            }
        }
        let grads = net.params.grads.clone();
        let values = net.params.values.clone();
        let f = |v: &[f32], h: &[f32]| {
            let mut m = net.clone();
            m.params.values.copy_from_slice(v);
            let inp = if hidden_in.is_some() {
                StageInput::Hidden(h)
            } else {
                StageInput::Batch(&bt)
            };
            let a = m.forward_all(inp, b, t).unwrap();
            a.last()
                .unwrap()
                .out
                .iter()
                .zip(&r)
                .map(|(x, y)| f64::from(x * y))
                .sum::<f64>()
        };
        let h0 = h.clone();
        let steps = [1e-2, 1e-3];
        let mut vv = values.clone();
        check_grad_steps(name, &mut vv, &grads, |v| f(v, &h0), &steps, 1e-2, 1e-2).unwrap();
        if name == "middle" {
            let mut bad = grads.clone();
            let k = bad.len() / 2;
            bad[k] += 0.05;
            let r = check_grad_steps(name, &mut vv, &bad, |v| f(v, &h0), &steps, 1e-2, 1e-2);
            assert!(r.is_err(), "{name}: a corrupted gradient passes");
        }
        if let Some(g) = dinput {
            let v0 = net.params.values.clone();
            let gc = GradCheck {
                eps: 1e-2,
                tol: 1e-2,
                floor: 1e-2,
            };
            check_grad(name, &mut h, &g, |hh| f(&v0, hh), gc).unwrap();
        }
    }

    #[test]
    fn module_gradients_match_finite_differences() {
        // an image module 0 (embedding, dense + MoE blocks, post-stitch 6 -> 4)
        let t = image_task();
        check_net(
            "first",
            Net::new(t, &[cfg(0, 3, 6, 4, 2, 0b10)], 1).unwrap(),
            None,
        );
        // a middle module with both stitches (4 -> 6 -> 4), MoE in every block
        check_net(
            "middle",
            Net::new(t, &[cfg(1, 3, 6, 4, 2, 0b11)], 2).unwrap(),
            Some(4),
        );
        // the last module with a pre-stitch and the classifier head
        check_net(
            "last",
            Net::new(t, &[cfg(2, 3, 6, 4, 1, 0b1)], 3).unwrap(),
            Some(4),
        );
        // a whole three-module network without stitches
        let whole = [
            cfg(0, 3, 4, 4, 1, 0),
            cfg(1, 3, 4, 4, 1, 1),
            cfg(2, 3, 4, 4, 1, 0),
        ];
        check_net("whole", Net::new(t, &whole, 4).unwrap(), None);
        // a causal byte-LM network of two modules
        let lm = [cfg(0, 2, 4, 4, 1, 1), cfg(1, 2, 4, 4, 1, 0)];
        check_net("lm", Net::new(lm_task(), &lm, 5).unwrap(), None);
        check_net(
            "lm middle",
            Net::new(lm_task(), &[cfg(1, 3, 6, 4, 1, 1)], 2).unwrap(),
            Some(4),
        );
        check_net(
            "lm last",
            Net::new(lm_task(), &[cfg(2, 3, 4, 4, 1, 0)], 2).unwrap(),
            Some(4),
        );
    }

    #[test]
    fn names_split_and_assemble_by_copy() {
        let t = image_task();
        let whole = Net::new(t, &[cfg(0, 2, 4, 4, 1, 1), cfg(1, 2, 4, 4, 1, 0)], 1).unwrap();
        // a stitched student module 1 (width 4 inside, 6 outside)
        let mut m1 = Net::new(t, &[cfg(1, 2, 4, 6, 1, 0)], 2).unwrap();
        assert!(m1.params.index_of("mod.1.stitch_in.weight").is_some());
        // module 1 of the whole network fills the stitched module except its stitch
        assert!(m1.load_from(&whole, false).is_err());
        let dropped = m1.load_from(&whole, true).unwrap();
        assert!(dropped.iter().all(|n| n.starts_with("mod.0.")));
        // assembling: the whole network takes module 1's tensors, stitches dropped
        let mut whole2 = Net::new(t, &[cfg(0, 2, 4, 4, 1, 1), cfg(1, 2, 4, 4, 1, 0)], 3).unwrap();
        let dropped = whole2.load_from(&m1, true).unwrap();
        assert_eq!(
            dropped,
            vec![
                "mod.1.stitch_in_norm.weight".to_string(),
                "mod.1.stitch_in_norm.bias".into(),
                "mod.1.stitch_in.weight".into(),
                "mod.1.stitch_in.bias".into(),
            ]
        );
        let i = whole2.params.index_of("mod.1.blk.0.ffn_up.weight").unwrap();
        let j = whole.params.index_of("mod.1.blk.0.ffn_up.weight").unwrap();
        assert_eq!(whole2.params.value(i), whole.params.value(j));
        // a shape mismatch is an error, not a partial copy
        let wide = Net::new(t, &[cfg(0, 2, 6, 6, 1, 1), cfg(1, 2, 6, 6, 1, 0)], 1).unwrap();
        assert!(whole2.load_from(&wide, true).is_err());
    }

    #[test]
    fn a_dense_model_splits_into_modules_that_compute_the_same() {
        use crate::model::dense::{DenseConfig, DenseModel, Input};
        for (task, lm) in [(image_task(), false), (lm_task(), true)] {
            let cfg = DenseConfig {
                vocab: task.vocab,
                d: 8,
                layers: 4,
                heads: 2,
                ffn: 12,
                max_seq: if lm { 0 } else { 5 },
                causal: task.causal,
                patch_dim: task.patch_dim,
                classes: task.classes,
                pool: task.pool,
                ..DenseConfig::lm(7, 8, 4, 2, 12)
            };
            let mut dense = DenseModel::new(cfg, 3).unwrap();
            perturb_store(&mut dense.params, 4);
            let net = Net::from_dense(&dense, task, 2).unwrap();
            let bt = batch(task, 2, 5);
            let input = if lm {
                Input::Tokens(&bt.tokens)
            } else {
                Input::Features(&bt.features)
            };
            let (_, a, _) = dense.forward(input, &bt.targets, 2, 5).unwrap();
            let acts = net.forward_all(StageInput::Batch(&bt), 2, 5).unwrap();
            let ours = &acts.last().unwrap().out;
            assert_eq!(ours.len(), a.logits().len());
            for (x, y) in ours.iter().zip(a.logits()) {
                assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
            assert!(Net::from_dense(&dense, task, 3).is_err());
            assert!(Net::from_dense(&dense, lm_task_other(), 2).is_err());
        }
    }

    fn lm_task_other() -> TaskShape {
        TaskShape {
            vocab: 9,
            ..lm_task()
        }
    }

    fn perturb_store(p: &mut ParamStore, seed: u64) {
        let mut r = SplitMix64(seed);
        for v in p.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
    }

    #[test]
    fn files_round_trip_and_hostile_headers_are_refused() {
        use modula_core::gguf::GgufWriter;
        use modula_core::MetaValue;
        let dir = std::env::temp_dir().join(format!("modula-m2m-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = image_task();
        let mut net = Net::new(t, &[cfg(0, 2, 4, 6, 1, 1), cfg(1, 2, 4, 6, 1, 0)], 1).unwrap();
        perturb_store(&mut net.params, 2);
        let p = dir.join("net.gguf");
        net.write_gguf(&p).unwrap();
        let back = Net::read_gguf(&p).unwrap();
        assert_eq!(back.params.values, net.params.values);
        assert_eq!(back.task, net.task);
        assert_eq!(
            back.stages
                .iter()
                .map(|s| s.cfg.clone())
                .collect::<Vec<_>>(),
            net.stages.iter().map(|s| s.cfg.clone()).collect::<Vec<_>>()
        );
        // the same tensors under a header that declares far more parameters
        let m = modula_core::Model::open(&p).unwrap();
        let modules = m
            .get("modula.m2m.modules")
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let write = |modules: &str, name: &str| {
            let mut w = GgufWriter::new();
            w.set("modula.model", MetaValue::String(KIND.into()))
                .unwrap();
            let task = m
                .get("modula.m2m.task")
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            w.set("modula.m2m.task", MetaValue::String(task)).unwrap();
            w.set("modula.m2m.modules", MetaValue::String(modules.into()))
                .unwrap();
            for (i, s) in net.params.specs().iter().enumerate() {
                w.add_f32(&s.name, &s.shape, net.params.value(i)).unwrap();
            }
            let q = dir.join(name);
            w.write_to(&q).unwrap();
            Net::read_gguf(&q)
        };
        let huge = modules.replace("\"d\":4", "\"d\":65536");
        let e = write(&huge, "huge.gguf").unwrap_err();
        assert!(e.to_string().contains("declares"), "{e}");
        let e = write("[{\"index\": 0}]", "partial.gguf").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let e = write("not json", "junk.gguf").unwrap_err();
        assert!(e.to_string().contains("modula.m2m.modules"), "{e}");
        let e = write(
            &modules.replace("\"experts\":3", "\"experts\":16000000"),
            "e.gguf",
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most 4096"), "{e}");
        let e = write("[]", "none.gguf").unwrap_err();
        assert!(e.to_string().contains("modules"), "{e}");
        let e = write(&modules.replace("\"of\":2", "\"of\":1"), "of.gguf").unwrap_err();
        assert!(e.to_string().contains("module"), "{e}");
        // a NaN weight is refused
        let mut bad = net.clone();
        bad.params.values[3] = f32::NAN;
        bad.write_gguf(&p).unwrap();
        assert!(Net::read_gguf(&p)
            .unwrap_err()
            .to_string()
            .contains("non-finite"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let t = image_task();
        assert!(Net::new(t, &[cfg(0, 2, 5, 4, 1, 0)], 1).is_err()); // 5 % 2 heads
        assert!(Net::new(t, &[cfg(0, 2, 4, 4, 1, 0b10)], 1).is_err()); // MoE beyond blocks
        assert!(Net::new(t, &[cfg(0, 2, 4, 4, 1, 0), cfg(1, 2, 4, 6, 1, 0)], 1).is_err());
        let net = Net::new(t, &[cfg(0, 2, 4, 4, 1, 0)], 1).unwrap();
        let bt = batch(t, 2, 1);
        assert!(net.forward_stage(0, StageInput::Batch(&bt), 2, 4).is_err());
        assert!(net.forward_stage(1, StageInput::Batch(&bt), 2, 5).is_err());
        assert!(net
            .forward_stage(0, StageInput::Hidden(&[0.0; 40]), 2, 5)
            .is_err());
    }
}
