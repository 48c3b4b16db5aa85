//! The one decoder body every family runs on.
//!
//! A [`Runner`] owns what is the same in every architecture: the token's row (embedding
//! lookup, learned positions added, an optional scale), the residual rows, the block loop
//! over them (one decode step is a prompt of one row; a prompt's rows go through every block
//! at once), the final norm, the head (an LM head, tied or separate, or a mean-pooled
//! classifier head) and the checks on tokens, context and logits. A family supplies only its
//! [`Blocks`]: each block transforms the residual rows in place and owns its own state (the
//! attention blocks' key/value caches, ModuleFormer's shared-K = V caches and routers'
//! counters, SeqBoat's EMA state and attention ring) behind [`Blocks::reset`].
//!
//! The step's buffers (one row, and the blocks' own [`Blocks::Work`] for one row) are
//! allocated once when the runner is built; a prefill allocates its rows and then reads
//! every weight once per prompt, not once per token.

use super::{check_prompt, check_step, finite_logits};
use crate::error::Error;
use crate::kernels::elementwise::{layer_norm, rms_norm};
use crate::kernels::linear::{linear, widen_row, MatRef};
use alloc::vec;
use alloc::vec::Vec;

/// What follows the final norm.
#[derive(Debug)]
pub(crate) enum RunHead<'a> {
    /// Next-token logits `[vocab, d]` (the embedding itself when tied).
    Lm(MatRef<'a>),
    /// A sequence classifier: the mean of the final features over the non-pad tokens seen,
    /// through a two-layer GELU classifier `w2 · gelu(w1 x + b1)`.
    MeanPool {
        w1: MatRef<'a>,
        b1: &'a [f32],
        w2: MatRef<'a>,
        classes: usize,
        pad: Option<u32>,
    },
}

/// The final norm.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FinalNorm<'a> {
    /// LayerNorm: gain, bias.
    Layer(&'a [f32], &'a [f32]),
    /// RMSNorm: gain.
    Rms(&'a [f32]),
}

/// The model-level ends of a decoder: how a token becomes a row, and a row the output.
#[derive(Debug)]
pub(crate) struct Ends<'a> {
    /// Vocabulary.
    pub(crate) vocab: usize,
    /// Width.
    pub(crate) d: usize,
    /// Token embedding `[vocab, d]`.
    pub(crate) emb: MatRef<'a>,
    /// Learned positions `[rows, d]`, added to the embedding row of each position.
    pub(crate) pos: Option<MatRef<'a>>,
    /// Factor on the embedding row (SeqBoat language models: √d).
    pub(crate) scale: Option<f32>,
    /// Final norm (`None`: the features are the last block's rows).
    pub(crate) norm: Option<FinalNorm<'a>>,
    /// Its epsilon.
    pub(crate) eps: f32,
    /// The head.
    pub(crate) head: RunHead<'a>,
}

/// A family's blocks, driven by the [`Runner`].
pub(crate) trait Blocks {
    /// The blocks' work buffers for some rows.
    type Work;
    /// Work buffers for a prompt of `n` rows (allocated by a prefill).
    fn work(&self, n: usize) -> Self::Work;
    /// Blocks in use (all, or a nested depth).
    fn depth(&self) -> usize;
    /// Block `l` over the residual rows `x` (`[n, d]`, in place) of `tokens` at positions
    /// `pos..pos + n`; `h` is `[n, d]` of scratch (the normed rows).
    fn run(
        &mut self,
        l: usize,
        tokens: &[u32],
        pos: usize,
        x: &mut [f32],
        h: &mut [f32],
        w: &mut Self::Work,
    ) -> Result<(), Error>;
    /// Forget the sequence: clear every block's state (buffers are kept).
    fn reset(&mut self);
}

/// The decoder body: [`Ends`] around a family's [`Blocks`].
#[derive(Debug)]
pub(crate) struct Runner<'a, B: Blocks> {
    pub(crate) ends: Ends<'a>,
    pub(crate) blocks: B,
    /// Positions consumed.
    pub(crate) len: usize,
    /// Positions the blocks' state holds.
    pub(crate) capacity: usize,
    /// Tokens that reached the head: every token for an LM, the non-pad tokens pooled by a
    /// classifier.
    pub(crate) real: u64,
    x: Vec<f32>,
    h: Vec<f32>,
    step: B::Work,
    /// The final features of the last row.
    pub(crate) feats: Vec<f32>,
    /// A classifier's running sum of final features (empty for an LM).
    pooled: Vec<f32>,
    /// A classifier's hidden layer (empty for an LM).
    cls_h: Vec<f32>,
    logits: Vec<f32>,
}

impl<'a, B: Blocks> Runner<'a, B> {
    /// A runner over `blocks` whose state holds `capacity` positions; `step` is the blocks'
    /// work for one row.
    pub(crate) fn new(ends: Ends<'a>, blocks: B, capacity: usize, step: B::Work) -> Self {
        let d = ends.d;
        let (pool, out) = match ends.head {
            RunHead::Lm(_) => (0, ends.vocab),
            RunHead::MeanPool { classes, .. } => (d, classes),
        };
        Runner {
            blocks,
            len: 0,
            capacity,
            real: 0,
            x: vec![0.0; d],
            h: vec![0.0; d],
            step,
            feats: vec![0.0; d],
            pooled: vec![0.0; pool],
            cls_h: vec![0.0; 2 * pool],
            logits: vec![0.0; out],
            ends,
        }
    }

    /// Start a new sequence (keeps every buffer).
    pub(crate) fn reset(&mut self) {
        self.len = 0;
        self.real = 0;
        self.pooled.fill(0.0);
        self.blocks.reset();
    }

    /// Heap bytes of the runner's own buffers (the blocks' step work excluded).
    pub(crate) fn heap_bytes(&self) -> u64 {
        [
            &self.x,
            &self.h,
            &self.feats,
            &self.pooled,
            &self.cls_h,
            &self.logits,
        ]
        .into_iter()
        .map(|v| 4 * v.capacity() as u64)
        .sum()
    }

    /// The blocks' step work (for its size).
    pub(crate) fn step_work(&self) -> &B::Work {
        &self.step
    }

    /// Consume one token: its logits (an LM) or an empty slice (a classifier: see
    /// [`Runner::classify`]). Errors (never panics) on a token outside the vocabulary or a
    /// full context. Allocates nothing.
    pub(crate) fn step(&mut self, token: u32) -> Result<&[f32], Error> {
        check_step(token, self.ends.vocab, self.len, self.capacity)?;
        let tokens = [token];
        run_rows(
            &self.ends,
            &mut self.blocks,
            &tokens,
            self.len,
            &mut self.x,
            &mut self.h,
            &mut self.step,
        )?;
        self.len += 1;
        let x = core::mem::take(&mut self.x);
        let r = self.output(&tokens, &x);
        self.x = x;
        r?;
        Ok(self.out())
    }

    /// Consume a prompt in one pass: every block over all its rows. Returns what
    /// [`Runner::step`] on the last token would (to float rounding). Allocates its rows.
    pub(crate) fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
        check_prompt(tokens, self.ends.vocab, self.len, self.capacity)?;
        let n = tokens.len();
        let d = self.ends.d;
        let (mut x, mut h) = (vec![0f32; n * d], vec![0f32; n * d]);
        let mut w = self.blocks.work(n);
        run_rows(
            &self.ends,
            &mut self.blocks,
            tokens,
            self.len,
            &mut x,
            &mut h,
            &mut w,
        )?;
        self.len += n;
        self.output(tokens, &x)?;
        Ok(self.out())
    }

    /// What a step returns: the logits of an LM, nothing for a classifier.
    fn out(&self) -> &[f32] {
        match self.ends.head {
            RunHead::Lm(_) => &self.logits,
            RunHead::MeanPool { .. } => &[],
        }
    }

    /// `feats` = the final norm of `row` (or `row`).
    fn features(&mut self, row: &[f32]) -> Result<(), Error> {
        match self.ends.norm {
            Some(FinalNorm::Layer(g, b)) => {
                layer_norm(row, Some(g), Some(b), self.ends.eps, &mut self.feats)?;
            }
            Some(FinalNorm::Rms(g)) => {
                rms_norm(row, Some(g), self.ends.eps, &mut self.feats)?;
            }
            None => self.feats.copy_from_slice(row),
        }
        Ok(())
    }

    /// The head over the final rows `x` of `tokens`.
    fn output(&mut self, tokens: &[u32], x: &[f32]) -> Result<(), Error> {
        let (d, n) = (self.ends.d, tokens.len());
        let last = &x[(n - 1) * d..n * d];
        match self.ends.head {
            RunHead::Lm(head) => {
                self.real += n as u64;
                self.features(last)?;
                linear(
                    &self.feats,
                    d,
                    1,
                    &head,
                    None,
                    &mut self.logits,
                    self.ends.vocab,
                )?;
                finite_logits(&self.logits)
            }
            RunHead::MeanPool { pad, .. } => {
                for (r, &t) in tokens.iter().enumerate() {
                    if Some(t) != pad {
                        self.features(&x[r * d..(r + 1) * d])?;
                        self.real += 1;
                        for (p, f) in self.pooled.iter_mut().zip(&self.feats) {
                            *p += f;
                        }
                    }
                }
                if n > 1 || Some(tokens[0]) == pad {
                    self.features(last)?;
                }
                Ok(())
            }
        }
    }

    /// A classifier's logits for the sequence so far.
    pub(crate) fn classify(&mut self) -> Result<&[f32], Error> {
        let RunHead::MeanPool {
            w1,
            b1,
            w2,
            classes,
            ..
        } = self.ends.head
        else {
            return Err(Error::input("a language model, not a classifier"));
        };
        if self.real == 0 {
            return Err(Error::input("no (non-pad) token has been seen"));
        }
        let d = self.ends.d;
        let inv = 1.0 / self.real as f32;
        for (h, p) in self.h.iter_mut().zip(&self.pooled) {
            *h = p * inv;
        }
        linear(&self.h, d, 1, &w1, Some(b1), &mut self.cls_h, 2 * d)?;
        self.cls_h
            .iter_mut()
            .for_each(|v| *v = crate::kernels::elementwise::gelu1(*v));
        linear(&self.cls_h, 2 * d, 1, &w2, None, &mut self.logits, classes)?;
        finite_logits(&self.logits)?;
        Ok(&self.logits)
    }
}

/// Embedding rows into `x`, then every block in use.
fn run_rows<B: Blocks>(
    ends: &Ends<'_>,
    blocks: &mut B,
    tokens: &[u32],
    pos: usize,
    x: &mut [f32],
    h: &mut [f32],
    w: &mut B::Work,
) -> Result<(), Error> {
    let d = ends.d;
    for (i, &t) in tokens.iter().enumerate() {
        let row = &mut x[i * d..(i + 1) * d];
        widen_row(&ends.emb, t as usize, row);
        if let Some(sc) = ends.scale {
            row.iter_mut().for_each(|v| *v *= sc);
        }
    }
    if let Some(p) = &ends.pos {
        for i in 0..tokens.len() {
            let row = &mut h[i * d..(i + 1) * d];
            widen_row(p, pos + i, row);
            for (a, v) in x[i * d..(i + 1) * d].iter_mut().zip(row.iter()) {
                *a += v;
            }
        }
    }
    for l in 0..blocks.depth() {
        blocks.run(l, tokens, pos, x, h, w)?;
    }
    Ok(())
}
