//! The metadata keys Modula knows, with the type each must have. A file whose known key
//! has another type is refused when it is opened (so a layer never reads a `modula.*`
//! number of the wrong width). Unknown keys are kept and shown, for forward compatibility.
//! Every key is documented in `docs/format.md`; a test checks that the two agree.

use super::ValueType;

/// The type a known key must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// A scalar or string of this type.
    Scalar(ValueType),
    /// An array whose elements have this type.
    ArrayOf(ValueType),
}

impl KeyType {
    /// "u32", "array[u32]", ...
    pub fn describe(self) -> &'static str {
        use ValueType as V;
        match self {
            KeyType::Scalar(t) => t.name(),
            KeyType::ArrayOf(V::U32) => "array[u32]",
            KeyType::ArrayOf(V::U64) => "array[u64]",
            KeyType::ArrayOf(V::String) => "array[string]",
            KeyType::ArrayOf(V::F32) => "array[f32]",
            KeyType::ArrayOf(_) => "array",
        }
    }
}

/// A known key: its name, type and one line of meaning.
#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// Full key.
    pub key: &'static str,
    /// Required type.
    pub ty: KeyType,
    /// What it means.
    pub doc: &'static str,
}

const fn s(key: &'static str, t: ValueType, doc: &'static str) -> KeySpec {
    KeySpec {
        key,
        ty: KeyType::Scalar(t),
        doc,
    }
}
const fn a(key: &'static str, t: ValueType, doc: &'static str) -> KeySpec {
    KeySpec {
        key,
        ty: KeyType::ArrayOf(t),
        doc,
    }
}

use ValueType::{Bool, String as Str, F32, U32, U64};

/// Page-group keys (written by the writer, validated by the reader).
pub const PAGE_SIZE_KEY: &str = "modula.page_groups.page_size";
/// Names of the page groups.
pub const PAGE_NAMES_KEY: &str = "modula.page_groups.names";
/// Absolute file offsets of the page groups.
pub const PAGE_OFFSETS_KEY: &str = "modula.page_groups.offsets";
/// Sizes in bytes of the page groups.
pub const PAGE_SIZES_KEY: &str = "modula.page_groups.sizes";
/// Alignment key (GGUF standard).
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Every key Modula knows.
pub const KNOWN_KEYS: &[KeySpec] = &[
    s(
        "general.architecture",
        Str,
        "always \"modula\" in files Modula writes",
    ),
    s(
        ALIGNMENT_KEY,
        U32,
        "alignment of tensor data in bytes (power of two; default 64)",
    ),
    s("general.name", Str, "human-readable model name"),
    s("general.description", Str, "free text"),
    s(
        "general.file_type",
        U32,
        "GGUF file type of the bulk of the weights (informative)",
    ),
    s(
        "modula.format_version",
        U32,
        "version of the modula.* schema (currently 1)",
    ),
    s(
        "modula.model",
        Str,
        "model family: dense | moduleformer | seqboat | emoe | moe | m2mkd-net",
    ),
    s(
        "modula.task",
        Str,
        "lm (next-token) | classify (sequence/image classification)",
    ),
    s(
        "modula.vocab_size",
        U32,
        "input vocabulary (256 for byte models)",
    ),
    s(
        "modula.num_classes",
        U32,
        "classes of a classification head",
    ),
    s(
        "modula.context_length",
        U32,
        "longest sequence the model was trained for",
    ),
    s("modula.embedding_length", U32, "model width d"),
    s("modula.block_count", U32, "number of blocks (layers)"),
    s(
        "modula.feed_forward_length",
        U32,
        "FFN hidden width (per expert for MoE)",
    ),
    s("modula.norm", Str, "layernorm | rmsnorm"),
    s("modula.norm_epsilon", F32, "epsilon of the norms"),
    s("modula.activation", Str, "gelu | gelu_tanh | silu | relu2"),
    s(
        "modula.attention.kind",
        Str,
        "softmax | stick_breaking | gau | none",
    ),
    s("modula.attention.head_count", U32, "attention heads"),
    s(
        "modula.attention.causal",
        Bool,
        "causal mask (false: every position sees the whole sequence)",
    ),
    s(
        "modula.position_length",
        U32,
        "rows of the learned position table (absent or 0: none)",
    ),
    s(
        "modula.input.patch_dim",
        U32,
        "inputs are feature vectors (image patches) of this width, not tokens",
    ),
    s(
        "modula.classify.pool",
        Str,
        "classifier pooling: mean | first | last",
    ),
    s("modula.attention.head_dim", U32, "width of one head"),
    s(
        "modula.attention.layout",
        Str,
        "qkv (default: attn_qkv rows q|k|v as nn.Linear(d, 3d), attn_output [d, d]) | head_major (attn_qkv rows per head: q, k, v of head 0, then head 1, …; attn_output_t = the output projection transposed, so a head prefix is a row prefix of both)",
    ),
    s(
        "modula.attention.expert_count",
        U32,
        "attention experts (ModuleFormer MoA)",
    ),
    s(
        "modula.attention.expert_used_count",
        U32,
        "attention experts per token (top-k)",
    ),
    s(
        "modula.attention.shared_kv",
        Bool,
        "keys and values are LN(x) itself (MoLM)",
    ),
    s("modula.expert.count", U32, "FFN experts per MoE layer"),
    s(
        "modula.expert.used_count",
        U32,
        "FFN experts per token (top-k)",
    ),
    s("modula.expert.router", Str, "linear | mlp | avgk"),
    s(
        "modula.expert.gating_size",
        U32,
        "hidden width of the MLP router",
    ),
    s(
        "modula.expert.renormalize",
        Bool,
        "renormalise the top-k gates to sum to 1",
    ),
    s(
        "modula.expert.layer_interval",
        U32,
        "MoE FFN in every n-th block (1 = all)",
    ),
    a(
        "modula.emoe.layers",
        U32,
        "EMoE: blocks whose FFN is split into avg-k routed experts",
    ),
    s("modula.ssm.ema_dim", U32, "SeqBoat EMA expansion h"),
    s("modula.ssm.bidirectional", Bool, "bidirectional EMA"),
    s("modula.gau.zdim", U32, "GAU shared query/key width"),
    s("modula.gau.hdim", U32, "GAU value/gate width"),
    s("modula.gau.window", U32, "GAU local attention band width w"),
    s("modula.gau.attention_fn", Str, "softmax | relu2"),
    s(
        "modula.gau.max_positions",
        U32,
        "GAU relative-position bias range M (offsets clamped to ±(M−1))",
    ),
    s(
        "modula.seqboat.gate",
        Str,
        "SeqBoat gate: learned | always (every token) | off (EMA only)",
    ),
    s(
        "modula.seqboat.prenorm",
        Bool,
        "SeqBoat LayerNorm before the layer (and a final norm) or after it",
    ),
    s(
        "modula.seqboat.temp_scale",
        F32,
        "SeqBoat initial temperature scale s (τ = s·√d at initialisation)",
    ),
    s(
        "modula.seqboat.pad_token",
        U32,
        "padding token: zeroed before the EMA, never activated, not pooled",
    ),
    s(
        "modula.m2m.task",
        Str,
        "m2mKD network: its task as JSON (vocab, patch_dim, classes, seq, causal, pool)",
    ),
    s(
        "modula.m2m.modules",
        Str,
        "m2mKD network: its modules as a JSON list (index, of, d, heads, ffn, blocks, moe, experts, top_k, in_width, out_width)",
    ),
    a(
        "modula.nested.depths",
        U32,
        "nested depths (blocks kept), ascending, last = full",
    ),
    a(
        "modula.nested.ffn_widths",
        U32,
        "nested FFN widths, ascending, last = full",
    ),
    a(
        "modula.nested.head_counts",
        U32,
        "nested head counts, ascending, last = full",
    ),
    a(
        "modula.nested.expert_counts",
        U32,
        "nested expert counts, ascending, last = full",
    ),
    a(
        "modula.nested.widths",
        U32,
        "nested model widths, ascending, last = full",
    ),
    s(
        PAGE_SIZE_KEY,
        U32,
        "page size the page groups are aligned to (16384)",
    ),
    a(
        PAGE_NAMES_KEY,
        Str,
        "names of the page-aligned tensor groups",
    ),
    a(
        PAGE_OFFSETS_KEY,
        U64,
        "absolute file offset of each group (multiple of page_size)",
    ),
    a(
        PAGE_SIZES_KEY,
        U64,
        "bytes of each group, padded to whole pages",
    ),
];

/// The spec of `key`, if Modula knows it.
pub fn lookup(key: &str) -> Option<&'static KeySpec> {
    KNOWN_KEYS.iter().find(|k| k.key == key)
}
