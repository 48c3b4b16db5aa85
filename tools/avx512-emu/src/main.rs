//! Checks `modula_quant::kernels::avx512` against the scalar references, as a freestanding
//! x86-64 program (no OS, no libc) that `scripts/avx512_emu.py` loads into an emulated CPU
//! (Bochs's, through the `bochscpu` Python package): no machine of this project executes
//! AVX-512, and qemu's user mode cannot either.
//!
//! Entry: `_start(report)` with `report` pointing at a zeroed [`Report`] (the loader passes
//! it in `rdi`); the program fills it, writes [`MAGIC`] last and stops with `hlt` (a #GP
//! in user mode, which ends the emulation). A report without the magic means the program
//! did not finish (an instruction the emulated CPU lacks, a fault, a panic).
//!
//! Cases: random blocks (weights over their whole byte range, including Q8_0's −128 that
//! only a hostile file holds; activation bytes in −127..=127 as Modula's quantiser makes
//! them; scales of mixed signs and magnitudes, some zero) for every length 1..=48 blocks
//! with several seeds plus longer rows, so both the two-block steps and the odd last block
//! run. Each result is compared with the scalar reference within a bound on f32 summation
//! order (the integer block sums are exact in both), the four-row kernels bit for bit with
//! the one-row kernel, and — on a CPU with VNNI — the VNNI kernels bit for bit with the
//! AVX-512BW ones (the same exact i32 lanes). A self-check confirms the bound rejects a
//! result off by 1 % of the products' magnitude.
#![no_std]
#![no_main]

#[cfg(feature = "dispatch")]
mod dispatch;

use core::arch::x86_64::__cpuid_count;
use half::f16;
use modula_quant::kernels::{self as qk, avx512 as k5};
use modula_quant::{BlockQ4_0, BlockQ8_0};

/// Written last: the program ran to its end.
const MAGIC: u64 = 0x4d4f_4455_4c41_3531; // "MODULA51"

/// What the program found; `u64` fields, read by the loader at fixed offsets.
#[repr(C)]
pub struct Report {
    magic: u64,
    /// CPUID leaf 7 (sub-leaf 0) EBX and ECX as the program saw them.
    leaf7_ebx: u64,
    leaf7_ecx: u64,
    /// Comparisons made and failed.
    cases: u64,
    failures: u64,
    /// The first failure: kernel id (see `Kernel`), blocks, got / want / bound (f32 bits).
    first_kernel: u64,
    first_len: u64,
    first_got: u64,
    first_want: u64,
    first_bound: u64,
    /// 1 when the VNNI kernels ran.
    vnni_ran: u64,
    /// 1 when the self-check (a perturbed result is rejected) passed.
    selfcheck: u64,
    /// The AVX-512 sub-level `modula-core`'s dispatch used (1 = BW, 2 = VNNI; 0 when the
    /// program was built without the `dispatch` feature or without AVX-512).
    dispatch: u64,
}

/// Kernel ids in the report.
#[derive(Clone, Copy)]
#[repr(u64)]
enum Kernel {
    DotQ8Q8 = 1,
    DotQ4Q8 = 2,
    Dot4Q8Q8 = 3,
    Dot4Q4Q8 = 4,
    DotQ8Q8Vnni = 5,
    DotQ4Q8Vnni = 6,
    Dot4Q8Q8Vnni = 7,
    Dot4Q4Q8Vnni = 8,
    DotQ8F32 = 9,
    DotQ4F32 = 10,
    AxpyQ8 = 11,
    AxpyQ4 = 12,
    /// `modula-core`'s `linear_mode` with quantised activations, AVX2 level vs scalar.
    #[allow(dead_code)] // without the `dispatch` feature
    Linear = 13,
    /// The same with f32 activations.
    #[allow(dead_code)]
    LinearF32 = 14,
    /// One row of `linear_mode` bit for bit against the AVX-512 kernel it must use.
    #[allow(dead_code)]
    LinearBits = 15,
    DequantQ8 = 16,
    DequantQ4 = 17,
    /// `modula-core`'s `widen_row_with` at `Isa::Avx2` vs the AVX-512 dequantiser.
    #[allow(dead_code)]
    WidenRow = 18,
}

pub(crate) const MAX_BLOCKS: usize = 130;

pub(crate) struct Rng(u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [-1, 1).
    pub(crate) fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / 8_388_608.0 - 1.0
    }
    /// A block scale: zero one time in 16, else ±(2^-12 .. 2) spread over magnitudes.
    pub(crate) fn scale(&mut self) -> f16 {
        let r = self.next();
        if r.is_multiple_of(16) {
            return f16::ZERO;
        }
        let e = ((r >> 8) % 13) as i32 - 12;
        let m = 1.0 + ((r >> 16) % 1024) as f32 / 1024.0;
        let s = if (r >> 32) & 1 == 1 { -1.0 } else { 1.0 };
        f16::from_f32(s * m * pow2(e))
    }
}

fn pow2(e: i32) -> f32 {
    f32::from_bits(((127 + e) as u32) << 23)
}

struct Case {
    w8: [[BlockQ8_0; MAX_BLOCKS]; 4],
    w4: [[BlockQ4_0; MAX_BLOCKS]; 4],
    x8: [BlockQ8_0; MAX_BLOCKS],
    xf: [f32; 32 * MAX_BLOCKS],
    y0: [f32; 32 * MAX_BLOCKS],
    y1: [f32; 32 * MAX_BLOCKS],
    y2: [f32; 32 * MAX_BLOCKS],
}

pub(crate) const ZERO8: BlockQ8_0 = BlockQ8_0 {
    d: f16::ZERO,
    qs: [0; 32],
};
pub(crate) const ZERO4: BlockQ4_0 = BlockQ4_0 {
    d: f16::ZERO,
    qs: [0; 16],
};

static mut CASE: Case = Case {
    w8: [[ZERO8; MAX_BLOCKS]; 4],
    w4: [[ZERO4; MAX_BLOCKS]; 4],
    x8: [ZERO8; MAX_BLOCKS],
    xf: [0.0; 32 * MAX_BLOCKS],
    y0: [0.0; 32 * MAX_BLOCKS],
    y1: [0.0; 32 * MAX_BLOCKS],
    y2: [0.0; 32 * MAX_BLOCKS],
};

fn fill(c: &mut Case, rng: &mut Rng) {
    for r in 0..4 {
        for b in c.w8[r].iter_mut() {
            b.d = rng.scale();
            for q in b.qs.iter_mut() {
                *q = rng.byte() as i8;
            }
        }
        for b in c.w4[r].iter_mut() {
            b.d = rng.scale();
            for q in b.qs.iter_mut() {
                *q = rng.byte();
            }
        }
    }
    for b in c.x8.iter_mut() {
        b.d = f16::from_f32(rng.scale().to_f32().abs());
        for q in b.qs.iter_mut() {
            // -127..=127, as quantize_row_q8_0 makes activation bytes
            *q = ((rng.byte() % 255) as i32 - 127) as i8;
        }
    }
    for v in c.xf.iter_mut().chain(c.y0.iter_mut()) {
        *v = rng.unit();
    }
}

/// `Σ |d_w·d_x·q_w·q_x|` (or with f32 activations): the scale of the rounding errors.
fn mag_q8(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut m = 0f32;
    for (b, xb) in w.iter().zip(x) {
        let s: i32 =
            b.qs.iter()
                .zip(&xb.qs)
                .map(|(&a, &c)| (i32::from(a) * i32::from(c)).abs())
                .sum();
        m += (b.d.to_f32() * xb.d.to_f32()).abs() * s as f32;
    }
    m
}

fn mag_q4(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut m = 0f32;
    for (b, xb) in w.iter().zip(x) {
        let mut s = 0i32;
        for (j, &byte) in b.qs.iter().enumerate() {
            s += ((i32::from(byte & 15) - 8) * i32::from(xb.qs[j])).abs();
            s += ((i32::from(byte >> 4) - 8) * i32::from(xb.qs[j + 16])).abs();
        }
        m += (b.d.to_f32() * xb.d.to_f32()).abs() * s as f32;
    }
    m
}

fn mag_f32(deq: impl Fn(usize) -> f32, x: &[f32]) -> f32 {
    x.iter().enumerate().map(|(i, &v)| (deq(i) * v).abs()).sum()
}

/// The bound on two f32 summation orders of `terms` terms of total magnitude `mag`
/// (`terms · 2^-23 · mag`, doubled, plus the smallest normal).
pub(crate) fn bound(terms: usize, mag: f32) -> f32 {
    2.0 * (terms as f32 + 16.0) * f32::EPSILON * mag + f32::MIN_POSITIVE
}

pub(crate) struct Checker<'a> {
    r: &'a mut Report,
}

impl Checker<'_> {
    pub(crate) fn check(&mut self, k: Kernel, len: usize, got: f32, want: f32, tol: f32) {
        self.r.cases += 1;
        let ok = got.is_finite() && (got - want).abs() <= tol;
        if !ok {
            self.fail(k, len, got, want, tol);
        }
    }
    pub(crate) fn same(&mut self, k: Kernel, len: usize, got: f32, want: f32) {
        self.r.cases += 1;
        if got.to_bits() != want.to_bits() {
            self.fail(k, len, got, want, 0.0);
        }
    }
    pub(crate) fn fail(&mut self, k: Kernel, len: usize, got: f32, want: f32, tol: f32) {
        if self.r.failures == 0 {
            self.r.first_kernel = k as u64;
            self.r.first_len = len as u64;
            self.r.first_got = u64::from(got.to_bits());
            self.r.first_want = u64::from(want.to_bits());
            self.r.first_bound = u64::from(tol.to_bits());
        }
        self.r.failures += 1;
    }
}

pub(crate) fn deq_q8(w: &[BlockQ8_0], i: usize) -> f32 {
    w[i / 32].d.to_f32() * f32::from(w[i / 32].qs[i % 32])
}

pub(crate) fn deq_q4(w: &[BlockQ4_0], i: usize) -> f32 {
    let (b, j) = (&w[i / 32], i % 32);
    let nib = if j < 16 {
        b.qs[j] & 15
    } else {
        b.qs[j - 16] >> 4
    };
    b.d.to_f32() * (i32::from(nib) - 8) as f32
}

fn run_case(c: &mut Case, n: usize, vnni: bool, ck: &mut Checker<'_>) {
    let x8 = &c.x8[..n];
    let rows8 = [0, 1, 2, 3].map(|r| &c.w8[r][..n]);
    let rows4 = [0, 1, 2, 3].map(|r| &c.w4[r][..n]);
    // SAFETY: the loader checked (CPUID) that the emulated CPU has AVX-512F/BW/VL, FMA and
    // F16C (and VNNI when `vnni`); the slices have n blocks each (x has 32·n values).
    unsafe {
        let four8 = k5::dot4_q8_0_q8_0(rows8, x8);
        let four4 = k5::dot4_q4_0_q8_0(rows4, x8);
        for r in 0..4 {
            let want8 = qk::dot_q8_0_q8_0(rows8[r], x8);
            let got8 = k5::dot_q8_0_q8_0(rows8[r], x8);
            ck.check(
                Kernel::DotQ8Q8,
                n,
                got8,
                want8,
                bound(n, mag_q8(rows8[r], x8)),
            );
            ck.same(Kernel::Dot4Q8Q8, n, four8[r], got8);
            let want4 = qk::dot_q4_0_q8_0(rows4[r], x8);
            let got4 = k5::dot_q4_0_q8_0(rows4[r], x8);
            ck.check(
                Kernel::DotQ4Q8,
                n,
                got4,
                want4,
                bound(n, mag_q4(rows4[r], x8)),
            );
            ck.same(Kernel::Dot4Q4Q8, n, four4[r], got4);
            if vnni {
                ck.same(
                    Kernel::DotQ8Q8Vnni,
                    n,
                    k5::dot_q8_0_q8_0_vnni(rows8[r], x8),
                    got8,
                );
                ck.same(
                    Kernel::DotQ4Q8Vnni,
                    n,
                    k5::dot_q4_0_q8_0_vnni(rows4[r], x8),
                    got4,
                );
            }
        }
        if vnni {
            let v8 = k5::dot4_q8_0_q8_0_vnni(rows8, x8);
            let v4 = k5::dot4_q4_0_q8_0_vnni(rows4, x8);
            for r in 0..4 {
                ck.same(Kernel::Dot4Q8Q8Vnni, n, v8[r], four8[r]);
                ck.same(Kernel::Dot4Q4Q8Vnni, n, v4[r], four4[r]);
            }
        }

        // f32 activations
        let xf = &c.xf[..32 * n];
        let (w8, w4) = (rows8[0], rows4[0]);
        let m8 = mag_f32(|i| deq_q8(w8, i), xf);
        let m4 = mag_f32(|i| deq_q4(w4, i), xf);
        ck.check(
            Kernel::DotQ8F32,
            n,
            k5::dot_q8_0(w8, xf),
            qk::dot_q8_0(w8, xf),
            bound(32 * n, m8),
        );
        ck.check(
            Kernel::DotQ4F32,
            n,
            k5::dot_q4_0(w4, xf),
            qk::dot_q4_0(w4, xf),
            bound(32 * n, m4),
        );
        // dequantisation: the scalar dequantiser's bits
        for (k, q4) in [(Kernel::DequantQ8, false), (Kernel::DequantQ4, true)] {
            let m = 32 * n;
            if q4 {
                modula_quant::quantize::dequantize_row_q4_0(w4, &mut c.y1[..m]);
                k5::dequantize_q4_0(w4, &mut c.y2[..m]);
            } else {
                modula_quant::quantize::dequantize_row_q8_0(w8, &mut c.y1[..m]);
                k5::dequantize_q8_0(w8, &mut c.y2[..m]);
            }
            for i in 0..m {
                ck.same(k, n, c.y2[i], c.y1[i]);
            }
        }
        let a = c.xf[0] * 3.0;
        for (k, axpy) in [(Kernel::AxpyQ8, 8), (Kernel::AxpyQ4, 4)] {
            let m = 32 * n;
            c.y1[..m].copy_from_slice(&c.y0[..m]);
            c.y2[..m].copy_from_slice(&c.y0[..m]);
            if axpy == 8 {
                qk::axpy_q8_0(a, w8, &mut c.y1[..m]);
                k5::axpy_q8_0(a, w8, &mut c.y2[..m]);
            } else {
                qk::axpy_q4_0(a, w4, &mut c.y1[..m]);
                k5::axpy_q4_0(a, w4, &mut c.y2[..m]);
            }
            for i in 0..m {
                let term = if axpy == 8 {
                    deq_q8(w8, i)
                } else {
                    deq_q4(w4, i)
                };
                let tol = bound(2, (a * term).abs() + c.y0[i].abs());
                ck.check(k, n, c.y2[i], c.y1[i], tol);
            }
        }
    }
}

fn run(report: &mut Report) {
    let leaf7 = __cpuid_count(7, 0);
    report.leaf7_ebx = u64::from(leaf7.ebx);
    report.leaf7_ecx = u64::from(leaf7.ecx);
    let has = |bit: u32| leaf7.ebx & (1 << bit) != 0;
    // AVX-512F (16), BW (30), VL (31); refuse to run anything without them
    if !(has(16) && has(30) && has(31)) {
        return;
    }
    let vnni = leaf7.ecx & (1 << 11) != 0;
    report.vnni_ran = u64::from(vnni);
    // SAFETY: the one reference to the static, in a single-threaded program.
    let c = unsafe { &mut *core::ptr::addr_of_mut!(CASE) };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ck = Checker { r: report };
    let mut lens = [0usize; 48 * 3 + 6];
    for (i, l) in lens.iter_mut().take(48 * 3).enumerate() {
        *l = 1 + i % 48;
    }
    lens[48 * 3..].copy_from_slice(&[63, 64, 65, 127, 128, MAX_BLOCKS]);
    for &n in &lens {
        fill(c, &mut rng);
        run_case(c, n, vnni, &mut ck);
    }
    // self-check: a result off by 1 % of the magnitude must fail the bound
    let (x8, w8) = (&c.x8[..40], &c.w8[0][..40]);
    let m = mag_q8(w8, x8);
    let want = qk::dot_q8_0_q8_0(w8, x8);
    let off = want + 0.01 * m;
    let rejected = m > 0.0 && (off - want).abs() > bound(40, m);
    ck.r.selfcheck = u64::from(rejected);
    #[cfg(feature = "dispatch")]
    {
        ck.r.dispatch = dispatch::level();
        dispatch::run(&mut rng, &mut ck);
    }
}

/// The program's entry (the loader sets `rdi` = the report, `rsp` = the top of a stack).
///
/// # Safety
/// `report` points at a writable, zeroed [`Report`].
#[no_mangle]
pub unsafe extern "C" fn _start(report: *mut Report) -> ! {
    // SAFETY: the loader's contract.
    let r = unsafe { &mut *report };
    run(r);
    r.magic = MAGIC;
    loop {
        // SAFETY: `hlt` at user privilege raises #GP, which the loader takes as the end.
        unsafe { core::arch::asm!("hlt") };
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        // SAFETY: as in `_start`; the report then lacks the magic.
        unsafe { core::arch::asm!("hlt") };
    }
}

/// The precompiled `alloc` refers to the unwinder's personality routine; with
/// `panic = "abort"` nothing unwinds, so it is never called.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// A bump allocator over a static arena (single-threaded; memory is never reused): enough
/// for the few buffers `modula-core` may allocate in the products run here.
struct Bump;
const ARENA: usize = 1 << 20;
static mut HEAP: [u8; ARENA] = [0; ARENA];
static mut USED: usize = 0;
// SAFETY: hands out disjoint, aligned ranges of the arena (or null when it is full); the
// program has one thread.
unsafe impl core::alloc::GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: core::alloc::Layout) -> *mut u8 {
        // SAFETY: single-threaded access to the statics.
        unsafe {
            let base = core::ptr::addr_of_mut!(HEAP).cast::<u8>();
            let start = (base as usize + USED).next_multiple_of(l.align()) - base as usize;
            if start + l.size() > ARENA {
                return core::ptr::null_mut();
            }
            USED = start + l.size();
            base.add(start)
        }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: core::alloc::Layout) {}
}
#[global_allocator]
static ALLOC: Bump = Bump;

// The freestanding link has no libc: the memory functions the compiler may call.
// Written with volatile accesses so they do not compile into calls to themselves.

/// # Safety
/// As C's `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
    }
    d
}

/// # Safety
/// As C's `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
    if (d as usize) < (s as usize) {
        // SAFETY: the caller's contract.
        unsafe { memcpy(d, s, n) }
    } else {
        for i in (0..n).rev() {
            // SAFETY: the caller's contract.
            unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
        }
        d
    }
}

/// # Safety
/// As C's `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        unsafe { d.add(i).write_volatile(c as u8) };
    }
    d
}

/// # Safety
/// As C's `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller's contract.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memcmp(a, b, n) }
}
