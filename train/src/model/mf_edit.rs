//! Editing trained ModuleFormer models (spec A.8): **extension** — append new experts to
//! every mixture and train only them (and their router rows) on new data, so the old
//! experts cannot forget; **pruning** — measure expert usage on a data set and keep the
//! most used experts of every mixture (or a random set, as the baseline), writing a smaller
//! model.
//!
//! Choices where the spec leaves details open (documented in `docs/moduleformer.md`):
//! new experts start like fresh ones (Uniform(±1/fan_in)), their router rows N(0, 0.02);
//! frozen = everything except the new experts and the new rows of the routers' output
//! layers. Pruning deletes the dropped experts *and their router rows*: the softmax then
//! runs over the survivors only, so the kept gates grow (the spec's alternative — keep the
//! full router and pick the top-k among survivors — would need the dropped rows in the
//! file).

use super::moduleformer::{MfConfig, MfModel};
use crate::tasks::Dataset;
use crate::trainer::Trainable;
use modula_core::rng::SplitMix64;
use modula_core::Error;
use std::ops::Range;

pub use super::mixed::{plan_mixed_units, MixedPlan};

/// `(stacked expert tensor suffix, mixture)`: mixture 0 = attention, 1 = FFN.
const EXPERT_STACKS: [(&str, usize); 4] = [
    ("attn_q_exps.weight", 0),
    ("attn_output_t_exps.weight", 0),
    ("ffn_up_exps.weight", 1),
    ("ffn_down_t_exps.weight", 1),
];

/// `(router output tensor suffix, mixture)`.
const ROUTER_OUTS: [(&str, usize); 2] = [("attn_router.weight", 0), ("ffn_router.weight", 1)];

fn mixture_of(name: &str) -> Option<(usize, bool)> {
    for (suf, mix) in EXPERT_STACKS {
        if name.ends_with(suf) {
            return Some((mix, true));
        }
    }
    for (suf, mix) in ROUTER_OUTS {
        if name.ends_with(suf) {
            return Some((mix, false));
        }
    }
    None
}

impl MfModel {
    /// A copy with `new` experts appended to every attention and FFN mixture (fresh
    /// weights from `seed`), and the element ranges that should train: the new experts and
    /// the new rows of the router output layers.
    pub fn extend(&self, new: usize, seed: u64) -> Result<(MfModel, Vec<Range<usize>>), Error> {
        if new == 0 {
            return Err(Error::input(
                "extension needs at least one new expert per mixture",
            ));
        }
        let c = self.cfg;
        let cfg = MfConfig {
            att_experts: c.att_experts + new,
            ffn_experts: c.ffn_experts + new,
            ..c
        };
        let mut out = MfModel::new(cfg, seed)?;
        let mut train = Vec::new();
        let old_n = [c.att_experts, c.ffn_experts];
        for (i, spec) in self.params.specs().iter().enumerate() {
            let j = out.params.index_of(&spec.name).ok_or_else(|| {
                Error::input(format!("internal: {} missing after extension", spec.name))
            })?;
            let old = self.params.value(i);
            let dst_range = out.params.specs()[j].range.clone();
            // old values go first: experts and router rows are outermost, so the old
            // tensor is a prefix of the new one
            out.params.value_mut(j)[..old.len()].copy_from_slice(old);
            if let Some((mix, _)) = mixture_of(&spec.name) {
                let per = old.len() / old_n[mix];
                let start = dst_range.start + old.len();
                train.push(start..start + new * per);
            } else if old.len() != dst_range.len() {
                return Err(Error::input(format!(
                    "internal: {} changed size",
                    spec.name
                )));
            }
        }
        out.params.set_trainable(train.clone());
        Ok((out, train))
    }

    /// Element ranges of experts `first..` of every mixture and of their router rows (to
    /// continue an extension run, e.g. after resuming a checkpoint).
    pub fn ranges_from_expert(&self, first: usize) -> Vec<Range<usize>> {
        let n = [self.cfg.att_experts, self.cfg.ffn_experts];
        self.params
            .specs()
            .iter()
            .filter_map(|s| {
                let (mix, _) = mixture_of(&s.name)?;
                let per = s.range.len() / n[mix];
                Some(s.range.start + first.min(n[mix]) * per..s.range.end)
            })
            .collect()
    }

    /// A copy keeping, per block, the attention experts `keep_att[l]` and the FFN experts
    /// `keep_ffn[l]` (each list the same length for every block, indices distinct), in the
    /// given order; the dropped experts' router rows go too. Top-k values larger than the
    /// kept count are refused.
    pub fn prune(
        &self,
        keep_att: &[Vec<usize>],
        keep_ffn: &[Vec<usize>],
    ) -> Result<MfModel, Error> {
        let c = self.cfg;
        if keep_att.len() != c.layers || keep_ffn.len() != c.layers {
            return Err(Error::input(format!(
                "pruning needs a list of kept experts for each of {} blocks",
                c.layers
            )));
        }
        let (na, nf) = (keep_att[0].len(), keep_ffn[0].len());
        for (lists, n, total, what) in [
            (keep_att, na, c.att_experts, "attention"),
            (keep_ffn, nf, c.ffn_experts, "FFN"),
        ] {
            for l in lists {
                let mut seen = vec![false; total];
                if l.len() != n {
                    return Err(Error::input(format!(
                        "every block must keep the same number of {what} experts"
                    )));
                }
                for &e in l {
                    if e >= total || std::mem::replace(&mut seen[e], true) {
                        return Err(Error::input(format!(
                            "{what} expert {e}: out of range or listed twice"
                        )));
                    }
                }
            }
        }
        let cfg = MfConfig {
            att_experts: na,
            ffn_experts: nf,
            ..c
        };
        if cfg.att_k > na || cfg.ffn_k > nf {
            return Err(Error::input(format!(
                "keeping {na} attention / {nf} FFN experts is fewer than top-k ({} / {})",
                c.att_k, c.ffn_k
            )));
        }
        let mut out = MfModel::new(cfg, 0)?;
        for (i, spec) in self.params.specs().iter().enumerate() {
            let j = out.params.index_of(&spec.name).ok_or_else(|| {
                Error::input(format!("internal: {} missing after pruning", spec.name))
            })?;
            let old = self.params.value(i);
            match mixture_of(&spec.name) {
                None => out.params.value_mut(j).copy_from_slice(old),
                Some((mix, _)) => {
                    let l: usize = spec
                        .name
                        .strip_prefix("blk.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| {
                            Error::input(format!("internal: no block index in {}", spec.name))
                        })?;
                    let (keep, total) = if mix == 0 {
                        (&keep_att[l], c.att_experts)
                    } else {
                        (&keep_ffn[l], c.ffn_experts)
                    };
                    let per = old.len() / total;
                    let dst = out.params.value_mut(j);
                    for (slot, &e) in keep.iter().enumerate() {
                        dst[slot * per..(slot + 1) * per]
                            .copy_from_slice(&old[e * per..(e + 1) * per]);
                    }
                }
            }
        }
        Ok(out)
    }

    /// How often each expert is chosen on `data`'s validation batches (see
    /// [`Dataset::eval_batches`]): per router (block 0 attention, block 0 FFN, …), counts of
    /// (token, slot) pairs.
    pub fn expert_usage(
        &self,
        data: &dyn Dataset,
        batches: usize,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Vec<Vec<u64>>, Error> {
        let c = self.cfg;
        let mut usage: Vec<Vec<u64>> = (0..c.layers)
            .flat_map(|_| [vec![0u64; c.att_experts], vec![0u64; c.ffn_experts]])
            .collect();
        for b in data.eval_batches(batch, seq, batches, seed)? {
            let (_, acts, _) = self.forward_batch(&b)?;
            for (u, counts) in usage.iter_mut().zip(acts.expert_counts()) {
                u.iter_mut()
                    .zip(counts)
                    .for_each(|(a, b)| *a += u64::from(b));
            }
        }
        Ok(usage)
    }
}

/// Per block, the `n` most used experts of each mixture (ties to the lower index), from
/// [`MfModel::expert_usage`]; returns (attention lists, FFN lists).
pub fn most_used(
    usage: &[Vec<u64>],
    n_att: usize,
    n_ffn: usize,
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let top = |u: &Vec<u64>, n: usize| {
        let mut idx: Vec<usize> = (0..u.len()).collect();
        idx.sort_by(|&a, &b| u[b].cmp(&u[a]).then(a.cmp(&b)));
        idx.truncate(n);
        idx.sort_unstable();
        idx
    };
    let att = usage.iter().step_by(2).map(|u| top(u, n_att)).collect();
    let ffn = usage
        .iter()
        .skip(1)
        .step_by(2)
        .map(|u| top(u, n_ffn))
        .collect();
    (att, ffn)
}

/// Per block, a random `n` of each mixture's experts (the baseline for pruning).
pub fn random_experts(
    layers: usize,
    att_experts: usize,
    n_att: usize,
    ffn_experts: usize,
    n_ffn: usize,
    seed: u64,
) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
    let mut rng = SplitMix64(seed);
    let mut pick = |total: usize, n: usize| {
        let mut idx: Vec<usize> = (0..total).collect();
        for i in (1..total).rev() {
            let j = (rng.next_f32() * (i + 1) as f32) as usize;
            idx.swap(i, j.min(i));
        }
        idx.truncate(n);
        idx.sort_unstable();
        idx
    };
    let att = (0..layers).map(|_| pick(att_experts, n_att)).collect();
    let ffn = (0..layers).map(|_| pick(ffn_experts, n_ffn)).collect();
    (att, ffn)
}

/// Which (router, expert) a per-expert tensor of a ModuleFormer file belongs to: router
/// `2·block` for attention experts, `2·block + 1` for FFN experts.
pub fn expert_of_tensor(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("blk.")?;
    let (block, rest) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    let (kind, rest) = rest.split_once('.')?;
    let (expert, tail) = rest.split_once('.')?;
    if tail != "weight" {
        return None;
    }
    let expert: usize = expert.parse().ok()?;
    match kind {
        "attn_q" | "attn_output_t" => Some((2 * block, expert)),
        "ffn_up" | "ffn_down_t" => Some((2 * block + 1, expert)),
        _ => None,
    }
}

/// Plan per-expert precision by usage under a size budget: every non-expert matrix at
/// `base`, every expert at `cold`, then experts upgraded to `hot` in order of their share of
/// their router's traffic (most used first) while the tensor data stays within
/// `budget_bytes`. `tensors`: (name, element count, row length, current bytes) of every
/// tensor of the file; `usage`: per router, per expert counts. A budget below the
/// all-cold size is refused. (The general planner, with sub-model usage:
/// [`super::mixed::plan_mixed_units`].)
pub fn plan_mixed(
    tensors: &[(String, u64, usize, u64)],
    usage: &[Vec<u64>],
    budget_bytes: u64,
    hot: modula_core::DType,
    cold: modula_core::DType,
    base: modula_core::DType,
) -> Result<MixedPlan, Error> {
    let share = super::mixed::expert_shares(&[(usage.to_vec(), 1.0)]);
    plan_mixed_units(
        tensors,
        &expert_of_tensor,
        &|k| super::mixed::share_of(&share, k),
        false,
        budget_bytes,
        hot,
        cold,
        base,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::data::ByteText;
    use crate::trainer::{train_from, TrainConfig, TrainState};

    fn text(s: &str) -> ByteText {
        ByteText::from_bytes(s.bytes().cycle().take(3000).collect(), 0.1).unwrap()
    }

    #[test]
    fn extension_trains_only_the_new_experts() {
        let cfg = MfConfig {
            router_hidden: 8,
            ..MfConfig::lm(256, 16, 1, 2, 16)
        };
        let m = MfModel::new(cfg, 1).unwrap();
        let (mut ext, ranges) = m.extend(2, 9).unwrap();
        assert_eq!((ext.cfg.att_experts, ext.cfg.ffn_experts), (4, 4));
        // old parameters are a prefix of each tensor
        for (i, s) in m.params.specs().iter().enumerate() {
            let j = ext.params.index_of(&s.name).unwrap();
            let old = m.params.value(i);
            assert_eq!(&ext.params.value(j)[..old.len()], old, "{}", s.name);
        }
        let before = ext.params.values.clone();
        let tc = TrainConfig {
            steps: 5,
            batch: 2,
            seq: 16,
            ..TrainConfig::default()
        };
        let mut st = TrainState::new(1);
        train_from(&mut ext, &text("new data here. "), &tc, &mut st, 5, |_| {}).unwrap();
        let mut changed = 0;
        for (i, (a, b)) in before.iter().zip(&ext.params.values).enumerate() {
            let inside = ranges.iter().any(|r| r.contains(&i));
            if a != b {
                assert!(inside, "frozen parameter {i} changed");
                changed += 1;
            }
        }
        assert!(changed > 0, "the new experts trained");
        assert_eq!(
            ext.ranges_from_expert(2),
            ranges,
            "the same ranges from the expert index"
        );
    }

    #[test]
    fn mixed_plan_upgrades_the_most_used_experts_within_the_budget() {
        use modula_core::DType;
        let mut t = vec![("token_embd.weight".to_string(), 256 * 64, 64, 256 * 64 * 4)];
        for e in 0..4 {
            for k in ["ffn_up", "ffn_down_t"] {
                t.push((format!("blk.0.{k}.{e}.weight"), 64 * 64, 64, 64 * 64 * 4));
            }
        }
        t.push(("blk.0.ffn_norm.weight".to_string(), 64, 64, 256));
        // router 1 = block 0's FFN: expert 2 hottest, then 0
        let usage = vec![vec![0; 4], vec![30, 5, 60, 5]];
        let q4 = |n: u64| DType::Q4_0.bytes_for(n).unwrap();
        let q8 = |n: u64| DType::Q8_0.bytes_for(n).unwrap();
        let base = q8(256 * 64) + 256 + 8 * q4(64 * 64);
        let per_expert = 2 * (q8(64 * 64) - q4(64 * 64));
        let p = plan_mixed(
            &t,
            &usage,
            base + per_expert,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q8_0,
        )
        .unwrap();
        assert_eq!(p.hot, vec![(1, 2)]);
        assert_eq!(p.types["blk.0.ffn_up.2.weight"], DType::Q8_0);
        assert_eq!(p.types["blk.0.ffn_up.0.weight"], DType::Q4_0);
        assert_eq!(p.bytes, base + per_expert);
        let p = plan_mixed(
            &t,
            &usage,
            base + 2 * per_expert,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q8_0,
        )
        .unwrap();
        assert_eq!(p.hot, vec![(1, 2), (1, 0)]);
        let e =
            plan_mixed(&t, &usage, base - 1, DType::Q8_0, DType::Q4_0, DType::Q8_0).unwrap_err();
        assert!(e.to_string().contains("impossible budget"), "{e}");
        assert_eq!(p.units, 4);
        assert_eq!(
            expert_of_tensor("blk.3.attn_output_t.7.weight"),
            Some((6, 7))
        );
        assert_eq!(expert_of_tensor("blk.3.attn_norm.weight"), None);
    }

    #[test]
    fn pruning_keeps_the_chosen_experts_and_refuses_bad_lists() {
        let cfg = MfConfig {
            att_k: 1,
            ffn_k: 1,
            ..MfConfig::lm(256, 16, 2, 4, 16)
        };
        let m = MfModel::new(cfg, 3).unwrap();
        let data = text("the cat sat on the mat. ");
        let usage = m.expert_usage(&data, 2, 2, 16, 1).unwrap();
        assert_eq!(usage.len(), 4);
        for u in &usage {
            assert_eq!(u.iter().sum::<u64>(), 2 * 2 * 16, "k = 1 pair per token");
        }
        let (att, ffn) = most_used(&usage, 2, 3);
        let p = m.prune(&att, &ffn).unwrap();
        assert_eq!((p.cfg.att_experts, p.cfg.ffn_experts), (2, 3));
        // kept expert e of block 1's FFN is the original expert ffn[1][slot]
        let name = "blk.1.ffn_up_exps.weight";
        let (a, b) = (
            m.params.value(m.params.index_of(name).unwrap()),
            p.params.value(p.params.index_of(name).unwrap()),
        );
        let per = a.len() / 4;
        for (slot, &e) in ffn[1].iter().enumerate() {
            assert_eq!(&b[slot * per..(slot + 1) * per], &a[e * per..(e + 1) * per]);
        }
        // keeping everything in order is the identity
        let all: Vec<Vec<usize>> = (0..2).map(|_| (0..4).collect()).collect();
        let same = m.prune(&all, &all).unwrap();
        assert_eq!(same.params.values, m.params.values);
        assert!(m.prune(&[vec![0, 0], vec![1, 2]], &ffn).is_err());
        assert!(m.prune(&[vec![9], vec![1]], &ffn).is_err());
        let (r_att, r_ffn) = random_experts(2, 4, 2, 4, 3, 5);
        assert!(r_att.iter().all(|l| l.len() == 2) && r_ffn.iter().all(|l| l.len() == 3));
        assert!(m.prune(&r_att, &r_ffn).is_ok());
    }
}
