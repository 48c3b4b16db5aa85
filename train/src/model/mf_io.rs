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
use modula_core::gguf::GgufWriter;
use modula_core::{MetaValue, Model};
use std::path::Path;

/// `(stacked tensor suffix, per-expert file name, group kind)`.
const EXPERT_TENSORS: [(&str, &str, &str); 4] = [
    ("attn_q_exps.weight", "attn_q", "attn_expert"),
    ("attn_output_t_exps.weight", "attn_output_t", "attn_expert"),
    ("ffn_up_exps.weight", "ffn_up", "ffn_expert"),
    ("ffn_down_t_exps.weight", "ffn_down_t", "ffn_expert"),
];

fn meta(c: &MfConfig, ctx: usize, name: &str) -> Result<Vec<(&'static str, MetaValue)>, String> {
    let u = |v: usize| {
        u32::try_from(v)
            .map(MetaValue::U32)
            .map_err(|_| format!("{v} does not fit in u32"))
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
    Ok(m)
}

/// The architecture of a ModuleFormer file (auxiliary-loss weights: 0).
pub fn mf_config_from<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(MfConfig, usize), String> {
    if m.get_str("modula.model") != Some("moduleformer") {
        return Err(format!(
            "not a ModuleFormer model (modula.model = {:?})",
            m.get_str("modula.model")
        ));
    }
    let need = |k: &str| -> Result<usize, String> {
        m.get(k)
            .and_then(|v| v.as_u32())
            .map(|v| v as usize)
            .ok_or_else(|| format!("missing or non-integer {k}"))
    };
    let flag = |k: &str| -> Result<bool, String> {
        m.get(k)
            .and_then(|v| v.as_bool())
            .ok_or_else(|| format!("missing or non-bool {k}"))
    };
    let heads = need("modula.attention.head_count")?;
    let router_hidden = match m.get_str("modula.expert.router") {
        Some("mlp") => need("modula.expert.gating_size")?,
        Some("linear") => 0,
        other => {
            return Err(format!(
                "modula.expert.router = {other:?}: use mlp or linear"
            ))
        }
    };
    let head_dim = need("modula.attention.head_dim")?;
    let cfg = MfConfig {
        vocab: need("modula.vocab_size")?,
        d: need("modula.embedding_length")?,
        layers: need("modula.block_count")?,
        att_experts: need("modula.attention.expert_count")?,
        att_k: need("modula.attention.expert_used_count")?,
        att_hidden: heads
            .checked_mul(head_dim)
            .ok_or("attention width overflows")?,
        heads,
        kv_proj: !flag("modula.attention.shared_kv")?,
        ffn_experts: need("modula.expert.count")?,
        ffn_k: need("modula.expert.used_count")?,
        ffn_hidden: need("modula.feed_forward_length")?,
        router_hidden,
        renormalize: flag("modula.expert.renormalize")?,
        aux_mi: 0.0,
        aux_lc: 0.0,
    };
    cfg.validate()?;
    // refuse absurd sizes before allocating (a hostile header must not exhaust memory)
    let total = cfg
        .layers
        .checked_mul(
            cfg.att_experts * cfg.att_hidden * cfg.d * 2
                + cfg.ffn_experts * cfg.ffn_hidden * cfg.d * 2,
        )
        .ok_or("model size overflows")?;
    let data = m.bytes().len() / 4 + 1;
    if total > data.saturating_mul(8) {
        return Err(format!(
            "the header describes {total} expert weights but the file holds only {} bytes",
            m.bytes().len()
        ));
    }
    Ok((
        cfg,
        m.get_u32("modula.context_length")
            .map_err(|e| e.to_string())? as usize,
    ))
}

impl MfModel {
    /// A GGUF writer with the architecture and every tensor (borrowed), experts split into
    /// per-expert tensors in their own page groups.
    pub fn writer(&self, ctx: usize, name: &str) -> Result<GgufWriter<'_>, String> {
        let e2s = |e: modula_core::GgufError| e.to_string();
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
                            .ok_or_else(|| format!("internal: no tensor {name}"))?;
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
    pub fn write_gguf(&self, path: &Path, ctx: usize, name: &str) -> Result<u64, String> {
        self.writer(ctx, name)?
            .write_to(path)
            .map_err(|e| e.to_string())
    }

    /// Read a model written by [`MfModel::write_gguf`] (F16/BF16/Q8_0/Q4_0 tensors are
    /// dequantised); every name, shape and value is checked. Returns it with its context
    /// length.
    pub fn read_gguf<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(MfModel, usize), String> {
        let (cfg, ctx) = mf_config_from(m)?;
        let mut model = MfModel::new(cfg, 0)?;
        let load = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let t = m.tensor(name).map_err(|e| e.to_string())?;
            if t.shape() != shape {
                return Err(format!(
                    "tensor '{name}' has shape {:?}, expected {shape:?}",
                    t.shape()
                ));
            }
            let v = t.to_f32_vec().map_err(|e| e.to_string())?;
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("tensor '{name}' holds a non-finite value at {j}"));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_with_page_aligned_experts() {
        for cfg in [
            MfConfig::lm(11, 8, 2, 3, 6),
            MfConfig {
                kv_proj: true,
                heads: 2,
                att_hidden: 6,
                router_hidden: 0,
                renormalize: true,
                ..MfConfig::lm(11, 8, 1, 4, 6)
            },
        ] {
            let m = MfModel::new(cfg, 5).unwrap();
            let bytes = m.writer(32, "t").unwrap().to_bytes().unwrap();
            let f = Model::from_bytes(bytes.as_slice()).unwrap();
            let (back, ctx) = MfModel::read_gguf(&f).unwrap();
            assert_eq!(ctx, 32);
            assert_eq!(back.cfg, MfConfig { aux_mi: 0.0, ..cfg });
            assert_eq!(back.params.values, m.params.values);
            let g = f.group_of("blk.1.ffn_up.2.weight");
            if cfg.layers > 1 {
                let g = g.unwrap();
                assert_eq!(g.name(), "blk.1.ffn_expert.2");
                assert_eq!(g.range().start % f.page_size(), 0);
            }
        }
    }

    #[test]
    fn wrong_or_missing_tensors_are_errors() {
        let m = MfModel::new(MfConfig::lm(11, 8, 1, 2, 6), 5).unwrap();
        let mut w = m.writer(16, "t").unwrap();
        w.set("modula.expert.count", MetaValue::U32(3)).unwrap();
        let bytes = w.to_bytes().unwrap();
        let e = MfModel::read_gguf(&Model::from_bytes(bytes.as_slice()).unwrap()).unwrap_err();
        assert!(e.contains("ffn_up.2") || e.contains("shape"), "{e}");
        let mut w = m.writer(16, "t").unwrap();
        w.set("modula.model", MetaValue::String("dense".into()))
            .unwrap();
        let bytes = w.to_bytes().unwrap();
        let e = MfModel::read_gguf(&Model::from_bytes(bytes.as_slice()).unwrap()).unwrap_err();
        assert!(e.contains("not a ModuleFormer"), "{e}");
    }
}
