//! SeqBoat models in GGUF: `modula.model = "seqboat"`, the architecture under
//! `modula.ssm.*`, `modula.gau.*` and `modula.seqboat.*` (`docs/format.md`), every tensor under the trainer's name (f32; `modula quantize` may
//! convert the matrices later). Per layer `blk.N.`: `norm.{weight,bias}` (`[d]`; before the
//! layer when `prenorm`, after it otherwise), `ema.{delta,alpha,beta,gamma}` (`[d, N]`
//! causal, `[2d, N]` bidirectional: forward set first), `ema.omega` `[d]`, `gate.weight`
//! `[2 + d, d]` (rows 0, 1: the skip/run logits; the rest: the SSM path) + `.bias`,
//! `gate.log_temp` `[1]`, `gau_in.weight` `[z + 2e, d]` (Z, R, V rows) + `.bias`,
//! `gau_qk.scale`, `gau_qk.offset` `[2, z]` (Q row, K row), `gau_rel_bias` `[2M − 1]`,
//! `gau_out.weight` `[d, e]` + `.bias`. Model: `token_embd.weight`, `output_norm` (pre-norm
//! only), classifier `cls.0.{weight,bias}`, `cls.1.weight`.

use super::seqboat::{SbAttn, SbConfig, SbGate, SbModel};
use modula_core::engine::SbSpec;
use modula_core::gguf::GgufWriter;
use modula_core::Error;
use modula_core::{MetaValue, Model};
use std::path::Path;

fn meta(c: &SbConfig, ctx: usize, name: &str) -> Result<Vec<(&'static str, MetaValue)>, Error> {
    let u = |v: usize| {
        u32::try_from(v)
            .map(MetaValue::U32)
            .map_err(|_| Error::input(format!("{v} does not fit in u32")))
    };
    let s = |v: &str| MetaValue::String(v.into());
    let mut m = vec![
        ("general.name", s(name)),
        ("modula.model", s("seqboat")),
        (
            "modula.task",
            s(if c.classes > 0 { "classify" } else { "lm" }),
        ),
        ("modula.vocab_size", u(c.vocab)?),
        ("modula.context_length", u(ctx)?),
        ("modula.embedding_length", u(c.d)?),
        ("modula.block_count", u(c.layers)?),
        ("modula.norm", s("layernorm")),
        (
            "modula.norm_epsilon",
            MetaValue::F32(super::seqboat::LN_EPS),
        ),
        ("modula.ssm.ema_dim", u(c.ndim)?),
        ("modula.gau.zdim", u(c.z)?),
        ("modula.gau.hdim", u(c.e)?),
        ("modula.gau.window", u(c.window)?),
        ("modula.ssm.bidirectional", MetaValue::Bool(!c.causal)),
        ("modula.attention.kind", s("gau")),
        ("modula.attention.causal", MetaValue::Bool(c.causal)),
        (
            "modula.gau.attention_fn",
            s(match c.attn {
                SbAttn::Softmax => "softmax",
                SbAttn::Relu2 => "relu2",
            }),
        ),
        ("modula.seqboat.prenorm", MetaValue::Bool(c.prenorm)),
        ("modula.seqboat.temp_scale", MetaValue::F32(c.temp_scale)),
        ("modula.gau.max_positions", u(c.max_pos)?),
        ("modula.seqboat.gate", s(c.gate.name())),
    ];
    if c.classes > 0 {
        m.push(("modula.num_classes", u(c.classes)?));
    }
    if let Some(p) = c.pad {
        m.push(("modula.seqboat.pad_token", MetaValue::U32(p)));
    }
    if c.nested_depths != 0 {
        let list = c
            .nested_depth_list()
            .into_iter()
            .map(u)
            .collect::<Result<Vec<_>, _>>()?;
        m.push((
            "modula.nested.depths",
            MetaValue::Array(modula_core::ValueType::U32, list),
        ));
    }
    Ok(m)
}

/// The architecture of a SeqBoat file and its context length (the metadata is parsed by
/// the engine's [`SbSpec`], one reader for both).
pub fn sb_config_from<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(SbConfig, usize), Error> {
    let s = SbSpec::from_model(m)?;
    if s.eps != super::seqboat::LN_EPS {
        return Err(Error::unsupported(format!(
            "modula.norm_epsilon = {}: the trainer trains LayerNorm with epsilon {}",
            s.eps,
            super::seqboat::LN_EPS
        )));
    }
    let cfg = SbConfig {
        vocab: s.vocab,
        classes: s.classes,
        d: s.d,
        layers: s.layers,
        ndim: s.ndim,
        z: s.z,
        e: s.e,
        window: s.window,
        causal: s.causal,
        attn: if s.relu2 {
            SbAttn::Relu2
        } else {
            SbAttn::Softmax
        },
        prenorm: s.prenorm,
        temp_scale: s.temp_scale,
        max_pos: s.max_pos,
        gate: match s.gate {
            0 => SbGate::Learned,
            1 => SbGate::AlwaysOn,
            _ => SbGate::Off,
        },
        pad: s.pad,
        nested_depths: s.nested_depths,
    };
    cfg.validate()?;
    // refuse absurd sizes before allocating
    let c = &cfg;
    let per_layer = (c.d.saturating_mul(c.d + 2))
        .saturating_add(c.d.saturating_mul(c.z + 3 * c.e))
        .saturating_add(c.ema_rows().saturating_mul(4 * c.ndim))
        .saturating_add(2 * c.max_pos);
    let total = per_layer
        .saturating_mul(c.layers)
        .saturating_add(c.vocab.saturating_mul(c.d))
        .saturating_add(c.classes.saturating_mul(2 * c.d));
    let room = m.bytes().len().saturating_mul(2).saturating_add(1 << 20);
    if total > room {
        return Err(Error::input(format!(
            "the header describes {total} parameters but the file holds only {} bytes",
            m.bytes().len()
        )));
    }
    Ok((cfg, m.get_u32("modula.context_length")? as usize))
}

impl SbModel {
    /// A GGUF writer with the architecture and every tensor (borrowed).
    pub fn writer(&self, ctx: usize, name: &str) -> Result<GgufWriter<'_>, Error> {
        let e2s = |e: modula_core::GgufError| Error::from(e);
        let mut w = GgufWriter::new();
        for (k, v) in meta(&self.cfg, ctx, name)? {
            w.set(k, v).map_err(e2s)?;
        }
        for (i, s) in self.params.specs().iter().enumerate() {
            w.add_f32(&s.name, &s.shape, self.params.value(i))
                .map_err(e2s)?;
        }
        Ok(w)
    }

    /// Write the model atomically; returns the bytes written.
    pub fn write_gguf(&self, path: &Path, ctx: usize, name: &str) -> Result<u64, Error> {
        self.writer(ctx, name)?.write_to(path).map_err(Error::from)
    }

    /// Read a model written by [`SbModel::write_gguf`] (quantised tensors are
    /// dequantised); names, shapes and finiteness are checked.
    pub fn read_gguf<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(SbModel, usize), Error> {
        let (cfg, ctx) = sb_config_from(m)?;
        let mut model = SbModel::new(cfg, 0)?;
        for i in 0..model.params.specs().len() {
            let spec = model.params.specs()[i].clone();
            let t = m.tensor(&spec.name)?;
            if t.shape() != spec.shape.as_slice() {
                return Err(Error::Shape {
                    tensor: spec.name.clone(),
                    expected: spec.shape.clone(),
                    got: t.shape().to_vec(),
                });
            }
            let v = t.to_f32_vec()?;
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::non_finite(format!(
                    "tensor '{}' holds a non-finite value at {j}",
                    spec.name
                )));
            }
            model.params.value_mut(i).copy_from_slice(&v);
        }
        Ok((model, ctx))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut c = SbConfig::listops_mini(16, 10, 2)
            .with_nested_depths(&[1])
            .unwrap();
        c.d = 8;
        c.z = 4;
        c.e = 6;
        c.max_pos = 40;
        let m = SbModel::new(c, 3).unwrap();
        let bytes = m.writer(64, "t").unwrap().to_bytes().unwrap();
        let f = Model::from_bytes(bytes.clone()).unwrap();
        let (back, ctx) = SbModel::read_gguf(&f).unwrap();
        assert_eq!(ctx, 64);
        assert_eq!(back.cfg, c);
        assert_eq!(back.params.values, m.params.values);
        for cut in [bytes.len() / 2, bytes.len() - 3] {
            let r = Model::from_bytes(bytes[..cut].to_vec())
                .map_err(Error::from)
                .and_then(|f| SbModel::read_gguf(&f).map(|_| ()));
            assert!(r.is_err(), "truncated at {cut}");
        }
    }
}
