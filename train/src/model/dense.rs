//! The dense baseline transformer every modular model is compared with: token embedding
//! (or a patch embedding for images), an optional learned position table, `L` pre-LN blocks
//! (multi-head softmax attention, causal or not; GELU FFN), final LayerNorm, and either an
//! untied LM head with next-token cross-entropy or a classifier head (mean / first / last
//! pooling, then a linear layer with bias) with one cross-entropy per sequence.
//!
//! Tensor layouts follow the kernels: projections `[out, in]`, the FFN down projection
//! stored transposed (`ffn_down_t: [ffn, d]`) so a nested FFN width is a row prefix.
//! Forward saves every activation the backward needs (one `Activations` per batch).
//! Attention runs one task per (sequence, head) on the kernel thread pool and the big
//! products split their output rows over it; every number is computed by one task in a
//! fixed order, so training is bit-identical for any thread count (tested).

use crate::compute::linear;
use crate::layers::linear::{linear_backward, linear_forward};
use crate::layers::loss::cross_entropy;
use crate::layers::mha::LN_EPS;
use crate::layers::norm::{layernorm_backward, layernorm_forward};
use crate::params::{ParamStore, ParamTable};
use crate::stack::{EmoeRun, FfnSaved, Grads, Rows, Run, Stack, StackSaved};
use modula_core::arch::{self, AttnLayout, DenseShape, ModelDesc, NormKind, NormSpec};
use modula_core::kernels::expert_ffn::Activation;
use modula_core::kernels::linear::MatRef;
use modula_core::rng::SplitMix64;
use modula_core::Error;

/// The LayerNorm epsilon the trainer trains with (files with another are refused).
pub const LN_EPS_TRAINED: f32 = LN_EPS;

/// How a classifier head pools the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Mean over all positions.
    Mean,
    /// The first position (use with non-causal attention).
    First,
    /// The last position (the natural choice with causal attention).
    Last,
}

impl Pool {
    /// Name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Pool::Mean => "mean",
            Pool::First => "first",
            Pool::Last => "last",
        }
    }

    /// Parse [`Pool::name`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "mean" => Ok(Pool::Mean),
            "first" => Ok(Pool::First),
            "last" => Ok(Pool::Last),
            _ => Err(Error::input(format!(
                "unknown pooling '{s}' (mean | first | last)"
            ))),
        }
    }
}

/// Model shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseConfig {
    /// Token vocabulary (256 for bytes); ignored when `patch_dim > 0`.
    pub vocab: usize,
    /// Width d.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads (d must be a multiple).
    pub heads: usize,
    /// FFN hidden width.
    pub ffn: usize,
    /// Rows of the learned position table (0: no position embedding; sequences longer
    /// than this are refused).
    pub max_seq: usize,
    /// Causal attention mask.
    pub causal: bool,
    /// 0: inputs are tokens. `> 0`: inputs are feature vectors of this width (image
    /// patches) embedded by a linear layer with bias.
    pub patch_dim: usize,
    /// 0: LM head over `vocab` with next-token targets. `> 0`: classifier with this many
    /// classes, one target per sequence.
    pub classes: usize,
    /// Pooling of the classifier head.
    pub pool: Pool,
    /// EMoE: bit `l` set = block `l`'s FFN is split into `emoe_experts` contiguous experts
    /// routed by avg-k gates (block means of the current keys; no parameters), top
    /// `emoe_top_k` per token (`crate::emoe`). 0 = a plain dense model.
    pub emoe_layers: u64,
    /// EMoE experts per converted FFN.
    pub emoe_experts: usize,
    /// EMoE experts used per token.
    pub emoe_top_k: usize,
    /// SortedNet nested depths: bit `l − 1` set = the first `l` blocks form a sub-model
    /// (0 = no nesting along depth; the full depth is always a member).
    pub nested_depths: u64,
    /// SortedNet nested FFN widths, ascending, 0-padded (all 0 = no nesting along width;
    /// the full width is always a member).
    pub nested_ffn: [u32; 8],
    /// SortedNet nested attention-head counts: bit `h − 1` set = the first `h` heads of
    /// every block form a sub-model (0 = no nesting along heads; all heads always a
    /// member). Files of head-nested models store `attn_qkv` head-major and the output
    /// projection transposed, so a head prefix is a row prefix of both (`model::io`).
    pub nested_heads: u64,
}

impl DenseConfig {
    /// A causal byte/token language model without a position table.
    pub fn lm(vocab: usize, d: usize, layers: usize, heads: usize, ffn: usize) -> Self {
        DenseConfig {
            vocab,
            d,
            layers,
            heads,
            ffn,
            max_seq: 0,
            causal: true,
            patch_dim: 0,
            classes: 0,
            pool: Pool::Mean,
            emoe_layers: 0,
            emoe_experts: 0,
            emoe_top_k: 0,
            nested_depths: 0,
            nested_ffn: [0; 8],
            nested_heads: 0,
        }
    }

    /// The nested depths, ascending, ending with the full depth.
    pub fn nested_depth_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (1..self.layers.min(64))
            .filter(|&l| self.nested_depths >> (l - 1) & 1 == 1)
            .collect();
        v.push(self.layers);
        v
    }

    /// The nested FFN widths, ascending, ending with the full width.
    pub fn nested_ffn_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .nested_ffn
            .iter()
            .map(|&w| w as usize)
            .filter(|&w| w > 0 && w < self.ffn)
            .collect();
        v.sort_unstable();
        v.dedup();
        v.push(self.ffn);
        v
    }

    /// The nested head counts, ascending, ending with all heads.
    pub fn nested_head_list(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (1..self.heads.min(65))
            .filter(|&h| self.nested_heads >> (h - 1) & 1 == 1)
            .collect();
        v.push(self.heads);
        v
    }

    /// Whether the heads are nested (files then store the attention head-major).
    pub fn heads_nested(&self) -> bool {
        self.nested_head_list().len() > 1
    }

    /// Every nested sub-model `[depth, ffn, heads]`, smallest first (depth, then FFN
    /// width, then heads), the full model last.
    pub fn nested_grid3(&self) -> Vec<[usize; 3]> {
        let hs = self.nested_head_list();
        self.nested_grid()
            .into_iter()
            .flat_map(|(d, f)| hs.iter().map(move |&h| [d, f, h]))
            .collect()
    }

    /// Set the nested head counts (all heads implied), checking them against the shape.
    pub fn with_nested_heads(mut self, heads: &[usize]) -> Result<Self, Error> {
        self.nested_heads = 0;
        for &h in heads {
            if h == 0 || h > self.heads {
                return Err(Error::input(format!(
                    "nested head count {h} is outside 1..={}",
                    self.heads
                )));
            }
            if h < self.heads {
                if h > 64 {
                    return Err(Error::input(format!(
                        "nested head count {h}: at most 64 heads nest"
                    )));
                }
                self.nested_heads |= 1 << (h - 1);
            }
        }
        if self.nested_heads != 0 && self.emoe_layers != 0 {
            return Err(Error::input(
                "nested sub-models of EMoE models are not supported",
            ));
        }
        Ok(self)
    }

    /// Every nested sub-model `(depth, ffn)`, smallest first, the full model last.
    pub fn nested_grid(&self) -> Vec<(usize, usize)> {
        let (ds, fs) = (self.nested_depth_list(), self.nested_ffn_list());
        ds.iter()
            .flat_map(|&d| fs.iter().map(move |&f| (d, f)))
            .collect()
    }

    /// Set the nested sizes (depths and FFN widths; the full ones are implied), checking
    /// them against the shape.
    pub fn with_nested(mut self, depths: &[usize], ffn: &[usize]) -> Result<Self, Error> {
        self.nested_depths = 0;
        for &l in depths {
            if l == 0 || l > self.layers || l > 64 {
                return Err(Error::input(format!(
                    "nested depth {l} is outside 1..={}",
                    self.layers
                )));
            }
            if l < self.layers {
                self.nested_depths |= 1 << (l - 1);
            }
        }
        let mut w: Vec<usize> = ffn.iter().copied().filter(|&f| f != self.ffn).collect();
        w.sort_unstable();
        w.dedup();
        if w.len() > 8 {
            return Err(Error::input(
                "at most 8 nested FFN widths besides the full one",
            ));
        }
        self.nested_ffn = [0; 8];
        for (i, &f) in w.iter().enumerate() {
            if f == 0 || f > self.ffn {
                return Err(Error::input(format!(
                    "nested FFN width {f} is outside 1..={}",
                    self.ffn
                )));
            }
            self.nested_ffn[i] =
                u32::try_from(f).map_err(|_| Error::input("FFN width too large"))?;
        }
        if (self.nested_depths != 0 || w.iter().any(|&f| f < self.ffn)) && self.emoe_layers != 0 {
            return Err(Error::input(
                "nested sub-models of EMoE models are not supported",
            ));
        }
        Ok(self)
    }

    /// Whether block `l` is an EMoE layer.
    pub fn is_emoe(&self, l: usize) -> bool {
        l < 64 && self.emoe_layers >> l & 1 == 1
    }

    /// The EMoE block indices, ascending.
    pub fn emoe_layer_list(&self) -> Vec<usize> {
        (0..self.layers.min(64))
            .filter(|&l| self.is_emoe(l))
            .collect()
    }

    /// Whether this is a classifier.
    pub fn is_classifier(&self) -> bool {
        self.classes > 0
    }

    /// Output classes of the head (vocab for an LM).
    pub fn outputs(&self) -> usize {
        if self.is_classifier() {
            self.classes
        } else {
            self.vocab
        }
    }

    /// The trainable shape of a dense file's description (the one reader,
    /// [`ModelDesc::from_model`], parses the metadata). The trainer trains LayerNorm with
    /// ε = 1e-5 and GELU; a file with another norm, epsilon or activation is refused by
    /// name rather than fine-tuned as something it is not.
    pub fn from_desc(desc: &ModelDesc) -> Result<DenseConfig, Error> {
        if desc.family != arch::Family::Dense {
            return Err(Error::metadata(
                "modula.model",
                format!("not a dense model ({} file)", desc.family.name()),
            ));
        }
        let b0 = desc
            .blocks
            .first()
            .ok_or_else(|| Error::input("a dense model needs at least one block"))?;
        let arch::MixerSpec::Attention(a) = b0.mixer else {
            return Err(Error::input("a dense model's blocks are softmax attention"));
        };
        let Some((fnorm, ffn)) = b0.ffn else {
            return Err(Error::input("a dense model's blocks have an FFN"));
        };
        for (what, norm) in [("block", b0.norm), ("FFN", fnorm)]
            .into_iter()
            .chain(desc.final_norm.map(|n| ("final", n)))
        {
            if norm.kind != NormKind::LayerNorm || norm.eps != LN_EPS {
                return Err(Error::unsupported(format!(
                    "the trainer trains LayerNorm with epsilon {LN_EPS}; this file's {what} norm is {:?} with epsilon {} (modula.norm, modula.norm_epsilon)",
                    norm.kind, norm.eps
                )));
            }
        }
        if ffn.act != Activation::Gelu {
            return Err(Error::unsupported(format!(
                "the trainer trains GELU FFNs; this file's activation is {} (modula.activation)",
                arch::act_name(ffn.act)
            )));
        }
        let (vocab, patch_dim) = match desc.input {
            arch::Input::Tokens { vocab } => (vocab, 0),
            arch::Input::Patches { dim } => (0, dim),
        };
        let (classes, pool) = match desc.task {
            arch::Task::Lm => (0, Pool::Mean),
            arch::Task::Classify { classes, pool } => (
                classes,
                match pool {
                    arch::Pool::Mean => Pool::Mean,
                    arch::Pool::First => Pool::First,
                    arch::Pool::Last => Pool::Last,
                },
            ),
        };
        let mut cfg = DenseConfig {
            vocab,
            d: desc.d,
            layers: desc.blocks.len(),
            heads: a.heads,
            ffn: ffn.width,
            max_seq: match desc.positions {
                arch::Positions::Learned { rows } => rows,
                arch::Positions::None => 0,
                arch::Positions::Rotary(_) => {
                    return Err(Error::unsupported(
                        "rotary positions: the trainer does not train Llama-family models yet",
                    ))
                }
            },
            causal: a.causal,
            patch_dim,
            classes,
            pool,
            ..DenseConfig::lm(vocab, desc.d, desc.blocks.len(), a.heads, ffn.width)
        };
        for (l, b) in desc.blocks.iter().enumerate() {
            if let Some((
                _,
                arch::FfnSpec {
                    kind: arch::FfnKind::Emoe { experts, top_k },
                    ..
                },
            )) = b.ffn
            {
                cfg.emoe_layers |= 1 << l;
                cfg.emoe_experts = experts;
                cfg.emoe_top_k = top_k;
            }
        }
        let n = &desc.nesting;
        let below = |v: &[usize], full: usize| -> Vec<usize> {
            v.iter().copied().filter(|&x| x < full).collect()
        };
        let (depths, widths) = (below(&n.depths, cfg.layers), below(&n.ffn_widths, cfg.ffn));
        if !depths.is_empty() || !widths.is_empty() {
            cfg = cfg.with_nested(&depths, &widths)?;
        }
        let heads = below(&n.heads, cfg.heads);
        if !heads.is_empty() {
            cfg = cfg.with_nested_heads(&heads)?;
        }
        Ok(cfg)
    }

    /// The description of this model in the trainer's own layout (attention q | k | v
    /// rows; files of head-nested models store it head-major, `model::io`): the blocks
    /// the trainer's [`Stack`] is bound from, with the norm epsilon and activation the
    /// trainer uses.
    pub fn desc(&self) -> ModelDesc {
        ModelDesc::dense(&DenseShape {
            task: if self.is_classifier() {
                arch::Task::Classify {
                    classes: self.classes,
                    pool: match self.pool {
                        Pool::Mean => arch::Pool::Mean,
                        Pool::First => arch::Pool::First,
                        Pool::Last => arch::Pool::Last,
                    },
                }
            } else {
                arch::Task::Lm
            },
            input: if self.patch_dim > 0 {
                arch::Input::Patches {
                    dim: self.patch_dim,
                }
            } else {
                arch::Input::Tokens { vocab: self.vocab }
            },
            d: self.d,
            layers: self.layers,
            heads: self.heads,
            ffn: self.ffn,
            causal: self.causal,
            positions: self.max_seq,
            norm: NormSpec {
                kind: NormKind::LayerNorm,
                eps: LN_EPS,
            },
            act: Activation::Gelu,
            layout: AttnLayout::Qkv,
            emoe_mask: self.emoe_layers,
            emoe: (self.emoe_experts, self.emoe_top_k),
            context_length: None,
            nesting: arch::Nesting {
                depths: self.nested_depth_list(),
                ffn_widths: self.nested_ffn_list(),
                heads: self.nested_head_list(),
                experts: Vec::new(),
            },
        })
    }
}

/// One batch of inputs, `[b, t]` tokens or `[b, t, patch_dim]` features.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    /// Token ids.
    Tokens(&'a [u32]),
    /// Feature vectors (patches).
    Features(&'a [f32]),
}

/// The dense model: its configuration, parameter indices and the parameter store.
#[derive(Clone, Debug)]
pub struct DenseModel {
    /// Shape.
    pub cfg: DenseConfig,
    /// Parameters, gradients and optimiser moments.
    pub params: ParamStore,
    /// Token table `[vocab, d]` or patch projection `[d, patch_dim]`.
    embed: usize,
    /// Patch projection bias `[d]` (patch input only).
    embed_b: Option<usize>,
    pos: Option<usize>,
    /// The blocks: attention and FFN sub-layers bound by role from [`DenseConfig::desc`].
    stack: Stack,
    lnf_g: usize,
    lnf_b: usize,
    head: usize,
    head_b: Option<usize>,
    /// EMoE layers apply their top-k expert mask (true: EMoE training / sparse inference;
    /// false: the same weights run densely — "merged back", or a dense model).
    pub emoe_mask: bool,
    /// EMoE training options of the published Tutel path (off by default): Gaussian noise
    /// of std `emoe_noise / experts` on the gate scores while training (applied only when
    /// [`DenseModel::emoe_noise_seed`] is set — the trainer sets it per step; evaluation
    /// never sees noise)...
    pub emoe_noise: f32,
    /// ... the seed of this step's noise (None: no noise) ...
    pub emoe_noise_seed: Option<u64>,
    /// ... and a capacity factor: each expert takes at most `k·floor(cf·ceil(n/N))` of the
    /// batch's (token, expert) pairs, tokens in order of their best score, first choices
    /// before second ones; pairs beyond capacity are dropped (0 = no capacity limit).
    pub emoe_capacity: f32,
    /// ... and the weight of the published code's auxiliary load-balancing loss
    /// ([`crate::emoe::emoe_aux_loss`]; its gradient reaches the FFN input, not the gates;
    /// 0 = off, the published value is 0.01).
    pub emoe_aux: f32,
    /// Run a nested sub-model (SortedNet): `(depth, ffn)` = the first `depth` blocks (final
    /// norm and head shared) with the first `ffn` hidden units of every FFN — prefixes of
    /// every tensor. `None`: the full model. Not combinable with EMoE blocks.
    pub nested: Option<(usize, usize)>,
    /// Run only the first `h` attention heads of every block (SortedNet nested heads;
    /// `None`: all heads). Combines with [`DenseModel::nested`].
    pub nested_heads: Option<usize>,
}

/// Everything the forward saves for the backward, for one batch of `b` sequences of `t`.
#[derive(Clone, Debug, Default)]
pub struct Activations {
    b: usize,
    t: usize,
    /// The blocks' saved sub-layers (inputs, attention, FFN, EMoE routing).
    blocks: StackSaved,
    x_out: Vec<f32>,
    lnf: Vec<f32>,
    lnf_stats: (Vec<f32>, Vec<f32>),
    /// Pooled final features `[b, d]` (classifier only).
    pooled: Vec<f32>,
    /// Weighted EMoE auxiliary loss summed over blocks (0 when off).
    pub emoe_aux: f64,
    logits: Vec<f32>,
}

impl Activations {
    /// The logits: `[b·t, vocab]` for an LM, `[b, classes]` for a classifier.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The experts block `l` selected per position (`[n, top_k]`, before any capacity
    /// drop; empty when block `l` ran without an EMoE mask).
    pub fn emoe_selected(&self, l: usize) -> &[u32] {
        self.ffn(l).map_or(&[], |f| f.sel.as_slice())
    }

    /// The hidden-unit mask of EMoE block `l` (`[n, ffn]`, 1 = kept; empty for an
    /// unmasked block).
    pub fn emoe_keep(&self, l: usize) -> &[f32] {
        self.ffn(l).map_or(&[], |f| f.keep.as_slice())
    }

    fn ffn(&self, l: usize) -> Option<&FfnSaved> {
        self.blocks.ffn(l)
    }
}

impl DenseModel {
    /// A model with GPT-2-style initialisation (N(0, 0.02); residual projections scaled by
    /// 1/√(2L); norms at γ = 1, β = 0), deterministic in `seed`.
    pub fn new(cfg: DenseConfig, seed: u64) -> Result<Self, Error> {
        if cfg.heads == 0 || !cfg.d.is_multiple_of(cfg.heads) || cfg.d == 0 {
            return Err(Error::input(format!(
                "d = {} must be a positive multiple of heads = {}",
                cfg.d, cfg.heads
            )));
        }
        if cfg.patch_dim == 0 && cfg.vocab == 0 {
            return Err(Error::input(
                "a token model needs a vocabulary of at least 1",
            ));
        }
        if cfg.emoe_layers != 0 {
            if cfg.layers < 64 && cfg.emoe_layers >> cfg.layers != 0 {
                return Err(Error::input(format!(
                    "EMoE layer mask {:#x} names blocks beyond the {} the model has",
                    cfg.emoe_layers, cfg.layers
                )));
            }
            if cfg.emoe_experts < 2 || !cfg.ffn.is_multiple_of(cfg.emoe_experts) {
                return Err(Error::input(format!(
                    "EMoE: {} experts must be at least 2 and divide the FFN width {}",
                    cfg.emoe_experts, cfg.ffn
                )));
            }
            if cfg.emoe_top_k == 0 || cfg.emoe_top_k > cfg.emoe_experts {
                return Err(Error::input(format!(
                    "EMoE: top-k {} must be in 1..={}",
                    cfg.emoe_top_k, cfg.emoe_experts
                )));
            }
        }
        if cfg.patch_dim > 0 && cfg.classes == 0 {
            return Err(Error::input(
                "a patch (image) model needs a classifier head (classes > 0)",
            ));
        }
        let d = cfg.d;
        let mut t = ParamTable::new();
        let (embed, embed_b) = if cfg.patch_dim > 0 {
            (
                t.add("patch_embd.weight", &[d, cfg.patch_dim], true)?,
                Some(t.add("patch_embd.bias", &[d], false)?),
            )
        } else {
            (t.add("token_embd.weight", &[cfg.vocab, d], true)?, None)
        };
        let pos = if cfg.max_seq > 0 {
            Some(t.add("position_embd.weight", &[cfg.max_seq, d], true)?)
        } else {
            None
        };
        // the blocks' tensors, in the description's order and names
        let desc = cfg.desc();
        let tensors = desc.tensors();
        let in_blocks: Vec<_> = tensors
            .iter()
            .filter(|t| t.block.is_some())
            .cloned()
            .collect();
        t.add_tensors(&in_blocks, "")?;
        let lnf_g = t.add("output_norm.weight", &[d], false)?;
        let lnf_b = t.add("output_norm.bias", &[d], false)?;
        let head = t.add("output.weight", &[cfg.outputs(), d], true)?;
        let head_b = if cfg.is_classifier() {
            Some(t.add("output.bias", &[cfg.classes], false)?)
        } else {
            None
        };
        let mut params = t.build();
        gpt2_init(&mut params, seed, cfg.layers);
        let stack = Stack::bind(&desc.blocks, &tensors, params.specs(), "")?;
        Ok(DenseModel {
            cfg,
            params,
            embed,
            embed_b,
            pos,
            stack,
            lnf_g,
            lnf_b,
            head,
            head_b,
            emoe_mask: true,
            emoe_noise: 0.0,
            emoe_noise_seed: None,
            emoe_capacity: 0.0,
            emoe_aux: 0.0,
            nested: None,
            nested_heads: None,
        })
    }

    /// The (depth, FFN width) the forward runs: [`DenseModel::nested`] checked against the
    /// shape, or the full model.
    pub fn active(&self) -> Result<(usize, usize), Error> {
        let c = self.cfg;
        match self.nested {
            None => Ok((c.layers, c.ffn)),
            Some((depth, f)) => {
                if depth == 0 || depth > c.layers || f == 0 || f > c.ffn {
                    return Err(Error::input(format!(
                        "nested sub-model (depth {depth}, FFN {f}) is outside the model (depth {}, FFN {})",
                        c.layers, c.ffn
                    )));
                }
                if c.emoe_layers != 0 && (depth, f) != (c.layers, c.ffn) {
                    return Err(Error::input(
                        "nested sub-models of EMoE models are not supported",
                    ));
                }
                Ok((depth, f))
            }
        }
    }

    /// The attention heads the forward runs: [`DenseModel::nested_heads`] checked against
    /// the shape, or all heads.
    pub fn active_heads(&self) -> Result<usize, Error> {
        let c = self.cfg;
        match self.nested_heads {
            None => Ok(c.heads),
            Some(h) if h == 0 || h > c.heads => Err(Error::input(format!(
                "nested sub-model with {h} heads is outside the model ({} heads)",
                c.heads
            ))),
            Some(h) if h < c.heads && c.emoe_layers != 0 => Err(Error::input(
                "nested sub-models of EMoE models are not supported",
            )),
            Some(h) => Ok(h),
        }
    }

    /// Parameter index of block `layer`'s tensor `name` (e.g. `"ffn_up.weight"`).
    pub fn ffn_index(&self, layer: usize, name: &str) -> Result<usize, Error> {
        let full = format!("blk.{layer}.{name}");
        self.params
            .specs()
            .iter()
            .position(|s| s.name == full)
            .ok_or_else(|| Error::input(format!("no tensor {full}")))
    }

    /// The avg-k gates of EMoE block `l`: `G[e] = mean of the raw keys (rows of ffn_up) of
    /// expert e`, `[experts, d]`, from the current weights.
    pub fn emoe_gates(&self, l: usize) -> Vec<f32> {
        let c = self.cfg;
        match self.ffn_index(l, "ffn_up.weight") {
            Ok(i) => crate::stack::emoe_gates(self.params.value(i), c.emoe_experts, c.d),
            Err(_) => Vec::new(),
        }
    }

    /// What the forward runs: nested prefixes and EMoE masking.
    fn run(&self, f: usize, heads: usize) -> Run<'static> {
        Run {
            heads: Some(heads),
            ffn: Some(f),
            emoe: self.emoe_mask.then_some(EmoeRun {
                noise: self.emoe_noise,
                noise_seed: self.emoe_noise_seed,
                capacity: self.emoe_capacity,
                aux: self.emoe_aux,
            }),
            ..Run::default()
        }
    }

    /// Check an input batch against the configuration.
    fn check_input(
        &self,
        input: Input<'_>,
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let n = b * t;
        if b == 0 || t == 0 {
            return Err(Error::input("empty batch"));
        }
        match (input, c.patch_dim) {
            (Input::Tokens(x), 0) => {
                if x.len() != n {
                    return Err(Error::input(format!(
                        "tokens must be [{b}, {t}], got {} values",
                        x.len()
                    )));
                }
                if let Some(&bad) = x.iter().find(|&&v| v as usize >= c.vocab) {
                    return Err(Error::input(format!(
                        "token {bad} is outside the vocabulary of {}",
                        c.vocab
                    )));
                }
            }
            (Input::Features(x), p) if p > 0 => {
                if x.len() != n * p {
                    return Err(Error::input(format!(
                        "features must be [{b}, {t}, {p}], got {} values",
                        x.len()
                    )));
                }
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(Error::input("input features contain NaN or infinity"));
                }
            }
            (Input::Tokens(_), _) => {
                return Err(Error::input("this model takes feature vectors, not tokens"))
            }
            (Input::Features(_), _) => {
                return Err(Error::input("this model takes tokens, not feature vectors"))
            }
        }
        if c.max_seq > 0 && t > c.max_seq {
            return Err(Error::input(format!(
                "sequence length {t} exceeds the position table ({} positions)",
                c.max_seq
            )));
        }
        let want = if c.is_classifier() { b } else { n };
        if targets.len() != want {
            return Err(Error::input(format!(
                "expected {want} targets, got {}",
                targets.len()
            )));
        }
        Ok(())
    }

    /// Forward over a batch of `b` sequences of `t`; returns the mean loss against
    /// `targets` (`[b, t]` next tokens for an LM — entries equal to
    /// [`crate::layers::loss::IGNORE`] are skipped — or `[b]` classes for a classifier),
    /// the saved activations and the loss gradient with respect to the logits.
    pub fn forward(
        &self,
        input: Input<'_>,
        targets: &[u32],
        b: usize,
        t: usize,
    ) -> Result<(f64, Activations, Vec<f32>), Error> {
        self.check_input(input, targets, b, t)?;
        let c = self.cfg;
        let (d, n) = (c.d, b * t);
        let p = &self.params;
        let (depth, f) = self.active()?;
        let heads = self.active_heads()?;
        let mut a = Activations {
            b,
            t,
            ..Activations::default()
        };
        let mut x = vec![0f32; n * d];
        match input {
            Input::Tokens(tokens) => {
                let emb = p.value(self.embed);
                for (i, &tok) in tokens.iter().enumerate() {
                    let r = tok as usize * d;
                    x[i * d..(i + 1) * d].copy_from_slice(&emb[r..r + d]);
                }
            }
            Input::Features(f) => {
                let bias = self.embed_b.map(|i| p.value(i));
                linear_forward(f, n, p.value(self.embed), bias, d, c.patch_dim, &mut x)?;
            }
        }
        if let Some(pos) = self.pos {
            let table = p.value(pos);
            for (i, row) in x.chunks_exact_mut(d).enumerate() {
                add(row, &table[(i % t) * d..(i % t + 1) * d]);
            }
        }
        let rows = Rows { b, t, d };
        a.blocks = self
            .stack
            .forward(p, rows, &self.run(f, heads), depth, &mut x)?;
        a.emoe_aux = a.blocks.aux();
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
        )?;
        let outs = c.outputs();
        let (rows, feats): (usize, &[f32]) = if c.is_classifier() {
            a.pooled = pool_forward(c.pool, &hf, b, t, d);
            (b, &a.pooled)
        } else {
            (n, &hf)
        };
        let mut logits = vec![0f32; rows * outs];
        linear(
            feats,
            d,
            rows,
            &MatRef::f32(p.value(self.head), outs, d)?,
            self.head_b.map(|i| p.value(i)),
            &mut logits,
            outs,
        )?;
        let mut dlogits = vec![0f32; rows * outs];
        let loss = cross_entropy(&logits, targets, outs, &mut dlogits)?;
        a.x_out = x;
        a.lnf = hf;
        a.lnf_stats = (muf, rsf);
        a.logits = logits;
        Ok((loss, a, dlogits))
    }

    /// Backward from `dlogits` (as returned by [`DenseModel::forward`], possibly scaled),
    /// accumulating into the parameter gradients (EMoE auxiliary loss at weight 1).
    pub fn backward(
        &mut self,
        input: Input<'_>,
        a: &Activations,
        dlogits: &[f32],
    ) -> Result<(), Error> {
        self.backward_scaled(input, a, dlogits, 1.0)
    }

    /// [`DenseModel::backward`] with the EMoE auxiliary loss's gradient scaled by
    /// `aux_scale` (the factor `dlogits` were scaled by, for gradient accumulation).
    pub fn backward_scaled(
        &mut self,
        input: Input<'_>,
        a: &Activations,
        dlogits: &[f32],
        aux_scale: f32,
    ) -> Result<(), Error> {
        let c = self.cfg;
        let (b, t) = (a.b, a.t);
        let (d, n) = (c.d, b * t);
        let outs = c.outputs();
        let rows = if c.is_classifier() { b } else { n };
        if dlogits.len() != rows * outs || a.blocks.depth > c.layers {
            return Err(Error::input(
                "backward: activations or dlogits do not match this model",
            ));
        }
        let e = |e: modula_core::kernels::KernelError| Error::from(e);
        let p = &mut self.params;
        // head
        let mut dx_f = vec![0f32; n * d];
        {
            let feats = if c.is_classifier() { &a.pooled } else { &a.lnf };
            let mut dfeat = vec![0f32; rows * d];
            let (w, gw) = p.value_grad(self.head, self.head);
            let mut dbh = vec![0f32; outs];
            linear_backward(
                dlogits,
                feats,
                w,
                rows,
                outs,
                d,
                Some(&mut dfeat),
                gw,
                Some(&mut dbh),
            )
            .map_err(e)?;
            if let Some(hb) = self.head_b {
                add(p.grad_mut(hb), &dbh);
                pool_backward(c.pool, &dfeat, b, t, d, &mut dx_f);
            } else {
                dx_f = dfeat;
            }
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
        self.stack.backward(
            p,
            &a.blocks,
            &mut dx,
            Grads {
                params: true,
                aux_scale,
            },
        )?;
        if let Some(pos) = self.pos {
            let gp = p.grad_mut(pos);
            for (i, row) in dx.chunks_exact(d).enumerate() {
                add(&mut gp[(i % t) * d..(i % t + 1) * d], row);
            }
        }
        match input {
            Input::Tokens(tokens) => {
                // embedding: scatter-add rows
                let gw = p.grad_mut(self.embed);
                for (i, &tok) in tokens.iter().take(n).enumerate() {
                    add(
                        &mut gw[tok as usize * d..(tok as usize + 1) * d],
                        &dx[i * d..(i + 1) * d],
                    );
                }
            }
            Input::Features(f) => {
                let (w, gw) = p.value_grad(self.embed, self.embed);
                let mut dbe = vec![0f32; d];
                linear_backward(&dx, f, w, n, d, c.patch_dim, None, gw, Some(&mut dbe))
                    .map_err(e)?;
                if let Some(bi) = self.embed_b {
                    add(p.grad_mut(bi), &dbe);
                }
            }
        }
        Ok(())
    }
}

/// Pool `h: [b·t, d]` to `[b, d]`.
pub(crate) fn pool_forward(pool: Pool, h: &[f32], b: usize, t: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * d];
    for (s, o) in out.chunks_exact_mut(d).enumerate() {
        let seq = &h[s * t * d..(s + 1) * t * d];
        match pool {
            Pool::Mean => {
                for row in seq.chunks_exact(d) {
                    add(o, row);
                }
                let inv = 1.0 / t as f32;
                o.iter_mut().for_each(|v| *v *= inv);
            }
            Pool::First => o.copy_from_slice(&seq[..d]),
            Pool::Last => o.copy_from_slice(&seq[(t - 1) * d..]),
        }
    }
    out
}

/// Backward of [`pool_forward`]: `dh: [b·t, d]` (overwritten) from `dpooled: [b, d]`.
pub(crate) fn pool_backward(
    pool: Pool,
    dpooled: &[f32],
    b: usize,
    t: usize,
    d: usize,
    dh: &mut [f32],
) {
    dh.fill(0.0);
    for s in 0..b {
        let g = &dpooled[s * d..(s + 1) * d];
        let seq = &mut dh[s * t * d..(s + 1) * t * d];
        match pool {
            Pool::Mean => {
                let inv = 1.0 / t as f32;
                for row in seq.chunks_exact_mut(d) {
                    for (r, v) in row.iter_mut().zip(g) {
                        *r = v * inv;
                    }
                }
            }
            Pool::First => seq[..d].copy_from_slice(g),
            Pool::Last => seq[(t - 1) * d..].copy_from_slice(g),
        }
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (a, b) in dst.iter_mut().zip(src) {
        *a += b;
    }
}

/// GPT-2-style initialisation by tensor name, deterministic in `seed`: norms γ = 1,
/// biases 0, weights N(0, 0.02) — residual output projections (`attn_output`,
/// `ffn_down`) N(0, 0.02/√(2·blocks)).
pub(crate) fn gpt2_init(params: &mut ParamStore, seed: u64, blocks: usize) {
    let mut rng = SplitMix64(seed);
    let resid = 0.02 / (2.0 * blocks.max(1) as f32).sqrt();
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
            v.iter_mut().for_each(|x| *x = std * normal(&mut rng));
        }
    }
}

/// A standard normal draw (Box–Muller).
pub(crate) fn normal(rng: &mut SplitMix64) -> f32 {
    let u1 = rng.next_f32().max(1e-7);
    let u2 = rng.next_f32();
    libm::sqrtf(-2.0 * libm::logf(u1)) * libm::cosf(2.0 * core::f32::consts::PI * u2)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, GradCheck};

    /// Whole-model check: every parameter's gradient against central differences.
    fn check_model(
        name: &str,
        cfg: DenseConfig,
        input: Input<'_>,
        targets: &[u32],
        b: usize,
        t: usize,
    ) {
        let mut m = DenseModel::new(cfg, 3).unwrap();
        // larger weights than the init so every path carries signal
        let mut r = SplitMix64(9);
        for v in m.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
        let (_, acts, dl) = m.forward(input, targets, b, t).unwrap();
        m.params.zero_grads();
        m.backward(input, &acts, &dl).unwrap();
        let grads = m.params.grads.clone();
        let mut values = m.params.values.clone();
        let probe = m.clone();
        let f = |v: &[f32]| {
            let mut mm = probe.clone();
            mm.params.values.copy_from_slice(v);
            mm.forward(input, targets, b, t).unwrap().0
        };
        let gc = GradCheck {
            eps: 1e-2,
            tol: 1e-2,
            floor: 1e-2,
        };
        check_grad(name, &mut values, &grads, f, gc).unwrap();
        // and the same check notices one wrong gradient (in block 0's qkv weight)
        let q = m
            .params
            .specs()
            .iter()
            .position(|s| s.name == "blk.0.attn_qkv.weight")
            .unwrap();
        let off = m.params.specs()[..q]
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum::<usize>();
        let mut bad = grads.clone();
        bad[off + 5] += 0.05;
        assert!(check_grad(name, &mut values, &bad, f, gc).is_err());
    }

    #[test]
    fn whole_model_gradients_match_finite_differences() {
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 11) as u32).collect();
        let mut targets: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 1) % 11) as u32).collect();
        // LM: causal, no position table
        let lm = DenseConfig::lm(11, 8, 2, 2, 12);
        check_model("dense LM", lm, Input::Tokens(&tokens), &targets, b, t);
        // LM with a position table and ignored targets
        targets[3] = crate::layers::loss::IGNORE;
        let lm_pos = DenseConfig { max_seq: 6, ..lm };
        check_model(
            "dense LM + positions",
            lm_pos,
            Input::Tokens(&tokens),
            &targets,
            b,
            t,
        );
        // token classifier, last-position pooling, causal
        let cls = DenseConfig {
            classes: 3,
            pool: Pool::Last,
            layers: 1,
            ..lm_pos
        };
        check_model(
            "classifier (last)",
            cls,
            Input::Tokens(&tokens),
            &[2, 0],
            b,
            t,
        );
        // image classifier: patches, full attention, mean and first pooling
        let feats: Vec<f32> = (0..b * t * 4)
            .map(|i| ((i * 37 % 17) as f32) / 17.0)
            .collect();
        let img = DenseConfig {
            vocab: 0,
            patch_dim: 4,
            causal: false,
            pool: Pool::Mean,
            ..cls
        };
        check_model(
            "image classifier (mean)",
            img,
            Input::Features(&feats),
            &[1, 2],
            b,
            t,
        );
        let first = DenseConfig {
            pool: Pool::First,
            ..img
        };
        check_model(
            "image classifier (first)",
            first,
            Input::Features(&feats),
            &[1, 2],
            b,
            t,
        );
    }

    #[test]
    fn nested_submodel_gradients_match_and_touch_only_the_prefix() {
        let cfg = DenseConfig {
            max_seq: 6,
            ..DenseConfig::lm(11, 8, 3, 2, 12)
        };
        let mut m = DenseModel::new(cfg, 3).unwrap();
        let mut r = SplitMix64(9);
        for v in m.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 7 % 11) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 1) % 11) as u32).collect();
        m.nested = Some((2, 4));
        let (_, acts, dl) = m.forward(Input::Tokens(&tokens), &targets, b, t).unwrap();
        m.params.zero_grads();
        m.backward(Input::Tokens(&tokens), &acts, &dl).unwrap();
        let grads = m.params.grads.clone();
        // nothing outside the sub-model gets a gradient
        for (i, s) in m.params.specs().iter().enumerate() {
            let g = m.params.grad(i);
            let used = if s.name.starts_with("blk.2.") {
                0
            } else if s.name.contains("ffn_up.weight") || s.name.contains("ffn_down_t") {
                4 * 8
            } else if s.name.contains("ffn_up.bias") {
                4
            } else {
                g.len()
            };
            assert!(
                g[used..].iter().all(|&v| v == 0.0),
                "{} has gradient outside the prefix",
                s.name
            );
        }
        let mut values = m.params.values.clone();
        let probe = m.clone();
        let f = |v: &[f32]| {
            let mut mm = probe.clone();
            mm.params.values.copy_from_slice(v);
            mm.forward(Input::Tokens(&tokens), &targets, b, t)
                .unwrap()
                .0
        };
        let gc = GradCheck::default();
        check_grad(
            "nested (depth 2 of 3, FFN 4 of 12)",
            &mut values,
            &grads,
            f,
            gc,
        )
        .unwrap();
        // the full model is unchanged by having run a sub-model; bad sizes are errors
        m.nested = Some((4, 4));
        assert!(m.forward(Input::Tokens(&tokens), &targets, b, t).is_err());
        m.nested = Some((1, 13));
        assert!(m.forward(Input::Tokens(&tokens), &targets, b, t).is_err());
    }

    #[test]
    fn nested_heads_match_zeroed_heads_and_gradients_stay_in_their_rows() {
        // 4 heads of width 2; the sub-model runs the first 1 or 3 of them in every block
        let cfg = DenseConfig {
            max_seq: 6,
            ..DenseConfig::lm(11, 8, 2, 4, 12)
        }
        .with_nested_heads(&[1, 3])
        .unwrap();
        assert_eq!(cfg.nested_head_list(), vec![1, 3, 4]);
        assert_eq!(cfg.nested_grid3(), vec![[2, 12, 1], [2, 12, 3], [2, 12, 4]]);
        let mut m = DenseModel::new(cfg, 5).unwrap();
        let mut r = SplitMix64(11);
        for v in m.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 11) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| ((i * 3 + 2) % 11) as u32).collect();
        let (d, hd) = (8, 2);
        for h in [1usize, 3] {
            // semantics: h heads = all heads with the others' projection columns zeroed
            let mut zeroed = m.clone();
            zeroed.nested_heads = None;
            for l in 0..2 {
                let i = zeroed.ffn_index(l, "attn_output.weight").unwrap();
                for row in zeroed.params.value_mut(i).chunks_exact_mut(d) {
                    row[h * hd..].iter_mut().for_each(|v| *v = 0.0);
                }
            }
            let want = zeroed
                .forward(Input::Tokens(&tokens), &targets, b, t)
                .unwrap()
                .0;
            m.nested_heads = Some(h);
            let (loss, acts, dl) = m.forward(Input::Tokens(&tokens), &targets, b, t).unwrap();
            assert!((loss - want).abs() < 1e-6, "{h} heads: {loss} vs {want}");
            m.params.zero_grads();
            m.backward(Input::Tokens(&tokens), &acts, &dl).unwrap();
            // the other heads' q/k/v rows and projection columns get no gradient
            for (i, s) in m.params.specs().iter().enumerate() {
                let g = m.params.grad(i);
                let cols = if s.name.ends_with("attn_qkv.weight") {
                    d
                } else {
                    1
                };
                if s.name.contains("attn_qkv.") {
                    for part in 0..3 {
                        let dead = (part * d + h * hd) * cols..(part + 1) * d * cols;
                        assert!(g[dead].iter().all(|&v| v == 0.0), "{} ({h})", s.name);
                    }
                    assert!(g[..hd * cols].iter().any(|&v| v != 0.0), "{}", s.name);
                } else if s.name.ends_with("attn_output.weight") {
                    for row in g.chunks_exact(d) {
                        assert!(row[h * hd..].iter().all(|&v| v == 0.0), "{} ({h})", s.name);
                    }
                }
            }
            let grads = m.params.grads.clone();
            let mut values = m.params.values.clone();
            let probe = m.clone();
            let f = |v: &[f32]| {
                let mut mm = probe.clone();
                mm.params.values.copy_from_slice(v);
                mm.forward(Input::Tokens(&tokens), &targets, b, t)
                    .unwrap()
                    .0
            };
            let what = format!("nested heads ({h} of 4)");
            check_grad(&what, &mut values, &grads, f, GradCheck::default()).unwrap();
        }
        m.nested_heads = Some(5);
        assert!(m.forward(Input::Tokens(&tokens), &targets, b, t).is_err());
        m.nested_heads = Some(0);
        assert!(m.forward(Input::Tokens(&tokens), &targets, b, t).is_err());
        assert!(cfg.with_nested_heads(&[5]).is_err() && cfg.with_nested_heads(&[0]).is_err());
    }

    #[test]
    fn emoe_aux_loss_gradient_reaches_the_inputs() {
        // Only the auxiliary loss (dlogits = 0): its gradient w.r.t. every weight upstream
        // of the EMoE block (block 0, embeddings) against finite differences of its value,
        // with routing noise on (fixed seed) and the selection unchanged by the probes.
        let cfg = DenseConfig {
            emoe_layers: 0b10,
            emoe_experts: 4,
            emoe_top_k: 2,
            ..DenseConfig::lm(11, 8, 2, 2, 16)
        };
        let mut m = DenseModel::new(cfg, 4).unwrap();
        let mut r = SplitMix64(2);
        for v in m.params.values.iter_mut() {
            *v += 0.3 * (2.0 * r.next_f32() - 1.0);
        }
        m.emoe_aux = 0.5;
        m.emoe_noise = 1.0;
        m.emoe_noise_seed = Some(5);
        let tokens: Vec<u32> = (0..10).map(|i| (i * 7 % 11) as u32).collect();
        let (_, acts, dl) = m.forward(Input::Tokens(&tokens), &tokens, 2, 5).unwrap();
        assert!(acts.emoe_aux > 0.0);
        m.params.zero_grads();
        m.backward(Input::Tokens(&tokens), &acts, &vec![0f32; dl.len()])
            .unwrap();
        let sel0 = acts.emoe_selected(1).to_vec();
        let upstream = m.params.specs()[m.params.index_of("blk.1.attn_norm.weight").unwrap()]
            .range
            .start;
        let grads = m.params.grads[..upstream].to_vec();
        assert!(
            grads.iter().any(|g| g.abs() > 1e-4),
            "the aux loss moves upstream weights"
        );
        let mut values = m.params.values[..upstream].to_vec();
        let probe = m.clone();
        let f = |v: &[f32]| {
            let mut mm = probe.clone();
            mm.params.values[..upstream].copy_from_slice(v);
            let (_, a, _) = mm.forward(Input::Tokens(&tokens), &tokens, 2, 5).unwrap();
            assert_eq!(
                a.emoe_selected(1),
                sel0.as_slice(),
                "a probe changed the routing"
            );
            a.emoe_aux
        };
        let gc = GradCheck {
            eps: 1e-3,
            tol: 2e-2,
            floor: 1e-3,
        };
        check_grad("emoe aux", &mut values, &grads, f, gc).unwrap();
    }

    #[test]
    fn bad_input_is_an_error() {
        let cfg = DenseConfig::lm(11, 8, 1, 3, 12);
        assert!(DenseModel::new(cfg, 1).is_err());
        let m = DenseModel::new(
            DenseConfig {
                heads: 2,
                max_seq: 2,
                ..cfg
            },
            1,
        )
        .unwrap();
        let tok = |x: &'static [u32]| Input::Tokens(x);
        assert!(m.forward(tok(&[1, 2]), &[1, 2], 1, 3).is_err());
        assert!(m.forward(tok(&[1, 20]), &[1, 2], 1, 2).is_err());
        assert!(m.forward(tok(&[1, 2]), &[1, 20], 1, 2).is_err());
        assert!(m
            .forward(tok(&[1, 2, 3]), &[1, 2, 3], 1, 3)
            .unwrap_err()
            .to_string()
            .contains("position"));
        assert!(m
            .forward(Input::Features(&[0.0; 4]), &[1, 2], 1, 2)
            .is_err());
        assert!(m.forward(tok(&[1, 2]), &[1, 2], 1, 2).is_ok());
        let img = DenseConfig {
            vocab: 0,
            patch_dim: 2,
            classes: 3,
            ..cfg
        };
        let m = DenseModel::new(DenseConfig { heads: 2, ..img }, 1).unwrap();
        assert!(m
            .forward(Input::Features(&[0.0, f32::NAN, 0.0, 0.0]), &[1], 1, 2)
            .is_err());
        assert!(m.forward(Input::Features(&[0.0; 4]), &[3], 1, 2).is_err());
        assert!(m.forward(Input::Features(&[0.0; 4]), &[2], 1, 2).is_ok());
        assert!(DenseModel::new(DenseConfig { classes: 0, ..img }, 1).is_err());
    }
}
