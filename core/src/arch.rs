//! The model description: one value that says what a model file *is*, read by one loader
//! ([`ModelDesc::from_model`]) for every architecture, and consumed by the decoders, the
//! trainer's readers, `quantize`, `inspect`, `plan` and `bench`.
//!
//! A description has
//! - the hyper-parameters (vocabulary, width, blocks, context, positions);
//! - a per-block spec ([`BlockSpec`]): the norm before the mixer (kind and epsilon), the
//!   mixer ([`MixerSpec`]: multi-head softmax attention, ModuleFormer's stick-breaking
//!   attention experts, a SeqBoat layer) and the FFN ([`FfnSpec`]: activation, biases, dense /
//!   EMoE / MoE experts) with its norm;
//! - the output (final norm, a separate or tied LM head, or a classifier);
//! - the nested (SortedNet) sizes the file declares;
//! - the tensor table ([`ModelDesc::tensors`]): every tensor by role, with its name in the
//!   file, the shape the description needs and its stored orientation ([`Layout`]), so a
//!   tensor is used as stored.
//!
//! **Every `modula.*` key an architecture's writer emits is read here** (the per-family key
//! tables [`keys_of`] list them; a test writes a file of every family and checks that the
//! loader read every key in it), and a value this build does not know — a norm, an
//! activation, an attention kind, a layout — is an [`Error::Metadata`] naming the key and the
//! value, never silently replaced by a default.
//!
//! Adding an architecture = one key table, one constructor from metadata (here), the
//! tensor-name table of its roles, and a mixer only where the mixer is new
//! (`docs/architecture.md`).

use crate::error::{Error, Result};
use crate::model::Model;
use crate::Value;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

/// Which architecture family a file holds (`modula.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Pre-norm transformer: softmax attention + FFN; EMoE-converted FFNs included.
    Dense,
    /// ModuleFormer (MoLM): stick-breaking attention experts + FFN experts.
    ModuleFormer,
    /// SeqBoat: damped EMA + gated attention unit on activated tokens.
    SeqBoat,
    /// A Llama-family transformer from llama.cpp's GGUF (`general.architecture` = `llama`
    /// or `qwen2`): RMSNorm, rotary positions, grouped-query attention (Qwen2: with q/k/v
    /// biases), SwiGLU FFN, tied or separate head.
    Llama,
    /// GPT-2 from llama.cpp's GGUF (`general.architecture` = `gpt2`): learned positions,
    /// LayerNorm, fused q/k/v with biases, tanh-GELU FFN with biases, tied or separate head.
    Gpt2,
}

impl Family {
    /// The `modula.model` value.
    pub fn name(self) -> &'static str {
        match self {
            Family::Dense => "dense",
            Family::ModuleFormer => "moduleformer",
            Family::SeqBoat => "seqboat",
            Family::Llama => "llama",
            Family::Gpt2 => "gpt2",
        }
    }
}

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Next-token language model.
    Lm,
    /// Sequence classifier with this many classes.
    Classify {
        /// Classes.
        classes: usize,
        /// How the sequence is pooled before the head.
        pool: Pool,
    },
}

/// How a classifier pools a sequence's features (`modula.classify.pool`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// Mean over the positions (SeqBoat: over the non-pad positions).
    Mean,
    /// The first position.
    First,
    /// The last position.
    Last,
}

/// What goes in: tokens of a vocabulary or feature vectors (image patches).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Token ids below `vocab`.
    Tokens {
        /// Vocabulary.
        vocab: usize,
    },
    /// Feature vectors of this width (`modula.input.patch_dim`).
    Patches {
        /// Width of one vector.
        dim: usize,
    },
}

/// A normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm (mean and variance, gain and bias).
    LayerNorm,
    /// RMSNorm (root mean square, gain).
    RmsNorm,
}

/// A norm layer: kind and epsilon (`modula.norm`, `modula.norm_epsilon`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    /// Kind.
    pub kind: NormKind,
    /// Epsilon added to the variance.
    pub eps: f32,
}

/// A point-wise activation (`modula.activation`): the kernels' own enum.
pub use crate::kernels::expert_ffn::Activation as Act;

/// The `modula.activation` value of an activation.
pub fn act_name(a: Act) -> &'static str {
    match a {
        Act::Gelu => "gelu",
        Act::GeluTanh => "gelu_tanh",
        Act::Silu => "silu",
        Act::Relu2 => "relu2",
    }
}

/// Where position information comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Positions {
    /// None in the embedding (stick-breaking attention and the EMA carry order).
    None,
    /// A learned table of this many rows added to the token embedding.
    Learned {
        /// Rows (the longest context).
        rows: usize,
    },
    /// Rotary embeddings of the queries and keys in every attention block.
    Rotary(Rope),
}

/// Which dimensions of a head rotary embeddings rotate together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)` — llama.cpp's `llama` architecture, whose converter
    /// permutes the query and key rows of a Hugging Face checkpoint to match.
    Adjacent,
    /// The two halves `(i, i + head_dim/2)` (`rotate_half`, "NeoX") — Hugging Face's layout,
    /// llama.cpp's `qwen2`.
    Half,
}

/// Rotary position embeddings: pair `i` of a head turns by `pos / scale · θ^(−2i/dim)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base θ (`rope.freq_base`, Hugging Face's `rope_theta`).
    pub theta: f32,
    /// Rotated dimensions per head (all of them: partial rotary is refused).
    pub dim: usize,
    /// Pairing.
    pub style: RopeStyle,
    /// Linear position scaling factor (1: none; `rope.scaling.type = linear`).
    pub scale: f32,
    /// Per-pair frequency divisors in `rope_freqs.weight` (`[dim / 2]`; Llama 3.1's `llama3`
    /// scaling as llama.cpp's converter writes it).
    pub factors: bool,
}

/// How a softmax attention's projections are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnLayout {
    /// `attn_qkv` rows q | k | v as `nn.Linear(d, 3d)`, `attn_output` `[d, d]` (out, in).
    Qkv,
    /// `attn_qkv` rows per head (q, k, v of head 0, then head 1, …) and `attn_output_t`
    /// the output projection transposed (in, out), so a head prefix is a row prefix.
    HeadMajor,
    /// llama.cpp's separate `attn_q`, `attn_k`, `attn_v` (`[out, in]`; with `bias`, their
    /// biases only) and `attn_output` `[d, heads·head_dim]`.
    Split,
}

/// Multi-head softmax attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionSpec {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (= `heads` without grouped-query attention).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Causal mask.
    pub causal: bool,
    /// Projections carry biases.
    pub bias: bool,
    /// Stored layout.
    pub layout: AttnLayout,
}

/// How a mixture routes tokens to experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterKind {
    /// Logits are one linear layer.
    Linear,
    /// A two-layer MLP with this hidden width.
    Mlp {
        /// Hidden width.
        hidden: usize,
    },
    /// EMoE's avg-k gates: the mean key of each expert (no parameters of its own).
    AvgK,
}

/// ModuleFormer's mixture of stick-breaking attention experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoaSpec {
    /// Attention experts.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Heads per expert.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Keys and values are the normed input itself (no projections; MoLM).
    pub shared_kv: bool,
    /// Router (shared by both mixtures of a block).
    pub router: RouterKind,
    /// Gates renormalised over the chosen experts.
    pub renormalize: bool,
}

/// SeqBoat's attention function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GauAttn {
    /// Softmax over the band.
    Softmax,
    /// relu² (squared ReLU, length-normalised).
    Relu2,
}

/// SeqBoat's gate mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Learned per-token activation.
    Learned,
    /// Every token runs the attention unit.
    Always,
    /// No token does (EMA only).
    Off,
}

/// A SeqBoat layer (damped EMA + gated attention unit on activated tokens).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeqBoatSpec {
    /// EMA expansion N.
    pub ndim: usize,
    /// Shared query/key width z.
    pub z: usize,
    /// Value/gate width e.
    pub e: usize,
    /// Local attention band, in activated tokens (0: no band).
    pub window: usize,
    /// Causal (the EMA runs forward only).
    pub causal: bool,
    /// Attention function.
    pub attn: GauAttn,
    /// Norm before the layer (and a final norm) rather than after it.
    pub prenorm: bool,
    /// Relative-bias range M.
    pub max_pos: usize,
    /// Gate mode.
    pub gate: Gate,
    /// Padding token.
    pub pad: Option<u32>,
    /// Initial temperature scale (training; kept so a file round-trips).
    pub temp_scale: f32,
}

/// The token mixer of a block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MixerSpec {
    /// Multi-head softmax attention with a KV cache.
    Attention(AttentionSpec),
    /// Stick-breaking attention experts.
    StickBreaking(MoaSpec),
    /// A SeqBoat layer (its own norm and residual; no FFN after it).
    SeqBoat(SeqBoatSpec),
}

/// Dense, EMoE or MoE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// One FFN.
    Dense,
    /// A dense FFN split into `experts` blocks of rows, `top_k` chosen by avg-k gates.
    Emoe {
        /// Experts.
        experts: usize,
        /// Experts per token.
        top_k: usize,
    },
    /// Separate FFN experts chosen by a router.
    Moe {
        /// Experts.
        experts: usize,
        /// Experts per token.
        top_k: usize,
        /// Router.
        router: RouterKind,
        /// Gates renormalised over the chosen experts.
        renormalize: bool,
    },
}

/// A feed-forward sub-layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FfnSpec {
    /// Hidden width (per expert for MoE).
    pub width: usize,
    /// Activation.
    pub act: Act,
    /// Gated (`act(W_g x) ⊙ W_u x`, SwiGLU-style).
    pub gated: bool,
    /// Up and down projections carry biases.
    pub bias: bool,
    /// Dense / EMoE / MoE.
    pub kind: FfnKind,
}

/// One block: norm, mixer, residual; norm, FFN, residual (SeqBoat layers: no FFN).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockSpec {
    /// The norm before the mixer (after it in post-norm SeqBoat layers).
    pub norm: NormSpec,
    /// The mixer.
    pub mixer: MixerSpec,
    /// The FFN and the norm before it.
    pub ffn: Option<(NormSpec, FfnSpec)>,
}

/// What turns the last features into outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `output.weight` `[vocab, d]`, its own tensor.
    Separate,
    /// The token embedding reused (SeqBoat language models).
    Tied,
    /// A classifier over pooled features.
    Classifier,
}

/// The nested (SortedNet) sizes a file declares: each list ascending, the full size last.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Nesting {
    /// Depths (blocks kept).
    pub depths: Vec<usize>,
    /// FFN widths.
    pub ffn_widths: Vec<usize>,
    /// Attention head counts.
    pub heads: Vec<usize>,
    /// Expert counts (ModuleFormer: attention and FFN mixtures alike).
    pub experts: Vec<usize>,
}

/// A model file's complete description.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelDesc {
    /// Family.
    pub family: Family,
    /// Task.
    pub task: Task,
    /// Input.
    pub input: Input,
    /// Model width d.
    pub d: usize,
    /// The longest context the model was trained for (`modula.context_length`).
    pub context_length: Option<usize>,
    /// Position information.
    pub positions: Positions,
    /// One spec per block.
    pub blocks: Vec<BlockSpec>,
    /// The final norm (pre-norm models).
    pub final_norm: Option<NormSpec>,
    /// The output.
    pub head: Head,
    /// Declared nested sizes.
    pub nesting: Nesting,
}

/// How a matrix is stored, relative to the product it takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[out, in]`: one row per output (`nn.Linear.weight`, GGUF's usual layout); the
    /// product is `y = W x`.
    OutIn,
    /// `[in, out]`: one row per input (a transposed projection); the product is
    /// `y = Wᵀ x` — nested widths along the input are then row prefixes.
    InOut,
    /// A table of rows looked up by index (embeddings, position tables).
    Table,
    /// A vector (norm gains and biases, projection biases): f32.
    Vector,
}

/// What a tensor is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Token embedding.
    TokenEmbd,
    /// Learned positions.
    PositionEmbd,
    /// Patch embedding (classifiers over feature vectors).
    PatchEmbd,
    /// Final norm gain / bias.
    OutputNorm,
    /// Final norm bias.
    OutputNormBias,
    /// LM head.
    Output,
    /// Classifier output layer.
    Classifier,
    /// Its bias.
    ClassifierBias,
    /// A classifier's hidden layer (SeqBoat's two-layer head).
    ClassifierHidden,
    /// Its bias.
    ClassifierHiddenBias,
    /// Norm before the mixer: gain / bias.
    AttnNorm,
    /// Its bias.
    AttnNormBias,
    /// Fused q, k, v projection.
    AttnQkv,
    /// Query projection (separate q, k, v: Llama).
    AttnQ,
    /// Its bias (Qwen2).
    AttnQBias,
    /// Its bias.
    AttnQkvBias,
    /// Attention output projection.
    AttnOut,
    /// Its bias.
    AttnOutBias,
    /// Key projection (ModuleFormer without shared K = V).
    AttnK,
    /// Its bias.
    AttnKBias,
    /// Value projection.
    AttnV,
    /// Its bias.
    AttnVBias,
    /// The attention mixture's router (output layer; stick-breaking experts).
    AttnRouter,
    /// Its hidden layer.
    AttnRouterHidden,
    /// Its bias.
    AttnRouterHiddenBias,
    /// A router of FFN experts (output layer).
    Router,
    /// Its bias.
    RouterBias,
    /// A router's hidden layer.
    RouterHidden,
    /// Its bias.
    RouterHiddenBias,
    /// An attention expert's query projection.
    ExpertQ,
    /// An attention expert's output projection.
    ExpertOut,
    /// Norm before the FFN.
    FfnNorm,
    /// Its bias.
    FfnNormBias,
    /// The gate projection of a gated FFN (`act(W_g x) ⊙ W_u x`).
    FfnGate,
    /// FFN up projection (keys; an FFN expert's up projection).
    FfnUp,
    /// Its bias.
    FfnUpBias,
    /// FFN down projection (values).
    FfnDown,
    /// Its bias.
    FfnDownBias,
    /// SeqBoat's damped EMA: δ, α, β, γ (`[d·directions, N]`, raw as trained).
    EmaDelta,
    /// α.
    EmaAlpha,
    /// β.
    EmaBeta,
    /// γ.
    EmaGamma,
    /// The EMA's skip `ω` (`[d]`).
    EmaOmega,
    /// SeqBoat's activation gate (`[2 + d, d]`: the two gate logits, then the SSM path).
    SbGate,
    /// Its bias.
    SbGateBias,
    /// The gate's log temperature (one value).
    SbLogTemp,
    /// The gated attention unit's input projection (`[z + 2e, d]`: Z, R, V).
    GauIn,
    /// Its bias.
    GauInBias,
    /// Per-dimension scales of the queries and keys (`[2, z]`).
    GauQkScale,
    /// Their offsets.
    GauQkOffset,
    /// Relative position bias (`[2·max_positions − 1]`).
    GauRelBias,
    /// The unit's output projection (`[d, e]`).
    GauOut,
    /// Its bias.
    GauOutBias,
    /// Per-pair rotary frequency divisors (`rope_freqs.weight`, `[head_dim / 2]`).
    RopeFreqs,
}

/// One tensor the description expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the file.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Block (`None`: model-level).
    pub block: Option<usize>,
    /// Expert index within its mixture.
    pub expert: Option<usize>,
    /// Shape, rows first (GGUF's dims reversed).
    pub shape: Vec<usize>,
    /// Stored orientation.
    pub layout: Layout,
}

/// Keys every family may carry.
pub const COMMON_KEYS: &[&str] = &[
    "modula.model",
    "modula.format_version",
    "modula.task",
    "modula.vocab_size",
    "modula.context_length",
    "modula.embedding_length",
    "modula.block_count",
    "modula.norm",
    "modula.norm_epsilon",
    "modula.attention.kind",
    "modula.attention.causal",
];

/// Keys of the dense family (with EMoE and SortedNet nesting).
pub const DENSE_KEYS: &[&str] = &[
    "modula.feed_forward_length",
    "modula.activation",
    "modula.attention.head_count",
    "modula.attention.layout",
    "modula.position_length",
    "modula.input.patch_dim",
    "modula.num_classes",
    "modula.classify.pool",
    "modula.emoe.layers",
    "modula.expert.count",
    "modula.expert.used_count",
    "modula.expert.router",
    "modula.nested.depths",
    "modula.nested.ffn_widths",
    "modula.nested.head_counts",
];

/// Keys of ModuleFormer.
pub const MODULEFORMER_KEYS: &[&str] = &[
    "modula.feed_forward_length",
    "modula.activation",
    "modula.attention.head_count",
    "modula.attention.head_dim",
    "modula.attention.expert_count",
    "modula.attention.expert_used_count",
    "modula.attention.shared_kv",
    "modula.expert.count",
    "modula.expert.used_count",
    "modula.expert.router",
    "modula.expert.gating_size",
    "modula.expert.renormalize",
    "modula.nested.expert_counts",
];

/// Keys of SeqBoat.
pub const SEQBOAT_KEYS: &[&str] = &[
    "modula.num_classes",
    "modula.ssm.ema_dim",
    "modula.ssm.bidirectional",
    "modula.gau.zdim",
    "modula.gau.hdim",
    "modula.gau.window",
    "modula.gau.attention_fn",
    "modula.gau.max_positions",
    "modula.seqboat.gate",
    "modula.seqboat.prenorm",
    "modula.seqboat.temp_scale",
    "modula.seqboat.pad_token",
    "modula.nested.depths",
];

/// The `modula.*` keys a family's files may carry: [`COMMON_KEYS`] plus its own table
/// (page-group keys belong to the container, not to the architecture).
pub fn keys_of(f: Family) -> impl Iterator<Item = &'static str> {
    let (common, own): (&[&str], &[&str]) = match f {
        Family::Dense => (COMMON_KEYS, DENSE_KEYS),
        Family::ModuleFormer => (COMMON_KEYS, MODULEFORMER_KEYS),
        Family::SeqBoat => (COMMON_KEYS, SEQBOAT_KEYS),
        Family::Llama => (&[], LLAMA_KEYS),
        Family::Gpt2 => (&[], GPT2_KEYS),
    };
    common.iter().chain(own).copied()
}

/// The architecture keys of llama.cpp's `llama` files that Modula reads (`qwen2` files
/// carry the same under `qwen2.`); `general.architecture` names the prefix.
pub const LLAMA_KEYS: &[&str] = &[
    "general.architecture",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.attention.sliding_window",
    "llama.rope.dimension_count",
    "llama.rope.freq_base",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "llama.expert_count",
    "llama.vocab_size",
];

/// Keys of llama.cpp's GPT-2 files.
pub const GPT2_KEYS: &[&str] = &[
    "general.architecture",
    "gpt2.context_length",
    "gpt2.embedding_length",
    "gpt2.block_count",
    "gpt2.feed_forward_length",
    "gpt2.attention.head_count",
    "gpt2.attention.head_count_kv",
    "gpt2.attention.layer_norm_epsilon",
    "gpt2.vocab_size",
];

/// Reads metadata and remembers which keys were read (so a test can prove every key in a
/// file is used).
struct Meta<'m, B> {
    m: &'m Model<B>,
    read: RefCell<Vec<String>>,
}

impl<'m, B: AsRef<[u8]>> Meta<'m, B> {
    fn new(m: &'m Model<B>) -> Self {
        Meta {
            m,
            read: RefCell::new(Vec::new()),
        }
    }
    fn get(&self, key: &str) -> Option<Value<'m>> {
        let mut r = self.read.borrow_mut();
        if !r.iter().any(|k| k == key) {
            r.push(key.to_string());
        }
        self.m.get(key)
    }
    fn u32(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            Some(Value::U32(v)) => Ok(v as usize),
            Some(v) => Err(Error::metadata(
                key,
                format!("{key} must be a u32, found {}", v.type_description()),
            )),
            None => Err(Error::metadata(
                key,
                format!("{key}: required key is missing"),
            )),
        }
    }
    fn f32(&self, key: &str) -> Result<f32> {
        match self.get(key) {
            Some(Value::F32(v)) if v.is_finite() => Ok(v),
            Some(v) => Err(Error::metadata(
                key,
                format!("{key} must be a finite f32, found {v:?}"),
            )),
            None => Err(Error::metadata(
                key,
                format!("{key}: required key is missing"),
            )),
        }
    }
    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.f32(key),
        }
    }
    fn u32_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(_) => self.u32(key),
        }
    }
    fn flag(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Ok(b),
            _ => Err(Error::metadata(key, format!("missing or non-bool {key}"))),
        }
    }
    fn str(&self, key: &str) -> Option<&'m str> {
        self.get(key).and_then(|v| v.as_str())
    }
    /// A string key that must be one of `options` (`default` when absent; required when
    /// `None`): anything else is an error naming the key, the value and the choices.
    /// `modula.block_count`, refused when 0 or larger than the file's tensor count (every
    /// block stores at least one tensor) — before anything is allocated per block.
    fn block_count(&self) -> Result<usize> {
        let layers = self.u32("modula.block_count")?;
        if layers == 0 || layers > self.m.tensor_count() {
            return Err(Error::metadata(
                "modula.block_count",
                format!(
                    "modula.block_count = {layers}: the file holds {} tensors (at least one per block)",
                    self.m.tensor_count()
                ),
            ));
        }
        Ok(layers)
    }

    fn choice<T: Copy>(&self, key: &str, options: &[(&str, T)], default: Option<T>) -> Result<T> {
        let names = || {
            options
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match (self.get(key), default) {
            (None, Some(d)) => Ok(d),
            (Some(Value::Str(v)), _) => options
                .iter()
                .find(|(n, _)| *n == v)
                .map(|&(_, t)| t)
                .ok_or_else(|| {
                    Error::metadata(
                        key,
                        format!("{key} = \"{v}\" is not one Modula knows ({})", names()),
                    )
                }),
            (other, _) => Err(Error::metadata(
                key,
                format!("{key} = {other:?}: a string, one of {}", names()),
            )),
        }
    }
    /// A u32 array, each entry checked by `ok`.
    fn list(&self, key: &str, ok: impl Fn(usize) -> bool) -> Result<Option<Vec<usize>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                let mut v = Vec::new();
                for x in a.iter() {
                    match x {
                        Value::U32(n) if ok(n as usize) => v.push(n as usize),
                        other => {
                            return Err(Error::metadata(key, format!("{key}: bad entry {other:?}")))
                        }
                    }
                }
                Ok(Some(v))
            }
            Some(_) => Err(Error::metadata(key, format!("{key} is not an array"))),
        }
    }
    fn norm(&self) -> Result<NormSpec> {
        let kind = self.choice(
            "modula.norm",
            &[
                ("layernorm", NormKind::LayerNorm),
                ("rmsnorm", NormKind::RmsNorm),
            ],
            Some(NormKind::LayerNorm),
        )?;
        let eps = match self.get("modula.norm_epsilon") {
            None => 1e-5,
            Some(Value::F32(e)) if e.is_finite() && e > 0.0 && e < 1.0 => e,
            Some(o) => {
                return Err(Error::metadata(
                    "modula.norm_epsilon",
                    format!("modula.norm_epsilon = {o:?} must be a positive f32 below 1"),
                ))
            }
        };
        Ok(NormSpec { kind, eps })
    }
    fn act(&self, default: Act) -> Result<Act> {
        self.choice(
            "modula.activation",
            &[
                ("gelu", Act::Gelu),
                ("gelu_tanh", Act::GeluTanh),
                ("silu", Act::Silu),
                ("relu2", Act::Relu2),
            ],
            Some(default),
        )
    }
    fn attention_kind(&self, want: &str) -> Result<()> {
        match self.str("modula.attention.kind") {
            None => Ok(()),
            Some(k) if k == want => Ok(()),
            Some(o) => Err(Error::metadata(
                "modula.attention.kind",
                format!(
                    "modula.attention.kind = \"{o}\" does not fit this family (it uses \"{want}\")"
                ),
            )),
        }
    }
}

/// `list` ascending, deduplicated, below `full`, with `full` appended.
fn nested(list: Option<Vec<usize>>, full: usize) -> Vec<usize> {
    let mut v: Vec<usize> = list
        .unwrap_or_default()
        .into_iter()
        .filter(|&x| x < full)
        .collect();
    v.sort_unstable();
    v.dedup();
    v.push(full);
    v
}

impl ModelDesc {
    /// Read and check the architecture of a model file (any family Modula knows).
    pub fn from_model<B: AsRef<[u8]>>(m: &Model<B>) -> Result<Self> {
        Ok(Self::read(m)?.0)
    }

    /// [`ModelDesc::from_model`], and every metadata key the loader looked at.
    pub fn from_model_keys<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(Self, Vec<String>)> {
        Self::read(m)
    }

    fn read<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(Self, Vec<String>)> {
        let r = Meta::new(m);
        if r.str("modula.model").is_none() {
            // a file from elsewhere: llama.cpp's architectures by `general.architecture`
            match r.str("general.architecture") {
                Some("llama") => return Ok((llama(&r, "llama")?, r.read.into_inner())),
                Some("qwen2") => return Ok((llama(&r, "qwen2")?, r.read.into_inner())),
                Some("gpt2") => return Ok((gpt2(&r)?, r.read.into_inner())),
                Some(o) => {
                    return Err(Error::unsupported(format!(
                        "general.architecture = \"{o}\" is not an architecture Modula runs \
                         (Modula's own files; llama.cpp's llama, qwen2, gpt2)"
                    )))
                }
                None => {}
            }
        }
        let fam = match r.str("modula.model") {
            Some("dense") => Family::Dense,
            Some("moduleformer") => Family::ModuleFormer,
            Some("seqboat") => Family::SeqBoat,
            Some(o) => {
                return Err(Error::metadata(
                    "modula.model",
                    format!(
                        "modula.model = \"{o}\" is not an architecture Modula runs (dense, moduleformer, seqboat)"
                    ),
                ))
            }
            None => {
                return Err(Error::metadata(
                    "modula.model",
                    "not a Modula model file (no modula.model key)",
                ))
            }
        };
        let desc = match fam {
            Family::Dense => dense(&r)?,
            Family::ModuleFormer => moduleformer(&r)?,
            Family::SeqBoat => seqboat(&r)?,
            Family::Llama | Family::Gpt2 => {
                unreachable!("read from general.architecture above")
            }
        };
        let keys = r.read.into_inner();
        Ok((desc, keys))
    }

    /// Blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Vocabulary (0 for patch inputs).
    pub fn vocab(&self) -> usize {
        match self.input {
            Input::Tokens { vocab } => vocab,
            Input::Patches { .. } => 0,
        }
    }

    /// The spec of block `l`.
    pub fn block(&self, l: usize) -> Option<&BlockSpec> {
        self.blocks.get(l)
    }

    /// The norm of the model (every norm of Modula's families is the same kind and
    /// epsilon; imported families may differ per block).
    pub fn norm(&self) -> NormSpec {
        self.blocks.first().map_or(
            NormSpec {
                kind: NormKind::LayerNorm,
                eps: 1e-5,
            },
            |b| b.norm,
        )
    }

    /// Every tensor this description needs, in file order per block, with name, role,
    /// shape and stored layout.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        self.for_each_tensor(&mut |t| out.push(t));
        out
    }

    /// [`ModelDesc::tensors`] one at a time, without collecting them (the engines bind
    /// from it with no table of names on the heap).
    pub fn for_each_tensor(&self, out: &mut dyn FnMut(TensorSpec)) {
        let d = self.d;
        let t = |name: String,
                 role: Role,
                 block: Option<usize>,
                 expert: Option<usize>,
                 shape: Vec<usize>,
                 layout: Layout| TensorSpec {
            name,
            role,
            block,
            expert,
            shape,
            layout,
        };
        match self.input {
            Input::Tokens { vocab } => out(t(
                "token_embd.weight".into(),
                Role::TokenEmbd,
                None,
                None,
                vec![vocab, d],
                Layout::Table,
            )),
            Input::Patches { dim } => {
                out(t(
                    "patch_embd.weight".into(),
                    Role::PatchEmbd,
                    None,
                    None,
                    vec![d, dim],
                    Layout::OutIn,
                ));
                out(t(
                    "patch_embd.bias".into(),
                    Role::PatchEmbd,
                    None,
                    None,
                    vec![d],
                    Layout::Vector,
                ));
            }
        }
        if let Positions::Rotary(Rope {
            factors: true, dim, ..
        }) = self.positions
        {
            out(t(
                "rope_freqs.weight".into(),
                Role::RopeFreqs,
                None,
                None,
                vec![dim / 2],
                Layout::Vector,
            ));
        }
        if let Positions::Learned { rows } = self.positions {
            out(t(
                "position_embd.weight".into(),
                Role::PositionEmbd,
                None,
                None,
                vec![rows, d],
                Layout::Table,
            ));
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let n = |s: &str| format!("blk.{l}.{s}");
            let v = |s: &str, role: Role, len: usize| {
                t(n(s), role, Some(l), None, vec![len], Layout::Vector)
            };
            let mtx = |s: &str, role: Role, rows: usize, cols: usize, lay: Layout| {
                t(n(s), role, Some(l), None, vec![rows, cols], lay)
            };
            match b.mixer {
                MixerSpec::Attention(a) if a.layout == AttnLayout::Split => {
                    // llama.cpp's names: RMSNorm gains only, separate q, k, v
                    let (w, kv) = (a.heads * a.head_dim, a.kv_heads * a.head_dim);
                    out(v("attn_norm.weight", Role::AttnNorm, d));
                    if b.norm.kind == NormKind::LayerNorm {
                        out(v("attn_norm.bias", Role::AttnNormBias, d));
                    }
                    for (name, role, bias_role, rows) in [
                        ("attn_q", Role::AttnQ, Role::AttnQBias, w),
                        ("attn_k", Role::AttnK, Role::AttnKBias, kv),
                        ("attn_v", Role::AttnV, Role::AttnVBias, kv),
                    ] {
                        out(mtx(&format!("{name}.weight"), role, rows, d, Layout::OutIn));
                        if a.bias {
                            out(v(&format!("{name}.bias"), bias_role, rows));
                        }
                    }
                    out(mtx(
                        "attn_output.weight",
                        Role::AttnOut,
                        d,
                        w,
                        Layout::OutIn,
                    ));
                }
                MixerSpec::Attention(a) => {
                    let w = a.heads * a.head_dim;
                    let qkv = w + 2 * a.kv_heads * a.head_dim;
                    out(v("attn_norm.weight", Role::AttnNorm, d));
                    out(v("attn_norm.bias", Role::AttnNormBias, d));
                    out(mtx("attn_qkv.weight", Role::AttnQkv, qkv, d, Layout::OutIn));
                    if a.bias {
                        out(v("attn_qkv.bias", Role::AttnQkvBias, qkv));
                    }
                    match a.layout {
                        AttnLayout::Qkv => out(mtx(
                            "attn_output.weight",
                            Role::AttnOut,
                            d,
                            w,
                            Layout::OutIn,
                        )),
                        AttnLayout::HeadMajor | AttnLayout::Split => out(mtx(
                            "attn_output_t.weight",
                            Role::AttnOut,
                            w,
                            d,
                            Layout::InOut,
                        )),
                    }
                    if a.bias {
                        out(v("attn_output.bias", Role::AttnOutBias, d));
                    }
                }
                MixerSpec::StickBreaking(a) => {
                    let da = a.heads * a.head_dim;
                    out(v("attn_norm.weight", Role::AttnNorm, d));
                    out(v("attn_norm.bias", Role::AttnNormBias, d));
                    router_tensors(out, l, "attn_router", a.router, a.experts, d);
                    if !a.shared_kv {
                        out(mtx("attn_k.weight", Role::AttnK, da, d, Layout::OutIn));
                        out(v("attn_k.bias", Role::AttnKBias, da));
                        out(mtx("attn_v.weight", Role::AttnV, da, d, Layout::OutIn));
                        out(v("attn_v.bias", Role::AttnVBias, da));
                    }
                    for e in 0..a.experts {
                        out(t(
                            format!("blk.{l}.attn_q.{e}.weight"),
                            Role::ExpertQ,
                            Some(l),
                            Some(e),
                            vec![da, d],
                            Layout::OutIn,
                        ));
                        out(t(
                            format!("blk.{l}.attn_output_t.{e}.weight"),
                            Role::ExpertOut,
                            Some(l),
                            Some(e),
                            vec![da, d],
                            Layout::InOut,
                        ));
                    }
                }
                MixerSpec::SeqBoat(s) => {
                    let (z, e) = (s.z, s.e);
                    let dir = if s.causal { 1 } else { 2 };
                    out(v("norm.weight", Role::AttnNorm, d));
                    out(v("norm.bias", Role::AttnNormBias, d));
                    for (c, role) in [
                        ("ema.delta", Role::EmaDelta),
                        ("ema.alpha", Role::EmaAlpha),
                        ("ema.beta", Role::EmaBeta),
                        ("ema.gamma", Role::EmaGamma),
                    ] {
                        out(mtx(c, role, dir * d, s.ndim, Layout::Vector));
                    }
                    out(v("ema.omega", Role::EmaOmega, d));
                    out(mtx("gate.weight", Role::SbGate, 2 + d, d, Layout::OutIn));
                    out(v("gate.bias", Role::SbGateBias, 2 + d));
                    out(v("gate.log_temp", Role::SbLogTemp, 1));
                    out(mtx(
                        "gau_in.weight",
                        Role::GauIn,
                        z + 2 * e,
                        d,
                        Layout::OutIn,
                    ));
                    out(v("gau_in.bias", Role::GauInBias, z + 2 * e));
                    out(mtx("gau_qk.scale", Role::GauQkScale, 2, z, Layout::Vector));
                    out(mtx(
                        "gau_qk.offset",
                        Role::GauQkOffset,
                        2,
                        z,
                        Layout::Vector,
                    ));
                    out(v("gau_rel_bias", Role::GauRelBias, 2 * s.max_pos - 1));
                    out(mtx("gau_out.weight", Role::GauOut, d, e, Layout::OutIn));
                    out(v("gau_out.bias", Role::GauOutBias, d));
                }
            }
            if let Some((fnorm, f)) = b.ffn {
                out(v("ffn_norm.weight", Role::FfnNorm, d));
                if fnorm.kind == NormKind::LayerNorm {
                    out(v("ffn_norm.bias", Role::FfnNormBias, d));
                }
                match f.kind {
                    FfnKind::Dense if f.gated => {
                        // llama.cpp's SwiGLU: gate, up `[ffn, d]`, down `[d, ffn]`, all [out, in]
                        out(mtx(
                            "ffn_gate.weight",
                            Role::FfnGate,
                            f.width,
                            d,
                            Layout::OutIn,
                        ));
                        out(mtx("ffn_up.weight", Role::FfnUp, f.width, d, Layout::OutIn));
                        out(mtx(
                            "ffn_down.weight",
                            Role::FfnDown,
                            d,
                            f.width,
                            Layout::OutIn,
                        ));
                    }
                    FfnKind::Dense if self.family == Family::Gpt2 => {
                        // llama.cpp's GPT-2: up `[ffn, d]`, down `[d, ffn]`, both [out, in]
                        out(mtx("ffn_up.weight", Role::FfnUp, f.width, d, Layout::OutIn));
                        out(v("ffn_up.bias", Role::FfnUpBias, f.width));
                        out(mtx(
                            "ffn_down.weight",
                            Role::FfnDown,
                            d,
                            f.width,
                            Layout::OutIn,
                        ));
                        out(v("ffn_down.bias", Role::FfnDownBias, d));
                    }
                    FfnKind::Dense | FfnKind::Emoe { .. } => {
                        out(mtx("ffn_up.weight", Role::FfnUp, f.width, d, Layout::OutIn));
                        if f.bias {
                            out(v("ffn_up.bias", Role::FfnUpBias, f.width));
                        }
                        out(mtx(
                            "ffn_down_t.weight",
                            Role::FfnDown,
                            f.width,
                            d,
                            Layout::InOut,
                        ));
                        if f.bias {
                            out(v("ffn_down.bias", Role::FfnDownBias, d));
                        }
                    }
                    FfnKind::Moe {
                        experts, router, ..
                    } => {
                        router_tensors(out, l, "ffn_router", router, experts, d);
                        for e in 0..experts {
                            out(t(
                                format!("blk.{l}.ffn_up.{e}.weight"),
                                Role::FfnUp,
                                Some(l),
                                Some(e),
                                vec![f.width, d],
                                Layout::OutIn,
                            ));
                            out(t(
                                format!("blk.{l}.ffn_down_t.{e}.weight"),
                                Role::FfnDown,
                                Some(l),
                                Some(e),
                                vec![f.width, d],
                                Layout::InOut,
                            ));
                        }
                    }
                }
            }
        }
        if self.final_norm.is_some() {
            out(t(
                "output_norm.weight".into(),
                Role::OutputNorm,
                None,
                None,
                vec![d],
                Layout::Vector,
            ));
        }
        if self
            .final_norm
            .is_some_and(|n| n.kind == NormKind::LayerNorm)
        {
            out(t(
                "output_norm.bias".into(),
                Role::OutputNormBias,
                None,
                None,
                vec![d],
                Layout::Vector,
            ));
        }
        match (self.head, self.task) {
            (Head::Separate, _) => out(t(
                "output.weight".into(),
                Role::Output,
                None,
                None,
                vec![self.vocab(), d],
                Layout::OutIn,
            )),
            (Head::Classifier, Task::Classify { classes, .. }) => match self.family {
                Family::SeqBoat => {
                    out(t(
                        "cls.0.weight".into(),
                        Role::ClassifierHidden,
                        None,
                        None,
                        vec![2 * d, d],
                        Layout::OutIn,
                    ));
                    out(t(
                        "cls.0.bias".into(),
                        Role::ClassifierHiddenBias,
                        None,
                        None,
                        vec![2 * d],
                        Layout::Vector,
                    ));
                    out(t(
                        "cls.1.weight".into(),
                        Role::Classifier,
                        None,
                        None,
                        vec![classes, 2 * d],
                        Layout::OutIn,
                    ));
                }
                _ => {
                    out(t(
                        "output.weight".into(),
                        Role::Classifier,
                        None,
                        None,
                        vec![classes, d],
                        Layout::OutIn,
                    ));
                    out(t(
                        "output.bias".into(),
                        Role::ClassifierBias,
                        None,
                        None,
                        vec![classes],
                        Layout::Vector,
                    ));
                }
            },
            _ => {}
        }
    }

    /// Check that the file holds every tensor of [`ModelDesc::tensors`] with its shape
    /// (vectors as f32): a missing tensor is [`Error::Container`] (`TensorNotFound`), a
    /// wrong shape [`Error::Shape`].
    pub fn check_tensors<B: AsRef<[u8]>>(&self, m: &Model<B>) -> Result<()> {
        for spec in self.tensors() {
            let t = m.tensor(&spec.name)?;
            let got = t.shape();
            let ok = if spec.layout == Layout::Vector {
                t.n_elements() == spec.shape.iter().product::<usize>() as u64
            } else {
                got == spec.shape
            };
            if !ok {
                return Err(Error::Shape {
                    tensor: spec.name,
                    expected: spec.shape,
                    got,
                });
            }
            if spec.layout == Layout::Vector {
                t.as_f32_slice().map_err(|e| {
                    Error::unsupported(format!("{e} (norms and biases must stay f32)"))
                })?;
            }
        }
        Ok(())
    }
}

fn router_tensors(
    out: &mut dyn FnMut(TensorSpec),
    l: usize,
    prefix: &str,
    router: RouterKind,
    experts: usize,
    d: usize,
) {
    let mk = |s: String, role, shape: Vec<usize>, layout| TensorSpec {
        name: s,
        role,
        block: Some(l),
        expert: None,
        shape,
        layout,
    };
    let (hid, hid_b, out_role) = if prefix == "attn_router" {
        (
            Role::AttnRouterHidden,
            Role::AttnRouterHiddenBias,
            Role::AttnRouter,
        )
    } else {
        (Role::RouterHidden, Role::RouterHiddenBias, Role::Router)
    };
    match router {
        RouterKind::Mlp { hidden } => {
            out(mk(
                format!("blk.{l}.{prefix}_hid.weight"),
                hid,
                vec![hidden, d],
                Layout::OutIn,
            ));
            out(mk(
                format!("blk.{l}.{prefix}_hid.bias"),
                hid_b,
                vec![hidden],
                Layout::Vector,
            ));
            out(mk(
                format!("blk.{l}.{prefix}.weight"),
                out_role,
                vec![experts, hidden],
                Layout::OutIn,
            ));
        }
        RouterKind::Linear => out(mk(
            format!("blk.{l}.{prefix}.weight"),
            out_role,
            vec![experts, d],
            Layout::OutIn,
        )),
        RouterKind::AvgK => {}
    }
}

fn task<B: AsRef<[u8]>>(r: &Meta<'_, B>) -> Result<Task> {
    match r.str("modula.task") {
        None | Some("lm") => Ok(Task::Lm),
        Some("classify") => Ok(Task::Classify {
            classes: r.u32("modula.num_classes")?,
            pool: r.choice(
                "modula.classify.pool",
                &[
                    ("mean", Pool::Mean),
                    ("first", Pool::First),
                    ("last", Pool::Last),
                ],
                Some(Pool::Mean),
            )?,
        }),
        Some(o) => Err(Error::metadata(
            "modula.task",
            format!("modula.task = \"{o}\" is not lm or classify"),
        )),
    }
}

fn dense<B: AsRef<[u8]>>(r: &Meta<'_, B>) -> Result<ModelDesc> {
    r.attention_kind("softmax")?;
    let task = task(r)?;
    let patch = r.u32_or("modula.input.patch_dim", 0)?;
    let input = if patch > 0 {
        Input::Patches { dim: patch }
    } else {
        Input::Tokens {
            vocab: r.u32("modula.vocab_size")?,
        }
    };
    let d = r.u32("modula.embedding_length")?;
    let layers = r.block_count()?;
    let heads = r.u32("modula.attention.head_count")?;
    let ffn = r.u32("modula.feed_forward_length")?;
    let positions = r.u32_or("modula.position_length", 0)?;
    let causal = match r.get("modula.attention.causal") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(o) => {
            return Err(Error::metadata(
                "modula.attention.causal",
                format!("modula.attention.causal = {o:?} is not a bool"),
            ))
        }
    };
    let layout = match r.get("modula.attention.layout") {
        None | Some(Value::Str("qkv")) => AttnLayout::Qkv,
        Some(Value::Str("head_major")) => AttnLayout::HeadMajor,
        Some(other) => {
            return Err(Error::metadata(
                "modula.attention.layout",
                format!("modula.attention.layout = {other:?} is not \"qkv\" or \"head_major\""),
            ))
        }
    };
    let vocab = match input {
        Input::Tokens { vocab } => vocab,
        Input::Patches { .. } => 1,
    };
    if heads == 0 || !d.is_multiple_of(heads) || vocab == 0 || layers > 64 || d == 0 {
        return Err(Error::metadata(
            "modula.attention.head_count",
            format!("inconsistent shape: d {d} heads {heads} vocab {vocab} layers {layers}"),
        ));
    }
    let norm = r.norm()?;
    let act = r.act(Act::Gelu)?;
    let mut emoe_mask = 0u64;
    let mut emoe = (0, 0);
    if let Some(list) = r.list("modula.emoe.layers", |l| l < layers)? {
        for l in list {
            emoe_mask |= 1 << l;
        }
        let (e, k) = (
            r.u32("modula.expert.count")?,
            r.u32("modula.expert.used_count")?,
        );
        if e == 0 || !ffn.is_multiple_of(e) || k == 0 || k > e {
            return Err(Error::metadata(
                "modula.expert.count",
                format!("EMoE: {e} experts, top-{k} do not fit an FFN of {ffn}"),
            ));
        }
        match r.str("modula.expert.router") {
            None | Some("avgk") => {}
            Some(o) => {
                return Err(Error::metadata(
                    "modula.expert.router",
                    format!("modula.expert.router = \"{o}\": an EMoE file routes by avgk"),
                ))
            }
        }
        emoe = (e, k);
    }
    let depths = r.list("modula.nested.depths", |l| l >= 1 && l <= layers && l <= 64)?;
    let widths = r.list("modula.nested.ffn_widths", |w| w >= 1 && w <= ffn)?;
    if widths
        .as_ref()
        .is_some_and(|w| w.iter().filter(|&&x| x < ffn).count() > 8)
    {
        return Err(Error::metadata(
            "modula.nested.ffn_widths",
            "modula.nested.ffn_widths: more than 8 widths",
        ));
    }
    let head_counts = r.list("modula.nested.head_counts", |h| {
        h >= 1 && h <= heads && h <= 64
    })?;
    if head_counts
        .as_ref()
        .is_some_and(|h| h.iter().any(|&x| x < heads))
        && layout != AttnLayout::HeadMajor
    {
        return Err(Error::metadata(
            "modula.nested.head_counts",
            "modula.nested.head_counts needs modula.attention.layout = head_major",
        ));
    }
    Ok(ModelDesc::dense(&DenseShape {
        task,
        input,
        d,
        layers,
        heads,
        ffn,
        causal,
        positions,
        norm,
        act,
        layout,
        emoe_mask,
        emoe,
        context_length: opt_ctx(r)?,
        nesting: Nesting {
            depths: nested(depths, layers),
            ffn_widths: nested(widths, ffn),
            heads: nested(head_counts, heads),
            experts: Vec::new(),
        },
    }))
}

/// The dense family's hyper-parameters: what [`ModelDesc::dense`] builds a description
/// from (the file reader and the trainer alike).
#[derive(Clone, Debug, PartialEq)]
pub struct DenseShape {
    /// Task.
    pub task: Task,
    /// Input.
    pub input: Input,
    /// Width.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN hidden width.
    pub ffn: usize,
    /// Causal attention.
    pub causal: bool,
    /// Rows of the learned position table (0: none).
    pub positions: usize,
    /// Every norm.
    pub norm: NormSpec,
    /// FFN activation.
    pub act: Act,
    /// Attention layout as stored.
    pub layout: AttnLayout,
    /// Bit `l`: block `l`'s FFN is EMoE.
    pub emoe_mask: u64,
    /// EMoE (experts, top-k).
    pub emoe: (usize, usize),
    /// The context the model was trained for.
    pub context_length: Option<usize>,
    /// Declared nested sizes.
    pub nesting: Nesting,
}

impl ModelDesc {
    /// The description of a dense model (GPT-2-style pre-LN blocks; EMoE blocks where
    /// `emoe_mask` says).
    pub fn dense(s: &DenseShape) -> ModelDesc {
        let attn = AttentionSpec {
            heads: s.heads,
            kv_heads: s.heads,
            head_dim: s.d / s.heads.max(1),
            causal: s.causal,
            bias: true,
            layout: s.layout,
        };
        let blocks = (0..s.layers)
            .map(|l| BlockSpec {
                norm: s.norm,
                mixer: MixerSpec::Attention(attn),
                ffn: Some((
                    s.norm,
                    FfnSpec {
                        width: s.ffn,
                        act: s.act,
                        gated: false,
                        bias: true,
                        kind: if l < 64 && s.emoe_mask >> l & 1 == 1 {
                            FfnKind::Emoe {
                                experts: s.emoe.0,
                                top_k: s.emoe.1,
                            }
                        } else {
                            FfnKind::Dense
                        },
                    },
                )),
            })
            .collect();
        let classifier = matches!(s.task, Task::Classify { .. });
        ModelDesc {
            family: Family::Dense,
            task: s.task,
            input: s.input,
            d: s.d,
            context_length: s.context_length,
            positions: if s.positions > 0 {
                Positions::Learned { rows: s.positions }
            } else {
                Positions::None
            },
            blocks,
            final_norm: Some(s.norm),
            head: if classifier {
                Head::Classifier
            } else {
                Head::Separate
            },
            nesting: s.nesting.clone(),
        }
    }
}

fn opt_ctx<B: AsRef<[u8]>>(r: &Meta<'_, B>) -> Result<Option<usize>> {
    Ok(match r.get("modula.context_length") {
        None => None,
        Some(_) => Some(r.u32("modula.context_length")?),
    })
}

fn moduleformer<B: AsRef<[u8]>>(r: &Meta<'_, B>) -> Result<ModelDesc> {
    r.attention_kind("stick_breaking")?;
    match r.str("modula.task") {
        None | Some("lm") => {}
        Some(o) => {
            return Err(Error::metadata(
                "modula.task",
                format!("modula.task = \"{o}\": ModuleFormer files are language models"),
            ))
        }
    }
    if let Some(Value::Bool(false)) = r.get("modula.attention.causal") {
        return Err(Error::metadata(
            "modula.attention.causal",
            "ModuleFormer's stick-breaking attention is causal (modula.attention.causal = false)",
        ));
    }
    let router = match r.str("modula.expert.router") {
        Some("mlp") => RouterKind::Mlp {
            hidden: r.u32("modula.expert.gating_size")?,
        },
        Some("linear") => RouterKind::Linear,
        other => {
            return Err(Error::metadata(
                "modula.expert.router",
                format!("modula.expert.router = {other:?}: use mlp or linear"),
            ))
        }
    };
    let vocab = r.u32("modula.vocab_size")?;
    let d = r.u32("modula.embedding_length")?;
    let layers = r.block_count()?;
    let renormalize = r.flag("modula.expert.renormalize")?;
    let moa = MoaSpec {
        experts: r.u32("modula.attention.expert_count")?,
        top_k: r.u32("modula.attention.expert_used_count")?,
        heads: r.u32("modula.attention.head_count")?,
        head_dim: r.u32("modula.attention.head_dim")?,
        shared_kv: r.flag("modula.attention.shared_kv")?,
        router,
        renormalize,
    };
    let (fe, fk, fw) = (
        r.u32("modula.expert.count")?,
        r.u32("modula.expert.used_count")?,
        r.u32("modula.feed_forward_length")?,
    );
    let bad = vocab == 0
        || d == 0
        || moa.heads == 0
        || moa.head_dim == 0
        || moa.top_k == 0
        || moa.top_k > moa.experts
        || fk == 0
        || fk > fe
        || fw == 0
        || (moa.shared_kv && moa.heads.checked_mul(moa.head_dim) != Some(d));
    if bad {
        return Err(Error::metadata(
            "modula.attention.expert_count",
            format!(
                "inconsistent ModuleFormer shape: vocab {vocab} d {d} attention {moa:?} FFN experts {fe} top-{fk} width {fw}"
            ),
        ));
    }
    let kmax = moa.top_k.max(fk);
    let counts = r.list("modula.nested.expert_counts", |c| c <= fe && c >= kmax)?;
    let norm = r.norm()?;
    let act = r.act(Act::GeluTanh)?;
    let ffn = FfnSpec {
        width: fw,
        act,
        gated: false,
        bias: false,
        kind: FfnKind::Moe {
            experts: fe,
            top_k: fk,
            router,
            renormalize,
        },
    };
    Ok(ModelDesc {
        family: Family::ModuleFormer,
        task: Task::Lm,
        input: Input::Tokens { vocab },
        d,
        context_length: opt_ctx(r)?,
        positions: Positions::None,
        blocks: vec![
            BlockSpec {
                norm,
                mixer: MixerSpec::StickBreaking(moa),
                ffn: Some((norm, ffn)),
            };
            layers
        ],
        final_norm: Some(norm),
        head: Head::Separate,
        nesting: Nesting {
            depths: vec![layers],
            ffn_widths: vec![fw],
            heads: vec![moa.heads],
            experts: nested(counts, fe),
        },
    })
}

fn seqboat<B: AsRef<[u8]>>(r: &Meta<'_, B>) -> Result<ModelDesc> {
    r.attention_kind("gau")?;
    let attn = r.choice(
        "modula.gau.attention_fn",
        &[("softmax", GauAttn::Softmax), ("relu2", GauAttn::Relu2)],
        None,
    )?;
    let gate = r.choice(
        "modula.seqboat.gate",
        &[
            ("learned", Gate::Learned),
            ("always", Gate::Always),
            ("off", Gate::Off),
        ],
        None,
    )?;
    let pad = match r.get("modula.seqboat.pad_token") {
        None => None,
        Some(Value::U32(p)) => Some(p),
        Some(o) => {
            return Err(Error::metadata(
                "modula.seqboat.pad_token",
                format!("modula.seqboat.pad_token = {o:?}"),
            ))
        }
    };
    let classes = r.u32_or("modula.num_classes", 0)?;
    let task = match r.str("modula.task") {
        None | Some("lm") if classes == 0 => Task::Lm,
        None | Some("classify") if classes > 0 => Task::Classify {
            classes,
            pool: Pool::Mean,
        },
        o => {
            return Err(Error::metadata(
                "modula.task",
                format!("modula.task = {o:?} disagrees with modula.num_classes = {classes}"),
            ))
        }
    };
    let bidirectional = r.flag("modula.ssm.bidirectional")?;
    if let Some(Value::Bool(c)) = r.get("modula.attention.causal") {
        if c == bidirectional {
            return Err(Error::metadata(
                "modula.attention.causal",
                "modula.attention.causal disagrees with modula.ssm.bidirectional",
            ));
        }
    }
    let s = SeqBoatSpec {
        ndim: r.u32("modula.ssm.ema_dim")?,
        z: r.u32("modula.gau.zdim")?,
        e: r.u32("modula.gau.hdim")?,
        window: r.u32("modula.gau.window")?,
        causal: !bidirectional,
        attn,
        prenorm: r.flag("modula.seqboat.prenorm")?,
        max_pos: r.u32("modula.gau.max_positions")?,
        gate,
        pad,
        temp_scale: match r.get("modula.seqboat.temp_scale") {
            Some(Value::F32(v)) if v.is_finite() && v > 0.0 => v,
            o => {
                return Err(Error::metadata(
                    "modula.seqboat.temp_scale",
                    format!("modula.seqboat.temp_scale = {o:?}"),
                ))
            }
        },
    };
    let vocab = r.u32("modula.vocab_size")?;
    let d = r.u32("modula.embedding_length")?;
    let layers = r.block_count()?;
    let bad = vocab == 0
        || d == 0
        || layers == 0
        || s.ndim == 0
        || s.z == 0
        || s.e == 0
        || s.max_pos == 0
        || s.max_pos > 1 << 20
        || [d, s.z, s.e, s.ndim, s.window, layers]
            .iter()
            .any(|&v| v > 1 << 24)
        || s.pad.is_some_and(|p| p as usize >= vocab);
    if bad {
        return Err(Error::metadata(
            "modula.embedding_length",
            format!("inconsistent SeqBoat shape: vocab {vocab} d {d} layers {layers} {s:?}"),
        ));
    }
    let depths = r.list("modula.nested.depths", |l| l >= 1 && l <= layers)?;
    let norm = r.norm()?;
    Ok(ModelDesc {
        family: Family::SeqBoat,
        task,
        input: Input::Tokens { vocab },
        d,
        context_length: opt_ctx(r)?,
        positions: Positions::None,
        blocks: vec![
            BlockSpec {
                norm,
                mixer: MixerSpec::SeqBoat(s),
                ffn: None,
            };
            layers
        ],
        final_norm: s.prenorm.then_some(norm),
        head: if classes > 0 {
            Head::Classifier
        } else {
            Head::Tied
        },
        nesting: Nesting {
            depths: nested(
                depths.map(|v| v.into_iter().filter(|&l| l <= 64).collect()),
                layers,
            ),
            ffn_widths: Vec::new(),
            heads: Vec::new(),
            experts: Vec::new(),
        },
    })
}

/// A Llama-family file in llama.cpp's layout (`arch` = `llama` or `qwen2`: the key prefix).
fn llama<B: AsRef<[u8]>>(r: &Meta<'_, B>, arch: &str) -> Result<ModelDesc> {
    let k = |s: &str| format!("{arch}.{s}");
    let d = r.u32(&k("embedding_length"))?;
    let layers = r.u32(&k("block_count"))?;
    if layers == 0 || layers > r.m.tensor_count() {
        return Err(Error::metadata(
            &k("block_count"),
            format!(
                "{} = {layers}: the file holds {} tensors",
                k("block_count"),
                r.m.tensor_count()
            ),
        ));
    }
    let ffn = r.u32(&k("feed_forward_length"))?;
    let heads = r.u32(&k("attention.head_count"))?;
    let kv_heads = r.u32_or(&k("attention.head_count_kv"), heads)?;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(Error::metadata(
            &k("attention.head_count_kv"),
            format!("{heads} query heads cannot share {kv_heads} key/value heads"),
        ));
    }
    if d == 0 || d % heads != 0 {
        return Err(Error::metadata(
            &k("attention.head_count"),
            format!("width {d} is not a multiple of {heads} heads"),
        ));
    }
    let head_dim = r.u32_or(&k("attention.key_length"), d / heads)?;
    if r.u32_or(&k("attention.value_length"), head_dim)? != head_dim || head_dim % 2 != 0 {
        return Err(Error::unsupported(format!(
            "{}: keys and values of different widths, or an odd head width, are not run",
            k("attention.value_length")
        )));
    }
    let rope_dim = r.u32_or(&k("rope.dimension_count"), head_dim)?;
    if rope_dim != head_dim {
        return Err(Error::unsupported(format!(
            "{} = {rope_dim}: partial rotary embeddings (of {head_dim} dimensions) are not run",
            k("rope.dimension_count")
        )));
    }
    let theta = r.f32_or(&k("rope.freq_base"), 10000.0)?;
    let eps = r.f32(&k("attention.layer_norm_rms_epsilon"))?;
    if !(theta > 0.0 && eps > 0.0 && eps < 1.0) {
        return Err(Error::metadata(
            &k("rope.freq_base"),
            format!("rope base {theta} and RMS epsilon {eps} must be positive (epsilon below 1)"),
        ));
    }
    #[derive(Clone, Copy)]
    enum Scaling {
        None,
        Linear,
    }
    let scale = match r.choice(
        &k("rope.scaling.type"),
        &[("none", Scaling::None), ("linear", Scaling::Linear)],
        Some(Scaling::None),
    )? {
        Scaling::None => 1.0,
        Scaling::Linear => {
            let f = r.f32(&k("rope.scaling.factor"))?;
            if f < 1.0 {
                return Err(Error::metadata(
                    &k("rope.scaling.factor"),
                    format!("rope scaling factor {f} must be at least 1"),
                ));
            }
            f
        }
    };
    for unsupported in ["attention.sliding_window", "expert_count"] {
        if r.get(&k(unsupported)).is_some() {
            return Err(Error::unsupported(format!(
                "{}: sliding-window attention and expert layers are not run for {arch} files",
                k(unsupported)
            )));
        }
    }
    let factors = r.m.tensor("rope_freqs.weight").is_ok();
    let vocab = embedding_vocab(r, arch, d)?;
    let context = r.u32_or(&k("context_length"), 0)?;
    let bias = r.m.tensor("blk.0.attn_q.bias").is_ok();
    let head = if r.m.tensor("output.weight").is_ok() {
        Head::Separate
    } else {
        Head::Tied
    };
    let norm = NormSpec {
        kind: NormKind::RmsNorm,
        eps,
    };
    let block = BlockSpec {
        norm,
        mixer: MixerSpec::Attention(AttentionSpec {
            heads,
            kv_heads,
            head_dim,
            causal: true,
            bias,
            layout: AttnLayout::Split,
        }),
        ffn: Some((
            norm,
            FfnSpec {
                width: ffn,
                act: Act::Silu,
                gated: true,
                bias: false,
                kind: FfnKind::Dense,
            },
        )),
    };
    Ok(ModelDesc {
        family: Family::Llama,
        task: Task::Lm,
        input: Input::Tokens { vocab },
        d,
        context_length: (context > 0).then_some(context),
        positions: Positions::Rotary(Rope {
            theta,
            dim: head_dim,
            style: if arch == "qwen2" {
                RopeStyle::Half
            } else {
                RopeStyle::Adjacent
            },
            scale,
            factors,
        }),
        blocks: vec![block; layers],
        final_norm: Some(norm),
        head,
        nesting: Nesting {
            depths: vec![layers],
            ffn_widths: vec![ffn],
            heads: vec![heads],
            experts: Vec::new(),
        },
    })
}

/// The token embedding's rows, checked against `{arch}.vocab_size` when the file has it.
fn embedding_vocab<B: AsRef<[u8]>>(r: &Meta<'_, B>, arch: &str, d: usize) -> Result<usize> {
    let emb = r.m.tensor("token_embd.weight")?.shape();
    if emb.len() != 2 || emb[1] != d {
        return Err(Error::Shape {
            tensor: "token_embd.weight".into(),
            expected: vec![0, d],
            got: emb,
        });
    }
    let vocab = emb[0];
    let key = format!("{arch}.vocab_size");
    if r.u32_or(&key, vocab)? != vocab {
        return Err(Error::metadata(
            &key,
            format!("{key} disagrees with token_embd.weight's {vocab} rows"),
        ));
    }
    Ok(vocab)
}

/// A GPT-2 file in llama.cpp's layout: learned positions (`position_embd.weight`, one row
/// per position of `gpt2.context_length`), pre-LayerNorm blocks with a fused q/k/v
/// projection and biases on every product, a tanh-GELU FFN, a final LayerNorm and the head
/// (`output.weight`, or the token embedding when the file has none).
fn gpt2<B: AsRef<[u8]>>(r: &Meta<'_, B>) -> Result<ModelDesc> {
    let d = r.u32("gpt2.embedding_length")?;
    let layers = r.u32("gpt2.block_count")?;
    if layers == 0 || layers > r.m.tensor_count() {
        return Err(Error::metadata(
            "gpt2.block_count",
            format!(
                "gpt2.block_count = {layers}: the file holds {} tensors",
                r.m.tensor_count()
            ),
        ));
    }
    let ffn = r.u32("gpt2.feed_forward_length")?;
    let heads = r.u32("gpt2.attention.head_count")?;
    if heads == 0 || d == 0 || d % heads != 0 || ffn == 0 {
        return Err(Error::metadata(
            "gpt2.attention.head_count",
            format!("width {d} is not a multiple of {heads} heads (FFN {ffn})"),
        ));
    }
    if r.u32_or("gpt2.attention.head_count_kv", heads)? != heads {
        return Err(Error::unsupported(
            "gpt2.attention.head_count_kv: GPT-2 with grouped-query attention is not run",
        ));
    }
    let eps = r.f32("gpt2.attention.layer_norm_epsilon")?;
    if !(eps > 0.0 && eps < 1.0) {
        return Err(Error::metadata(
            "gpt2.attention.layer_norm_epsilon",
            format!("LayerNorm epsilon {eps} must be in (0, 1)"),
        ));
    }
    let vocab = embedding_vocab(r, "gpt2", d)?;
    let pos = r.m.tensor("position_embd.weight")?.shape();
    if pos.len() != 2 || pos[1] != d || pos[0] == 0 {
        return Err(Error::Shape {
            tensor: "position_embd.weight".into(),
            expected: vec![0, d],
            got: pos,
        });
    }
    let rows = pos[0];
    let context = r.u32_or("gpt2.context_length", rows)?;
    if context > rows {
        return Err(Error::metadata(
            "gpt2.context_length",
            format!("gpt2.context_length {context} exceeds position_embd.weight's {rows} rows"),
        ));
    }
    let norm = NormSpec {
        kind: NormKind::LayerNorm,
        eps,
    };
    let block = BlockSpec {
        norm,
        mixer: MixerSpec::Attention(AttentionSpec {
            heads,
            kv_heads: heads,
            head_dim: d / heads,
            causal: true,
            bias: true,
            layout: AttnLayout::Qkv,
        }),
        ffn: Some((
            norm,
            FfnSpec {
                width: ffn,
                act: Act::GeluTanh,
                gated: false,
                bias: true,
                kind: FfnKind::Dense,
            },
        )),
    };
    Ok(ModelDesc {
        family: Family::Gpt2,
        task: Task::Lm,
        input: Input::Tokens { vocab },
        d,
        context_length: Some(context),
        positions: Positions::Learned { rows },
        blocks: vec![block; layers],
        final_norm: Some(norm),
        head: if r.m.tensor("output.weight").is_ok() {
            Head::Separate
        } else {
            Head::Tied
        },
        nesting: Nesting {
            depths: vec![layers],
            ffn_widths: vec![ffn],
            heads: vec![heads],
            experts: Vec::new(),
        },
    })
}
