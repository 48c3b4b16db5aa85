//! Softmax cross-entropy over rows of logits, mean over rows.

use modula_core::kernels::elementwise::{log_softmax, softmax};
use modula_core::kernels::par;

/// Loss errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LossError {
    /// A target class outside `0..classes`.
    TargetOutOfRange {
        /// Row.
        row: usize,
        /// Target found.
        target: u32,
        /// Number of classes.
        classes: usize,
    },
    /// Inconsistent lengths.
    Shape {
        /// What.
        what: &'static str,
    },
    /// A logit is NaN or infinite.
    NonFinite {
        /// Row.
        row: usize,
    },
}

impl core::fmt::Display for LossError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LossError::TargetOutOfRange {
                row,
                target,
                classes,
            } => {
                write!(
                    f,
                    "row {row}: target class {target} is not below the {classes} classes"
                )
            }
            LossError::Shape { what } => write!(f, "cross-entropy: {what}"),
            LossError::NonFinite { row } => write!(f, "row {row}: logits contain NaN or infinity"),
        }
    }
}

impl std::error::Error for LossError {}

impl From<LossError> for modula_core::Error {
    fn from(e: LossError) -> Self {
        match e {
            LossError::NonFinite { .. } => modula_core::Error::non_finite(e.to_string()),
            _ => modula_core::Error::input(e.to_string()),
        }
    }
}

/// A target that contributes no loss (e.g. the prompt half of a copy task).
pub const IGNORE: u32 = u32::MAX;

/// Mean cross-entropy of `logits: [b, v]` against `targets: [b]` over the rows whose target
/// is not [`IGNORE`]; writes `dlogits = (softmax − onehot) / rows` (zero on ignored rows;
/// overwritten). Returns the loss (f64-accumulated); 0 when every row is ignored.
pub fn cross_entropy(
    logits: &[f32],
    targets: &[u32],
    v: usize,
    dlogits: &mut [f32],
) -> Result<f64, LossError> {
    let b = targets.len();
    if logits.len() != b * v || dlogits.len() != b * v || v == 0 {
        return Err(LossError::Shape {
            what: "logits and dlogits must be [targets, classes], classes > 0",
        });
    }
    let counted = targets.iter().filter(|&&t| t != IGNORE).count();
    for (row, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        if t as usize >= v {
            return Err(LossError::TargetOutOfRange {
                row,
                target: t,
                classes: v,
            });
        }
        if logits[row * v..(row + 1) * v]
            .iter()
            .any(|x| !x.is_finite())
        {
            return Err(LossError::NonFinite { row });
        }
    }
    // rows in parallel (each row by one task), the loss summed in row order
    let inv_b = 1.0 / counted.max(1) as f32;
    let mut row_loss = vec![0f64; b];
    let rows = par::chunk_for(b, 1, (1 << 14) / v + 1);
    par::for_each_chunk_pair_mut(dlogits, rows * v, &mut row_loss, rows, |ci, dc, lc| {
        for (i, (d, l)) in dc.chunks_exact_mut(v).zip(lc.iter_mut()).enumerate() {
            let row = ci * rows + i;
            let t = targets[row];
            if t == IGNORE {
                d.fill(0.0);
                continue;
            }
            d.copy_from_slice(&logits[row * v..(row + 1) * v]);
            log_softmax(d);
            *l = -f64::from(d[t as usize]);
            // softmax of the log-probabilities is the softmax of the logits (SIMD exp)
            softmax(d);
            d[t as usize] -= 1.0;
            d.iter_mut().for_each(|g| *g *= inv_b);
        }
    });
    let total: f64 = row_loss.iter().sum();
    Ok(total / counted.max(1) as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gradcheck::{check_grad, GradCheck};
    use crate::layers::rand_vec;

    #[test]
    fn gradient_matches_finite_differences_and_bad_input_is_refused() {
        let (b, v) = (5, 7);
        let mut logits: Vec<f32> = rand_vec(1, b * v).iter().map(|x| 3.0 * x).collect();
        let targets = [0u32, 6, IGNORE, 3, 1];
        let mut d = vec![0f32; b * v];
        let loss = cross_entropy(&logits, &targets, v, &mut d).unwrap();
        assert!(loss > 0.0);
        let f = |l: &[f32]| cross_entropy(l, &targets, v, &mut vec![0f32; b * v]).unwrap();
        check_grad(
            "cross_entropy",
            &mut logits,
            &d,
            f,
            GradCheck {
                tol: 1e-3,
                ..GradCheck::default()
            },
        )
        .unwrap();
        assert!(matches!(
            cross_entropy(&logits, &[0, 7, 0, 0, 0], v, &mut d),
            Err(LossError::TargetOutOfRange {
                row: 1,
                target: 7,
                ..
            })
        ));
        // an ignored row carries no gradient and does not count in the mean
        assert!(d[2 * v..3 * v].iter().all(|&g| g == 0.0));
        let kept: Vec<f32> = [0, 1, 3, 4]
            .iter()
            .flat_map(|&r| logits[r * v..(r + 1) * v].to_vec())
            .collect();
        let four = cross_entropy(&kept, &[0, 6, 3, 1], v, &mut vec![0f32; 4 * v]).unwrap();
        assert_eq!(four, loss);
        logits[3] = f32::NAN;
        assert!(matches!(
            cross_entropy(&logits, &targets, v, &mut d),
            Err(LossError::NonFinite { row: 0 })
        ));
        assert!(cross_entropy(&logits, &targets, v + 1, &mut d).is_err());
    }
}
