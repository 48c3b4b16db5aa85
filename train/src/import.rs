//! `modula import --hf DIR`: a Hugging Face Llama-family or GPT-2 checkpoint directory
//! (`config.json`; `model.safetensors` or a sharded `model.safetensors.index.json`;
//! `tokenizer.json`) as a llama.cpp-layout GGUF file that every Modula command runs.
//!
//! The architectures `LlamaForCausalLM` (and `MistralForCausalLM` without a sliding window)
//! become llama.cpp's `llama` (query and key rows permuted per head, as llama.cpp's
//! converter does, for its adjacent-pair rotary embedding); `Qwen2ForCausalLM` becomes
//! `qwen2` (rows as stored, q/k/v biases). Matrices keep their stored type (F32, F16, BF16);
//! norm gains and biases are written as F32. `GPT2LMHeadModel` becomes llama.cpp's `gpt2`
//! (its Conv1D weights, stored `[in, out]`, transposed to `[out, in]` as llama.cpp's converter
//! does; `transformer.` prefix or none). A byte-level BPE `tokenizer.json` becomes
//! `tokenizer.ggml.*` (model `gpt2`). Anything else — another architecture, rope scaling
//! other than `linear`, attention or MLP biases Llama does not have, a tokenizer of another
//! kind, a shard index naming a missing file, a tensor of the wrong shape — is an error
//! naming it.

use crate::core::gguf::GgufWriter;
use crate::core::{DType, MetaValue};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A clear message naming the file, key or tensor at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError(pub String);

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

fn bad<T>(m: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError(m.into()))
}

fn read_json(p: &Path) -> Result<Json, ImportError> {
    let s = std::fs::read_to_string(p).map_err(|e| ImportError(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&s).map_err(|e| ImportError(format!("{}: {e}", p.display())))
}

/// The architecture of a `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    /// `llama`, `qwen2` or `gpt2` (llama.cpp's architecture name).
    pub arch: &'static str,
    /// Width.
    pub d: usize,
    /// Blocks.
    pub layers: usize,
    /// FFN width.
    pub ffn: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Vocabulary.
    pub vocab: usize,
    /// RMSNorm (GPT-2: LayerNorm) epsilon.
    pub eps: f32,
    /// Rotary base.
    pub theta: f32,
    /// Linear rope scaling factor (1: none).
    pub rope_linear: f32,
    /// Llama 3.1's `llama3` rope scaling: per-pair frequency divisors (`rope_freqs.weight`).
    pub rope_factors: Option<Vec<f32>>,
    /// Trained context.
    pub context: usize,
    /// Tied embeddings.
    pub tied: bool,
    /// Beginning/end of sequence ids, when given.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
}

impl HfConfig {
    /// Parse and check a `config.json`.
    pub fn from_json(c: &Json) -> Result<Self, ImportError> {
        let arch_name = c["architectures"][0].as_str().unwrap_or("");
        let arch = match arch_name {
            "LlamaForCausalLM" | "MistralForCausalLM" => "llama",
            "Qwen2ForCausalLM" => "qwen2",
            "GPT2LMHeadModel" => "gpt2",
            "" => return bad("config.json: no architectures entry"),
            o => {
                return bad(format!(
                    "config.json: architectures = {o:?} is not imported (LlamaForCausalLM, \
                     MistralForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel)"
                ))
            }
        };
        let num = |k: &str| -> Result<usize, ImportError> {
            c[k].as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| ImportError(format!("config.json: {k} is missing or not a count")))
        };
        let id = |k: &str| c[k].as_u64().map(|v| v as u32);
        if arch == "gpt2" {
            let (d, heads) = (num("n_embd")?, num("n_head")?);
            if heads == 0 || d == 0 || d % heads != 0 {
                return bad(format!(
                    "config.json: n_embd {d} is not a multiple of n_head {heads}"
                ));
            }
            let act = c["activation_function"].as_str().unwrap_or("gelu_new");
            if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
                return bad(format!(
                    "config.json: activation_function = {act:?} (GPT-2's tanh GELU, gelu_new, is run)"
                ));
            }
            for (k, want) in [
                ("scale_attn_weights", true),
                ("scale_attn_by_inverse_layer_idx", false),
                ("add_cross_attention", false),
            ] {
                if c[k].as_bool().is_some_and(|v| v != want) {
                    return bad(format!("config.json: {k} = {} is not run", !want));
                }
            }
            return Ok(HfConfig {
                arch,
                d,
                layers: num("n_layer")?,
                ffn: c["n_inner"].as_u64().map_or(4 * d, |v| v as usize),
                heads,
                kv_heads: heads,
                vocab: num("vocab_size")?,
                eps: c["layer_norm_epsilon"].as_f64().unwrap_or(1e-5) as f32,
                theta: 0.0,
                rope_linear: 1.0,
                rope_factors: None,
                context: num("n_positions")?,
                tied: c["tie_word_embeddings"].as_bool().unwrap_or(true),
                bos: id("bos_token_id"),
                eos: id("eos_token_id"),
            });
        }
        let (d, heads) = (num("hidden_size")?, num("num_attention_heads")?);
        let kv_heads = c["num_key_value_heads"]
            .as_u64()
            .map_or(heads, |v| v as usize);
        if heads == 0 || kv_heads == 0 || d % heads != 0 || heads % kv_heads != 0 {
            return bad(format!(
                "config.json: hidden_size {d}, {heads} heads, {kv_heads} key/value heads do not fit"
            ));
        }
        if let Some(hd) = c["head_dim"].as_u64() {
            if hd as usize != d / heads {
                return bad(format!(
                    "config.json: head_dim {hd} is not hidden_size / num_attention_heads = {}",
                    d / heads
                ));
            }
        }
        if c["hidden_act"].as_str().unwrap_or("silu") != "silu" {
            return bad(format!(
                "config.json: hidden_act = {} (only silu is run)",
                c["hidden_act"]
            ));
        }
        for k in ["attention_bias", "mlp_bias"] {
            if c[k].as_bool() == Some(true) {
                return bad(format!("config.json: {k} = true is not run"));
            }
        }
        // Qwen2 configs carry a sliding_window that is off unless use_sliding_window says so
        let sliding = !c["sliding_window"].is_null()
            && match arch_name {
                "Qwen2ForCausalLM" => c["use_sliding_window"].as_bool() == Some(true),
                _ => c["use_sliding_window"].as_bool() != Some(false),
            };
        if sliding {
            return bad(format!(
                "config.json: sliding_window = {} (sliding-window attention is not run)",
                c["sliding_window"]
            ));
        }
        // rope: transformers 5 keeps rope_theta and the scaling in rope_parameters, 4 in
        // rope_theta and rope_scaling
        let params = if c["rope_parameters"].is_object() {
            c["rope_parameters"].clone()
        } else {
            let mut p = c["rope_scaling"].clone();
            if !p.is_object() {
                p = serde_json::json!({});
            }
            if let Some(t) = c["rope_theta"].as_f64() {
                p["rope_theta"] = t.into();
            }
            p
        };
        let theta = params["rope_theta"].as_f64().unwrap_or(10000.0) as f32;
        let kind = params["rope_type"]
            .as_str()
            .or(params["type"].as_str())
            .unwrap_or("default");
        let rope_factors = if kind == "llama3" {
            Some(llama3_factors(&params, c, theta)?)
        } else {
            None
        };
        let rope_linear = match kind {
            "default" | "llama3" => 1.0,
            "linear" => params["factor"]
                .as_f64()
                .filter(|f| *f >= 1.0)
                .ok_or_else(|| {
                    ImportError("config.json: linear rope scaling without a factor ≥ 1".into())
                })? as f32,
            o => {
                return bad(format!(
                    "config.json: rope scaling {o:?} is not run (default, linear, llama3)"
                ))
            }
        };
        Ok(HfConfig {
            arch,
            d,
            layers: num("num_hidden_layers")?,
            ffn: num("intermediate_size")?,
            heads,
            kv_heads,
            vocab: num("vocab_size")?,
            eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
            theta,
            rope_linear,
            rope_factors,
            context: c["max_position_embeddings"].as_u64().unwrap_or(0) as usize,
            tied: c["tie_word_embeddings"].as_bool().unwrap_or(false),
            bos: id("bos_token_id"),
            eos: id("eos_token_id"),
        })
    }
}

/// Llama 3.1's rope scaling as llama.cpp's converter writes it: for each rotary pair, 1
/// (short wavelengths), `factor` (long ones) or the smooth blend between.
fn llama3_factors(p: &Json, c: &Json, theta: f32) -> Result<Vec<f32>, ImportError> {
    let f = |k: &str, d: f64| p[k].as_f64().unwrap_or(d);
    let (factor, low, high) = (
        f("factor", 8.0),
        f("low_freq_factor", 1.0),
        f("high_freq_factor", 4.0),
    );
    let old = f("original_max_position_embeddings", 8192.0);
    if !(factor >= 1.0 && low > 0.0 && high > low && old > 0.0) {
        return bad(format!(
            "config.json: llama3 rope scaling with factor {factor}, low_freq_factor {low}, \
             high_freq_factor {high}, original_max_position_embeddings {old} (needs factor ≥ 1, \
             0 < low < high)"
        ));
    }
    let (d, heads) = (
        c["hidden_size"].as_u64().unwrap_or(0) as usize,
        c["num_attention_heads"].as_u64().unwrap_or(1).max(1) as usize,
    );
    let dim = c["head_dim"].as_u64().map_or(d / heads, |v| v as usize);
    let (low_wl, high_wl) = (old / low, old / high);
    Ok((0..dim / 2)
        .map(|i| {
            // in f32 as the converter computes the frequencies
            let freq = 1.0 / f64::from(theta.powf((2 * i) as f32 / dim as f32));
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            (if wavelen < high_wl {
                1.0
            } else if wavelen > low_wl {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }) as f32
        })
        .collect())
}

/// One checkpoint tensor: type, shape, bytes.
struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Every tensor of the checkpoint's safetensors file(s).
fn read_tensors(dir: &Path) -> Result<BTreeMap<String, Tensor>, ImportError> {
    let files: Vec<PathBuf> = if dir.join("model.safetensors").exists() {
        vec![dir.join("model.safetensors")]
    } else if dir.join("model.safetensors.index.json").exists() {
        let idx = read_json(&dir.join("model.safetensors.index.json"))?;
        let Some(map) = idx["weight_map"].as_object() else {
            return bad("model.safetensors.index.json: no weight_map");
        };
        let mut f: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|s| dir.join(s))
            .collect();
        f.sort();
        f.dedup();
        for p in &f {
            if !p.exists() {
                return bad(format!(
                    "model.safetensors.index.json names {}, which is missing",
                    p.display()
                ));
            }
        }
        f
    } else {
        return bad(format!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        ));
    };
    let mut out = BTreeMap::new();
    for p in files {
        let bytes = std::fs::read(&p).map_err(|e| ImportError(format!("{}: {e}", p.display())))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| ImportError(format!("{}: {e}", p.display())))?;
        for (name, v) in st.tensors() {
            let dtype = match v.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                o => {
                    return bad(format!(
                        "{}: tensor {name} is {o:?} (F32, F16, BF16 are imported)",
                        p.display()
                    ))
                }
            };
            out.insert(
                name,
                Tensor {
                    dtype,
                    shape: v.shape().to_vec(),
                    bytes: v.data().to_vec(),
                },
            );
        }
    }
    Ok(out)
}

/// The values of a tensor as f32 (for norm gains and biases).
fn as_f32(t: &Tensor) -> Vec<f32> {
    match t.dtype {
        DType::F16 => t
            .bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        DType::BF16 => t
            .bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => t
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// llama.cpp's converter permutation of a query/key matrix `[heads·hd, d]`: within each
/// head, row `2i + h` of the result is row `h·hd/2 + i` of the rotate-half layout.
fn permute_rows(t: &Tensor, heads: usize) -> Tensor {
    let rows = t.shape[0];
    let row_bytes = t.bytes.len() / rows;
    let hd = rows / heads;
    let mut out = vec![0u8; t.bytes.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for half in 0..2 {
                let src = h * hd + half * (hd / 2) + i;
                let dst = h * hd + 2 * i + half;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&t.bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Tensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        bytes: out,
    }
}

/// `tokenizer.json` (byte-level BPE) as `tokenizer.ggml.*` keys on `w`; bos/eos from the
/// config, `add_bos_token` from `tokenizer_config.json` where it says.
fn add_tokenizer(
    w: &mut GgufWriter<'_>,
    dir: &Path,
    t: &Json,
    cfg: &HfConfig,
) -> Result<(), ImportError> {
    if t["model"]["byte_fallback"].as_bool() == Some(true) {
        return add_spm(w, dir, t, cfg);
    }
    let mut spec = crate::tokenizer::BpeSpec::from_tokenizer_json(t)
        .map_err(|e| ImportError(e.to_string()))?;
    if spec.tokens.len() > cfg.vocab {
        return bad(format!(
            "tokenizer.json has {} tokens, the model's vocab_size is {}",
            spec.tokens.len(),
            cfg.vocab
        ));
    }
    let n = spec.tokens.len() as u32;
    // one token per embedding row, as llama.cpp's converter pads (llama.cpp refuses a file
    // whose token list is shorter than token_embd.weight)
    for i in spec.tokens.len()..cfg.vocab {
        spec.tokens.push(format!("[PAD{i}]"));
        spec.types.push(5);
    }
    if let Some(b) = cfg.bos.filter(|&b| b < n) {
        spec.bos = Some(b);
    }
    if let Some(e) = cfg.eos.filter(|&e| e < n) {
        spec.eos = Some(e);
    }
    let tc = dir.join("tokenizer_config.json");
    if tc.exists() {
        if let Some(b) = read_json(&tc)?["add_bos_token"].as_bool() {
            spec.add_bos = b && spec.bos.is_some();
        }
    }
    spec.write(w).map_err(|e| ImportError(e.to_string()))
}

/// A byte-fallback BPE `tokenizer.json` (Llama 2's, TinyLlama's) as a `llama` tokenizer:
/// scores from the merge ranks, bos/eos from the config, `add_bos_token` from
/// `tokenizer_config.json` (default: on, as Llama 2's).
fn add_spm(
    w: &mut GgufWriter<'_>,
    dir: &Path,
    t: &Json,
    cfg: &HfConfig,
) -> Result<(), ImportError> {
    let mut spec = crate::tokenizer::SpmSpec::from_tokenizer_json(t)
        .map_err(|e| ImportError(e.to_string()))?;
    if spec.tokens.len() > cfg.vocab {
        return bad(format!(
            "tokenizer.json has {} tokens, the model's vocab_size is {}",
            spec.tokens.len(),
            cfg.vocab
        ));
    }
    let n = spec.tokens.len() as u32;
    spec.bos = cfg.bos.filter(|&b| b < n);
    spec.eos = cfg.eos.filter(|&e| e < n);
    spec.add_bos = spec.bos.is_some();
    let tc = dir.join("tokenizer_config.json");
    if tc.exists() {
        if let Some(b) = read_json(&tc)?["add_bos_token"].as_bool() {
            spec.add_bos = b && spec.bos.is_some();
        }
    }
    for i in spec.tokens.len()..cfg.vocab {
        spec.tokens.push(format!("[PAD{i}]"));
        spec.scores.push(0.0);
        spec.types.push(5);
    }
    spec.write(w).map_err(|e| ImportError(e.to_string()))
}

/// The GGUF file of a Hugging Face checkpoint directory (written by the caller, atomically).
pub fn hf_to_gguf(dir: &Path) -> Result<GgufWriter<'static>, ImportError> {
    let cfg = HfConfig::from_json(&read_json(&dir.join("config.json"))?)?;
    let mut ts = read_tensors(dir)?;
    if cfg.arch == "gpt2" {
        return gpt2_to_gguf(dir, &cfg, ts);
    }
    let (d, hd) = (cfg.d, cfg.d / cfg.heads);
    let mut w = GgufWriter::new();
    let a = cfg.arch;
    let set = |w: &mut GgufWriter<'_>, k: &str, v: MetaValue| {
        w.set(k, v).map_err(|e| ImportError(format!("{k}: {e}")))
    };
    set(&mut w, "general.architecture", MetaValue::String(a.into()))?;
    set(
        &mut w,
        "general.name",
        MetaValue::String(format!("imported from {}", dir.display())),
    )?;
    for (k, v) in [
        ("embedding_length", cfg.d),
        ("block_count", cfg.layers),
        ("feed_forward_length", cfg.ffn),
        ("attention.head_count", cfg.heads),
        ("attention.head_count_kv", cfg.kv_heads),
        ("rope.dimension_count", hd),
        ("context_length", cfg.context),
    ] {
        set(&mut w, &format!("{a}.{k}"), MetaValue::U32(v as u32))?;
    }
    set(
        &mut w,
        &format!("{a}.attention.layer_norm_rms_epsilon"),
        MetaValue::F32(cfg.eps),
    )?;
    set(
        &mut w,
        &format!("{a}.rope.freq_base"),
        MetaValue::F32(cfg.theta),
    )?;
    if cfg.rope_linear != 1.0 {
        set(
            &mut w,
            &format!("{a}.rope.scaling.type"),
            MetaValue::String("linear".into()),
        )?;
        set(
            &mut w,
            &format!("{a}.rope.scaling.factor"),
            MetaValue::F32(cfg.rope_linear),
        )?;
    }
    let tj = dir.join("tokenizer.json");
    if tj.exists() {
        add_tokenizer(&mut w, dir, &read_json(&tj)?, &cfg)?;
    }
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor, ImportError> {
        let t = ts
            .remove(name)
            .ok_or_else(|| ImportError(format!("the checkpoint has no tensor {name}")))?;
        if t.shape != shape {
            return bad(format!(
                "{name} is {:?}; the config needs {shape:?}",
                t.shape
            ));
        }
        Ok(t)
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let vector = |name: String, t: Tensor| (name, f32_vector(t));
    let (qw, kvw) = (cfg.heads * hd, cfg.kv_heads * hd);
    tensors.push((
        "token_embd.weight".into(),
        take("model.embed_tokens.weight", &[cfg.vocab, d])?,
    ));
    if let Some(f) = &cfg.rope_factors {
        tensors.push((
            "rope_freqs.weight".into(),
            Tensor {
                dtype: DType::F32,
                shape: vec![f.len()],
                bytes: f.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        ));
    }
    for l in 0..cfg.layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let b = |s: &str| format!("blk.{l}.{s}");
        tensors.push(vector(
            b("attn_norm.weight"),
            take(&p("input_layernorm.weight"), &[d])?,
        ));
        let (mut q, mut k) = (
            take(&p("self_attn.q_proj.weight"), &[qw, d])?,
            take(&p("self_attn.k_proj.weight"), &[kvw, d])?,
        );
        if a == "llama" {
            q = permute_rows(&q, cfg.heads);
            k = permute_rows(&k, cfg.kv_heads);
        }
        tensors.push((b("attn_q.weight"), q));
        tensors.push((b("attn_k.weight"), k));
        tensors.push((
            b("attn_v.weight"),
            take(&p("self_attn.v_proj.weight"), &[kvw, d])?,
        ));
        if a == "qwen2" {
            for (n, rows) in [("q", qw), ("k", kvw), ("v", kvw)] {
                let t = take(&p(&format!("self_attn.{n}_proj.bias")), &[rows])?;
                tensors.push(vector(b(&format!("attn_{n}.bias")), t));
            }
        }
        tensors.push((
            b("attn_output.weight"),
            take(&p("self_attn.o_proj.weight"), &[d, qw])?,
        ));
        tensors.push(vector(
            b("ffn_norm.weight"),
            take(&p("post_attention_layernorm.weight"), &[d])?,
        ));
        tensors.push((
            b("ffn_gate.weight"),
            take(&p("mlp.gate_proj.weight"), &[cfg.ffn, d])?,
        ));
        tensors.push((
            b("ffn_up.weight"),
            take(&p("mlp.up_proj.weight"), &[cfg.ffn, d])?,
        ));
        tensors.push((
            b("ffn_down.weight"),
            take(&p("mlp.down_proj.weight"), &[d, cfg.ffn])?,
        ));
    }
    tensors.push(vector(
        "output_norm.weight".into(),
        take("model.norm.weight", &[d])?,
    ));
    if !cfg.tied {
        tensors.push((
            "output.weight".into(),
            take("lm_head.weight", &[cfg.vocab, d])?,
        ));
    } else {
        ts.remove("lm_head.weight");
    }
    if let Some(extra) = ts.keys().find(|k| !k.ends_with("rotary_emb.inv_freq")) {
        return bad(format!(
            "the checkpoint has a tensor this architecture does not use: {extra}"
        ));
    }
    add_tensors(w, tensors)
}

/// A norm gain or bias as F32 (GGUF's vectors are f32), whatever its stored type.
fn f32_vector(t: Tensor) -> Tensor {
    let v = as_f32(&t);
    Tensor {
        dtype: DType::F32,
        shape: t.shape,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The tensors, in order, into the file.
fn add_tensors(
    mut w: GgufWriter<'static>,
    tensors: Vec<(String, Tensor)>,
) -> Result<GgufWriter<'static>, ImportError> {
    for (name, t) in tensors {
        w.add_tensor(&name, t.dtype, &t.shape, t.bytes)
            .map_err(|e| ImportError(format!("{name}: {e}")))?;
    }
    Ok(w)
}

/// A Conv1D weight `[in, out]` as `[out, in]`.
fn transpose(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let es = t.bytes.len() / (r * c).max(1);
    let mut out = vec![0u8; t.bytes.len()];
    for i in 0..r {
        for j in 0..c {
            let (s, d) = ((i * c + j) * es, (j * r + i) * es);
            out[d..d + es].copy_from_slice(&t.bytes[s..s + es]);
        }
    }
    Tensor {
        dtype: t.dtype,
        shape: vec![c, r],
        bytes: out,
    }
}

/// `GPT2LMHeadModel` as llama.cpp's `gpt2` file.
fn gpt2_to_gguf(
    dir: &Path,
    cfg: &HfConfig,
    mut ts: BTreeMap<String, Tensor>,
) -> Result<GgufWriter<'static>, ImportError> {
    let (d, f) = (cfg.d, cfg.ffn);
    let mut w = GgufWriter::new();
    let set = |w: &mut GgufWriter<'_>, k: &str, v: MetaValue| {
        w.set(k, v).map_err(|e| ImportError(format!("{k}: {e}")))
    };
    set(
        &mut w,
        "general.architecture",
        MetaValue::String("gpt2".into()),
    )?;
    set(
        &mut w,
        "general.name",
        MetaValue::String(format!("imported from {}", dir.display())),
    )?;
    for (k, v) in [
        ("embedding_length", d),
        ("block_count", cfg.layers),
        ("feed_forward_length", f),
        ("attention.head_count", cfg.heads),
        ("context_length", cfg.context),
    ] {
        set(&mut w, &format!("gpt2.{k}"), MetaValue::U32(v as u32))?;
    }
    set(
        &mut w,
        "gpt2.attention.layer_norm_epsilon",
        MetaValue::F32(cfg.eps),
    )?;
    let tj = dir.join("tokenizer.json");
    if tj.exists() {
        add_tokenizer(&mut w, dir, &read_json(&tj)?, cfg)?;
    }
    // `save_pretrained` of GPT2LMHeadModel prefixes `transformer.`; GPT2Model's files do not
    let prefix = if ts.contains_key("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor, ImportError> {
        let full = format!("{prefix}{name}");
        let t = ts
            .remove(&full)
            .ok_or_else(|| ImportError(format!("the checkpoint has no tensor {full}")))?;
        if t.shape != shape {
            return bad(format!(
                "{full} is {:?}; the config needs {shape:?}",
                t.shape
            ));
        }
        Ok(t)
    };
    let vector = f32_vector;
    let mut tensors: Vec<(String, Tensor)> = vec![
        (
            "token_embd.weight".into(),
            take("wte.weight", &[cfg.vocab, d])?,
        ),
        (
            "position_embd.weight".into(),
            take("wpe.weight", &[cfg.context, d])?,
        ),
    ];
    for l in 0..cfg.layers {
        let p = |s: &str| format!("h.{l}.{s}");
        let b = |s: &str| format!("blk.{l}.{s}");
        // (HF name, llama.cpp name, Conv1D [in, out], bias length)
        for (hf, cpp, conv, out) in [
            ("ln_1", "attn_norm", None, d),
            ("attn.c_attn", "attn_qkv", Some(d), 3 * d),
            ("attn.c_proj", "attn_output", Some(d), d),
            ("ln_2", "ffn_norm", None, d),
            ("mlp.c_fc", "ffn_up", Some(d), f),
            ("mlp.c_proj", "ffn_down", Some(f), d),
        ] {
            let wt = match conv {
                Some(inp) => transpose(&take(&p(&format!("{hf}.weight")), &[inp, out])?),
                None => vector(take(&p(&format!("{hf}.weight")), &[out])?),
            };
            tensors.push((b(&format!("{cpp}.weight")), wt));
            let bias = take(&p(&format!("{hf}.bias")), &[out])?;
            tensors.push((b(&format!("{cpp}.bias")), vector(bias)));
        }
    }
    tensors.push((
        "output_norm.weight".into(),
        vector(take("ln_f.weight", &[d])?),
    ));
    tensors.push(("output_norm.bias".into(), vector(take("ln_f.bias", &[d])?)));
    match ts.remove("lm_head.weight") {
        Some(t) if !cfg.tied => {
            if t.shape != [cfg.vocab, d] {
                return bad(format!(
                    "lm_head.weight is {:?}; the config needs {:?}",
                    t.shape,
                    [cfg.vocab, d]
                ));
            }
            tensors.push(("output.weight".into(), t));
        }
        None if !cfg.tied => {
            return bad("tie_word_embeddings = false, but the checkpoint has no lm_head.weight")
        }
        _ => {}
    }
    // the causal-mask buffers of older checkpoints are not weights
    if let Some(extra) = ts
        .keys()
        .find(|k| !k.ends_with(".attn.bias") && !k.ends_with(".attn.masked_bias"))
    {
        return bad(format!(
            "the checkpoint has a tensor this architecture does not use: {extra}"
        ));
    }
    add_tensors(w, tensors)
}
