//! Mixed precision by usage (issue #9): the weight matrices a device reads most keep a
//! higher precision than the rest, under a total size budget.
//!
//! "Usage" has two sources, combined: **expert usage** — how often a calibration set
//! routes to each ModuleFormer expert — and **sub-model usage** — how often the device
//! runs each nested (SortedNet) size, since a sub-model reads only the leading slices of
//! the weights. A weight unit (a ModuleFormer expert's matrices; a dense block's
//! attention or FFN matrices; a SeqBoat block's matrices) gets a *share*: the expected
//! fraction of it a token reads under the given mix of sub-model sizes. Units are
//! upgraded from the cold type to the hot one in order of their share, most read first,
//! while the tensor data fits the budget.
//!
//! The unit is a whole tensor (or, for ModuleFormer, an expert's tensors): one GGUF tensor
//! has one type, so a nested width's leading rows cannot be hot while its tail is cold
//! without splitting tensors (not done: every reader of the file would have to join them).

use modula_core::quantize::bytes_as;
use modula_core::DType;
use modula_core::Error;
use std::collections::{BTreeMap, HashMap};

/// A unit of weights that gets one precision: `(router, expert)` for ModuleFormer
/// experts, `(block, 0 = attention | 1 = FFN)` for dense blocks, `(block, 0)` for SeqBoat.
pub type Unit = (usize, usize);

/// A mixed-precision plan: the type of every weight matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct MixedPlan {
    /// Tensor name → type.
    pub types: HashMap<String, DType>,
    /// Tensor data bytes of the planned file.
    pub bytes: u64,
    /// Units kept at the hot type, hottest first.
    pub hot: Vec<Unit>,
    /// Units in all.
    pub units: usize,
    /// Of the unit weights a token reads (each unit's share × its element count), the
    /// fraction that is hot.
    pub hot_read_share: f64,
}

/// Plan precision by usage under a size budget: every matrix that is not part of a unit
/// (`unit_of` gives `None`: embeddings, heads, routers …) at `base`, every unit at `cold`,
/// then units upgraded to `hot` in order of `share` — largest first, or smallest first
/// with `least_first` (the control experiment); ties to the smaller unit — while the
/// tensor data stays within `budget_bytes`. Units no token reads (share 0: blocks past
/// every depth of the mix, experts the calibration never routed to) stay cold: precision
/// there buys nothing, and the file stays smaller than the budget. `tensors`: (name,
/// element count, row length, current bytes) of every tensor of the file. Only `*.weight`
/// tensors of two or more dimensions are matrices (the quantiser's rule); matrices whose
/// rows are not whole blocks of a type stay F32. A budget below the all-cold size is
/// refused.
#[allow(clippy::too_many_arguments)]
pub fn plan_mixed_units(
    tensors: &[(String, u64, usize, u64)],
    unit_of: &dyn Fn(&str) -> Option<Unit>,
    share: &dyn Fn(Unit) -> f64,
    least_first: bool,
    budget_bytes: u64,
    hot: DType,
    cold: DType,
    base: DType,
) -> Result<MixedPlan, Error> {
    let mut types = HashMap::new();
    let mut total = 0u64;
    // unit -> (extra bytes when upgraded, elements)
    let mut upgrade: BTreeMap<Unit, (u64, u64)> = BTreeMap::new();
    for (name, n, cols, cur) in tensors {
        let matrix = *cols > 0
            && *n > *cols as u64
            && name.ends_with(".weight")
            && !name.starts_with("optimizer.");
        if !matrix {
            total += cur;
            continue;
        }
        let unit = unit_of(name);
        let t = if unit.is_some() { cold } else { base };
        match bytes_as(t, *n, *cols) {
            Some(b) => {
                types.insert(name.clone(), t);
                total += b;
                if let Some(k) = unit {
                    let h = bytes_as(hot, *n, *cols).unwrap_or(*cur);
                    let e = upgrade.entry(k).or_default();
                    e.0 += h.saturating_sub(b);
                    e.1 += n;
                }
            }
            None => {
                types.insert(name.clone(), DType::F32);
                total += cur;
            }
        }
    }
    if total > budget_bytes {
        return Err(Error::input(format!(
            "impossible budget: {:.2} MiB, but even with every unit at {cold} the tensors need {:.2} MiB ({total} bytes)",
            budget_bytes as f64 / 1048576.0,
            total as f64 / 1048576.0
        )));
    }
    let mut order: Vec<Unit> = upgrade
        .keys()
        .copied()
        .filter(|&k| share(k) > 0.0)
        .collect();
    if least_first {
        order.sort_by(|&a, &b| share(a).total_cmp(&share(b)).then(a.cmp(&b)));
    } else {
        order.sort_by(|&a, &b| share(b).total_cmp(&share(a)).then(a.cmp(&b)));
    }
    let mut chosen = Vec::new();
    for k in order {
        let extra = upgrade[&k].0;
        if total + extra <= budget_bytes {
            total += extra;
            chosen.push(k);
        }
    }
    for (name, t) in types.iter_mut() {
        if let Some(k) = unit_of(name) {
            if chosen.contains(&k) && *t != DType::F32 {
                *t = hot;
            }
        }
    }
    let read = |k: &Unit| share(*k) * upgrade[k].1 as f64;
    let all: f64 = upgrade.keys().map(read).sum();
    let hot_read: f64 = chosen.iter().map(read).sum();
    Ok(MixedPlan {
        types,
        bytes: total,
        hot: chosen,
        units: upgrade.len(),
        hot_read_share: if all > 0.0 { hot_read / all } else { 0.0 },
    })
}

/// Per router, per expert: the share of the router's traffic, averaged over sub-model
/// sizes with their weights. `mix`: per size, the usage counts measured at that size (per
/// router, per expert; experts outside a nested size count 0) and the size's weight.
pub fn expert_shares(mix: &[(Vec<Vec<u64>>, f64)]) -> Vec<Vec<f64>> {
    let wsum: f64 = mix.iter().map(|(_, w)| w).sum();
    let mut out: Vec<Vec<f64>> = Vec::new();
    for (usage, w) in mix {
        if out.is_empty() {
            out = usage.iter().map(|u| vec![0.0; u.len()]).collect();
        }
        for (o, u) in out.iter_mut().zip(usage) {
            let sum: u64 = u.iter().sum();
            if sum == 0 {
                continue;
            }
            for (oe, &c) in o.iter_mut().zip(u) {
                *oe += w / wsum * c as f64 / sum as f64;
            }
        }
    }
    out
}

/// The share of expert `(router, expert)` in [`expert_shares`]' table (0 when absent).
pub fn share_of(shares: &[Vec<f64>], (r, e): Unit) -> f64 {
    shares.get(r).and_then(|u| u.get(e)).copied().unwrap_or(0.0)
}

/// `blk.L.{attn_qkv,attn_output,attn_output_t}.weight` → `(L, 0)`,
/// `blk.L.{ffn_up,ffn_down_t}.weight` → `(L, 1)` (a dense or EMoE file's block matrices).
pub fn dense_unit(name: &str) -> Option<Unit> {
    let (l, t) = name.strip_prefix("blk.")?.split_once('.')?;
    let l: usize = l.parse().ok()?;
    match t {
        "attn_qkv.weight" | "attn_output.weight" | "attn_output_t.weight" => Some((l, 0)),
        "ffn_up.weight" | "ffn_down_t.weight" => Some((l, 1)),
        _ => None,
    }
}

/// The share of a dense block unit under a mix of sub-model sizes `((depth, ffn, heads),
/// weight)`: a size reads none of a block past its depth, `ffn / full_ffn` of the FFN
/// matrices (a row prefix) and `heads / full_heads` of the attention matrices.
pub fn dense_share(
    (l, kind): Unit,
    mix: &[((usize, usize, usize), f64)],
    full_ffn: usize,
    full_heads: usize,
) -> f64 {
    let wsum: f64 = mix.iter().map(|(_, w)| w).sum();
    let mut s = 0.0;
    for &((depth, ffn, heads), w) in mix {
        if l >= depth {
            continue;
        }
        let part = if kind == 1 {
            ffn as f64 / full_ffn.max(1) as f64
        } else {
            heads as f64 / full_heads.max(1) as f64
        };
        s += w / wsum * part;
    }
    s
}

/// `blk.L.*.weight` → `(L, 0)` (a SeqBoat file's block matrices).
pub fn block_unit(name: &str) -> Option<Unit> {
    let (l, _) = name.strip_prefix("blk.")?.split_once('.')?;
    Some((l.parse().ok()?, 0))
}

/// The share of block `l` under a mix of depths `(depth, weight)`: the weight of the
/// depths that run it.
pub fn depth_share((l, _): Unit, mix: &[(usize, f64)]) -> f64 {
    let wsum: f64 = mix.iter().map(|(_, w)| w).sum();
    mix.iter()
        .filter(|(d, _)| l < *d)
        .map(|(_, w)| w / wsum)
        .sum()
}

/// Parse a mix of sub-model sizes, `SIZE[:WEIGHT],…` (weight 1 when omitted; positive
/// and finite), each SIZE by `one`.
pub fn parse_mix<S>(
    spec: &str,
    one: &dyn Fn(&str) -> Result<S, Error>,
) -> Result<Vec<(S, f64)>, Error> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(Error::input(format!("--sizes {spec}: an empty entry")));
        }
        let (size, w) = match part.split_once(':') {
            Some((s, w)) => {
                let w: f64 = w
                    .trim()
                    .parse()
                    .ok()
                    .filter(|w: &f64| w.is_finite() && *w > 0.0)
                    .ok_or_else(|| {
                        Error::input(format!(
                            "--sizes {spec}: weight '{w}' is not a positive number"
                        ))
                    })?;
                (s.trim(), w)
            }
            None => (part, 1.0),
        };
        out.push((one(size)?, w));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dense_shares_follow_the_sub_models() {
        assert_eq!(dense_unit("blk.3.attn_qkv.weight"), Some((3, 0)));
        assert_eq!(dense_unit("blk.3.attn_output_t.weight"), Some((3, 0)));
        assert_eq!(dense_unit("blk.0.ffn_down_t.weight"), Some((0, 1)));
        assert_eq!(dense_unit("blk.0.ffn_up.bias"), None);
        assert_eq!(dense_unit("token_embd.weight"), None);
        // 2x256 three times as often as 4x1024 (of 4 blocks, FFN 1024, 4 heads)
        let mix = [((2, 256, 4), 3.0), ((4, 1024, 4), 1.0)];
        let s = |u| dense_share(u, &mix, 1024, 4);
        assert!((s((0, 1)) - (0.75 * 0.25 + 0.25)).abs() < 1e-12);
        assert!((s((1, 0)) - 1.0).abs() < 1e-12);
        assert!((s((2, 0)) - 0.25).abs() < 1e-12);
        assert!((s((3, 1)) - 0.25).abs() < 1e-12);
        // heads: 1 of 4 heads reads a quarter of the attention matrices
        let s = dense_share((0, 0), &[((1, 1024, 1), 1.0)], 1024, 4);
        assert!((s - 0.25).abs() < 1e-12);
        assert_eq!(block_unit("blk.12.gau_in.weight"), Some((12, 0)));
        assert_eq!(block_unit("output_norm.weight"), None);
        let mix = [(1, 1.0), (2, 1.0), (4, 2.0)];
        let d: Vec<f64> = (0..4).map(|l| depth_share((l, 0), &mix)).collect();
        assert_eq!(d, vec![1.0, 0.75, 0.5, 0.5]);
    }

    #[test]
    fn expert_shares_weight_the_sizes() {
        // one router of 4 experts; the 2-expert size uses only the first two
        let small = vec![vec![30, 10, 0, 0]];
        let full = vec![vec![10, 10, 10, 10]];
        let s = expert_shares(&[(small, 1.0), (full, 1.0)]);
        let want = [0.5 * 0.75 + 0.125, 0.5 * 0.25 + 0.125, 0.125, 0.125];
        for (a, b) in s[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{:?}", s);
        }
        assert_eq!(share_of(&s, (1, 0)), 0.0);
        assert_eq!(share_of(&s, (0, 9)), 0.0);
    }

    #[test]
    fn units_are_upgraded_by_share_within_the_budget() {
        // 2 blocks × (attention 64x64, FFN 128x64) + embedding; block 1 unused by the mix
        let mut t = vec![("token_embd.weight".to_string(), 256 * 64, 64, 256 * 64 * 4)];
        for l in 0..2 {
            t.push((format!("blk.{l}.attn_qkv.weight"), 64 * 64, 64, 64 * 64 * 4));
            t.push((format!("blk.{l}.ffn_up.weight"), 128 * 64, 64, 128 * 64 * 4));
            t.push((
                format!("blk.{l}.ffn_down_t.weight"),
                128 * 64,
                64,
                128 * 64 * 4,
            ));
            t.push((format!("blk.{l}.ffn_up.bias"), 128, 128, 512));
        }
        // a 2-D table that is not a `.weight` matrix stays as it is
        t.push(("blk.0.ema.alpha".to_string(), 64 * 16, 16, 64 * 16 * 4));
        let (q4, q8) = (
            |n: u64| DType::Q4_0.bytes_for(n).unwrap(),
            |n: u64| DType::Q8_0.bytes_for(n).unwrap(),
        );
        let cold = q8(256 * 64) + 2 * (q4(64 * 64) + 2 * q4(128 * 64) + 512) + 64 * 16 * 4;
        let ffn_extra = 2 * (q8(128 * 64) - q4(128 * 64));
        let mix = [((1, 64, 4), 1.0)];
        let share = |u| dense_share(u, &mix, 128, 4);
        let p = plan_mixed_units(
            &t,
            &dense_unit,
            &share,
            false,
            cold + ffn_extra,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q8_0,
        )
        .unwrap();
        // attention of block 0 (share 1) first, then its FFN (0.5) — which no longer
        // fits after the attention upgrade; block 1 (share 0) stays cold although the
        // budget has room for its attention
        assert_eq!(p.hot, vec![(0, 0)]);
        assert_eq!(p.types["blk.0.attn_qkv.weight"], DType::Q8_0);
        assert_eq!(p.types["blk.0.ffn_up.weight"], DType::Q4_0);
        assert_eq!(p.types["blk.1.ffn_up.weight"], DType::Q4_0);
        assert_eq!(p.types["token_embd.weight"], DType::Q8_0);
        assert!(!p.types.contains_key("blk.0.ema.alpha"));
        assert_eq!(p.units, 4);
        // read-weighted: attention 4096 elements × 1 of (4096 + 16384 × 0.5)
        assert!((p.hot_read_share - 4096.0 / (4096.0 + 8192.0)).abs() < 1e-12);
        let attn_extra = q8(64 * 64) - q4(64 * 64);
        assert_eq!(p.bytes, cold + attn_extra);
        // the control: least read first (among the read ones)
        let p = plan_mixed_units(
            &t,
            &dense_unit,
            &share,
            true,
            cold + ffn_extra,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q8_0,
        )
        .unwrap();
        assert_eq!(p.hot, vec![(0, 1)]);
        let e = plan_mixed_units(
            &t,
            &dense_unit,
            &share,
            false,
            cold - 1,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q8_0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("impossible budget"), "{e}");
    }

    #[test]
    fn mixes_parse_and_refuse_bad_weights() {
        let one = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| Error::input(format!("bad size {s}")))
        };
        assert_eq!(parse_mix("2:3, 4", &one).unwrap(), vec![(2, 3.0), (4, 1.0)]);
        for bad in ["2:0", "2:-1", "2:nan", "2:x", "2,,4", "x:1"] {
            assert!(parse_mix(bad, &one).is_err(), "{bad}");
        }
    }
}
