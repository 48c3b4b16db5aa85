//! `neon-insns TYPE ROWS COLS REPS`: `REPS` skinny products `y = W x` (one activation row)
//! through `modula_core::kernels::linear::linear`, weights of `TYPE` (f32, q8_0, q4_0),
//! deterministic data. Run under `qemu-aarch64 -plugin libinsn.so` twice with different
//! `REPS`: the difference of the two counts over the extra products is the instruction
//! count of one product (setup cancels: it is identical in both runs).
use modula_core::kernels::linear::{linear, MatRef, WeightData};
use modula_quant::quantize::{quantize_row_q4_0, quantize_row_q8_0};
use modula_quant::{BlockQ4_0, BlockQ8_0};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: neon-insns f32|q8_0|q4_0 ROWS COLS REPS");
        std::process::exit(2);
    }
    let (ty, n, k, reps) = (
        a[1].as_str(),
        a[2].parse::<usize>().expect("ROWS"),
        a[3].parse::<usize>().expect("COLS"),
        a[4].parse::<usize>().expect("REPS"),
    );
    // a fixed LCG: the same data in every run
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
    let x: Vec<f32> = (0..k).map(|_| next()).collect();
    let mut y = vec![0f32; n];
    let zero8 = BlockQ8_0 {
        d: half::f16::ZERO,
        qs: [0; 32],
    };
    let zero4 = BlockQ4_0 {
        d: half::f16::ZERO,
        qs: [0; 16],
    };
    let mut q8 = vec![zero8; n * k / 32];
    let mut q4 = vec![zero4; n * k / 32];
    let data = match ty {
        "f32" => WeightData::F32(&w),
        "q8_0" => {
            quantize_row_q8_0(&w, &mut q8).expect("quantise");
            WeightData::Q8_0(&q8)
        }
        "q4_0" => {
            quantize_row_q4_0(&w, &mut q4).expect("quantise");
            WeightData::Q4_0(&q4)
        }
        _ => panic!("type"),
    };
    let m = MatRef::new(data, n, k, k).expect("matrix");
    let mut sum = 0f32;
    for _ in 0..reps {
        linear(&x, k, 1, &m, None, &mut y, n).expect("linear");
        sum += y.iter().sum::<f32>();
    }
    println!("{sum}");
}
