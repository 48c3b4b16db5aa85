//! The default command. Until the training, quantisation and sub-model issues land, the
//! demo shows what the foundation does for real: it builds a small nested MoE layout with
//! deterministic weights, writes it as one GGUF file (experts page-aligned), maps it back
//! without copying, checks every tensor bit for bit, and prints the `inspect` report.

use modula_core::gguf::GgufWriter;
use modula_core::{MetaValue, Model};
use modula_quant::{BlockQ8_0, DType};
use std::path::Path;

/// Deterministic pseudo-random numbers in [-0.5, 0.5).
fn fill(seed: u64, n: usize) -> Vec<f32> {
    let mut r = modula_core::rng::SplitMix64(seed);
    (0..n).map(|_| r.next_f32() - 0.5).collect()
}

/// Round-to-nearest Q8_0 of `w` (row length a multiple of 32) as raw bytes.
fn q8_0_bytes(w: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.len() / 32 * 34);
    for blk in w.chunks_exact(32) {
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut b = BlockQ8_0 {
            d: half::f16::from_f32(d),
            qs: [0; 32],
        };
        for (q, v) in b.qs.iter_mut().zip(blk) {
            *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
        }
        out.extend_from_slice(&b.d.to_le_bytes());
        out.extend(b.qs.iter().map(|&q| q as u8));
    }
    out
}

/// One tensor of the demo model, with the page group it belongs to.
struct DemoTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    bytes: Vec<u8>,
    group: Option<String>,
}

impl DemoTensor {
    fn new(
        name: &str,
        dtype: DType,
        shape: &[usize],
        bytes: Vec<u8>,
        group: Option<String>,
    ) -> Self {
        DemoTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes,
            group,
        }
    }
}

/// Run the demo, writing the model to `out`.
pub fn run(out: &Path) -> Result<(), String> {
    let (vocab, d, layers, experts, hidden) = (256usize, 64usize, 2usize, 4usize, 128usize);
    let mut w = GgufWriter::new();
    let meta = [
        (
            "general.name",
            MetaValue::String("modula foundation demo".into()),
        ),
        ("modula.model", MetaValue::String("moe".into())),
        ("modula.task", MetaValue::String("lm".into())),
        ("modula.vocab_size", MetaValue::U32(vocab as u32)),
        ("modula.embedding_length", MetaValue::U32(d as u32)),
        ("modula.block_count", MetaValue::U32(layers as u32)),
        ("modula.feed_forward_length", MetaValue::U32(hidden as u32)),
        ("modula.expert.count", MetaValue::U32(experts as u32)),
        ("modula.expert.used_count", MetaValue::U32(2)),
        ("modula.expert.router", MetaValue::String("linear".into())),
        ("modula.nested.depths", MetaValue::u32_array(&[1, 2])),
        (
            "modula.nested.ffn_widths",
            MetaValue::u32_array(&[32, 64, 128]),
        ),
        ("modula.nested.expert_counts", MetaValue::u32_array(&[2, 4])),
    ];
    for (k, v) in meta {
        w.set(k, v).map_err(|e| e.to_string())?;
    }
    let f32b = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut owned = vec![DemoTensor::new(
        "token_embd.weight",
        DType::F32,
        &[vocab, d],
        f32b(fill(1, vocab * d)),
        None,
    )];
    for l in 0..layers {
        let s = 100 * (l as u64 + 1);
        owned.push(DemoTensor::new(
            &format!("blk.{l}.ffn_gate_inp.weight"),
            DType::F32,
            &[experts, d],
            f32b(fill(s, experts * d)),
            None,
        ));
        for e in 0..experts {
            let g = Some(format!("blk.{l}.expert.{e}"));
            // Up projection [hidden, d] (rows = hidden units, so a width prefix is
            // contiguous); down projection stored transposed [hidden, d] for the same reason.
            let up = q8_0_bytes(&fill(s + 10 + e as u64, hidden * d));
            let down = q8_0_bytes(&fill(s + 50 + e as u64, hidden * d));
            owned.push(DemoTensor::new(
                &format!("blk.{l}.ffn_up.{e}.weight"),
                DType::Q8_0,
                &[hidden, d],
                up,
                g.clone(),
            ));
            owned.push(DemoTensor::new(
                &format!("blk.{l}.ffn_down_t.{e}.weight"),
                DType::Q8_0,
                &[hidden, d],
                down,
                g,
            ));
        }
    }
    owned.push(DemoTensor::new(
        "output_norm.weight",
        DType::F32,
        &[d],
        f32b(vec![1.0; d]),
        None,
    ));
    owned.push(DemoTensor::new(
        "output.weight",
        DType::F32,
        &[vocab, d],
        f32b(fill(2, vocab * d)),
        None,
    ));
    let mut open: Option<&str> = None;
    for t in &owned {
        if open != t.group.as_deref() {
            if open.is_some() {
                w.end_group().map_err(|e| e.to_string())?;
            }
            if let Some(g) = &t.group {
                w.begin_group(g).map_err(|e| e.to_string())?;
            }
            open = t.group.as_deref();
        }
        w.add_tensor(&t.name, t.dtype, &t.shape, t.bytes.as_slice())
            .map_err(|e| e.to_string())?;
    }
    if open.is_some() {
        w.end_group().map_err(|e| e.to_string())?;
    }
    let n = w.write_to(out).map_err(|e| e.to_string())?;
    let model = Model::open(out).map_err(|e| e.to_string())?;
    for t in &owned {
        let view = model.tensor(&t.name).map_err(|e| e.to_string())?;
        if view.bytes() != t.bytes.as_slice() {
            return Err(format!("tensor {} did not read back bit-exactly", t.name));
        }
    }
    println!("Modula foundation demo: wrote {} ({n} bytes), mapped it, and read all {} tensors back bit-exactly.\n", out.display(), owned.len());
    print!("{}", crate::inspect::report(&model, false));
    println!(
        "\nThe dense baseline trains today (`modula train --data listops|recall|copy|kjv|PATH`).\n\
         Not yet: the modular models, quantisation, nested sub-model selection and generation\n\
         arrive with the later issues; this command will then run the whole story on a built-in\n\
         default."
    );
    Ok(())
}
