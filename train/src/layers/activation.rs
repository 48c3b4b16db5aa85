//! Activation backward passes: `dx += dy · f'(u)` from the saved pre-activation `u`.
//! The forwards are `modula_core::kernels::expert_ffn::Activation::apply_with`.

use modula_core::kernels::elementwise::{gelu_backward, SQRT_2_OVER_PI};
use modula_core::kernels::expert_ffn::Activation;
use modula_core::kernels::{isa, par};

/// f'(u) for each activation.
pub fn derivative(act: Activation, u: f32) -> f32 {
    match act {
        Activation::Gelu => {
            // Φ(u) + u φ(u)
            let cdf = 0.5 * (1.0 + libm::erff(u * core::f32::consts::FRAC_1_SQRT_2));
            let pdf = libm::expf(-0.5 * u * u) * 0.398_942_3;
            cdf + u * pdf
        }
        Activation::GeluTanh => {
            let inner = SQRT_2_OVER_PI * (u + 0.044_715 * u * u * u);
            let t = libm::tanhf(inner);
            0.5 * (1.0 + t)
                + 0.5 * u * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * u * u)
        }
        Activation::Silu => {
            let s = 1.0 / (1.0 + libm::expf(-u));
            s * (1.0 + u * (1.0 - s))
        }
        Activation::Relu2 => 2.0 * u.max(0.0),
    }
}

/// Elements per parallel chunk are a multiple of this: every chunk boundary falls on a
/// SIMD vector boundary, so each element takes the same (vector or tail) path whatever
/// the thread count.
const ALIGN: usize = 64;

/// `du += dy · f'(u)` elementwise (`dy, u, du` of equal length), spread over the kernel
/// threads; GELU uses the SIMD kernel of `modula-core`.
pub fn activation_backward(act: Activation, dy: &[f32], u: &[f32], du: &mut [f32]) {
    let n = du.len().min(dy.len()).min(u.len());
    let chunk = par::chunk_for(n, ALIGN, 1 << 14);
    par::for_each_chunk_mut(&mut du[..n], chunk, |ci, g| {
        let (a, b) = (ci * chunk, ci * chunk + g.len());
        match act {
            // lengths are equal by construction
            Activation::Gelu => {
                let _ = gelu_backward(&dy[a..b], &u[a..b], g);
            }
            _ => {
                for ((g, &d), &x) in g.iter_mut().zip(&dy[a..b]).zip(&u[a..b]) {
                    *g += d * derivative(act, x);
                }
            }
        }
    });
}

/// `x ← f(x)` in place, spread over the kernel threads (the forward of
/// [`activation_backward`]; bit-identical to `act.apply_with(isa::active(), x)`).
pub fn activation_forward(act: Activation, x: &mut [f32]) {
    let chunk = par::chunk_for(x.len(), ALIGN, 1 << 14);
    par::for_each_chunk_mut(x, chunk, |_, c| act.apply_with(isa::active(), c));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, weighted_sum, GradCheck};
    use crate::layers::rand_vec;

    #[test]
    fn derivatives_match_finite_differences() {
        let n = 64;
        let r = rand_vec(2, n);
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::Relu2,
        ] {
            // spread over [-4, 4), away from relu²'s kink at 0 by more than ε
            let mut u: Vec<f32> = rand_vec(1, n)
                .iter()
                .map(|v| 4.0 * v)
                .map(|v| if v.abs() < 0.05 { v + 0.1 } else { v })
                .collect();
            let mut du = vec![0f32; n];
            activation_backward(act, &r, &u, &mut du);
            let f = |u: &[f32]| {
                let mut y = u.to_vec();
                act.apply_with(isa::active(), &mut y);
                weighted_sum(&r, &y)
            };
            check_grad(
                &format!("{act:?}"),
                &mut u,
                &du,
                f,
                GradCheck {
                    eps: 1e-2,
                    tol: 2e-3,
                    floor: 1e-2,
                },
            )
            .unwrap();
        }
    }
}
