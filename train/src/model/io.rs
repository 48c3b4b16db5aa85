//! Writing a trained dense model to one GGUF file (f32 tensors, `modula.*` metadata) and
//! reading it back into a trainable [`DenseModel`].

use super::dense::{DenseConfig, DenseModel};
use modula_core::gguf::GgufWriter;
use modula_core::{MetaValue, Model};
use std::path::Path;

impl DenseModel {
    /// Write the parameters and the architecture metadata atomically to `path`.
    pub fn write_gguf(
        &self,
        path: &Path,
        context_length: usize,
        name: &str,
    ) -> Result<u64, String> {
        self.writer(context_length, name)?
            .write_to(path)
            .map_err(|e| e.to_string())
    }

    /// A GGUF writer holding the architecture metadata and the parameters (borrowed).
    pub(crate) fn writer(
        &self,
        context_length: usize,
        name: &str,
    ) -> Result<GgufWriter<'_>, String> {
        let c = self.cfg;
        let u = |v: usize| {
            u32::try_from(v)
                .map(MetaValue::U32)
                .map_err(|_| format!("{v} does not fit in u32"))
        };
        let mut w = GgufWriter::new();
        let meta = [
            ("general.name", MetaValue::String(name.to_string())),
            ("modula.model", MetaValue::String("dense".into())),
            ("modula.task", MetaValue::String("lm".into())),
            ("modula.vocab_size", u(c.vocab)?),
            ("modula.context_length", u(context_length)?),
            ("modula.embedding_length", u(c.d)?),
            ("modula.block_count", u(c.layers)?),
            ("modula.feed_forward_length", u(c.ffn)?),
            ("modula.attention.kind", MetaValue::String("softmax".into())),
            ("modula.attention.head_count", u(c.heads)?),
            ("modula.norm", MetaValue::String("layernorm".into())),
            ("modula.norm_epsilon", MetaValue::F32(1e-5)),
            ("modula.activation", MetaValue::String("gelu".into())),
        ];
        for (k, v) in meta {
            w.set(k, v).map_err(|e| e.to_string())?;
        }
        for (i, s) in self.params.specs().iter().enumerate() {
            w.add_f32(&s.name, &s.shape, self.params.value(i))
                .map_err(|e| e.to_string())?;
        }
        Ok(w)
    }

    /// Read a dense model written by [`DenseModel::write_gguf`] (or any file with the same
    /// keys and tensor names/shapes). Optimiser moments start at zero.
    pub fn read_gguf<B: AsRef<[u8]>>(m: &Model<B>) -> Result<(DenseModel, usize), String> {
        if m.get_str("modula.model") != Some("dense") {
            return Err(format!(
                "not a dense model (modula.model = {:?})",
                m.get_str("modula.model")
            ));
        }
        let g = |k: &str| m.get_u32(k).map(|v| v as usize).map_err(|e| e.to_string());
        let cfg = DenseConfig {
            vocab: g("modula.vocab_size")?,
            d: g("modula.embedding_length")?,
            layers: g("modula.block_count")?,
            heads: g("modula.attention.head_count")?,
            ffn: g("modula.feed_forward_length")?,
        };
        let mut model = DenseModel::new(cfg, 0)?;
        for i in 0..model.params.specs().len() {
            let spec = model.params.specs()[i].clone();
            let t = m.tensor(&spec.name).map_err(|e| e.to_string())?;
            if t.shape() != spec.shape {
                return Err(format!(
                    "tensor '{}' has shape {:?}, expected {:?}",
                    spec.name,
                    t.shape(),
                    spec.shape
                ));
            }
            let data = t.as_f32_slice().map_err(|e| e.to_string())?;
            model.params.value_mut(i).copy_from_slice(data);
        }
        Ok((model, g("modula.context_length")?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_gives_the_same_outputs() {
        let cfg = DenseConfig {
            vocab: 256,
            d: 16,
            layers: 2,
            heads: 2,
            ffn: 32,
        };
        let m = DenseModel::new(cfg, 5).unwrap();
        let dir = std::env::temp_dir().join(format!("modula-dense-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.gguf");
        m.write_gguf(&p, 64, "test").unwrap();
        let file = Model::open(&p).unwrap();
        let (back, ctx) = DenseModel::read_gguf(&file).unwrap();
        assert_eq!((back.cfg, ctx), (cfg, 64));
        assert!(back.params.values == m.params.values);
        let toks: Vec<u32> = (0..10).map(|i| i * 20).collect();
        let a = m.forward(&toks, &toks, 1, 10).unwrap().0;
        let b = back.forward(&toks, &toks, 1, 10).unwrap().0;
        assert_eq!(a, b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
