//! One decoder interface for every family: [`Decoder`] (step, batched prefill, reset,
//! nested size, arena), opened from any model file by [`open`], which reads the file's
//! description once ([`ModelDesc::from_model`]) and builds that family's block runner.
//! Callers — `modula run`, `eval`, `bench`, the demo — hold a `Box<dyn Decoder>` and
//! never match on the architecture.

use super::{ArenaPlan, DenseEngine, LlamaEngine, MfEngine, SbEngine};
use crate::arch::{Family, ModelDesc};
use crate::error::Error;
use crate::model::{Model, NestedSpec};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// A nested (SortedNet) size of a model, in the dimensions its family nests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// Softmax-attention models: the first `depth` blocks, the first `ffn` FFN units and the
    /// first `heads` heads (`None`: all).
    Dense {
        /// Blocks.
        depth: usize,
        /// FFN width.
        ffn: usize,
        /// Heads (`None`: all).
        heads: Option<usize>,
    },
    /// Mixtures: the first `att` attention experts and `ffn` FFN experts.
    Experts {
        /// Attention experts.
        att: usize,
        /// FFN experts.
        ffn: usize,
    },
    /// Layer stacks nested by depth only (SeqBoat).
    Depth(usize),
}

impl Size {
    /// `2x128`, `2x128x2`, `4x4 experts`, `depth 2`.
    pub fn label(self) -> String {
        match self {
            Size::Dense {
                depth,
                ffn,
                heads: None,
            } => format!("{depth}x{ffn}"),
            Size::Dense {
                depth,
                ffn,
                heads: Some(h),
            } => format!("{depth}x{ffn}x{h}"),
            Size::Experts { att, ffn } => format!("{att}x{ffn} experts"),
            Size::Depth(d) => format!("depth {d}"),
        }
    }

    /// The file view's [`NestedSpec`] of this size (the tensor prefixes it reads).
    pub fn nested_spec(self) -> NestedSpec {
        match self {
            Size::Dense { depth, ffn, heads } => NestedSpec {
                depth: Some(depth),
                ffn: Some(ffn),
                heads,
                ..Default::default()
            },
            Size::Experts { att, ffn } => NestedSpec {
                att_experts: Some(att),
                ffn_experts: Some(ffn),
                ..Default::default()
            },
            Size::Depth(depth) => NestedSpec {
                depth: Some(depth),
                ..Default::default()
            },
        }
    }

    /// How much model a size is, for a model of width `d` with `heads` heads: multiply-adds
    /// per decoded token in its blocks (dense: the attention projections of the first `h`
    /// heads and the first `f` FFN units of the first `depth` blocks), the expert count for
    /// mixtures (top-k keeps the per-token compute; more experts to choose from is the
    /// larger model), the depth for SeqBoat. Orders nested sizes.
    pub fn capacity(self, d: usize, heads: usize) -> f64 {
        match self {
            Size::Dense {
                depth,
                ffn,
                heads: h,
            } => {
                let h = h.unwrap_or(heads);
                let (d, att) = (d as f64, (d * h / heads.max(1)) as f64);
                depth as f64 * (4.0 * d * att + 2.0 * d * ffn as f64)
            }
            Size::Experts { att, ffn } => (att + ffn) as f64,
            Size::Depth(depth) => depth as f64,
        }
    }

    /// A dense `DEPTHxFFN` or `DEPTHxFFNxHEADS` of a model with `heads` heads.
    pub fn parse_dense(sz: &str, heads: usize) -> Result<Size, Error> {
        let parts: Option<Vec<usize>> = sz.split('x').map(|v| v.parse().ok()).collect();
        match parts.as_deref() {
            Some(&[depth, ffn]) => Ok(Size::Dense {
                depth,
                ffn,
                heads: None,
            }),
            Some(&[depth, ffn, h]) => Ok(Size::Dense {
                depth,
                ffn,
                heads: (h != heads).then_some(h),
            }),
            _ => Err(Error::input(format!(
                "--size {sz}: use DEPTHxFFN or DEPTHxFFNxHEADS, e.g. 2x128 or 2x128x2"
            ))),
        }
    }
}

/// Settings that only some mixers have; setting one a model does not have is an error.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DecodeOptions {
    /// Stick-breaking attention: stop each walk once the used stick exceeds this τ.
    pub sb_stop: Option<f32>,
    /// SeqBoat: bias towards skipping the attention unit (0 = as trained).
    pub act_bias: f32,
}

/// A model ready to decode, of any family.
pub trait Decoder<'a> {
    /// The family.
    fn family(&self) -> Family;
    /// Vocabulary.
    fn vocab(&self) -> usize;
    /// Model width (for [`Size::capacity`]).
    fn width(&self) -> usize;
    /// Attention heads of the full model (1 for families without nested heads).
    fn full_heads(&self) -> usize;
    /// Positions consumed so far.
    fn position(&self) -> usize;
    /// Positions the engine was planned for (`None`: constant state, no limit).
    fn max_context(&self) -> Option<usize>;
    /// Start a new sequence (keeps every buffer).
    fn reset(&mut self);
    /// Consume one token; the logits for the next. Allocates nothing.
    fn step(&mut self, token: u32) -> Result<&[f32], Error>;
    /// Consume a prompt in one batched pass; the logits after its last token.
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error>;
    /// The nested sizes the file declares, smallest first, the full model last.
    fn sizes(&self) -> Vec<Size>;
    /// The size running now.
    fn size(&self) -> Size;
    /// Switch to a nested size (a new sequence starts; nothing is loaded or copied).
    fn set_size(&mut self, size: Size) -> Result<(), Error>;
    /// A `--size` string in this family's dimensions.
    fn parse_size(&self, s: &str) -> Result<Size, Error>;
    /// The heap this decoder holds (the weights are the mapped file).
    fn arena_bytes(&self) -> ArenaPlan;
    /// Family-specific settings.
    fn configure(&mut self, o: &DecodeOptions) -> Result<(), Error>;
    /// A line of run statistics for the user, if the family keeps any.
    fn stats_line(&self) -> Option<String> {
        None
    }
    /// The ModuleFormer engine, for expert paging (which follows its routers).
    fn moduleformer(&self) -> Option<&MfEngine<'a>> {
        None
    }
    /// [`Size::capacity`] of `size` in this model.
    fn capacity(&self, size: Size) -> f64 {
        size.capacity(self.width(), self.full_heads())
    }
}

fn wrong(size: Size, family: Family) -> Error {
    Error::input(format!(
        "size {} is not a size of a {} model",
        size.label(),
        family.name()
    ))
}

/// The methods every engine forwards as they are: family, vocabulary, width, position,
/// reset, step, prefill, arena.
macro_rules! forward_common {
    ($ty:ident, $family:expr) => {
        fn family(&self) -> Family {
            let f: fn(&Self) -> Family = $family;
            f(self)
        }
        fn vocab(&self) -> usize {
            self.spec().vocab
        }
        fn width(&self) -> usize {
            self.spec().d
        }
        fn position(&self) -> usize {
            $ty::position(self)
        }
        fn reset(&mut self) {
            $ty::reset(self)
        }
        fn step(&mut self, token: u32) -> Result<&[f32], Error> {
            $ty::step(self, token)
        }
        fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], Error> {
            $ty::prefill(self, tokens)
        }
        fn arena_bytes(&self) -> ArenaPlan {
            $ty::arena_bytes(self)
        }
    };
}

impl<'a> Decoder<'a> for DenseEngine<'a> {
    forward_common!(DenseEngine, |_| Family::Dense);
    fn full_heads(&self) -> usize {
        self.spec().heads
    }
    fn max_context(&self) -> Option<usize> {
        Some(DenseEngine::max_context(self))
    }
    fn sizes(&self) -> Vec<Size> {
        let spec = self.spec();
        let heads: Vec<Option<usize>> = spec
            .nested_head_list()
            .into_iter()
            .map(|h| (h != spec.heads).then_some(h))
            .collect();
        spec.nested_grid()
            .into_iter()
            .flat_map(|(depth, ffn)| {
                heads
                    .iter()
                    .map(move |&heads| Size::Dense { depth, ffn, heads })
            })
            .collect()
    }
    fn size(&self) -> Size {
        let (depth, ffn) = self.submodel();
        let h = self.heads();
        Size::Dense {
            depth,
            ffn,
            heads: (h != self.spec().heads).then_some(h),
        }
    }
    fn set_size(&mut self, size: Size) -> Result<(), Error> {
        match size {
            Size::Dense { depth, ffn, heads } => {
                self.set_submodel(Some((depth, ffn)))?;
                self.set_heads(heads)
            }
            _ => Err(wrong(size, Family::Dense)),
        }
    }
    fn parse_size(&self, s: &str) -> Result<Size, Error> {
        Size::parse_dense(s, self.spec().heads)
    }
    fn configure(&mut self, o: &DecodeOptions) -> Result<(), Error> {
        only(o, Family::Dense)
    }
}

/// Refuse options a family does not have.
fn only(o: &DecodeOptions, f: Family) -> Result<(), Error> {
    if o.sb_stop.is_some() && f != Family::ModuleFormer {
        return Err(Error::input(
            "--sb-stop applies to ModuleFormer files (stick-breaking attention) only",
        ));
    }
    if o.act_bias != 0.0 && f != Family::SeqBoat {
        return Err(Error::input("--act-bias applies to SeqBoat files only"));
    }
    Ok(())
}

impl<'a> Decoder<'a> for MfEngine<'a> {
    forward_common!(MfEngine, |_| Family::ModuleFormer);
    fn full_heads(&self) -> usize {
        1
    }
    fn max_context(&self) -> Option<usize> {
        Some(MfEngine::max_context(self))
    }
    fn sizes(&self) -> Vec<Size> {
        self.spec()
            .nested_expert_list()
            .into_iter()
            .map(|c| Size::Experts { att: c, ffn: c })
            .collect()
    }
    fn size(&self) -> Size {
        let (att, ffn) = self.submodel();
        Size::Experts { att, ffn }
    }
    fn set_size(&mut self, size: Size) -> Result<(), Error> {
        match size {
            Size::Experts { att, ffn } => self.set_submodel(Some((att, ffn))),
            _ => Err(wrong(size, Family::ModuleFormer)),
        }
    }
    fn parse_size(&self, sz: &str) -> Result<Size, Error> {
        let parsed = match sz.split_once('x') {
            Some((x, y)) => x.parse().ok().zip(y.parse().ok()),
            None => sz.parse().ok().map(|n: usize| (n, n)),
        };
        parsed
            .map(|(att, ffn)| Size::Experts { att, ffn })
            .ok_or_else(|| {
                Error::input(format!(
                    "--size {sz}: for a ModuleFormer file use N (experts) or ATTxFFN"
                ))
            })
    }
    fn configure(&mut self, o: &DecodeOptions) -> Result<(), Error> {
        only(o, Family::ModuleFormer)?;
        if o.sb_stop.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return Err(Error::input("--sb-stop must be a positive number"));
        }
        self.set_stop(o.sb_stop);
        Ok(())
    }
    fn moduleformer(&self) -> Option<&MfEngine<'a>> {
        Some(self)
    }
}

impl<'a> Decoder<'a> for SbEngine<'a> {
    forward_common!(SbEngine, |_| Family::SeqBoat);
    fn full_heads(&self) -> usize {
        1
    }
    fn max_context(&self) -> Option<usize> {
        None
    }
    fn sizes(&self) -> Vec<Size> {
        self.spec()
            .nested_depth_list()
            .into_iter()
            .map(Size::Depth)
            .collect()
    }
    fn size(&self) -> Size {
        Size::Depth(self.depth())
    }
    fn set_size(&mut self, size: Size) -> Result<(), Error> {
        match size {
            Size::Depth(d) => self.set_depth(Some(d)),
            _ => Err(wrong(size, Family::SeqBoat)),
        }
    }
    fn parse_size(&self, sz: &str) -> Result<Size, Error> {
        sz.parse()
            .map(Size::Depth)
            .map_err(|_| Error::input(format!("--size {sz}: for a SeqBoat file use a depth N")))
    }
    fn configure(&mut self, o: &DecodeOptions) -> Result<(), Error> {
        only(o, Family::SeqBoat)?;
        self.set_act_bias(o.act_bias)
    }
    fn stats_line(&self) -> Option<String> {
        let (counts, seen) = self.activations();
        let ratios: Vec<String> = counts
            .iter()
            .map(|&c| format!("{:.3}", c as f64 / seen.max(1) as f64))
            .collect();
        Some(format!(
            "seqboat: activation ratio per layer {} over {seen} tokens; state {} bytes per stream (constant in the length)",
            ratios.join(","),
            self.state_bytes()
        ))
    }
}

impl<'a> Decoder<'a> for LlamaEngine<'a> {
    forward_common!(LlamaEngine, LlamaEngine::family);
    fn full_heads(&self) -> usize {
        self.spec().heads
    }
    fn max_context(&self) -> Option<usize> {
        Some(LlamaEngine::max_context(self))
    }
    fn sizes(&self) -> Vec<Size> {
        vec![Size::Depth(self.spec().layers)]
    }
    fn size(&self) -> Size {
        Size::Depth(self.depth())
    }
    fn set_size(&mut self, size: Size) -> Result<(), Error> {
        match size {
            Size::Depth(d) => self.set_depth(Some(d)),
            _ => Err(wrong(size, self.spec().family)),
        }
    }
    fn parse_size(&self, sz: &str) -> Result<Size, Error> {
        sz.parse().map(Size::Depth).map_err(|_| {
            Error::input(format!(
                "--size {sz}: for a Llama-family or GPT-2 file use a depth N (its first N blocks)"
            ))
        })
    }
    fn configure(&mut self, o: &DecodeOptions) -> Result<(), Error> {
        only(o, self.spec().family)
    }
}

/// The context a decoder of `desc` gets when the caller names none: the position table
/// (learned positions), else `default`.
pub fn default_context(desc: &ModelDesc, default: usize) -> usize {
    match desc.positions {
        crate::arch::Positions::Learned { rows } => rows,
        crate::arch::Positions::None => default,
        // a rotary model's trained context can be long (its KV cache grows with it): the
        // default, within the trained context; `--context` asks for more
        crate::arch::Positions::Rotary(_) => {
            desc.context_length.map_or(default, |c| c.min(default))
        }
    }
}

/// The decoder for a model file of any family Modula runs, planned for `context`
/// positions (`None`: [`default_context`] with 1024; refused for constant-state families)
/// and, where the family plans by size (dense: depth × FFN width), for sub-models up to
/// `cap` only — so a process that runs one small size holds that size's arena.
pub fn open<'a, B: AsRef<[u8]>>(
    m: &'a Model<B>,
    context: Option<usize>,
    cap: Option<Size>,
) -> Result<Box<dyn Decoder<'a> + 'a>, Error> {
    let desc = ModelDesc::from_model(m)?;
    match desc.family {
        Family::SeqBoat => {
            if context.is_some() {
                return Err(Error::input(
                    "a context length does not apply to SeqBoat (constant state)",
                ));
            }
            let e = SbEngine::new(m)?;
            if e.spec().classes > 0 {
                return Err(Error::unsupported(
                    "a SeqBoat classifier, not a language model: use modula eval",
                ));
            }
            let mut e: Box<dyn Decoder<'a> + 'a> = Box::new(e);
            if let Some(c) = cap {
                e.set_size(c)?;
            }
            Ok(e)
        }
        Family::Llama | Family::Gpt2 => {
            let ctx = context.unwrap_or_else(|| default_context(&desc, 1024));
            let mut e: Box<dyn Decoder<'a> + 'a> = Box::new(LlamaEngine::new(m, ctx)?);
            if let Some(c) = cap {
                e.set_size(c)?;
            }
            Ok(e)
        }
        Family::ModuleFormer => {
            let mut e: Box<dyn Decoder<'a> + 'a> =
                Box::new(MfEngine::new(m, context.unwrap_or(1024))?);
            if let Some(c) = cap {
                e.set_size(c)?;
            }
            Ok(e)
        }
        Family::Dense => {
            let ctx = context.unwrap_or_else(|| default_context(&desc, 1024));
            match cap {
                None => Ok(Box::new(DenseEngine::new(m, ctx)?)),
                Some(Size::Dense { depth, ffn, heads }) => {
                    let mut e = DenseEngine::with_capacity(m, ctx, (depth, ffn))?;
                    e.set_heads(heads)?;
                    Ok(Box::new(e))
                }
                Some(other) => Err(wrong(other, Family::Dense)),
            }
        }
    }
}
