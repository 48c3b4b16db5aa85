//! The AVX-512 kernels through `modula-core`'s dispatch: `linear_mode` on Q8_0/Q4_0
//! matrices at `Isa::Avx2` — which, in this build (compiled with the AVX-512 target
//! features, so `isa::avx512()` reads them at compile time as a `no_std` build does), must
//! route to the AVX-512 kernels of the compiled sub-level — against `Isa::Scalar`, and one
//! activation row bit for bit against the kernel the dispatch should have chosen; and
//! `widen_row_with` (a weight row to f32) against the AVX-512 dequantisers, bit for bit
//! (every dequantiser gives the same bits, so this checks the dispatched result, not
//! which kernel ran).
//! (Products of more than 16 rows, which widen weight panels for `matrixmultiply`, are not
//! run here: compiled with AVX-512 on, LLVM vectorises `matrixmultiply`'s packing with
//! EVEX gathers that this emulator faults on.)

use crate::{bound, Checker, Kernel, Rng};
use modula_core::kernels::isa::{self, Avx512};
use modula_core::kernels::linear::{linear_mode, widen_row_with, MatRef, WeightData};
use modula_core::kernels::Isa;
use modula_quant::kernels::avx512 as k5;
use modula_quant::quantize::quantize_row_q8_0;
use modula_quant::{BlockQ4_0, BlockQ8_0};

const MAX_N: usize = 17;
const MAX_KB: usize = 33;
const MAX_M: usize = 3;

struct Bufs {
    w8: [BlockQ8_0; MAX_N * MAX_KB],
    w4: [BlockQ4_0; MAX_N * MAX_KB],
    x: [f32; MAX_M * 32 * MAX_KB],
    xq: [BlockQ8_0; MAX_KB],
    y: [f32; MAX_M * MAX_N],
    r: [f32; MAX_M * MAX_N],
    row: [f32; 32 * MAX_KB],
}

static mut BUFS: Bufs = Bufs {
    w8: [crate::ZERO8; MAX_N * MAX_KB],
    w4: [crate::ZERO4; MAX_N * MAX_KB],
    x: [0.0; MAX_M * 32 * MAX_KB],
    xq: [crate::ZERO8; MAX_KB],
    y: [0.0; MAX_M * MAX_N],
    r: [0.0; MAX_M * MAX_N],
    row: [0.0; 32 * MAX_KB],
};

/// The sub-level this build's dispatch uses (1 = AVX-512BW, 2 = VNNI, 0 = none).
pub fn level() -> u64 {
    match isa::avx512() {
        Avx512::Off => 0,
        Avx512::Bw => 1,
        Avx512::Vnni => 2,
    }
}

pub fn run(rng: &mut Rng, ck: &mut Checker<'_>) {
    // SAFETY: the one reference to the static, in a single-threaded program.
    let b = unsafe { &mut *core::ptr::addr_of_mut!(BUFS) };
    let vnni = isa::avx512() == Avx512::Vnni;
    for m in 1..=MAX_M {
        for n in [1, 2, 3, 4, 5, 7, 8, 9, MAX_N] {
            for kb in [1, 2, 3, 4, 5, 6, 7, MAX_KB] {
                let k = 32 * kb;
                for blk in b.w8[..n * kb].iter_mut() {
                    blk.d = rng.scale();
                    for q in blk.qs.iter_mut() {
                        *q = rng.byte() as i8;
                    }
                }
                for blk in b.w4[..n * kb].iter_mut() {
                    blk.d = rng.scale();
                    for q in blk.qs.iter_mut() {
                        *q = rng.byte();
                    }
                }
                for v in b.x[..m * k].iter_mut() {
                    *v = rng.unit();
                }
                for q4 in [false, true] {
                    let data = if q4 {
                        WeightData::Q4_0(&b.w4[..n * kb])
                    } else {
                        WeightData::Q8_0(&b.w8[..n * kb])
                    };
                    let Ok(w) = MatRef::new(data, n, k, k) else {
                        ck.fail(Kernel::Linear, kb, f32::NAN, 0.0, 0.0);
                        continue;
                    };
                    // the magnitude of the terms: |w|·(|x| + the activation rounding)
                    let deq = |j: usize, i: usize| -> f32 {
                        if q4 {
                            crate::deq_q4(&b.w4[j * kb..(j + 1) * kb], i)
                        } else {
                            crate::deq_q8(&b.w8[j * kb..(j + 1) * kb], i)
                        }
                    };
                    for j in 0..n {
                        widen_row_with(Isa::Avx2, &w, j, &mut b.row[..k]);
                        let (r8, r4) = (&b.w8[j * kb..(j + 1) * kb], &b.w4[j * kb..(j + 1) * kb]);
                        let mut want = [0f32; 32 * MAX_KB];
                        // SAFETY: this build has the kernels' features; 32 values per block.
                        unsafe {
                            if q4 {
                                k5::dequantize_q4_0(r4, &mut want[..k]);
                            } else {
                                k5::dequantize_q8_0(r8, &mut want[..k]);
                            }
                        }
                        for (&got, &w) in b.row[..k].iter().zip(&want[..k]) {
                            ck.same(Kernel::WidenRow, kb, got, w);
                        }
                    }
                    for qact in [true, false] {
                        let x = &b.x[..m * k];
                        let ok_simd =
                            linear_mode(Isa::Avx2, qact, x, k, m, &w, None, &mut b.y, n).is_ok();
                        let ok_ref =
                            linear_mode(Isa::Scalar, qact, x, k, m, &w, None, &mut b.r, n).is_ok();
                        if !(ok_simd && ok_ref) {
                            ck.fail(Kernel::Linear, kb, f32::NAN, 0.0, 0.0);
                            continue;
                        }
                        for i in 0..m {
                            let xi = &x[i * k..(i + 1) * k];
                            let amax = xi.iter().fold(0f32, |a, v| a.max(v.abs()));
                            for j in 0..n {
                                let mag: f32 = (0..k)
                                    .map(|t| deq(j, t).abs() * (xi[t].abs() + amax / 127.0))
                                    .sum();
                                let kind = if qact {
                                    Kernel::Linear
                                } else {
                                    Kernel::LinearF32
                                };
                                ck.check(kind, kb, b.y[i * n + j], b.r[i * n + j], bound(k, mag));
                            }
                        }
                        // row 0 bit for bit against the kernel the dispatch must choose
                        let x0 = &x[..k];
                        if qact && quantize_row_q8_0(x0, &mut b.xq[..kb]).is_err() {
                            ck.fail(Kernel::LinearBits, kb, f32::NAN, 0.0, 0.0);
                            continue;
                        }
                        let xq = &b.xq[..kb];
                        for j in 0..n {
                            let (r8, r4) =
                                (&b.w8[j * kb..(j + 1) * kb], &b.w4[j * kb..(j + 1) * kb]);
                            // SAFETY: this build has the features of the kernels it calls
                            // (compiled in; the loader checked the CPU's); equal lengths.
                            let want = unsafe {
                                match (qact, q4, vnni) {
                                    (true, true, true) => k5::dot_q4_0_q8_0_vnni(r4, xq),
                                    (true, false, true) => k5::dot_q8_0_q8_0_vnni(r8, xq),
                                    (true, true, false) => k5::dot_q4_0_q8_0(r4, xq),
                                    (true, false, false) => k5::dot_q8_0_q8_0(r8, xq),
                                    (false, true, _) => k5::dot_q4_0(r4, x0),
                                    (false, false, _) => k5::dot_q8_0(r8, x0),
                                }
                            };
                            ck.same(Kernel::LinearBits, kb, b.y[j], want);
                        }
                    }
                }
            }
        }
    }
}
