//! Quantising a whole model file (std): every F32 weight matrix (two or more dimensions)
//! becomes Q8_0, Q4_0, F16 or BF16; vectors (norms, biases) and optimiser state stay F32.
//! Metadata and page groups are carried over; `general.file_type` records the target.
//! Each converted tensor is reported with its error against the original (RMSE, max, and
//! RMSE relative to the tensor's RMS).
//!
//! Block formats need whole blocks per row: a matrix whose rows are not a multiple of 32
//! stays F32 (and says so in the report); a file that declares nested widths
//! (`modula.nested.*`) that do not fall on block boundaries is refused, since a nested
//! sub-model must be a prefix of whole blocks.

use crate::arch::Layout;
use crate::gguf::{GgufError, GgufWriter};
use crate::{DType, MetaValue, Model, ModelDesc, Value};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use half::{bf16, f16};
use modula_quant::blocks::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8_0, QK_K};
use modula_quant::quantize::{
    dequantize_row_q4_0, dequantize_row_q4_k, dequantize_row_q6_k, dequantize_row_q8_0,
    quantize_row_q4_0, quantize_row_q4_k, quantize_row_q6_k, quantize_row_q8_0,
};

/// What a tensor became and how far it moved.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    /// Tensor name.
    pub name: String,
    /// Type in the output file.
    pub dtype: DType,
    /// Why it was left as it was (None when converted).
    pub kept: Option<String>,
    /// Root-mean-square error of the stored values against the original f32 values.
    pub rmse: f64,
    /// Largest absolute error.
    pub max_abs: f64,
    /// RMSE divided by the RMS of the original values (0 for an all-zero tensor).
    pub rel_rmse: f64,
    /// Bytes before and after.
    pub bytes: (u64, u64),
}

/// Parse a target type name: `q8_0`, `q4_0`, `q4_k`, `q6_k`, `f16` or `bf16`.
pub fn parse_target(s: &str) -> Result<DType, String> {
    match s {
        "q8_0" => Ok(DType::Q8_0),
        "q4_0" => Ok(DType::Q4_0),
        "q4_k" => Ok(DType::Q4K),
        "q6_k" => Ok(DType::Q6K),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        _ => Err(format!(
            "unknown type '{s}' (q8_0 | q4_0 | q4_k | q6_k | f16 | bf16)"
        )),
    }
}

fn ggml_file_type(t: DType) -> u32 {
    // llama.cpp's LLAMA_FTYPE values for "mostly <type>"
    match t {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 7,
        DType::Q4K => 14,
        DType::Q6K => 18,
        DType::BF16 => 32,
    }
}

/// Convert `values` (one tensor, rows of `cols`) to `target`; returns the bytes and the
/// values as they will be read back.
fn convert(values: &[f32], target: DType) -> Result<(Vec<u8>, Vec<f32>), String> {
    let n = values.len();
    let mut back = vec![0f32; n];
    let bytes = match target {
        DType::Q8_0 => {
            let mut b = vec![
                BlockQ8_0 {
                    d: f16::ZERO,
                    qs: [0; 32]
                };
                n / 32
            ];
            quantize_row_q8_0(values, &mut b).map_err(|e| e.to_string())?;
            dequantize_row_q8_0(&b, &mut back);
            bytemuck::cast_slice(&b).to_vec()
        }
        DType::Q4_0 => {
            let mut b = vec![
                BlockQ4_0 {
                    d: f16::ZERO,
                    qs: [0; 16]
                };
                n / 32
            ];
            quantize_row_q4_0(values, &mut b).map_err(|e| e.to_string())?;
            dequantize_row_q4_0(&b, &mut back);
            bytemuck::cast_slice(&b).to_vec()
        }
        DType::Q4K => {
            let zero = BlockQ4K {
                d: f16::ZERO,
                dmin: f16::ZERO,
                scales: [0; 12],
                qs: [0; 128],
            };
            let mut b = vec![zero; n / QK_K];
            quantize_row_q4_k(values, &mut b).map_err(|e| e.to_string())?;
            dequantize_row_q4_k(&b, &mut back);
            bytemuck::cast_slice(&b).to_vec()
        }
        DType::Q6K => {
            let zero = BlockQ6K {
                ql: [0; 128],
                qh: [0; 64],
                scales: [0; 16],
                d: f16::ZERO,
            };
            let mut b = vec![zero; n / QK_K];
            quantize_row_q6_k(values, &mut b).map_err(|e| e.to_string())?;
            dequantize_row_q6_k(&b, &mut back);
            bytemuck::cast_slice(&b).to_vec()
        }
        DType::F16 => {
            let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
            for (o, v) in back.iter_mut().zip(&h) {
                *o = v.to_f32();
            }
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::BF16 => {
            let h: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
            for (o, v) in back.iter_mut().zip(&h) {
                *o = v.to_f32();
            }
            bytemuck::cast_slice(&h).to_vec()
        }
        DType::F32 => {
            back.copy_from_slice(values);
            bytemuck::cast_slice(values).to_vec()
        }
    };
    Ok((bytes, back))
}

fn errors(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let (mut se, mut ss, mut mx) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let e = f64::from(x) - f64::from(y);
        se += e * e;
        ss += f64::from(x) * f64::from(x);
        mx = mx.max(e.abs());
    }
    let n = a.len().max(1) as f64;
    let rmse = (se / n).sqrt();
    let rms = (ss / n).sqrt();
    (rmse, mx, if rms > 0.0 { rmse / rms } else { 0.0 })
}

/// Quantise every weight matrix of `model` to `target`. Returns the writer (call
/// `write_to` for an atomic write) and one report per tensor, in file order.
pub fn quantize_model<B: AsRef<[u8]>>(
    model: &Model<B>,
    target: DType,
) -> Result<(GgufWriter<'static>, Vec<TensorReport>), String> {
    if target == DType::F32 {
        return Err("target f32: nothing to quantise".into());
    }
    quantize_model_with(model, &|_| target, target)
}

/// Bytes a `[.., cols]` tensor of `n` values takes in `t`, or None when its rows are not
/// whole blocks of `t` (such a matrix stays f32 when quantised).
pub fn bytes_as(t: DType, n: u64, cols: usize) -> Option<u64> {
    if !cols.is_multiple_of(t.block_len()) {
        return None;
    }
    t.bytes_for(n)
}

/// Types a weight can be quantised from: f32, and f16/bf16 (which widen exactly).
fn float(t: DType) -> bool {
    matches!(t, DType::F32 | DType::F16 | DType::BF16)
}

/// Which tensors are weight matrices: by the model description's tensor table when the
/// file has one (a tensor whose stored layout is `OutIn`, `InOut` or `Table`; `Vector`
/// tensors — norms, biases and per-channel parameter tables such as SeqBoat's EMA
/// coefficients `[d, N]` and Q/K scales `[2, z]` — stay f32), else by name (`*.weight`).
/// A tensor the table does not list falls back to the name rule.
struct Matrices {
    layouts: Option<std::collections::BTreeMap<String, Layout>>,
}

impl Matrices {
    fn of<B: AsRef<[u8]>>(model: &Model<B>) -> Self {
        Matrices {
            layouts: ModelDesc::from_model(model).ok().map(|d| {
                d.tensors()
                    .into_iter()
                    .map(|t| (t.name, t.layout))
                    .collect()
            }),
        }
    }

    fn is_matrix(&self, name: &str) -> bool {
        match self.layouts.as_ref().and_then(|l| l.get(name)) {
            Some(layout) => *layout != Layout::Vector,
            None => name.ends_with(".weight"),
        }
    }
}

/// Quantise each weight matrix of `model` to the type `choose(name)` gives (`F32` keeps
/// it), e.g. hot experts at Q8_0 and cold ones at Q4_0. `file_type` is recorded as
/// `general.file_type` (informative: the type of the bulk of the weights). Vectors, 2-D
/// tensors not named `*.weight`, matrices whose rows are not whole blocks of their target,
/// and optimiser state stay as they are.
pub fn quantize_model_with<B: AsRef<[u8]>>(
    model: &Model<B>,
    choose: &dyn Fn(&str) -> DType,
    file_type: DType,
) -> Result<(GgufWriter<'static>, Vec<TensorReport>), String> {
    quantize_impl(
        model,
        choose,
        ggml_file_type(file_type),
        &file_type.to_string(),
    )
}

/// llama.cpp's `LLAMA_FTYPE_MOSTLY_Q4_K_M`.
const FTYPE_Q4_K_M: u32 = 15;

/// Quantise `model` to a `--type` name: one of [`parse_target`]'s types for every weight
/// matrix, or `q4_k_m`, llama.cpp's Q4_K_M mix ([`q4_k_m_plan`]).
pub fn quantize_named<B: AsRef<[u8]>>(
    model: &Model<B>,
    name: &str,
) -> Result<(GgufWriter<'static>, Vec<TensorReport>), String> {
    check_target_name(name)?;
    if name == "q4_k_m" {
        let plan = q4_k_m_plan(model)?;
        let choose = |n: &str| plan.get(n).copied().unwrap_or(DType::F32);
        return quantize_impl(model, &choose, FTYPE_Q4_K_M, "q4_k_m");
    }
    quantize_model(model, parse_target(name)?)
}

/// Whether `name` is a `--type` [`quantize_named`] accepts (a type or `q4_k_m`), with the
/// list of names when it is not.
pub fn check_target_name(name: &str) -> Result<(), String> {
    if name == "q4_k_m" {
        return Ok(());
    }
    parse_target(name)
        .map(|_| ())
        .map_err(|e| format!("{e}, or q4_k_m"))
}

/// llama.cpp's choice of a type per tensor for a Q4_K_M file (`llama_tensor_get_type` in
/// `llama-quant.cpp`, for models without experts and other than Falcon), by the tensors'
/// roles in the model description: the LM head — or the token embedding when it is tied
/// to the head — Q6_K; the value projections and FFN down projections of the layers
/// `use_more_bits` picks (the first and last eighth of the depth and every third layer
/// between) Q6_K, the others Q4_K; every other weight matrix Q4_K. Where it differs from
/// llama.cpp, because Modula has no Q5_K or Q5_0: a fused `attn_qkv` (GPT-2) is Q6_K
/// (llama.cpp: Q5_K), and a matrix whose rows are not whole 256-weight super-blocks is
/// Q8_0 (llama.cpp: Q5_0 for Q4_K, Q8_0 for Q6_K). Tensors that are not weight matrices
/// are not in the plan (they stay f32).
pub fn q4_k_m_plan<B: AsRef<[u8]>>(
    model: &Model<B>,
) -> Result<std::collections::BTreeMap<String, DType>, String> {
    use crate::arch::Role;
    let desc = ModelDesc::from_model(model).map_err(|e| {
        format!("q4_k_m assigns types by tensor role, from the model description: {e}")
    })?;
    let specs = desc.tensors();
    let has_output = specs.iter().any(|t| t.role == Role::Output);
    // (llama.cpp's `use_more_bits`; the last clause is reached with i >= n / 8)
    let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
    let count = |r: Role| specs.iter().filter(|t| t.role == r).count();
    let (n_v, n_down) = (count(Role::AttnV), count(Role::FfnDown));
    let (mut i_v, mut i_down) = (0usize, 0usize);
    // the i-th tensor of its role (in file order) among n: Q6_K where llama.cpp bumps it
    let by_layer = |i: &mut usize, n: usize| {
        *i += 1;
        if more_bits(*i - 1, n) {
            DType::Q6K
        } else {
            DType::Q4K
        }
    };
    let mut plan = std::collections::BTreeMap::new();
    for t in &specs {
        if t.layout == Layout::Vector || t.shape.len() < 2 {
            continue;
        }
        let cols = t.shape.last().copied().unwrap_or(0);
        let ty = match t.role {
            Role::Output => DType::Q6K,
            Role::TokenEmbd if !has_output => DType::Q6K,
            Role::AttnQkv => DType::Q6K,
            Role::AttnV => by_layer(&mut i_v, n_v),
            Role::FfnDown => by_layer(&mut i_down, n_down),
            _ => DType::Q4K,
        };
        let ty = if cols % QK_K == 0 { ty } else { DType::Q8_0 };
        plan.insert(t.name.clone(), ty);
    }
    Ok(plan)
}

fn quantize_impl<B: AsRef<[u8]>>(
    model: &Model<B>,
    choose: &dyn Fn(&str) -> DType,
    file_type_id: u32,
    target: &str,
) -> Result<(GgufWriter<'static>, Vec<TensorReport>), String> {
    let matrices = Matrices::of(model);
    // a file whose weight matrices are all quantised already cannot be quantised again
    // (the report would say "1.00x smaller" and the copy be the same file)
    let weight = |t: &crate::TensorView<'_>| {
        t.shape().len() >= 2 && matrices.is_matrix(t.name()) && !t.name().starts_with("optimizer.")
    };
    if !model.tensors().any(|t| weight(&t) && float(t.dtype())) {
        if let Some(t) = model.tensors().find(|t| weight(t)) {
            return Err(format!(
                "the weight matrices are {} already (e.g. '{}'), not f32/f16/bf16: quantise the f32 original instead",
                t.dtype(),
                t.name()
            ));
        }
    }
    let block = model
        .tensors()
        .filter(|t| t.shape().len() >= 2 && float(t.dtype()) && matrices.is_matrix(t.name()))
        .map(|t| choose(t.name()).block_len())
        .max()
        .unwrap_or(1);
    // nested widths must be whole blocks
    if block > 1 {
        for (k, v) in model.metadata() {
            // widths split rows into blocks; depths and head/expert counts do not
            if !(k == "modula.nested.ffn_widths" || k == "modula.nested.widths") {
                continue;
            }
            if let Value::Array(a) = v {
                for w in a.iter() {
                    let w = match w {
                        Value::U32(x) => u64::from(x),
                        Value::U64(x) => x,
                        _ => continue,
                    };
                    if w % block as u64 != 0 {
                        return Err(format!(
                            "{k} contains width {w}, not a multiple of the {block}-weight \
                             blocks of {target}: nested sub-models would split blocks; \
                             retrain with widths on multiples of {block} or use f16/bf16"
                        ));
                    }
                }
            }
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in model.metadata() {
        if k == "general.alignment" || k.starts_with("modula.page_groups.") {
            continue;
        }
        w.set(k, v.to_owned_value()).map_err(|e| e.to_string())?;
    }
    w.set("general.file_type", MetaValue::U32(file_type_id))
        .map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    let mut open_group: Option<String> = None;
    for t in model.tensors() {
        let group = model.group_of(t.name()).map(|g| g.name().to_string());
        if group != open_group {
            if open_group.is_some() {
                w.end_group().map_err(|e| e.to_string())?;
            }
            if let Some(g) = &group {
                w.begin_group(g).map_err(|e| e.to_string())?;
            }
            open_group = group;
        }
        let shape = t.shape();
        let cols = shape.last().copied().unwrap_or(0);
        let before = t.bytes().len() as u64;
        let target = choose(t.name());
        let block = target.block_len();
        let keep = |why: &str| -> Result<TensorReport, GgufError> {
            Ok(TensorReport {
                name: t.name().to_string(),
                dtype: t.dtype(),
                kept: Some(why.to_string()),
                rmse: 0.0,
                max_abs: 0.0,
                rel_rmse: 0.0,
                bytes: (before, before),
            })
        };
        let reason = if !float(t.dtype()) {
            Some(format!("already {}", t.dtype()))
        } else if shape.len() < 2 {
            Some("vector (norm, bias) stays f32".to_string())
        } else if t.name().starts_with("optimizer.") {
            Some("optimiser state stays f32".to_string())
        } else if !matrices.is_matrix(t.name()) {
            Some("parameter table (not a weight matrix) stays f32".to_string())
        } else if target == DType::F32 {
            Some(format!("kept {} by the plan", t.dtype()))
        } else if t.dtype() == target {
            Some(format!("already {}", t.dtype()))
        } else if cols % block != 0 {
            Some(format!(
                "rows of {cols} are not whole {block}-weight blocks; kept {}",
                t.dtype()
            ))
        } else {
            None
        };
        let report = match reason {
            Some(why) => {
                w.add_tensor(t.name(), t.dtype(), &shape, t.bytes().to_vec())
                    .map_err(|e| e.to_string())?;
                keep(&why).map_err(|e| e.to_string())?
            }
            None => {
                // f16/bf16 sources (e.g. an imported bf16 checkpoint) widen exactly
                let owned;
                let v = if t.dtype() == DType::F32 {
                    t.as_f32_slice().map_err(|e| e.to_string())?
                } else {
                    owned = t.to_f32_vec().map_err(|e| e.to_string())?;
                    &owned[..]
                };
                let (bytes, back) =
                    convert(v, target).map_err(|e| format!("tensor '{}': {e}", t.name()))?;
                let (rmse, max_abs, rel_rmse) = errors(v, &back);
                let after = bytes.len() as u64;
                w.add_tensor(t.name(), target, &shape, bytes)
                    .map_err(|e| e.to_string())?;
                TensorReport {
                    name: t.name().to_string(),
                    dtype: target,
                    kept: None,
                    rmse,
                    max_abs,
                    rel_rmse,
                    bytes: (before, after),
                }
            }
        };
        reports.push(report);
    }
    if open_group.is_some() {
        w.end_group().map_err(|e| e.to_string())?;
    }
    Ok((w, reports))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn model_bytes(nested: Option<u32>) -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.set("modula.model", MetaValue::String("dense".into()))
            .unwrap();
        if let Some(n) = nested {
            w.set(
                "modula.nested.ffn_widths",
                MetaValue::Array(
                    crate::ValueType::U32,
                    vec![MetaValue::U32(n), MetaValue::U32(64)],
                ),
            )
            .unwrap();
        }
        let m: Vec<f32> = (0..64 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let odd: Vec<f32> = (0..3 * 49).map(|i| i as f32 / 100.0).collect();
        let bias = vec![0.5f32; 64];
        w.begin_group("experts").unwrap();
        w.add_tensor(
            "blk.0.ffn_up.weight",
            DType::F32,
            &[64, 64],
            bytemuck::cast_slice(&m).to_vec(),
        )
        .unwrap();
        w.end_group().unwrap();
        w.add_tensor(
            "patch.weight",
            DType::F32,
            &[3, 49],
            bytemuck::cast_slice(&odd).to_vec(),
        )
        .unwrap();
        w.add_tensor(
            "blk.0.ffn_up.bias",
            DType::F32,
            &[64],
            bytemuck::cast_slice(&bias).to_vec(),
        )
        .unwrap();
        w.to_bytes().unwrap()
    }

    #[test]
    fn quantises_matrices_keeps_vectors_and_reports_errors() {
        let bytes = model_bytes(None);
        let m = Model::from_bytes(bytes.as_slice()).unwrap();
        for target in [DType::Q8_0, DType::Q4_0, DType::F16, DType::BF16] {
            let (w, rep) = quantize_model(&m, target).unwrap();
            let out = w.to_bytes().unwrap();
            let q = Model::from_bytes(out.as_slice()).unwrap();
            assert_eq!(q.tensor("blk.0.ffn_up.weight").unwrap().dtype(), target);
            assert_eq!(q.tensor("blk.0.ffn_up.bias").unwrap().dtype(), DType::F32);
            assert_eq!(
                q.get_u32("general.file_type").unwrap(),
                ggml_file_type(target)
            );
            assert_eq!(q.get_str("modula.model"), Some("dense"));
            assert!(
                q.group_of("blk.0.ffn_up.weight").is_some(),
                "page group kept"
            );
            let r = &rep[0];
            assert!(r.kept.is_none() && r.rmse > 0.0 && r.max_abs >= r.rmse);
            // the report is the truth about the stored values
            let back = q
                .tensor("blk.0.ffn_up.weight")
                .unwrap()
                .to_f32_vec()
                .unwrap();
            let orig = m
                .tensor("blk.0.ffn_up.weight")
                .unwrap()
                .to_f32_vec()
                .unwrap();
            assert_eq!(errors(&orig, &back).0, r.rmse);
            let bound = match target {
                DType::Q4_0 => 0.1,
                DType::Q8_0 => 0.01,
                DType::BF16 => 0.005,
                _ => 0.001,
            };
            assert!(r.rel_rmse < bound, "{target}: relative RMSE {}", r.rel_rmse);
            // 49-wide rows are not whole blocks
            let odd = rep.iter().find(|r| r.name == "patch.weight").unwrap();
            if target.block_len() > 1 {
                assert!(
                    odd.kept.as_deref().unwrap().contains("not whole"),
                    "{odd:?}"
                );
            } else {
                assert!(odd.kept.is_none());
            }
        }
    }

    #[test]
    fn nested_widths_off_block_boundaries_are_refused() {
        let bytes = model_bytes(Some(48));
        let m = Model::from_bytes(bytes.as_slice()).unwrap();
        let e = quantize_model(&m, DType::Q4_0).err().unwrap();
        assert!(e.contains("48") && e.contains("nested"), "{e}");
        assert!(quantize_model(&m, DType::F16).is_ok(), "f16 has no blocks");
        let ok = model_bytes(Some(32));
        assert!(quantize_model(&Model::from_bytes(ok.as_slice()).unwrap(), DType::Q8_0).is_ok());
        assert!(parse_target("q5_k").is_err());
    }
}
