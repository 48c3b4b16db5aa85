//! ModuleFormer models in GGUF: architecture under `modula.*` (`modula.model =
//! "moduleformer"`), shared tensors under the trainer's names, and **each expert as its own
//! tensors in its own page group** (so the engine can page, prefetch, drop or quantise
//! experts one by one):
//!
//! | tensor | shape | group |
//! |---|---|---|
//! | `blk.N.attn_q.E.weight` | `[D_a, d]` (`[out, in]`) | `blk.N.attn_expert.E` |
//! | `blk.N.attn_output_t.E.weight` | `[D_a, d]` (`[in, out]`) | `blk.N.attn_expert.E` |
//! | `blk.N.ffn_up.E.weight` | `[D_f, d]` (`[out, in]`) | `blk.N.ffn_expert.E` |
//! | `blk.N.ffn_down_t.E.weight` | `[D_f, d]` (`[in, out]`) | `blk.N.ffn_expert.E` |
//!
//! Shared per block: `attn_norm`, `ffn_norm` (weight, bias), routers
//! `attn_router.weight` `[E, G]` + `attn_router_hid.weight` `[G, d]`, `.bias` `[G]` (MLP;
//! linear: `attn_router.weight` `[E, d]`), the same for `ffn_router`, and with projected
//! keys/values `attn_k`, `attn_v` (`[D_a, d]` + bias). Model: `token_embd.weight`,
//! `output_norm`, `output.weight`. Auxiliary-loss weights are training options, not
//! stored.

use super::moduleformer::{MfConfig, MfModel};
use modula_core::engine::MfSpec;
use modula_core::gguf::GgufWriter;
use modula_core::Error;
use modula_core::{MetaValue, Model};
use std::path::Path;

/// `(stacked tensor suffix, per-expert file name, group kind)`.
const EXPERT_TENSORS: [(&str, &str, &str); 4] = [
    ("attn_q_exps.weight", "attn_q", "attn_expert"),
    ("attn_output_t_exps.weight", "attn_output_t", "attn_expert"),
    ("ffn_up_exps.weight", "ffn_up", "ffn_expert"),
    ("ffn_down_t_exps.weight", "ffn_down_t", "ffn_expert"),
];

fn meta(c: &MfConfig, ctx: usize, name: &str) -> Result<Vec<(&'static str, MetaValue)>, Error> {
    let u = |v: usize| {
        u32::try_from(v)
            .map(MetaValue::U32)
            .map_err(|_| Error::input(format!("{v} does not fit in u32")))
    };
    let mut m = vec![
        ("general.name", MetaValue::String(name.to_string())),
        ("modula.model", MetaValue::String("moduleformer".into())),
        ("modula.task", MetaValue::String("lm".into())),
        ("modula.vocab_size", u(c.vocab)?),
        ("modula.context_length", u(ctx)?),
        ("modula.embedding_length", u(c.d)?),
        ("modula.block_count", u(c.layers)?),
        ("modula.feed_forward_length", u(c.ffn_hidden)?),
        ("modula.norm", MetaValue::String("layernorm".into())),
        ("modula.norm_epsilon", MetaValue::F32(1e-5)),
        ("modula.activation", MetaValue::String("gelu_tanh".into())),
        (
            "modula.attention.kind",
            MetaValue::String("stick_breaking".into()),
        ),
        ("modula.attention.head_count", u(c.heads)?),
        ("modula.attention.head_dim", u(c.att_hidden / c.heads)?),
        ("modula.attention.causal", MetaValue::Bool(true)),
        ("modula.attention.expert_count", u(c.att_experts)?),
        ("modula.attention.expert_used_count", u(c.att_k)?),
        ("modula.attention.shared_kv", MetaValue::Bool(!c.kv_proj)),
        ("modula.expert.count", u(c.ffn_experts)?),
        ("modula.expert.used_count", u(c.ffn_k)?),
        (
            "modula.expert.router",
            MetaValue::String(if c.router_hidden > 0 { "mlp" } else { "linear" }.into()),
        ),
        ("modula.expert.renormalize", MetaValue::Bool(c.renormalize)),
    ];
    if c.router_hidden > 0 {
        m.push(("modula.expert.gating_size", u(c.router_hidden)?));
    }
    if c.nested_experts.iter().any(|&x| x > 0) {
        let list = c
            .nested_expert_list()
            .into_iter()
            .map(u)
            .collect::<Result<Vec<_>, _>>()?;
        m.push((
            "modula.nested.expert_counts",
            MetaValue::Array(modula_core::ValueType::U32, list),
        ));
    }
    Ok(m)
}

/// The architecture of a ModuleFormer file (auxiliary-loss weights: 0).
pub fn mf_config_from<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(MfConfig, usize), Error> {
    if m.get_str("modula.model") != Some("moduleformer") {
        return Err(Error::metadata(
            "modula.model",
            format!(
                "not a ModuleFormer model (modula.model = {:?})",
                m.get_str("modula.model")
            ),
        ));
    }
    // the one metadata reader (through the engine's spec, as for SeqBoat)
    let s = MfSpec::from_model(m)?;
    if s.eps != super::moduleformer::LN_EPS {
        return Err(Error::unsupported(format!(
            "modula.norm_epsilon = {}: the trainer trains LayerNorm with epsilon {}",
            s.eps,
            super::moduleformer::LN_EPS
        )));
    }
    if s.act != modula_core::kernels::expert_ffn::Activation::GeluTanh {
        return Err(Error::unsupported(format!(
            "modula.activation = {}: the trainer trains ModuleFormer experts with gelu_tanh",
            modula_core::arch::act_name(s.act)
        )));
    }
    let cfg = MfConfig {
        vocab: s.vocab,
        d: s.d,
        layers: s.layers,
        att_experts: s.att_experts,
        att_k: s.att_k,
        att_hidden: s
            .heads
            .checked_mul(s.head_dim)
            .ok_or_else(|| Error::input("attention width overflows"))?,
        heads: s.heads,
        kv_proj: !s.shared_kv,
        ffn_experts: s.ffn_experts,
        ffn_k: s.ffn_k,
        ffn_hidden: s.ffn_hidden,
        router_hidden: s.router_hidden,
        renormalize: s.renormalize,
        aux_mi: 0.0,
        aux_lc: 0.0,
        nested_experts: [0; 8],
    };
    cfg.validate()?;
    let counts: Vec<usize> = s
        .nested_experts
        .iter()
        .filter(|&&x| x > 0)
        .map(|&x| x as usize)
        .collect();
    let cfg = if counts.is_empty() {
        cfg
    } else {
        cfg.with_nested_experts(&counts)?
    };
    // refuse absurd sizes before allocating: the parameters the header describes cannot
    // outnumber what the file can hold (at most ~1.8 weights per byte, Q4_0)
    // (a lower bound of the parameter count: the expert matrices and the two routers'
    // weights — an MLP router `[g, d]` + `[E, g]`, a linear one `[E, d]`)
    let c = &cfg;
    let experts = c.att_experts.checked_add(c.ffn_experts);
    let router = if c.router_hidden > 0 {
        experts
            .and_then(|e| e.checked_add(c.d.checked_mul(2)?))
            .and_then(|e| e.checked_mul(c.router_hidden))
    } else {
        experts.and_then(|e| e.checked_mul(c.d))
    };
    let per_layer = [
        c.att_experts
            .checked_mul(c.att_hidden.saturating_mul(2))
            .and_then(|x| x.checked_mul(c.d)),
        c.ffn_experts
            .checked_mul(c.ffn_hidden.saturating_mul(2))
            .and_then(|x| x.checked_mul(c.d)),
        router,
    ]
    .into_iter()
    .try_fold(0usize, |a, x| a.checked_add(x?));
    let total = per_layer
        .and_then(|p| p.checked_mul(c.layers))
        .and_then(|p| p.checked_add(c.vocab.checked_mul(c.d)?.checked_mul(2)?))
        .ok_or_else(|| Error::input("the header's model size overflows"))?;
    let room = m.bytes().len().saturating_mul(2).saturating_add(1 << 20);
    if total > room {
        return Err(Error::input(format!(
            "the header describes {total} parameters but the file holds only {} bytes",
            m.bytes().len()
        )));
    }
    Ok((cfg, m.get_u32("modula.context_length")? as usize))
}

impl MfModel {
    /// A GGUF writer with the architecture and every tensor (borrowed), experts split into
    /// per-expert tensors in their own page groups.
    pub fn writer(&self, ctx: usize, name: &str) -> Result<GgufWriter<'_>, Error> {
        let e2s = |e: modula_core::GgufError| Error::from(e);
        let mut w = GgufWriter::new();
        for (k, v) in meta(&self.cfg, ctx, name)? {
            w.set(k, v).map_err(e2s)?;
        }
        let specs = self.params.specs();
        let mut pending_experts: Vec<usize> = Vec::new();
        for (i, s) in specs.iter().enumerate() {
            if EXPERT_TENSORS
                .iter()
                .any(|(suf, _, _)| s.name.ends_with(suf))
            {
                pending_experts.push(i);
                continue;
            }
            w.add_f32(&s.name, &s.shape, self.params.value(i))
                .map_err(e2s)?;
        }
        // experts: one page group per (block, mixture, expert)
        for l in 0..self.cfg.layers {
            for (kind, e_count) in [
                ("attn_expert", self.cfg.att_experts),
                ("ffn_expert", self.cfg.ffn_experts),
            ] {
                for e in 0..e_count {
                    w.begin_group(&format!("blk.{l}.{kind}.{e}")).map_err(e2s)?;
                    for (suf, file, k) in EXPERT_TENSORS {
                        if k != kind {
                            continue;
                        }
                        let name = format!("blk.{l}.{suf}");
                        let i = *pending_experts
                            .iter()
                            .find(|&&i| specs[i].name == name)
                            .ok_or_else(|| Error::input(format!("internal: no tensor {name}")))?;
                        let (rows, cols) = (specs[i].shape[1], specs[i].shape[2]);
                        let v = &self.params.value(i)[e * rows * cols..(e + 1) * rows * cols];
                        w.add_f32(&format!("blk.{l}.{file}.{e}.weight"), &[rows, cols], v)
                            .map_err(e2s)?;
                    }
                    w.end_group().map_err(e2s)?;
                }
            }
        }
        Ok(w)
    }

    /// Write the model atomically; returns the bytes written.
    pub fn write_gguf(&self, path: &Path, ctx: usize, name: &str) -> Result<u64, Error> {
        self.writer(ctx, name)?.write_to(path).map_err(Error::from)
    }

    /// Read a model written by [`MfModel::write_gguf`] (F16/BF16/Q8_0/Q4_0 tensors are
    /// dequantised); every name, shape and value is checked. Returns it with its context
    /// length.
    pub fn read_gguf<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(MfModel, usize), Error> {
        let (cfg, ctx) = mf_config_from(m)?;
        let mut model = MfModel::new(cfg, 0)?;
        let load = |name: &str, shape: &[usize]| -> Result<Vec<f32>, Error> {
            let t = m.tensor(name)?;
            if t.shape() != shape {
                return Err(Error::Shape {
                    tensor: name.to_string(),
                    expected: shape.to_vec(),
                    got: t.shape().to_vec(),
                });
            }
            let v = t.to_f32_vec()?;
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::non_finite(format!(
                    "tensor '{name}' holds a non-finite value at {j}"
                )));
            }
            Ok(v)
        };
        for i in 0..model.params.specs().len() {
            let spec = model.params.specs()[i].clone();
            let expert = EXPERT_TENSORS
                .iter()
                .find(|(suf, _, _)| spec.name.ends_with(suf));
            match expert {
                None => {
                    let v = load(&spec.name, &spec.shape)?;
                    model.params.value_mut(i).copy_from_slice(&v);
                }
                Some((suf, file, _)) => {
                    let prefix = &spec.name[..spec.name.len() - suf.len()];
                    let (e_count, rows, cols) = (spec.shape[0], spec.shape[1], spec.shape[2]);
                    for e in 0..e_count {
                        let v = load(&format!("{prefix}{file}.{e}.weight"), &[rows, cols])?;
                        model.params.value_mut(i)[e * rows * cols..(e + 1) * rows * cols]
                            .copy_from_slice(&v);
                    }
                }
            }
        }
        Ok((model, ctx))
    }
}

/// Import a checkpoint of the Hugging Face ModuleFormer (MoLM) code: its `config.json`
/// text and its `model.safetensors` bytes (f32, f16 or bf16; expert tensors
/// `[experts, in, out]`, routers `w_gate.0` / `w_gate.3` as `nn.Linear`; names in spec
/// A.6b). Keys and values are shared (`K = V = ln_1(x)`) when `att_hidden == n_embd` and
/// `n_head == 1`, as in the released code; projected otherwise. Supports the MLP router
/// (`gate_type = "mlp"`, every MoLM checkpoint) with `gelu_new` experts; anything else is
/// refused with a message. Buffers (`attn.mask`, `attn.cum_weight`) are ignored. Returns
/// the model and its context length (`block_size`).
pub fn read_molm(config_json: &str, safetensors_bytes: &[u8]) -> Result<(MfModel, usize), Error> {
    let cfg: serde_json::Value =
        serde_json::from_str(config_json).map_err(|e| Error::input(format!("config.json: {e}")))?;
    let num = |k: &str| -> Result<usize, Error> {
        cfg.get(k)
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| Error::input(format!("config.json: missing or non-integer '{k}'")))
    };
    let text = |k: &str, default: &str| -> String {
        cfg.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or(default)
            .to_string()
    };
    if let Some(t) = cfg.get("model_type").and_then(|v| v.as_str()) {
        if t != "moduleformer" {
            return Err(Error::input(format!(
                "config.json: model_type '{t}' is not moduleformer"
            )));
        }
    }
    let gate = text("gate_type", "mlp");
    if gate != "mlp" {
        return Err(Error::input(format!(
            "config.json: gate_type '{gate}' is not supported (MoLM checkpoints use 'mlp')"
        )));
    }
    let act = text("activation_function", "gelu_new");
    if !["gelu_new", "gelu_pytorch_tanh", "gelu_fast"].contains(&act.as_str()) {
        return Err(Error::input(format!(
            "config.json: activation_function '{act}' is not supported (experts run tanh-GELU, 'gelu_new')"
        )));
    }
    let (d, heads, da) = (num("n_embd")?, num("n_head")?, num("att_hidden")?);
    let mf = MfConfig {
        vocab: num("vocab_size")?,
        d,
        layers: num("n_layer")?,
        att_experts: num("n_att_experts")?,
        att_k: num("k_att")?,
        att_hidden: da,
        heads,
        kv_proj: !(da == d && heads == 1),
        ffn_experts: num("n_mlp_experts")?,
        ffn_k: num("k_mlp")?,
        ffn_hidden: num("ffd_hidden")?,
        router_hidden: num("gating_size")?,
        renormalize: false,
        aux_mi: 0.0,
        aux_lc: 0.0,
        nested_experts: [0; 8],
    };
    mf.validate()?;
    if mf.router_hidden == 0 {
        return Err(Error::input("config.json: gating_size must be at least 1"));
    }
    let ctx = num("block_size")
        .or_else(|_| num("n_positions"))
        .unwrap_or(0);
    let st = safetensors::SafeTensors::deserialize(safetensors_bytes)
        .map_err(|e| Error::input(format!("model.safetensors: {e}")))?;
    // refuse a header that describes far more weights than the file holds, before
    // allocating them
    // experts per layer × layers, plus embedding and head (safetensors holds at least 2
    // bytes per parameter: f16/bf16)
    let described = mf
        .att_experts
        .saturating_mul(da)
        .saturating_add(mf.ffn_experts.saturating_mul(mf.ffn_hidden))
        .saturating_mul(d)
        .saturating_mul(2)
        .saturating_mul(mf.layers)
        .saturating_add(mf.vocab.saturating_mul(d).saturating_mul(2));
    if described > safetensors_bytes.len() {
        return Err(Error::input(format!(
            "config.json describes {described} parameters; model.safetensors holds only {} bytes",
            safetensors_bytes.len()
        )));
    }
    let mut model = MfModel::new(mf, 0)?;
    let load = |name: &str, shape: &[usize]| -> Result<Vec<f32>, Error> {
        let t = st
            .tensor(name)
            .map_err(|_| Error::input(format!("model.safetensors: missing tensor '{name}'")))?;
        if t.shape() != shape {
            return Err(Error::Shape {
                tensor: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape().to_vec(),
            });
        }
        let v = super::io::widen(name, t.dtype(), t.data())?;
        if let Some(j) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::non_finite(format!(
                "tensor '{name}' holds a non-finite value at {j}"
            )));
        }
        Ok(v)
    };
    // experts [E, in, out] → ours: queries and up projections [E, out, in] (transposed per
    // expert); output projections [E, in, out] as they are
    let transpose_experts = |v: &[f32], e: usize, rows: usize, cols: usize| -> Vec<f32> {
        let mut out = vec![0f32; v.len()];
        for x in 0..e {
            let (src, dst) = (&v[x * rows * cols..], &mut out[x * rows * cols..]);
            for r in 0..rows {
                for c in 0..cols {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
        out
    };
    let (ea, ef, df, g) = (
        mf.att_experts,
        mf.ffn_experts,
        mf.ffn_hidden,
        mf.router_hidden,
    );
    let mut put = |ours: &str, v: Vec<f32>| -> Result<(), Error> {
        let i = model
            .params
            .index_of(ours)
            .ok_or_else(|| Error::input(format!("internal: no parameter {ours}")))?;
        model.params.value_mut(i).copy_from_slice(&v);
        Ok(())
    };
    put(
        "token_embd.weight",
        load("transformer.wte.weight", &[mf.vocab, d])?,
    )?;
    for l in 0..mf.layers {
        let hf = |s: &str| format!("transformer.h.{l}.{s}");
        let us = |s: &str| format!("blk.{l}.{s}");
        for (a, b) in [("ln_1", "attn_norm"), ("ln_2", "ffn_norm")] {
            put(
                &us(&format!("{b}.weight")),
                load(&hf(&format!("{a}.weight")), &[d])?,
            )?;
            put(
                &us(&format!("{b}.bias")),
                load(&hf(&format!("{a}.bias")), &[d])?,
            )?;
        }
        let q = load(&hf("attn.q_proj.experts.weight"), &[ea, d, da])?;
        put(&us("attn_q_exps.weight"), transpose_experts(&q, ea, d, da))?;
        put(
            &us("attn_output_t_exps.weight"),
            load(&hf("attn.q_proj.output_experts.weight"), &[ea, da, d])?,
        )?;
        let up = load(&hf("mlpf.experts.weight"), &[ef, d, df])?;
        put(&us("ffn_up_exps.weight"), transpose_experts(&up, ef, d, df))?;
        put(
            &us("ffn_down_t_exps.weight"),
            load(&hf("mlpf.output_experts.weight"), &[ef, df, d])?,
        )?;
        for (gate, ours, e) in [
            ("attn.q_proj.gate", "attn_router", ea),
            ("mlpf.gate", "ffn_router", ef),
        ] {
            put(
                &us(&format!("{ours}_hid.weight")),
                load(&hf(&format!("{gate}.w_gate.0.weight")), &[g, d])?,
            )?;
            put(
                &us(&format!("{ours}_hid.bias")),
                load(&hf(&format!("{gate}.w_gate.0.bias")), &[g])?,
            )?;
            put(
                &us(&format!("{ours}.weight")),
                load(&hf(&format!("{gate}.w_gate.3.weight")), &[e, g])?,
            )?;
        }
        if mf.kv_proj {
            for (a, b) in [("k_proj", "attn_k"), ("v_proj", "attn_v")] {
                put(
                    &us(&format!("{b}.weight")),
                    load(&hf(&format!("attn.{a}.weight")), &[da, d])?,
                )?;
                put(
                    &us(&format!("{b}.bias")),
                    load(&hf(&format!("attn.{a}.bias")), &[da])?,
                )?;
            }
        }
    }
    put("output_norm.weight", load("transformer.ln_f.weight", &[d])?)?;
    put("output_norm.bias", load("transformer.ln_f.bias", &[d])?)?;
    put("output.weight", load("lm_head.weight", &[mf.vocab, d])?)?;
    Ok((model, ctx))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_with_page_aligned_experts() {
        for cfg in [
            MfConfig::lm(11, 8, 2, 3, 6)
                .with_nested_experts(&[2])
                .unwrap(),
            MfConfig {
                kv_proj: true,
                heads: 2,
                att_hidden: 6,
                router_hidden: 0,
                renormalize: true,
                ..MfConfig::lm(11, 8, 1, 4, 6)
            },
            // few experts, a wide MLP router: the size check once over-counted the
            // router by a factor of d and refused this file
            MfConfig::lm(256, 128, 4, 2, 128),
        ] {
            let m = MfModel::new(cfg, 5).unwrap();
            let bytes = m.writer(32, "t").unwrap().to_bytes().unwrap();
            let f = Model::from_bytes(bytes.as_slice()).unwrap();
            let (back, ctx) = MfModel::read_gguf(&f).unwrap();
            assert_eq!(ctx, 32);
            assert_eq!(back.cfg, MfConfig { aux_mi: 0.0, ..cfg });
            assert_eq!(back.cfg.nested_expert_list(), cfg.nested_expert_list());
            assert_eq!(back.params.values, m.params.values);
            let g = f.group_of("blk.1.ffn_up.1.weight");
            if cfg.layers > 1 {
                let g = g.unwrap();
                assert_eq!(g.name(), "blk.1.ffn_expert.1");
                assert_eq!(g.range().start % f.page_size(), 0);
            }
        }
    }

    #[test]
    fn a_header_describing_a_huge_model_is_refused_before_allocating() {
        let m = MfModel::new(MfConfig::lm(11, 8, 1, 2, 6), 5).unwrap();
        for (k, v) in [
            ("modula.vocab_size", 4_000_000_000u32),
            ("modula.expert.count", 4_000_000_000),
            ("modula.block_count", 4_000_000_000),
            ("modula.expert.gating_size", 4_000_000_000),
            ("modula.feed_forward_length", 4_000_000_000),
        ] {
            let mut w = m.writer(16, "t").unwrap();
            w.set(k, MetaValue::U32(v)).unwrap();
            let bytes = w.to_bytes().unwrap();
            let e = MfModel::read_gguf(&Model::from_bytes(bytes.as_slice()).unwrap()).unwrap_err();
            assert!(
                e.to_string().contains("parameters")
                    || e.to_string().contains("overflows")
                    || e.to_string().contains("at least one per block"),
                "{k}: {e}"
            );
        }
    }

    #[test]
    fn wrong_or_missing_tensors_are_errors() {
        let m = MfModel::new(MfConfig::lm(11, 8, 1, 2, 6), 5).unwrap();
        let mut w = m.writer(16, "t").unwrap();
        w.set("modula.expert.count", MetaValue::U32(3)).unwrap();
        let bytes = w.to_bytes().unwrap();
        let e = MfModel::read_gguf(&Model::from_bytes(bytes.as_slice()).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("ffn_up.2") || matches!(e, modula_core::Error::Shape { .. }),
            "{e}"
        );
        let mut w = m.writer(16, "t").unwrap();
        w.set("modula.model", MetaValue::String("dense".into()))
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        let e = MfModel::read_gguf(&Model::from_bytes(bytes.as_slice()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a ModuleFormer"), "{e}");
    }
}
