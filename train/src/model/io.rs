//! Writing a trained dense model to one GGUF file (f32 tensors, `modula.*` metadata) and
//! reading it back into a trainable [`DenseModel`]; the same for safetensors files (the
//! format PyTorch users exchange), with the same tensor names and the architecture in the
//! file's `__metadata__` (the `modula.*` keys, values as strings).
//!
//! Tensor names and layouts (both formats; `L` blocks, row-major):
//!
//! | name | shape | PyTorch equivalent |
//! |---|---|---|
//! | `token_embd.weight` | `[vocab, d]` | `nn.Embedding.weight` |
//! | `patch_embd.weight`, `.bias` | `[d, patch_dim]`, `[d]` | `nn.Linear(patch_dim, d)` |
//! | `position_embd.weight` | `[max_seq, d]` | `nn.Embedding(max_seq, d)` |
//! | `blk.N.attn_norm.weight`, `.bias` | `[d]` | `nn.LayerNorm(d)` |
//! | `blk.N.attn_qkv.weight`, `.bias` | `[3d, d]`, `[3d]` | `nn.Linear(d, 3d)`: rows q, k, v; head `h` is rows `h·dh..(h+1)·dh` of each |
//! | `blk.N.attn_output.weight`, `.bias` | `[d, d]`, `[d]` | `nn.Linear(d, d)` |
//!
//! Models with nested attention heads (`modula.nested.head_counts`) are written to GGUF
//! with `modula.attention.layout = "head_major"`: `attn_qkv.weight`/`.bias` rows reordered
//! per head (q, k, v of head 0, then head 1, …) and the output projection stored transposed
//! as `blk.N.attn_output_t.weight` `[d_in, d_out]`, so the first `h` heads are a row prefix
//! of both tensors (SortedNet spec B5) and a head sub-model reads a prefix of each. The
//! trainer keeps the PyTorch layout in memory; reading converts back. Safetensors files
//! always hold the PyTorch layout.
//!
//! | `blk.N.ffn_norm.weight`, `.bias` | `[d]` | `nn.LayerNorm(d)` |
//! | `blk.N.ffn_up.weight`, `.bias` | `[ffn, d]`, `[ffn]` | `nn.Linear(d, ffn)` |
//! | `blk.N.ffn_down_t.weight` | `[ffn, d]` | `nn.Linear(ffn, d).weight` **transposed** |
//! | `blk.N.ffn_down.bias` | `[d]` | `nn.Linear(ffn, d).bias` |
//! | `output_norm.weight`, `.bias` | `[d]` | `nn.LayerNorm(d)` |
//! | `output.weight` (`.bias` for classifiers) | `[outputs, d]` | `nn.Linear(d, outputs)` |

use super::dense::{DenseConfig, DenseModel, Pool};
use modula_core::arch::{AttentionSpec, AttnLayout, MixerSpec, ModelDesc};
use modula_core::gguf::GgufWriter;
use modula_core::Error;
use modula_core::{MetaValue, Model};
use std::collections::HashMap;
use std::path::Path;

/// The architecture as metadata entries.
fn config_meta(
    c: &DenseConfig,
    context_length: usize,
    name: &str,
) -> Result<Vec<(&'static str, MetaValue)>, Error> {
    let u = |v: usize| {
        u32::try_from(v)
            .map(MetaValue::U32)
            .map_err(|_| Error::input(format!("{v} does not fit in u32")))
    };
    let task = if c.is_classifier() { "classify" } else { "lm" };
    let mut meta = vec![
        ("general.name", MetaValue::String(name.to_string())),
        ("modula.model", MetaValue::String("dense".into())),
        ("modula.task", MetaValue::String(task.into())),
        ("modula.context_length", u(context_length)?),
        ("modula.embedding_length", u(c.d)?),
        ("modula.block_count", u(c.layers)?),
        ("modula.feed_forward_length", u(c.ffn)?),
        ("modula.attention.kind", MetaValue::String("softmax".into())),
        ("modula.attention.head_count", u(c.heads)?),
        ("modula.attention.causal", MetaValue::Bool(c.causal)),
        ("modula.norm", MetaValue::String("layernorm".into())),
        ("modula.norm_epsilon", MetaValue::F32(1e-5)),
        ("modula.activation", MetaValue::String("gelu".into())),
    ];
    if c.patch_dim > 0 {
        meta.push(("modula.input.patch_dim", u(c.patch_dim)?));
    } else {
        meta.push(("modula.vocab_size", u(c.vocab)?));
    }
    if c.max_seq > 0 {
        meta.push(("modula.position_length", u(c.max_seq)?));
    }
    if c.emoe_layers != 0 {
        let layers = c
            .emoe_layer_list()
            .into_iter()
            .map(u)
            .collect::<Result<Vec<_>, _>>()?;
        meta.push((
            "modula.emoe.layers",
            MetaValue::Array(modula_core::ValueType::U32, layers),
        ));
        meta.push(("modula.expert.count", u(c.emoe_experts)?));
        meta.push(("modula.expert.used_count", u(c.emoe_top_k)?));
        meta.push(("modula.expert.router", MetaValue::String("avgk".into())));
    }
    if c.nested_depths != 0 || c.nested_ffn.iter().any(|&w| w > 0) {
        let list = |v: Vec<usize>| -> Result<MetaValue, Error> {
            Ok(MetaValue::Array(
                modula_core::ValueType::U32,
                v.into_iter().map(u).collect::<Result<Vec<_>, _>>()?,
            ))
        };
        meta.push(("modula.nested.depths", list(c.nested_depth_list())?));
        meta.push(("modula.nested.ffn_widths", list(c.nested_ffn_list())?));
    }
    if c.heads_nested() {
        let list = c
            .nested_head_list()
            .into_iter()
            .map(u)
            .collect::<Result<Vec<_>, _>>()?;
        meta.push((
            "modula.nested.head_counts",
            MetaValue::Array(modula_core::ValueType::U32, list),
        ));
    }
    if c.is_classifier() {
        meta.push(("modula.num_classes", u(c.classes)?));
        meta.push((
            "modula.classify.pool",
            MetaValue::String(c.pool.name().into()),
        ));
    }
    Ok(meta)
}

/// The architecture from metadata looked up as strings; returns it with the context length.
fn config_from(get: &dyn Fn(&str) -> Option<String>) -> Result<(DenseConfig, usize), Error> {
    if get("modula.model").as_deref() != Some("dense") {
        return Err(Error::metadata(
            "modula.model",
            format!(
                "not a dense model (modula.model = {:?})",
                get("modula.model")
            ),
        ));
    }
    let opt = |k: &str| -> Result<usize, Error> {
        match get(k) {
            None => Ok(0),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| Error::input(format!("{k} = '{v}' is not a count"))),
        }
    };
    let need = |k: &str| -> Result<usize, Error> {
        match get(k) {
            None => Err(Error::input(format!("missing {k}"))),
            Some(_) => opt(k),
        }
    };
    // what the trainer trains; another norm, epsilon or activation is refused by key
    for (k, want) in [
        ("modula.norm", "layernorm"),
        ("modula.activation", "gelu"),
        ("modula.attention.kind", "softmax"),
    ] {
        if let Some(v) = get(k) {
            if v != want {
                return Err(Error::unsupported(format!(
                    "{k} = '{v}': the trainer trains {want} dense models"
                )));
            }
        }
    }
    if let Some(v) = get("modula.norm_epsilon") {
        if v.parse::<f32>().ok() != Some(super::dense::LN_EPS_TRAINED) {
            return Err(Error::unsupported(format!(
                "modula.norm_epsilon = '{v}': the trainer trains LayerNorm with epsilon {}",
                super::dense::LN_EPS_TRAINED
            )));
        }
    }
    let patch_dim = opt("modula.input.patch_dim")?;
    let pool = match get("modula.classify.pool") {
        Some(p) => Pool::parse(&p)?,
        None => Pool::Mean,
    };
    let causal = match get("modula.attention.causal").as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(Error::input(format!(
                "modula.attention.causal = '{v}' is not a bool"
            )))
        }
    };
    let cfg = DenseConfig {
        vocab: if patch_dim > 0 {
            0
        } else {
            need("modula.vocab_size")?
        },
        d: need("modula.embedding_length")?,
        layers: need("modula.block_count")?,
        heads: need("modula.attention.head_count")?,
        ffn: need("modula.feed_forward_length")?,
        max_seq: opt("modula.position_length")?,
        causal,
        patch_dim,
        classes: opt("modula.num_classes")?,
        pool,
        emoe_layers: 0,
        emoe_experts: 0,
        emoe_top_k: 0,
        nested_depths: 0,
        nested_ffn: [0; 8],
        nested_heads: 0,
    };
    let mut cfg = cfg;
    if let Some(list) = get("modula.emoe.layers") {
        for v in list.split(',').filter(|v| !v.is_empty()) {
            let l: usize = v.trim().parse().map_err(|_| {
                Error::input(format!("modula.emoe.layers: '{v}' is not a block index"))
            })?;
            if l >= 64 {
                return Err(Error::input(format!(
                    "modula.emoe.layers: block {l} is out of range"
                )));
            }
            cfg.emoe_layers |= 1 << l;
        }
        cfg.emoe_experts = need("modula.expert.count")?;
        cfg.emoe_top_k = need("modula.expert.used_count")?;
    }
    let parse_list = |k: &str| -> Result<Vec<usize>, Error> {
        match get(k) {
            None => Ok(Vec::new()),
            Some(list) => list
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| Error::input(format!("{k}: '{v}' is not a size")))
                })
                .collect(),
        }
    };
    let (depths, widths) = (
        parse_list("modula.nested.depths")?,
        parse_list("modula.nested.ffn_widths")?,
    );
    if !depths.is_empty() || !widths.is_empty() {
        cfg = cfg.with_nested(&depths, &widths)?;
    }
    let heads = parse_list("modula.nested.head_counts")?;
    if !heads.is_empty() {
        if cfg.heads == 0 || !cfg.d.is_multiple_of(cfg.heads) {
            return Err(Error::input(format!(
                "d = {} is not a multiple of {} heads",
                cfg.d, cfg.heads
            )));
        }
        cfg = cfg.with_nested_heads(&heads)?;
    }
    Ok((cfg, opt("modula.context_length")?))
}

/// Tensors stored in another layout in head-major files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relaid {
    /// `attn_qkv.weight` / `.bias`: rows reordered per head.
    Qkv,
    /// `attn_output.weight`: stored transposed as `attn_output_t.weight`.
    Proj,
}

fn file_form(name: &str) -> Option<Relaid> {
    if !name.starts_with("blk.") {
        None
    } else if name.ends_with(".attn_qkv.weight") || name.ends_with(".attn_qkv.bias") {
        Some(Relaid::Qkv)
    } else if name.ends_with(".attn_output.weight") {
        Some(Relaid::Proj)
    } else {
        None
    }
}

fn proj_t_name(name: &str) -> String {
    name.replace(".attn_output.weight", ".attn_output_t.weight")
}

/// Rows `q | k | v` (each `heads` groups of `d/heads` rows of `cols` values) reordered to
/// head-major: head 0's q, k, v rows, then head 1's, …
pub fn qkv_head_major(w: &[f32], d: usize, heads: usize, cols: usize) -> Vec<f32> {
    let hd = d / heads;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..heads {
        for part in 0..3 {
            let r = part * d + h * hd;
            out.extend_from_slice(&w[r * cols..(r + hd) * cols]);
        }
    }
    out
}

/// The inverse of [`qkv_head_major`].
pub fn qkv_from_head_major(w: &[f32], d: usize, heads: usize, cols: usize) -> Vec<f32> {
    let hd = d / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for part in 0..3 {
            let (src, dst) = ((h * 3 + part) * hd, part * d + h * hd);
            out[dst * cols..(dst + hd) * cols].copy_from_slice(&w[src * cols..(src + hd) * cols]);
        }
    }
    out
}

/// `[rows, cols]` → `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

/// A named tensor's shape and values, widened to f32.
type Loaded = Result<(Vec<usize>, Vec<f32>), Error>;

/// Copy named tensors into a fresh model, checking every name and shape.
fn fill(cfg: DenseConfig, tensor: &dyn Fn(&str) -> Loaded) -> Result<DenseModel, Error> {
    let mut model = DenseModel::new(cfg, 0)?;
    for i in 0..model.params.specs().len() {
        let spec = model.params.specs()[i].clone();
        let (shape, data) = tensor(&spec.name)?;
        if shape != spec.shape {
            return Err(Error::Shape {
                tensor: spec.name.clone(),
                expected: spec.shape.clone(),
                got: shape,
            });
        }
        if let Some(j) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::non_finite(format!(
                "tensor '{}' holds a non-finite value at {j}",
                spec.name
            )));
        }
        model.params.value_mut(i).copy_from_slice(&data);
    }
    Ok(model)
}

impl DenseModel {
    /// Write the parameters and the architecture metadata atomically to `path`.
    pub fn write_gguf(&self, path: &Path, context_length: usize, name: &str) -> Result<u64, Error> {
        self.writer(context_length, name)?
            .write_to(path)
            .map_err(Error::from)
    }

    /// A GGUF writer holding the architecture metadata and the parameters (borrowed).
    pub(crate) fn writer(
        &self,
        context_length: usize,
        name: &str,
    ) -> Result<GgufWriter<'_>, Error> {
        let mut w = GgufWriter::new();
        for (k, v) in config_meta(&self.cfg, context_length, name)? {
            w.set(k, v)?;
        }
        let head_major = self.cfg.heads_nested();
        if head_major {
            w.set(
                "modula.attention.layout",
                MetaValue::String("head_major".into()),
            )?;
        }
        let (d, heads) = (self.cfg.d, self.cfg.heads);
        for (i, s) in self.params.specs().iter().enumerate() {
            let v = self.params.value(i);
            let owned = |name: &str, data: Vec<f32>| -> (String, Vec<u8>) {
                let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                (name.to_string(), bytes)
            };
            let relaid = match file_form(&s.name) {
                Some(Relaid::Qkv) if head_major => Some(owned(
                    &s.name,
                    qkv_head_major(v, d, heads, v.len() / (3 * d)),
                )),
                Some(Relaid::Proj) if head_major => {
                    Some(owned(&proj_t_name(&s.name), transpose(v, d, d)))
                }
                _ => None,
            };
            match relaid {
                Some((name, bytes)) => {
                    w.add_tensor(&name, modula_core::DType::F32, &s.shape, bytes)?
                }
                None => w.add_f32(&s.name, &s.shape, v)?,
            }
        }
        Ok(w)
    }

    /// Read a dense model written by [`DenseModel::write_gguf`] (or any file with the same
    /// keys and tensor names/shapes; F16, BF16, Q8_0 and Q4_0 tensors are dequantised to
    /// f32, e.g. to evaluate a quantised file). Optimiser moments start at zero. Returns
    /// the model and its context length.
    pub fn read_gguf<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(DenseModel, usize), Error> {
        // the one metadata reader (every key read, unknown values refused by key)
        let desc = ModelDesc::from_model(m)?;
        let cfg = DenseConfig::from_desc(&desc)?;
        let ctx = desc.context_length.unwrap_or(0);
        let head_major = matches!(
            desc.blocks.first().map(|b| b.mixer),
            Some(MixerSpec::Attention(AttentionSpec {
                layout: AttnLayout::HeadMajor,
                ..
            }))
        );
        let (d, heads) = (cfg.d, cfg.heads);
        let model = fill(cfg, &|name| {
            let form = if head_major { file_form(name) } else { None };
            let stored = match form {
                Some(Relaid::Proj) => proj_t_name(name),
                _ => name.to_string(),
            };
            let t = m.tensor(&stored)?;
            // quantised / half-precision files are dequantised (the trainer computes in f32)
            let data = t.to_f32_vec()?;
            let shape = t.shape().to_vec();
            let data = match form {
                Some(Relaid::Qkv) if data.len() % (3 * d) == 0 && d % heads == 0 => {
                    qkv_from_head_major(&data, d, heads, data.len() / (3 * d))
                }
                Some(Relaid::Proj) if shape == [d, d] => transpose(&data, d, d),
                _ => data,
            };
            Ok((shape, data))
        })?;
        Ok((model, ctx))
    }

    /// Write the parameters as f32 safetensors (names and layouts in the module docs; the
    /// architecture in `__metadata__`), atomically.
    pub fn write_safetensors(&self, path: &Path, context_length: usize) -> Result<(), Error> {
        let mut info = HashMap::new();
        for (k, v) in config_meta(&self.cfg, context_length, "modula dense model")? {
            let s = match v {
                MetaValue::U32(x) => x.to_string(),
                MetaValue::Bool(b) => b.to_string(),
                MetaValue::String(s) => s,
                MetaValue::F32(f) => f.to_string(),
                MetaValue::Array(_, items) => items
                    .iter()
                    .map(|v| match v {
                        MetaValue::U32(x) => x.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => format!("{other:?}"),
            };
            info.insert(k.to_string(), s);
        }
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .params
            .specs()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let b = self
                    .params
                    .value(i)
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                (s.name.clone(), b, s.shape.clone())
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(n, b, shape)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::io(e.to_string()))?;
        let out =
            safetensors::serialize(views, Some(info)).map_err(|e| Error::io(e.to_string()))?;
        modula_core::io::atomic_write(path, |w| w.write_all(&out))
            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
    }

    /// Read a model from safetensors bytes written by [`DenseModel::write_safetensors`]
    /// or by the PyTorch reference (`tests/reference/dense_reference.py`): f32, f16 or
    /// bf16 tensors. Returns the model and its context length.
    pub fn read_safetensors(bytes: &[u8]) -> Result<(DenseModel, usize), Error> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::input(format!("not a safetensors file: {e}")))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::input(format!("not a safetensors file: {e}")))?;
        let info = meta.metadata().clone().unwrap_or_default();
        let (cfg, ctx) = config_from(&|k| info.get(k).cloned())?;
        let model = fill(cfg, &|name| {
            let t = st
                .tensor(name)
                .map_err(|_| Error::input(format!("missing tensor '{name}'")))?;
            Ok((t.shape().to_vec(), widen(name, t.dtype(), t.data())?))
        })?;
        Ok((model, ctx))
    }
}

/// Widen little-endian f32/f16/bf16 tensor bytes.
pub(crate) fn widen(name: &str, dt: safetensors::Dtype, b: &[u8]) -> Result<Vec<f32>, Error> {
    use safetensors::Dtype;
    Ok(match dt {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::input(format!(
                "tensor '{name}' has dtype {other:?}; use f32, f16 or bf16"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_gives_the_same_outputs() {
        use crate::model::dense::Input;
        let dir = std::env::temp_dir().join(format!("modula-dense-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lm = DenseConfig {
            max_seq: 10,
            ..DenseConfig::lm(256, 16, 2, 2, 32)
        }
        .with_nested(&[1], &[8, 16])
        .unwrap();
        assert_eq!(lm.nested_grid().len(), 6);
        let img = DenseConfig {
            nested_depths: 0,
            nested_ffn: [0; 8],
            vocab: 0,
            patch_dim: 3,
            classes: 4,
            causal: false,
            pool: Pool::First,
            ..lm
        };
        let toks: Vec<u32> = (0..10).map(|i| i * 20).collect();
        let feats: Vec<f32> = (0..30).map(|i| i as f32 / 30.0).collect();
        for (cfg, input, targets) in [
            (lm, Input::Tokens(&toks), toks.clone()),
            (img, Input::Features(&feats), vec![3]),
        ] {
            let m = DenseModel::new(cfg, 5).unwrap();
            let p = dir.join("m.gguf");
            m.write_gguf(&p, 64, "test").unwrap();
            let file = Model::open(&p).unwrap();
            let (back, ctx) = DenseModel::read_gguf(&file).unwrap();
            assert_eq!((back.cfg, ctx), (cfg, 64));
            assert!(back.params.values == m.params.values);
            let a = m.forward(input, &targets, 1, 10).unwrap().0;
            let b = back.forward(input, &targets, 1, 10).unwrap().0;
            assert_eq!(a, b);
            let sp = dir.join("m.safetensors");
            m.write_safetensors(&sp, 64).unwrap();
            let (st, ctx) = DenseModel::read_safetensors(&std::fs::read(&sp).unwrap()).unwrap();
            assert_eq!((st.cfg, ctx), (cfg, 64));
            assert!(st.params.values == m.params.values);
        }
        // head-nested: GGUF holds the attention head-major (a head prefix is a row prefix
        // of attn_qkv and of the transposed output projection); safetensors the PyTorch one
        let hn = DenseConfig::lm(256, 16, 2, 4, 32)
            .with_nested_heads(&[1, 2])
            .unwrap();
        let m = DenseModel::new(hn, 6).unwrap();
        let p = dir.join("heads.gguf");
        m.write_gguf(&p, 64, "heads").unwrap();
        let file = Model::open(&p).unwrap();
        assert!(matches!(
            file.get("modula.attention.layout"),
            Some(modula_core::Value::Str("head_major"))
        ));
        let (back, _) = DenseModel::read_gguf(&file).unwrap();
        assert_eq!(back.cfg.nested_head_list(), vec![1, 2, 4]);
        assert!(back.params.values == m.params.values);
        assert!(file.tensor("blk.0.attn_output.weight").is_err());
        let (d, hd) = (16, 4);
        let qkv = m.params.value(m.ffn_index(1, "attn_qkv.weight").unwrap());
        let stored = file
            .tensor("blk.1.attn_qkv.weight")
            .unwrap()
            .to_f32_vec()
            .unwrap();
        // file row 3·hd·h + part·hd + i = memory row part·d + h·hd + i
        for (h, part, i) in [(0, 0, 0), (0, 2, 3), (1, 1, 2), (3, 2, 3)] {
            let (f, mrow) = ((3 * h + part) * hd + i, part * d + h * hd + i);
            assert_eq!(stored[f * d..(f + 1) * d], qkv[mrow * d..(mrow + 1) * d]);
        }
        let proj = m
            .params
            .value(m.ffn_index(0, "attn_output.weight").unwrap());
        let pt = file
            .tensor("blk.0.attn_output_t.weight")
            .unwrap()
            .to_f32_vec()
            .unwrap();
        assert_eq!(
            (pt[3 * d + 5], pt[5 * d + 3]),
            (proj[5 * d + 3], proj[3 * d + 5])
        );
        let sp = dir.join("heads.safetensors");
        m.write_safetensors(&sp, 64).unwrap();
        let (st, _) = DenseModel::read_safetensors(&std::fs::read(&sp).unwrap()).unwrap();
        assert!(st.cfg == hn && st.params.values == m.params.values);
        // bad safetensors input is an error, not a panic
        assert!(DenseModel::read_safetensors(b"not a file").is_err());
        let m = DenseModel::new(lm, 1).unwrap();
        let sp = dir.join("bad.safetensors");
        m.write_safetensors(&sp, 64).unwrap();
        let mut bytes = std::fs::read(&sp).unwrap();
        bytes.truncate(bytes.len() - 3);
        assert!(DenseModel::read_safetensors(&bytes).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
