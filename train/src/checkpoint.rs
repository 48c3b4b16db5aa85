//! Checkpoints: the model file (parameters + architecture metadata) plus the Adam moments
//! (`optimizer.adam_m`, `optimizer.adam_v`, flat `[N]` in parameter-table order) and the
//! training state (`modula.train.step`, `modula.train.rng_state`), in the same GGUF
//! container, written atomically (temporary file, fsync, rename): a crash mid-write leaves
//! the previous checkpoint intact. A resumed run continues the identical loss curve.

use crate::model::dense::DenseModel;
use crate::model::moduleformer::MfModel;
use crate::model::seqboat::SbModel;
use crate::params::ParamStore;
use crate::trainer::TrainState;
use modula_core::gguf::GgufWriter;
use modula_core::rng::SplitMix64;
use modula_core::Error;
use modula_core::{MetaValue, Model};
use std::path::Path;

/// Metadata key of the last completed step.
pub const STEP_KEY: &str = "modula.train.step";
/// Metadata key of the batch sampler's state.
pub const RNG_KEY: &str = "modula.train.rng_state";
/// Metadata key of the run's settings (`TrainState::settings`).
pub const SETTINGS_KEY: &str = "modula.train.settings";

/// Save `model`, its Adam moments and `state` to `path` atomically.
pub fn save_dense(
    path: &Path,
    model: &DenseModel,
    state: &TrainState,
    context_length: usize,
) -> Result<u64, Error> {
    let w = model.writer(context_length, "modula dense checkpoint")?;
    save_with(path, w, &model.params, state)
}

/// Save a ModuleFormer model, its Adam moments and `state` to `path` atomically.
pub fn save_mf(
    path: &Path,
    model: &MfModel,
    state: &TrainState,
    context_length: usize,
) -> Result<u64, Error> {
    let w = model.writer(context_length, "modula moduleformer checkpoint")?;
    save_with(path, w, &model.params, state)
}

/// Load a checkpoint written by [`save_mf`].
pub fn load_mf(path: &Path) -> Result<(MfModel, TrainState, usize), Error> {
    let file = Model::open(path)?;
    let (mut model, ctx) = MfModel::read_gguf(&file)?;
    let state = load_state(path, &file, &mut model.params)?;
    Ok((model, state, ctx))
}

/// Save a SeqBoat model, its Adam moments and `state` to `path` atomically.
pub fn save_sb(
    path: &Path,
    model: &SbModel,
    state: &TrainState,
    context_length: usize,
) -> Result<u64, Error> {
    let w = model.writer(context_length, "modula seqboat checkpoint")?;
    save_with(path, w, &model.params, state)
}

/// Load a checkpoint written by [`save_sb`].
pub fn load_sb(path: &Path) -> Result<(SbModel, TrainState, usize), Error> {
    let file = Model::open(path)?;
    let (mut model, ctx) = SbModel::read_gguf(&file)?;
    let state = load_state(path, &file, &mut model.params)?;
    Ok((model, state, ctx))
}

fn save_with<'a>(
    path: &Path,
    mut w: GgufWriter<'a>,
    params: &'a ParamStore,
    state: &TrainState,
) -> Result<u64, Error> {
    w.set(STEP_KEY, MetaValue::U64(state.step))?;
    w.set(RNG_KEY, MetaValue::U64(state.rng.0))?;
    if !state.settings.is_empty() {
        w.set(SETTINGS_KEY, MetaValue::String(state.settings.clone()))?;
    }
    let n = params.len();
    w.add_f32("optimizer.adam_m", &[n], &params.m)?;
    w.add_f32("optimizer.adam_v", &[n], &params.v)?;
    w.write_to(path).map_err(Error::from)
}

/// Load a checkpoint written by [`save_dense`]: the model with its moments, the training
/// state and the context length.
pub fn load_dense(path: &Path) -> Result<(DenseModel, TrainState, usize), Error> {
    let file = Model::open(path)?;
    let (mut model, ctx) = DenseModel::read_gguf(&file)?;
    let state = load_state(path, &file, &mut model.params)?;
    Ok((model, state, ctx))
}

/// The training state and Adam moments of a checkpoint file.
fn load_state(
    path: &Path,
    file: &Model<impl AsRef<[u8]>>,
    params: &mut ParamStore,
) -> Result<TrainState, Error> {
    let u64_key = |k: &str| match file.get(k).and_then(|v| v.as_u64()) {
        Some(v) => Ok(v),
        None => Err(Error::input(format!(
            "{}: not a checkpoint (no '{k}')",
            path.display()
        ))),
    };
    let state = TrainState {
        step: u64_key(STEP_KEY)?,
        rng: SplitMix64(u64_key(RNG_KEY)?),
        settings: file.get_str(SETTINGS_KEY).unwrap_or("").to_string(),
    };
    let n = params.len();
    for (name, dst) in [
        ("optimizer.adam_m", &mut params.m),
        ("optimizer.adam_v", &mut params.v),
    ] {
        let t = file.tensor(name)?;
        let src = t.as_f32_slice()?;
        if src.len() != n {
            return Err(Error::input(format!(
                "{name} has {} values for {n} parameters",
                src.len()
            )));
        }
        dst.copy_from_slice(src);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::ByteText;
    use crate::model::dense::DenseConfig;
    use crate::trainer::{train_dense_from, TrainConfig};

    #[test]
    fn resume_continues_the_identical_loss_curve() {
        let text: Vec<u8> = b"resumable training, bit for bit. "
            .iter()
            .cycle()
            .take(3000)
            .copied()
            .collect();
        let data = ByteText::from_bytes(text, 0.1).unwrap();
        let cfg = DenseConfig {
            max_seq: 16,
            ..DenseConfig::lm(256, 16, 1, 2, 32)
        };
        let tc = TrainConfig {
            steps: 20,
            batch: 2,
            seq: 16,
            warmup: 3,
            ..TrainConfig::default()
        };
        // straight run
        let mut a = DenseModel::new(cfg, 4).unwrap();
        let mut sa = TrainState::new(tc.seed);
        let mut la = Vec::new();
        train_dense_from(&mut a, &data, &tc, &mut sa, 20, |s| la.push(s.loss)).unwrap();
        // 10 steps, checkpoint, load, 10 more
        let dir = std::env::temp_dir().join(format!("modula-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.gguf");
        let mut b = DenseModel::new(cfg, 4).unwrap();
        let mut sb = TrainState::new(tc.seed);
        let mut lb = Vec::new();
        train_dense_from(&mut b, &data, &tc, &mut sb, 10, |s| lb.push(s.loss)).unwrap();
        save_dense(&p, &b, &sb, tc.seq).unwrap();
        drop(b);
        let (mut c, mut sc, ctx) = load_dense(&p).unwrap();
        assert_eq!((sc.step, ctx), (10, 16));
        train_dense_from(&mut c, &data, &tc, &mut sc, 20, |s| lb.push(s.loss)).unwrap();
        assert_eq!(la, lb, "resumed loss curve differs");
        assert!(
            a.params.values == c.params.values
                && a.params.m == c.params.m
                && a.params.v == c.params.v
        );
        // a model file without training state is refused as a checkpoint
        let plain = dir.join("plain.gguf");
        a.write_gguf(&plain, 16, "x").unwrap();
        assert!(load_dense(&plain)
            .unwrap_err()
            .to_string()
            .contains("not a checkpoint"));
        assert!(load_dense(&dir.join("missing.gguf")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
