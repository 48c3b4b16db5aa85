//! EMoE (`../shared/papers/spec_moduleformer_emoe.md`, Part B): split a trained dense FFN
//! into experts without new parameters.
//!
//! * [`balanced_assign`]: the exact balanced assignment (every cluster gets exactly
//!   `n / N` points) minimising the summed cost — min-cost flow by successive shortest
//!   paths, one point at a time (Bellman–Ford over the `N` cluster nodes, whose edges are
//!   "move one member from cluster a to cluster b"); costs are Euclidean distances × 1000
//!   rounded to integers, as the published code's `KMeansConstrained` does.
//! * [`balanced_kmeans`]: k-means++ initialisation, then alternating exact balanced
//!   assignment and centroid means, several restarts, the lowest inertia kept; data
//!   mean-centred first. Deterministic in the seed.
//! * [`convert_layer`]: cluster the L2-normalised rows of the FFN's first weight, permute
//!   the hidden units so that each expert is a contiguous block (rows of `ffn_up`, entries
//!   of its bias, rows of `ffn_down_t`), which leaves the function unchanged. The gates
//!   are the block means of the *current* raw keys, recomputed at every forward
//!   ([`crate::model::dense`]), so they follow the keys after every optimiser step with no
//!   extra parameter.
//!
//! Cost: an assignment step is `O(n²·N + n·N³)` for `n` hidden units and `N` experts
//! (0.3 s for n = 512, N = 16 in a debug build); fine for the FFN widths trained here,
//! slow beyond a few thousand units.

use crate::model::dense::DenseModel;
use modula_core::rng::SplitMix64;
use modula_core::Error;

/// Exact balanced assignment of `n` points to `k` clusters of `n / k` points each,
/// minimising `Σ cost[i][label_i]` (`cost` is `[n][k]`, row-major). `n` must be a multiple
/// of `k`.
pub fn balanced_assign(cost: &[i64], n: usize, k: usize) -> Result<Vec<usize>, Error> {
    if k == 0 || !n.is_multiple_of(k) || cost.len() != n * k {
        return Err(Error::input(format!(
            "balanced assignment needs n ({n}) to be a multiple of k ({k}) and an n x k cost"
        )));
    }
    let cap = n / k;
    let mut label = vec![usize::MAX; n];
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    let c = |i: usize, e: usize| cost[i * k + e];
    for i in 0..n {
        // edge a -> b: move the cheapest member of a to b (cost c[j][b] - c[j][a])
        let mut w = vec![i64::MAX; k * k];
        let mut via = vec![usize::MAX; k * k];
        for (a, ms) in members.iter().enumerate() {
            for &j in ms {
                for b in 0..k {
                    if b == a {
                        continue;
                    }
                    let d = c(j, b) - c(j, a);
                    if d < w[a * k + b] {
                        w[a * k + b] = d;
                        via[a * k + b] = j;
                    }
                }
            }
        }
        // Bellman–Ford from the new point (no negative cycles: the partial assignment is
        // optimal for the points placed so far)
        let mut dist: Vec<i64> = (0..k).map(|e| c(i, e)).collect();
        let mut pred = vec![usize::MAX; k];
        for _ in 0..k {
            let mut changed = false;
            for a in 0..k {
                if dist[a] == i64::MAX || members[a].is_empty() {
                    continue;
                }
                for b in 0..k {
                    let e = w[a * k + b];
                    if e == i64::MAX {
                        continue;
                    }
                    if dist[a] + e < dist[b] {
                        dist[b] = dist[a] + e;
                        pred[b] = a;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // cheapest cluster with room (ties: lowest index)
        let t = (0..k)
            .filter(|&e| members[e].len() < cap)
            .min_by_key(|&e| (dist[e], e))
            .ok_or_else(|| Error::input("balanced assignment: no cluster has room"))?;
        // walk back: each step moves one member into the next cluster
        let mut b = t;
        let mut guard = 0;
        while pred[b] != usize::MAX {
            let a = pred[b];
            let j = via[a * k + b];
            members[a].retain(|&x| x != j);
            members[b].push(j);
            label[j] = b;
            b = a;
            guard += 1;
            if guard > k {
                return Err(Error::input(
                    "balanced assignment: cycle in the augmenting path",
                ));
            }
        }
        members[b].push(i);
        label[i] = b;
    }
    Ok(label)
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = f64::from(*x) - f64::from(*y);
            d * d
        })
        .sum()
}

/// Balanced k-means of `n` points of dimension `d` (`points` row-major) into `k` clusters
/// of exactly `n / k`: k-means++ init, `restarts` runs of at most `max_iter` iterations
/// (until the labels stop changing), lowest inertia (Σ squared distances) kept. Returns the
/// labels and the inertia.
pub fn balanced_kmeans(
    points: &[f32],
    n: usize,
    d: usize,
    k: usize,
    restarts: usize,
    max_iter: usize,
    seed: u64,
) -> Result<(Vec<usize>, f64), Error> {
    if points.len() != n * d || k == 0 || !n.is_multiple_of(k) {
        return Err(Error::input(format!(
            "balanced k-means: {n} points of {d} must split into {k} equal clusters"
        )));
    }
    if points.iter().any(|v| !v.is_finite()) {
        return Err(Error::input(
            "balanced k-means: points contain NaN or infinity",
        ));
    }
    // mean-centre (distances unchanged; better conditioned)
    let mut mean = vec![0f64; d];
    for p in points.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(p) {
            *m += f64::from(*v);
        }
    }
    let x: Vec<f32> = points
        .chunks_exact(d)
        .flat_map(|p| {
            p.iter()
                .zip(&mean)
                .map(|(v, m)| (f64::from(*v) - m / n as f64) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = SplitMix64(seed);
    let mut best: Option<(Vec<usize>, f64)> = None;
    for _ in 0..restarts.max(1) {
        // k-means++
        let mut cent = Vec::with_capacity(k * d);
        let first = rng.below(n as u64) as usize;
        cent.extend_from_slice(&x[first * d..(first + 1) * d]);
        let mut dmin: Vec<f64> = (0..n)
            .map(|i| dist2(&x[i * d..(i + 1) * d], &cent[..d]))
            .collect();
        for _ in 1..k {
            let total: f64 = dmin.iter().sum();
            let pick = if total > 0.0 {
                let mut r = f64::from(rng.next_f32()) * total;
                let mut p = n - 1;
                for (i, &v) in dmin.iter().enumerate() {
                    if r < v {
                        p = i;
                        break;
                    }
                    r -= v;
                }
                p
            } else {
                rng.below(n as u64) as usize
            };
            let c0 = cent.len();
            cent.extend_from_slice(&x[pick * d..(pick + 1) * d]);
            for (i, dm) in dmin.iter_mut().enumerate() {
                *dm = dm.min(dist2(&x[i * d..(i + 1) * d], &cent[c0..c0 + d]));
            }
        }
        let mut labels = vec![usize::MAX; n];
        let mut inertia = f64::MAX;
        for _ in 0..max_iter.max(1) {
            let mut cost = vec![0i64; n * k];
            for i in 0..n {
                for e in 0..k {
                    let dd = dist2(&x[i * d..(i + 1) * d], &cent[e * d..(e + 1) * d]).sqrt();
                    cost[i * k + e] = (dd * 1000.0).round() as i64;
                }
            }
            let new = balanced_assign(&cost, n, k)?;
            // centroid update: plain means
            let mut sum = vec![0f64; k * d];
            for (i, &e) in new.iter().enumerate() {
                for (s, v) in sum[e * d..(e + 1) * d]
                    .iter_mut()
                    .zip(&x[i * d..(i + 1) * d])
                {
                    *s += f64::from(*v);
                }
            }
            let m = (n / k) as f64;
            cent = sum.iter().map(|s| (s / m) as f32).collect();
            inertia = (0..n)
                .map(|i| dist2(&x[i * d..(i + 1) * d], &cent[new[i] * d..(new[i] + 1) * d]))
                .sum();
            let done = new == labels;
            labels = new;
            if done {
                break;
            }
        }
        if best.as_ref().is_none_or(|b| inertia < b.1) {
            best = Some((labels, inertia));
        }
    }
    best.ok_or_else(|| Error::input("balanced k-means: no run"))
}

/// What a conversion did to one layer.
#[derive(Clone, Debug)]
pub struct LayerConversion {
    /// Block index.
    pub layer: usize,
    /// `perm[new] = old` hidden unit.
    pub perm: Vec<usize>,
    /// Inertia of the chosen clustering (normalised keys).
    pub inertia: f64,
}

/// Convert block `layer`'s FFN of `model` into `experts` equal experts: cluster the
/// L2-normalised keys, permute the hidden units into contiguous expert blocks. The model's
/// function is unchanged (up to the order of the sum over hidden units).
pub fn convert_layer(
    model: &mut DenseModel,
    layer: usize,
    experts: usize,
    restarts: usize,
    seed: u64,
) -> Result<LayerConversion, Error> {
    let c = model.cfg;
    if layer >= c.layers {
        return Err(Error::input(format!(
            "layer {layer} does not exist (the model has {})",
            c.layers
        )));
    }
    if experts < 2 || !c.ffn.is_multiple_of(experts) {
        return Err(Error::input(format!(
            "{experts} experts must divide the FFN width {} (and be at least 2)",
            c.ffn
        )));
    }
    let (f, d) = (c.ffn, c.d);
    let up = model
        .params
        .value(model.ffn_index(layer, "ffn_up.weight")?)
        .to_vec();
    let mut keys = up.clone();
    for row in keys.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    let (labels, inertia) = balanced_kmeans(&keys, f, d, experts, restarts, 300, seed)?;
    let mut perm: Vec<usize> = (0..f).collect();
    perm.sort_by_key(|&i| (labels[i], i));
    for (name, width) in [
        ("ffn_up.weight", d),
        ("ffn_up.bias", 1),
        ("ffn_down_t.weight", d),
    ] {
        let idx = model.ffn_index(layer, name)?;
        let old = model.params.value(idx).to_vec();
        let dst = model.params.value_mut(idx);
        for (new, &o) in perm.iter().enumerate() {
            dst[new * width..(new + 1) * width].copy_from_slice(&old[o * width..(o + 1) * width]);
        }
    }
    Ok(LayerConversion {
        layer,
        perm,
        inertia,
    })
}

/// The auxiliary load-balancing loss of EMoE's published (Tutel) path for one layer:
/// `w · (CV²(Imp) + CV²(Load)) / 2` over the `e` experts, with `P = softmax(ℓ̃)` of the
/// (noisy) gate scores `scores: [n, e]`, `Imp_j = Σ_n P_nj`,
/// `Load_j = Σ_n Φ((P_nj − θ_n)/σ)` where `θ_n = scores[n, theta_idx[n]]` (the k-th largest
/// noisy score — probabilities compared with a logit, as the published code does) and
/// `σ = noise / e`; `CV² = var_unbiased / mean²`. Without noise (`noise = 0`) the load term
/// has no gradient and is left out: `w · CV²(Imp) / 2`. Returns the value and
/// `∂/∂scores` (`[n, e]`; the selection itself has no gradient).
pub fn emoe_aux_loss(
    scores: &[f32],
    n: usize,
    e: usize,
    theta_idx: &[u32],
    noise: f32,
    w: f32,
) -> (f64, Vec<f32>) {
    let mut grad = vec![0f32; n * e];
    if n == 0 || e < 2 || w == 0.0 {
        return (0.0, grad);
    }
    let mut p: Vec<f64> = scores.iter().map(|&v| f64::from(v)).collect();
    for row in p.chunks_exact_mut(e) {
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut z = 0.0;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            z += *v;
        }
        row.iter_mut().for_each(|v| *v /= z);
    }
    // CV² and its gradient for a vector of expert totals
    let cv2 = |v: &[f64]| -> (f64, Vec<f64>) {
        let ef = e as f64;
        let mu = v.iter().sum::<f64>() / ef;
        let var = v.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / (ef - 1.0);
        if mu <= 0.0 {
            return (0.0, vec![0.0; e]);
        }
        let g = v
            .iter()
            .map(|x| 2.0 * (x - mu) / ((ef - 1.0) * mu * mu) - 2.0 * var / (ef * mu * mu * mu))
            .collect();
        (var / (mu * mu), g)
    };
    let half_w = 0.5 * f64::from(w);
    let mut imp = vec![0f64; e];
    for row in p.chunks_exact(e) {
        imp.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    let (cv_imp, g_imp) = cv2(&imp);
    let mut value = half_w * cv_imp;
    // dL/dP
    let mut dp: Vec<f64> = (0..n * e).map(|i| half_w * g_imp[i % e]).collect();
    let mut dtheta = vec![0f64; n];
    let sigma = f64::from(noise) / e as f64;
    if sigma > 0.0 {
        let phi = |x: f64| 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let theta: Vec<f64> = (0..n)
            .map(|t| f64::from(scores[t * e + theta_idx[t] as usize]))
            .collect();
        let mut load = vec![0f64; e];
        for t in 0..n {
            for j in 0..e {
                load[j] += phi((p[t * e + j] - theta[t]) / sigma);
            }
        }
        let (cv_load, g_load) = cv2(&load);
        value += half_w * cv_load;
        for t in 0..n {
            for j in 0..e {
                let dens = pdf((p[t * e + j] - theta[t]) / sigma) / sigma;
                let g = half_w * g_load[j] * dens;
                dp[t * e + j] += g;
                dtheta[t] -= g;
            }
        }
    }
    // through the softmax, plus θ's own score
    for t in 0..n {
        let (pr, dr) = (&p[t * e..(t + 1) * e], &dp[t * e..(t + 1) * e]);
        let dot: f64 = pr.iter().zip(dr).map(|(a, b)| a * b).sum();
        for j in 0..e {
            grad[t * e + j] = (pr[j] * (dr[j] - dot)) as f32;
        }
        grad[t * e + theta_idx[t] as usize] += dtheta[t] as f32;
    }
    (value, grad)
}

#[cfg(test)]
mod aux_tests {
    #![allow(clippy::unwrap_used)]
    use super::emoe_aux_loss;
    use crate::gradcheck::{check_grad, GradCheck};

    #[test]
    fn aux_loss_gradient_matches_finite_differences() {
        let (n, e) = (6, 4);
        let mut r = modula_core::rng::SplitMix64(3);
        let mut s: Vec<f32> = (0..n * e).map(|_| 2.0 * r.next_f32() - 1.0).collect();
        let theta: Vec<u32> = (0..n).map(|t| (t % e) as u32).collect();
        for noise in [0.0f32, 1.0, 4.0] {
            let (v, g) = emoe_aux_loss(&s, n, e, &theta, noise, 0.7);
            assert!(v > 0.0 && v.is_finite());
            let f = |x: &[f32]| emoe_aux_loss(x, n, e, &theta, noise, 0.7).0;
            let cfg = GradCheck {
                eps: 1e-3,
                tol: 2e-3,
                floor: 1e-3,
            };
            check_grad("emoe aux", &mut s, &g, f, cfg).unwrap();
        }
        // balanced scores: zero importance variance
        let flat = vec![0.5f32; n * e];
        let (v, _) = emoe_aux_loss(&flat, n, e, &theta, 0.0, 1.0);
        assert!(v.abs() < 1e-12);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every balanced assignment of n points to k clusters, the cheapest cost.
    fn brute(cost: &[i64], n: usize, k: usize) -> i64 {
        fn rec(i: usize, n: usize, k: usize, cap: usize, cnt: &mut [usize], cost: &[i64]) -> i64 {
            if i == n {
                return 0;
            }
            let mut best = i64::MAX;
            for e in 0..k {
                if cnt[e] < cap {
                    cnt[e] += 1;
                    let r = rec(i + 1, n, k, cap, cnt, cost);
                    if r != i64::MAX {
                        best = best.min(cost[i * k + e] + r);
                    }
                    cnt[e] -= 1;
                }
            }
            best
        }
        rec(0, n, k, n / k, &mut vec![0; k], cost)
    }

    #[test]
    fn balanced_assignment_is_optimal_on_random_instances() {
        let mut r = SplitMix64(3);
        for trial in 0..200 {
            let (n, k) = [(6, 3), (6, 2), (8, 4), (9, 3), (4, 4)][trial % 5];
            let cost: Vec<i64> = (0..n * k).map(|_| r.below(1000) as i64).collect();
            let labels = balanced_assign(&cost, n, k).unwrap();
            for e in 0..k {
                assert_eq!(labels.iter().filter(|&&l| l == e).count(), n / k);
            }
            let got: i64 = labels
                .iter()
                .enumerate()
                .map(|(i, &e)| cost[i * k + e])
                .sum();
            assert_eq!(got, brute(&cost, n, k), "trial {trial}: {cost:?}");
        }
        assert!(balanced_assign(&[0; 10], 5, 2).is_err());
    }

    #[test]
    fn kmeans_recovers_planted_balanced_clusters() {
        // 4 tight clusters of 8 points around distant centres, shuffled
        let mut r = SplitMix64(11);
        let centres = [[5.0f32, 0.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -5.0]];
        let mut pts = Vec::new();
        let mut truth = Vec::new();
        let mut order: Vec<usize> = (0..32).collect();
        for i in (1..32).rev() {
            order.swap(i, r.below(i as u64 + 1) as usize);
        }
        for &o in &order {
            let c = centres[o / 8];
            pts.push(c[0] + 0.3 * (r.next_f32() - 0.5));
            pts.push(c[1] + 0.3 * (r.next_f32() - 0.5));
            truth.push(o / 8);
        }
        let (labels, inertia) = balanced_kmeans(&pts, 32, 2, 4, 5, 100, 1).unwrap();
        assert!(inertia < 32.0 * 0.1, "inertia {inertia}");
        for i in 0..32 {
            for j in 0..32 {
                assert_eq!(labels[i] == labels[j], truth[i] == truth[j]);
            }
        }
        // deterministic in the seed
        assert_eq!(
            balanced_kmeans(&pts, 32, 2, 4, 5, 100, 1).unwrap().0,
            labels
        );
        assert!(balanced_kmeans(&pts, 32, 2, 5, 5, 100, 1).is_err());
    }

    use crate::gradcheck::{check_grad, GradCheck};
    use crate::model::dense::{DenseConfig, Input};

    fn trained_like(cfg: DenseConfig, seed: u64) -> DenseModel {
        let mut m = DenseModel::new(cfg, seed).unwrap();
        let mut r = SplitMix64(seed ^ 99);
        for v in m.params.values.iter_mut() {
            *v += 0.2 * (2.0 * r.next_f32() - 1.0);
        }
        m
    }

    #[test]
    fn conversion_preserves_the_function_and_all_experts_is_the_dense_model() {
        let cfg = DenseConfig::lm(32, 16, 2, 2, 64);
        let dense = trained_like(cfg, 1);
        let (b, t) = (2, 7);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 32) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|i| (i * 3 % 32) as u32).collect();
        let want = dense
            .forward(Input::Tokens(&tokens), &targets, b, t)
            .unwrap()
            .1;
        let mut conv = dense.clone();
        let info = convert_layer(&mut conv, 1, 8, 3, 7).unwrap();
        let mut sorted = info.perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>(), "a permutation");
        assert!(
            info.perm != (0..64).collect::<Vec<_>>(),
            "clustering reordered the units"
        );
        // unmasked: the same function (the sum over hidden units is reordered)
        let got = conv
            .forward(Input::Tokens(&tokens), &targets, b, t)
            .unwrap()
            .1;
        for (g, w) in got.logits().iter().zip(want.logits()) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
        // EMoE with k = N: the mask keeps everything, bit for bit the unmasked model
        let all = DenseConfig {
            emoe_layers: 0b10,
            emoe_experts: 8,
            emoe_top_k: 8,
            ..cfg
        };
        let mut e = DenseModel::new(all, 0).unwrap();
        e.params.values.copy_from_slice(&conv.params.values);
        let masked = e.forward(Input::Tokens(&tokens), &targets, b, t).unwrap().1;
        assert!(masked.logits() == got.logits());
        assert_eq!(masked.emoe_selected(1).len(), b * t * 8);
        assert!(masked.emoe_selected(0).is_empty());
        // gates are the block means of the current keys
        let g = e.emoe_gates(1);
        let up = e.params.value(e.ffn_index(1, "ffn_up.weight").unwrap());
        let mean0: f32 = (0..8).map(|r| up[r * 16]).sum::<f32>() / 8.0;
        assert!((g[0] - mean0).abs() < 1e-6);
        // k < N changes the output, and only in the masked way
        let sparse = DenseConfig {
            emoe_top_k: 2,
            ..all
        };
        let mut s2 = DenseModel::new(sparse, 0).unwrap();
        s2.params.values.copy_from_slice(&conv.params.values);
        let out = s2
            .forward(Input::Tokens(&tokens), &targets, b, t)
            .unwrap()
            .1;
        assert!(out.logits() != got.logits());
        s2.emoe_mask = false; // merged back: the dense function again
        let merged = s2
            .forward(Input::Tokens(&tokens), &targets, b, t)
            .unwrap()
            .1;
        assert!(merged.logits() == got.logits());
        assert!(convert_layer(&mut conv, 2, 8, 1, 1).is_err());
        assert!(convert_layer(&mut conv, 1, 7, 1, 1).is_err());
    }

    #[test]
    fn masked_model_gradients_match_finite_differences() {
        // routing is piecewise constant; small steps and a fixed routing margin check
        let cfg = DenseConfig {
            emoe_layers: 0b1,
            emoe_experts: 4,
            emoe_top_k: 2,
            ..DenseConfig::lm(11, 8, 1, 2, 16)
        };
        let m = trained_like(cfg, 5);
        let (b, t) = (1, 5);
        let tokens: Vec<u32> = vec![1, 4, 7, 2, 9];
        let targets: Vec<u32> = vec![3, 1, 0, 8, 5];
        let (_, acts, dl) = m.forward(Input::Tokens(&tokens), &targets, b, t).unwrap();
        let sel = acts.emoe_selected(0).to_vec();
        let mut mm = m.clone();
        mm.params.zero_grads();
        mm.backward(Input::Tokens(&tokens), &acts, &dl).unwrap();
        let grads = mm.params.grads.clone();
        let mut values = m.params.values.clone();
        let probe = m.clone();
        let f = |v: &[f32]| {
            let mut p = probe.clone();
            p.params.values.copy_from_slice(v);
            let (l, a, _) = p.forward(Input::Tokens(&tokens), &targets, b, t).unwrap();
            // the check is only meaningful while the routing stays put
            assert_eq!(
                a.emoe_selected(0),
                sel.as_slice(),
                "routing flipped under the probe"
            );
            l
        };
        let gc = GradCheck {
            eps: 2e-3,
            tol: 2e-2,
            floor: 1e-2,
        };
        check_grad("EMoE-masked dense model", &mut values, &grads, f, gc).unwrap();
    }

    #[test]
    fn routing_noise_and_capacity_options() {
        let cfg = DenseConfig {
            emoe_layers: 0b1,
            emoe_experts: 4,
            emoe_top_k: 2,
            ..DenseConfig::lm(11, 8, 1, 2, 16)
        };
        let mut m = trained_like(cfg, 8);
        let (b, t) = (2, 9);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 11) as u32).collect();
        let run = |m: &DenseModel| {
            let (_, a, _) = m.forward(Input::Tokens(&tokens), &tokens, b, t).unwrap();
            (
                a.emoe_selected(0).to_vec(),
                a.logits().to_vec(),
                a.emoe_keep(0).to_vec(),
            )
        };
        let (sel0, logits0, _) = run(&m);
        // noise: only with a seed, deterministic in it, and it moves some choices
        m.emoe_noise = 4.0;
        assert_eq!(run(&m).0, sel0, "no seed, no noise (evaluation)");
        m.emoe_noise_seed = Some(3);
        let (sel1, _, _) = run(&m);
        assert_ne!(sel1, sel0, "noise of std 1 changes some routing");
        assert_eq!(run(&m).0, sel1, "same seed, same noise");
        m.emoe_noise = 0.0;
        m.emoe_noise_seed = None;
        // capacity: k·floor(cf·ceil(18/4)) = 2·floor(0.5·5) = 4 pairs per expert at most
        m.emoe_capacity = 0.5;
        let (_, logits2, keep) = run(&m);
        let per = 16 / 4;
        for e in 0..4 {
            let pairs = (0..b * t)
                .filter(|&i| keep[i * 16 + e * per] == 1.0)
                .count();
            assert!(pairs <= 4, "expert {e} kept {pairs} pairs");
        }
        let kept: usize = (0..b * t * 16).filter(|&i| keep[i] == 1.0).count() / per;
        assert!(
            kept < b * t * 2,
            "some of the {} pairs were dropped",
            b * t * 2
        );
        assert_ne!(logits2, logits0);
        m.emoe_capacity = 100.0;
        assert_eq!(run(&m).1, logits0, "a large capacity drops nothing");
    }
}
