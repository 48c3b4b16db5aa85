//! `y = x · Wᵀ + b` for a few rows of `x` (decode: 1 row; small batches: up to
//! [`SKINNY_MAX_ROWS`]) with our own memory-streaming kernels, and for many rows through
//! `matrixmultiply`.
//!
//! Layout (the one decision everything else follows): `W` is `[n_out, n_in]` row-major
//! (`nn.Linear`'s layout), row stride `ld >= n_in`. One output is one dot product over one
//! contiguous weight row, so a decode step reads each weight byte exactly once, in order,
//! and a nested output width (the first `n` rows) is a contiguous prefix of the tensor. A
//! nested input width (the first `k` columns) is the same matrix with `cols = k` and the
//! full `ld`: no copy.
//!
//! Weights may be F32, F16 or BF16 (widened to f32 in registers; accumulation is f32), or
//! GGUF Q8_0 / Q4_0 blocks (`modula-quant`'s kernels: one block-dot per output in the
//! skinny path, dequantised panels for many rows). Quantised matrices need whole blocks:
//! `cols`, `ld` and every nested width a multiple of 32.

#[cfg(target_arch = "x86_64")]
use super::isa::Avx512;
use super::isa::{self, Isa};
use super::par;
use super::{exactly, need, KernelError};
use half::{bf16, f16};
use modula_quant::blocks::{BlockQ4K, BlockQ4_0, BlockQ6K, BlockQ8K, BlockQ8_0, QK_K};
use modula_quant::kernels as qk;
use modula_quant::kernels::Q8Oct;

/// Row counts up to this use the skinny kernels; more rows go to `matrixmultiply`
/// (measured crossover on the reference machine: `docs/results.md`).
pub const SKINNY_MAX_ROWS: usize = 16;

/// A one-row product over at least this many weights is split across threads (see
/// [`super::par`]). With rayon's sleeping workers a 1 M-weight product (≈ 80 µs) gained
/// nothing from a second thread on the 2-core reference machine and 4 M was the
/// threshold; with the kernels' own team (helpers poll between products) 1 M-weight
/// products gain: 2-thread decode of d-1024 models +19–50 % over a 4 M threshold
/// (`docs/results.md`, "Two threads in decode"); hence 1 M.
pub const PAR_MIN_WEIGHTS: usize = 1 << 20;

/// A one-row [`matmul_rows`] over at least [`PAR_MIN_WEIGHTS`] weights sums this many
/// groups of the matrix's rows separately (in parallel when threads allow) and then adds
/// the partial outputs in order — the same grouping for every thread count.
pub const ROWS_GROUPS: usize = 4;

/// Partial outputs of [`ROWS_GROUPS`] up to this many values live on the stack (outputs
/// up to 4,096 wide: decode steps allocate nothing); wider ones use the heap.
const ROWS_GROUPS_STACK: usize = ROWS_GROUPS * 4096;

/// A many-row product (`m > SKINNY_MAX_ROWS`) with at least this many multiply-adds
/// (`m·n·k`) is split across threads by blocks of output rows.
pub const PAR_MIN_FLOPS: usize = 1 << 20;

/// The row walk shared by every ISA's skinny-product kernel: output tiles of up to 3 rows of
/// `x` by 4 rows of `w`, each handed to the ISA's `tile::<T, R, C>` (one monomorphised
/// register-tile per shape). `tiled_rows!(#[attrs] fn rows<T: Trait>, tile)` defines
/// `unsafe fn rows(x, ldx, m, w, ldw, n, k, y, ldy)`; callers guarantee the ISA and that
/// `x` holds `m` rows of `k` (ldx apart), `w` `n` rows of `k` (ldw apart), `y` `m` rows of
/// `n` (ldy apart).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_macros)
)]
macro_rules! tiled_rows {
    ($(#[$attr:meta])* fn $name:ident<T: $bound:path>, $tile:ident) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name<T: $bound>(
            x: &[f32],
            ldx: usize,
            m: usize,
            w: *const T,
            ldw: usize,
            n: usize,
            k: usize,
            y: &mut [f32],
            ldy: usize,
        ) {
            let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
            let mut i = 0;
            while i < m {
                let r = (m - i).min(3);
                let mut j = 0;
                while j < n {
                    let c = (n - j).min(4);
                    // SAFETY: rows i..i+r of x, rows j..j+c of w and the r x c block of y
                    // are in bounds (the caller's extents); the ISA is the caller's promise.
                    unsafe {
                        let (xi, wj, yij) = (xp.add(i * ldx), w.add(j * ldw), yp.add(i * ldy + j));
                        match (r, c) {
                            (3, 4) => $tile::<T, 3, 4>(xi, ldx, wj, ldw, k, yij, ldy),
                            (3, 3) => $tile::<T, 3, 3>(xi, ldx, wj, ldw, k, yij, ldy),
                            (3, 2) => $tile::<T, 3, 2>(xi, ldx, wj, ldw, k, yij, ldy),
                            (3, _) => $tile::<T, 3, 1>(xi, ldx, wj, ldw, k, yij, ldy),
                            (2, 4) => $tile::<T, 2, 4>(xi, ldx, wj, ldw, k, yij, ldy),
                            (2, 3) => $tile::<T, 2, 3>(xi, ldx, wj, ldw, k, yij, ldy),
                            (2, 2) => $tile::<T, 2, 2>(xi, ldx, wj, ldw, k, yij, ldy),
                            (2, _) => $tile::<T, 2, 1>(xi, ldx, wj, ldw, k, yij, ldy),
                            (_, 4) => $tile::<T, 1, 4>(xi, ldx, wj, ldw, k, yij, ldy),
                            (_, 3) => $tile::<T, 1, 3>(xi, ldx, wj, ldw, k, yij, ldy),
                            (_, 2) => $tile::<T, 1, 2>(xi, ldx, wj, ldw, k, yij, ldy),
                            (_, _) => $tile::<T, 1, 1>(xi, ldx, wj, ldw, k, yij, ldy),
                        }
                    }
                    j += c;
                }
                i += r;
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use tiled_rows;

/// Borrowed weight elements.
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    /// f32
    F32(&'a [f32]),
    /// IEEE half
    F16(&'a [f16]),
    /// bfloat16
    BF16(&'a [bf16]),
    /// GGUF Q8_0 blocks (32 weights each, row-major; rows start on block boundaries)
    Q8_0(&'a [BlockQ8_0]),
    /// GGUF Q4_0 blocks (32 weights each, row-major; rows start on block boundaries)
    Q4_0(&'a [BlockQ4_0]),
    /// GGUF Q4_K super-blocks (256 weights each; rows start on super-block boundaries)
    Q4K(&'a [BlockQ4K]),
    /// GGUF Q6_K super-blocks (256 weights each)
    Q6K(&'a [BlockQ6K]),
}

/// Weights per block of the quantised formats.
const QB: usize = 32;

impl<'a> WeightData<'a> {
    /// The elements from `off` on (empty if past the end).
    fn offset(self, off: usize) -> WeightData<'a> {
        match self {
            WeightData::F32(s) => WeightData::F32(s.get(off..).unwrap_or_default()),
            WeightData::F16(s) => WeightData::F16(s.get(off..).unwrap_or_default()),
            WeightData::BF16(s) => WeightData::BF16(s.get(off..).unwrap_or_default()),
            // offsets into quantised data are block-aligned (checked by MatRef::new and
            // the callers' alignment of row and column blocks)
            WeightData::Q8_0(s) => WeightData::Q8_0(s.get(off / QB..).unwrap_or_default()),
            WeightData::Q4_0(s) => WeightData::Q4_0(s.get(off / QB..).unwrap_or_default()),
            WeightData::Q4K(s) => WeightData::Q4K(s.get(off / QK_K..).unwrap_or_default()),
            WeightData::Q6K(s) => WeightData::Q6K(s.get(off / QK_K..).unwrap_or_default()),
        }
    }

    /// Weights per block (1 for the float types).
    pub fn block_len(&self) -> usize {
        match self {
            WeightData::F32(_) | WeightData::F16(_) | WeightData::BF16(_) => 1,
            WeightData::Q8_0(_) | WeightData::Q4_0(_) => QB,
            WeightData::Q4K(_) | WeightData::Q6K(_) => QK_K,
        }
    }

    /// Whether the data are K-quant super-blocks (dequantised a super-block at a time).
    pub fn is_kquant(&self) -> bool {
        matches!(self, WeightData::Q4K(_) | WeightData::Q6K(_))
    }

    /// Whether the data are block-quantised.
    pub fn is_quantized(&self) -> bool {
        matches!(self, WeightData::Q8_0(_) | WeightData::Q4_0(_))
    }

    /// Whether the data are in blocks of any size (32-weight or 256-weight).
    pub fn is_blocked(&self) -> bool {
        self.block_len() > 1
    }

    fn len(&self) -> usize {
        match self {
            WeightData::F32(s) => s.len(),
            WeightData::F16(s) => s.len(),
            WeightData::BF16(s) => s.len(),
            WeightData::Q8_0(s) => s.len() * QB,
            WeightData::Q4_0(s) => s.len() * QB,
            WeightData::Q4K(s) => s.len() * QK_K,
            WeightData::Q6K(s) => s.len() * QK_K,
        }
    }
}

/// A borrowed `[rows, cols]` weight matrix with row stride `ld` (elements).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: WeightData<'a>,
    rows: usize,
    cols: usize,
    ld: usize,
}

impl<'a> MatRef<'a> {
    /// A matrix over `data` (`rows` rows of `cols` elements, rows `ld` apart).
    pub fn new(
        data: WeightData<'a>,
        rows: usize,
        cols: usize,
        ld: usize,
    ) -> Result<Self, KernelError> {
        need("MatRef", "row stride (>= cols)", cols, ld)?;
        let bl = data.block_len();
        if bl > 1 {
            exactly(
                "MatRef",
                "cols % block length (quantised rows are whole blocks)",
                0,
                cols % bl,
            )?;
            exactly(
                "MatRef",
                "ld % block length (quantised rows are whole blocks)",
                0,
                ld % bl,
            )?;
        }
        let len = if rows == 0 { 0 } else { (rows - 1) * ld + cols };
        need("MatRef", "data length", len, data.len())?;
        Ok(MatRef {
            data,
            rows,
            cols,
            ld,
        })
    }

    /// A dense f32 matrix.
    pub fn f32(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        Self::new(WeightData::F32(data), rows, cols, cols)
    }

    /// The leading `rows x cols` block (a nested sub-matrix; no copy).
    pub fn prefix(&self, rows: usize, cols: usize) -> Result<Self, KernelError> {
        need("MatRef::prefix", "available rows", rows, self.rows)?;
        need("MatRef::prefix", "available cols", cols, self.cols)?;
        let bl = self.data.block_len();
        if bl > 1 {
            exactly(
                "MatRef::prefix",
                "cols % block length (whole blocks)",
                0,
                cols % bl,
            )?;
        }
        Ok(MatRef {
            rows,
            cols,
            ..*self
        })
    }

    /// Rows `r0..r0 + rows` as their own matrix (no copy), checked.
    pub fn rows_range(&self, r0: usize, rows: usize) -> Result<Self, KernelError> {
        need("MatRef::rows_range", "available rows", r0 + rows, self.rows)?;
        Ok(self.row_block(r0, rows))
    }

    /// Rows `j0..j0 + rows` as their own matrix (caller guarantees the range).
    pub(crate) fn row_block(&self, j0: usize, rows: usize) -> MatRef<'a> {
        let off = j0 * self.ld;
        MatRef {
            data: self.data.offset(off),
            rows,
            ..*self
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row stride.
    pub fn ld(&self) -> usize {
        self.ld
    }
    /// The elements and row stride when the weights are f32 (what a training step
    /// multiplies by), `None` for the other formats.
    pub fn as_f32(&self) -> Option<(&'a [f32], usize)> {
        match self.data {
            WeightData::F32(w) => Some((w, self.ld)),
            _ => None,
        }
    }
    /// The elements.
    pub fn data(&self) -> WeightData<'a> {
        self.data
    }
}

/// `y[i, j] = Σ_k x[i, k] · w[j, k] + bias[j]` for `i < m`, `j < w.rows()`, `k < w.cols()`.
///
/// * `x`: `[m, w.cols()]`, rows `ldx` apart;
/// * `bias`: `None` or `[w.rows()]`;
/// * `y`: `[m, w.rows()]`, rows `ldy` apart (overwritten).
///
/// Uses [`isa::active`]; allocates only for F16/BF16 weights with more than
/// [`SKINNY_MAX_ROWS`] rows (a converted weight panel).
pub fn linear(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) -> Result<(), KernelError> {
    linear_with(isa::active(), x, ldx, m, w, bias, y, ldy)
}

/// [`linear`] with an explicit SIMD level (which must be supported: see [`Isa::is_supported`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_with(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) -> Result<(), KernelError> {
    linear_mode(isa, quantized_activations(), x, ldx, m, w, bias, y, ldy)
}

/// [`linear_with`] with an explicit choice of quantised activations for Q8_0/Q4_0 weights
/// (see [`set_quantized_activations`]; ignored for other weight types).
#[allow(clippy::too_many_arguments)]
pub fn linear_mode(
    isa: Isa,
    qact: bool,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) -> Result<(), KernelError> {
    let (n, k) = (w.rows, w.cols);
    need("linear", "ldx (>= k)", k, ldx)?;
    need("linear", "ldy (>= n)", n, ldy)?;
    if m > 0 {
        need("linear", "x length", (m - 1) * ldx + k, x.len())?;
        need("linear", "y length", (m - 1) * ldy + n, y.len())?;
    }
    if let Some(b) = bias {
        exactly("linear", "bias length", n, b.len())?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let isa = if isa.is_supported() { isa } else { Isa::Scalar };
    if m > SKINNY_MAX_ROWS {
        many_rows(x, ldx, m, w, y, ldy);
    } else if m == 1 && n * k >= PAR_MIN_WEIGHTS && par::threads() > 1 {
        // Decode: each thread streams its own block of weight rows into its own outputs.
        let chunk = par::chunk_for(n, 4, 64);
        par::for_each_chunk_mut(&mut y[..n], chunk, |ci, ys| {
            let sub = w.row_block(ci * chunk, ys.len());
            skinny(isa, qact, x, ldx, 1, &sub, ys, ys.len());
        });
    } else {
        skinny(isa, qact, x, ldx, m, w, y, ldy);
    }
    if let Some(b) = bias {
        for i in 0..m {
            for (yv, bv) in y[i * ldy..i * ldy + n].iter_mut().zip(b) {
                *yv += bv;
            }
        }
    }
    Ok(())
}

/// Dispatch a checked skinny product to the variant for `isa`.
#[allow(clippy::too_many_arguments)]
fn skinny(
    isa: Isa,
    qact: bool,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    if w.data.is_kquant() {
        if qact && skinny_kquant_q8k(isa, x, ldx, m, w, y, ldy) {
            return;
        }
        return skinny_kquant(x, ldx, m, w, y, ldy);
    }
    if w.data.is_quantized() {
        return skinny_quant(isa, qact, x, ldx, m, w, y, ldy);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is supported (checked by the caller), i.e. AVX2+FMA+F16C exist;
        // shapes were checked by `linear_with`.
        Isa::Avx2 => unsafe { super::x86_64::avx2::linear(x, ldx, m, w, y, ldy) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is supported (checked by the caller); shapes checked by `linear_with`.
        Isa::Neon => unsafe { super::aarch64::neon::linear(x, ldx, m, w, y, ldy) },
        _ => linear_scalar(x, ldx, m, w, y, ldy),
    }
}

/// One row's blocks of a quantised matrix.
enum QRow<'a> {
    Q8(&'a [BlockQ8_0]),
    Q4(&'a [BlockQ4_0]),
}

fn qrow<'a>(w: &MatRef<'a>, j: usize) -> QRow<'a> {
    let (b0, nb) = (j * w.ld / QB, w.cols / QB);
    match w.data {
        WeightData::Q8_0(d) => QRow::Q8(&d[b0..b0 + nb]),
        WeightData::Q4_0(d) => QRow::Q4(&d[b0..b0 + nb]),
        _ => QRow::Q8(&[]),
    }
}

/// `Σ dequant(row)·x` with the variant for `isa` (supported; `x` holds the row's length).
fn qdot(isa: Isa, row: &QRow<'_>, x: &[f32]) -> f32 {
    match (isa, row) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F (+ the AVX2 level's FMA, F16C) detected; x holds 32 per block.
        (Isa::Avx2, QRow::Q8(b)) if isa::avx512() != Avx512::Off => unsafe {
            qk::avx512::dot_q8_0(b, x)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q4(b)) if isa::avx512() != Avx512::Off => unsafe {
            qk::avx512::dot_q4_0(b, x)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); x holds 32 per block.
        (Isa::Avx2, QRow::Q8(b)) => unsafe { qk::avx2::dot_q8_0(b, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q4(b)) => unsafe { qk::avx2::dot_q4_0(b, x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); x holds 32 per block.
        (Isa::Neon, QRow::Q8(b)) => unsafe { qk::neon::dot_q8_0(b, x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b)) => unsafe { qk::neon::dot_q4_0(b, x) },
        (_, QRow::Q8(b)) => qk::dot_q8_0(b, x),
        (_, QRow::Q4(b)) => qk::dot_q4_0(b, x),
    }
}

/// `y += a·dequant(row)` with the variant for `isa` (supported; `y` holds the row).
fn qaxpy(isa: Isa, a: f32, row: &QRow<'_>, y: &mut [f32]) {
    // (the AVX-512 versions do per value what the AVX2 ones do — one FMA of the same
    // operands — so the 4-row AVX2 kernel stays bit-identical to four of these)
    match (isa, row) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F (+ the AVX2 level's FMA, F16C) detected; y holds 32 per block.
        (Isa::Avx2, QRow::Q8(b)) if isa::avx512() != Avx512::Off => unsafe {
            qk::avx512::axpy_q8_0(a, b, y)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q4(b)) if isa::avx512() != Avx512::Off => unsafe {
            qk::avx512::axpy_q4_0(a, b, y)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); y holds 32 per block.
        (Isa::Avx2, QRow::Q8(b)) => unsafe { qk::avx2::axpy_q8_0(a, b, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q4(b)) => unsafe { qk::avx2::axpy_q4_0(a, b, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); y holds 32 per block.
        (Isa::Neon, QRow::Q8(b)) => unsafe { qk::neon::axpy_q8_0(a, b, y) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b)) => unsafe { qk::neon::axpy_q4_0(a, b, y) },
        (_, QRow::Q8(b)) => qk::axpy_q8_0(a, b, y),
        (_, QRow::Q4(b)) => qk::axpy_q4_0(a, b, y),
    }
}

/// Four rows' [`qaxpy`] (in row order) with a 4-row kernel where `isa` has one (AVX2);
/// false, with `y` untouched, otherwise.
#[allow(unused_variables)]
fn qaxpy4(isa: Isa, a: [f32; 4], rows: &[QRow<'_>; 4], y: &mut [f32]) -> bool {
    match (isa, rows) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, [QRow::Q8(p), QRow::Q8(q), QRow::Q8(r), QRow::Q8(s)]) => {
            // SAFETY: AVX2+FMA+F16C supported (checked by the caller); rows of one matrix
            // have equal block counts and `y` holds a row.
            unsafe { qk::avx2::axpy4_q8_0(a, [p, q, r, s], y) };
            true
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, [QRow::Q4(p), QRow::Q4(q), QRow::Q4(r), QRow::Q4(s)]) => {
            // SAFETY: as above.
            unsafe { qk::avx2::axpy4_q4_0(a, [p, q, r, s], y) };
            true
        }
        _ => false,
    }
}

static QUANTIZED_ACTIVATIONS: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(true);

/// Choose how the skinny products over Q8_0/Q4_0 and K-quant weights treat the
/// activations: `true` (the default, as llama.cpp does) quantises each activation row to
/// Q8_0 (Q8_K for Q4_K/Q6_K weights) once and uses integer block dot products — faster,
/// at the cost of the activations' own rounding (≈ 0.4 % relative per value); `false`
/// keeps them f32 (dequantise-and-FMA). Many-row products always dequantise weight panels
/// and stay f32.
pub fn set_quantized_activations(on: bool) {
    QUANTIZED_ACTIVATIONS.store(on, core::sync::atomic::Ordering::Relaxed);
}

/// See [`set_quantized_activations`].
pub fn quantized_activations() -> bool {
    QUANTIZED_ACTIVATIONS.load(core::sync::atomic::Ordering::Relaxed)
}

/// `quantize_row_q8_0(x, out)` with the SIMD quantiser of `isa` (bit-identical to the
/// scalar code, tested in `modula-quant`): false where it fails (a value not finite).
/// `x.len() == 32 · out.len()`.
#[allow(unused_variables)]
fn quantize_act(isa: Isa, x: &[f32], out: &mut [BlockQ8_0]) -> bool {
    debug_assert_eq!(x.len(), QB * out.len());
    if x.len() != QB * out.len() {
        return modula_quant::quantize::quantize_row_q8_0(x, out).is_ok();
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller's `isa`); lengths above.
        Isa::Avx2 => unsafe { qk::avx2::quantize_q8_0(x, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller's `isa`); lengths above.
        Isa::Neon => unsafe { qk::neon::quantize_q8_0(x, out) },
        _ => modula_quant::quantize::quantize_row_q8_0(x, out).is_ok(),
    }
}

/// Whether the skinny products want the activations' [`Q8Oct`]s: on AVX2 without
/// AVX-512 and on NEON (the octet kernels use them; the AVX-512 ones do not).
#[allow(unused_variables)]
fn want_octs(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa == Isa::Avx2 && isa::avx512() == Avx512::Off;
    #[cfg(target_arch = "aarch64")]
    return isa == Isa::Neon;
    #[allow(unreachable_code)]
    false
}

/// `Σ dequant(row)·dequant(xq)` with the activations quantised to Q8_0; `octs` (the
/// activation's [`Q8Oct`]s, computed on AVX2) select the grouped kernels.
#[allow(unused_variables)]
fn qdot_q8(isa: Isa, row: &QRow<'_>, xq: &[BlockQ8_0], octs: Option<&[Q8Oct]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    let level = isa::avx512();
    match (isa, row, octs) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F/BW/VL + VNNI (+ the AVX2 level's FMA, F16C) detected; equal
        // block counts.
        (Isa::Avx2, QRow::Q4(b), _) if level == Avx512::Vnni => unsafe {
            qk::avx512::dot_q4_0_q8_0_vnni(b, xq)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q8(b), _) if level == Avx512::Vnni => unsafe {
            qk::avx512::dot_q8_0_q8_0_vnni(b, xq)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F/BW/VL (+ FMA, F16C) detected; equal block counts.
        (Isa::Avx2, QRow::Q4(b), _) if level == Avx512::Bw => unsafe {
            qk::avx512::dot_q4_0_q8_0(b, xq)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q8(b), _) if level == Avx512::Bw => unsafe {
            qk::avx512::dot_q8_0_q8_0(b, xq)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); equal block counts,
        // one oct per group of 8 activation blocks (the last padded).
        (Isa::Avx2, QRow::Q4(b), Some(q)) => unsafe { qk::avx2::dot_q4_0_q8_0_octs(b, xq, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q8(b), Some(q)) => unsafe { qk::avx2::dot_q8_0_q8_0_octs(b, xq, q) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller) and dotprod detected; equal block
        // counts, one oct per group of 8 activation blocks (the last padded).
        (Isa::Neon, QRow::Q8(b), Some(q)) if isa::dotprod() => unsafe {
            qk::neon::dot_q8_0_q8_0_octs_dotprod(b, xq, q)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b), Some(q)) if isa::dotprod() => unsafe {
            qk::neon::dot_q4_0_q8_0_octs_dotprod(b, xq, q)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); equal block counts, one oct per
        // group of 8 activation blocks; `xq` written by `quantize_row_q8_0` (values in
        // [-127, 127]).
        (Isa::Neon, QRow::Q8(b), Some(q)) => unsafe { qk::neon::dot_q8_0_q8_0_octs(b, xq, q) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b), Some(q)) => unsafe { qk::neon::dot_q4_0_q8_0_octs(b, xq, q) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller) and dotprod detected; equal block
        // counts.
        (Isa::Neon, QRow::Q8(b), _) if isa::dotprod() => unsafe {
            qk::neon::dot_q8_0_q8_0_dotprod(b, xq)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b), _) if isa::dotprod() => unsafe {
            qk::neon::dot_q4_0_q8_0_dotprod(b, xq)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); equal block counts.
        (Isa::Neon, QRow::Q8(b), _) => unsafe { qk::neon::dot_q8_0_q8_0(b, xq) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b), _) => unsafe { qk::neon::dot_q4_0_q8_0(b, xq) },
        (_, QRow::Q8(b), _) => qk::dot_q8_0_q8_0(b, xq),
        (_, QRow::Q4(b), _) => qk::dot_q4_0_q8_0(b, xq),
    }
}

/// Largest quantised matrix (bytes) for the 4-row kernels. They share the activation
/// loads (dot) or the output loads and stores (axpy) across four rows, which pays while
/// the weights come from cache (measured: a d-128 model's Q8_0 decode went from 0.63x to
/// 0.93-1.0x of f32); on a matrix streamed from memory (4096 x 1024, Q8_0) they were
/// slower than one row at a time (2.40x of f32 fell to 1.57x), so larger matrices keep the
/// one-row kernels.
const FOUR_ROW_MAX_BYTES: usize = 256 << 10;

/// Rows `0..n`: four at a time through `four(out, j0)` while `pays` and it handles them,
/// then the rest through `one(out, j)`. `four` returns false, having written nothing, when no 4-row
/// kernel applies — that depends on the ISA and the weight type only, so it happens on its
/// first call for the first activation row, before anything was accumulated.
fn four_then_one<T: ?Sized>(
    n: usize,
    pays: bool,
    out: &mut T,
    mut four: impl FnMut(&mut T, usize) -> bool,
    mut one: impl FnMut(&mut T, usize),
) {
    let mut j = 0;
    while pays && j + 4 <= n && four(out, j) {
        j += 4;
    }
    for j in j..n {
        one(out, j);
    }
}

fn four_rows_pay(w: &MatRef<'_>) -> bool {
    let per_block = match w.data {
        WeightData::Q8_0(_) => core::mem::size_of::<BlockQ8_0>(),
        WeightData::Q4_0(_) => core::mem::size_of::<modula_quant::BlockQ4_0>(),
        _ => return false,
    };
    w.rows * (w.cols / QB) * per_block <= FOUR_ROW_MAX_BYTES
}

/// Four rows' [`qdot_q8`] with a 4-row kernel, where `isa` has one (AVX2, with the
/// activation's octs); None otherwise.
#[allow(unused_variables)]
fn qdot4_q8(
    isa: Isa,
    rows: &[QRow<'_>; 4],
    xq: &[BlockQ8_0],
    octs: Option<&[Q8Oct]>,
) -> Option<[f32; 4]> {
    #[cfg(target_arch = "x86_64")]
    let level = isa::avx512();
    match (isa, rows, octs) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, [QRow::Q4(a), QRow::Q4(b), QRow::Q4(c), QRow::Q4(d)], _)
            if level != Avx512::Off =>
        {
            // SAFETY: AVX-512F/BW/VL (+ VNNI for the _vnni kernel, + FMA, F16C) detected;
            // rows of one matrix have equal block counts, equal to the activation row's.
            Some(unsafe {
                if level == Avx512::Vnni {
                    qk::avx512::dot4_q4_0_q8_0_vnni([a, b, c, d], xq)
                } else {
                    qk::avx512::dot4_q4_0_q8_0([a, b, c, d], xq)
                }
            })
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, [QRow::Q8(a), QRow::Q8(b), QRow::Q8(c), QRow::Q8(d)], _)
            if level != Avx512::Off =>
        {
            // SAFETY: as above.
            Some(unsafe {
                if level == Avx512::Vnni {
                    qk::avx512::dot4_q8_0_q8_0_vnni([a, b, c, d], xq)
                } else {
                    qk::avx512::dot4_q8_0_q8_0([a, b, c, d], xq)
                }
            })
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, [QRow::Q4(a), QRow::Q4(b), QRow::Q4(c), QRow::Q4(d)], Some(q)) => {
            // SAFETY: AVX2+FMA+F16C supported (checked by the caller); rows of one matrix
            // have equal block counts, equal to the activation row's; one oct per
            // group of 8 activation blocks (the last padded).
            Some(unsafe { qk::avx2::dot4_q4_0_q8_0_octs([a, b, c, d], xq, q) })
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, [QRow::Q8(a), QRow::Q8(b), QRow::Q8(c), QRow::Q8(d)], Some(q)) => {
            // SAFETY: as above.
            Some(unsafe { qk::avx2::dot4_q8_0_q8_0_octs([a, b, c, d], xq, q) })
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, [QRow::Q4(a), QRow::Q4(b), QRow::Q4(c), QRow::Q4(d)], Some(q)) => {
            // SAFETY: NEON supported (checked by the caller), dotprod detected for the
            // _dotprod kernel; rows of one matrix have equal block counts, equal to the
            // activation row's; one oct per group of 8 activation blocks; `xq` written by
            // `quantize_row_q8_0`.
            Some(unsafe {
                if isa::dotprod() {
                    qk::neon::dot4_q4_0_q8_0_octs_dotprod([a, b, c, d], xq, q)
                } else {
                    qk::neon::dot4_q4_0_q8_0_octs([a, b, c, d], xq, q)
                }
            })
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, [QRow::Q8(a), QRow::Q8(b), QRow::Q8(c), QRow::Q8(d)], Some(q)) => {
            // SAFETY: as above.
            Some(unsafe {
                if isa::dotprod() {
                    qk::neon::dot4_q8_0_q8_0_octs_dotprod([a, b, c, d], xq, q)
                } else {
                    qk::neon::dot4_q8_0_q8_0_octs([a, b, c, d], xq, q)
                }
            })
        }
        _ => None,
    }
}

/// Skinny product over quantised weights: each weight row (a few KiB of blocks, L1
/// resident) is dotted with every row of `x` before the next is read. With quantised
/// activations (the default) the rows of `x` are first quantised to Q8_0 — on the stack
/// for one row of up to 8,192 values (decode), else in one heap buffer.
#[allow(clippy::too_many_arguments)]
fn skinny_quant(
    isa: Isa,
    qact: bool,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let k = w.cols;
    let nb = k / QB;
    if qact && nb > 0 {
        const STACK_BLOCKS: usize = 256;
        let zero = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; QB],
        };
        // zero-filling the stack buffer is a memset on every call: a small one for the
        // common short rows (up to 1,024 values), the large one only when needed
        const SMALL_BLOCKS: usize = 32;
        let mut small = [zero; SMALL_BLOCKS];
        let mut stack;
        let mut heap = alloc::vec::Vec::new();
        let xq: &mut [BlockQ8_0] = if m * nb <= SMALL_BLOCKS {
            &mut small[..m * nb]
        } else if m * nb <= STACK_BLOCKS {
            stack = [zero; STACK_BLOCKS];
            &mut stack[..m * nb]
        } else {
            heap.resize(m * nb, zero);
            &mut heap
        };
        let mut ok = true;
        for i in 0..m {
            let r = &x[i * ldx..i * ldx + k];
            ok &= quantize_act(isa, r, &mut xq[i * nb..(i + 1) * nb]);
        }
        // AVX2 and NEON: each activation row's octs (sums and scales of 8 blocks, the
        // last octet padded) once, for the octet kernels (docs/kernels.md); up to 64 on the
        // stack (4 KiB, as many bytes as the 4-block quads they replaced)
        let want_octs = want_octs(isa);
        let nq = nb.div_ceil(8);
        let mut octs_small;
        let mut octs_stack;
        let mut octs_heap = alloc::vec::Vec::new();
        let octs: &mut [Q8Oct] = if !want_octs {
            &mut []
        } else if m * nq <= SMALL_BLOCKS / 4 {
            octs_small = [Q8Oct::default(); SMALL_BLOCKS / 4];
            &mut octs_small[..m * nq]
        } else if m * nq <= STACK_BLOCKS / 4 {
            // on the stack like the activation blocks: decode steps allocate nothing
            octs_stack = [Q8Oct::default(); STACK_BLOCKS / 4];
            &mut octs_stack[..m * nq]
        } else {
            octs_heap.resize(m * nq, Q8Oct::default());
            &mut octs_heap
        };
        if want_octs {
            for i in 0..m {
                modula_quant::kernels::q8_octs(
                    &xq[i * nb..(i + 1) * nb],
                    &mut octs[i * nq..(i + 1) * nq],
                );
            }
        }
        // a non-finite activation cannot be quantised: fall through to the f32 path,
        // which propagates it as f32 arithmetic does
        if ok {
            let octs = want_octs.then_some(&*octs);
            return skinny_prequant(isa, xq, octs, m, w, y, ldy);
        }
    }
    for j in 0..w.rows {
        let row = qrow(w, j);
        for i in 0..m {
            y[i * ldy + j] = qdot(isa, &row, &x[i * ldx..i * ldx + k]);
        }
    }
}

/// The integer part of [`skinny_quant`]: `m` activation rows already quantised (`xq`,
/// `w.cols / 32` blocks per row; `octs` per row on AVX2, `None` elsewhere).
fn skinny_prequant(
    isa: Isa,
    xq: &[BlockQ8_0],
    octs: Option<&[Q8Oct]>,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let nb = w.cols / QB;
    let nq = nb.div_ceil(8);
    let octs_of = |i: usize| octs.map(|q| &q[i * nq..(i + 1) * nq]);
    // four weight rows at a time where a 4-row kernel exists (each row's result is
    // bit-identical to the one-row kernel's), the rest one by one
    four_then_one(
        w.rows,
        four_rows_pay(w),
        y,
        |y, j0| {
            let rows = [0, 1, 2, 3].map(|r| qrow(w, j0 + r));
            for i in 0..m {
                match qdot4_q8(isa, &rows, &xq[i * nb..(i + 1) * nb], octs_of(i)) {
                    Some(r) => y[i * ldy + j0..i * ldy + j0 + 4].copy_from_slice(&r),
                    None => return false,
                }
            }
            true
        },
        |y, j| {
            let row = qrow(w, j);
            for i in 0..m {
                y[i * ldy + j] = qdot_q8(isa, &row, &xq[i * nb..(i + 1) * nb], octs_of(i));
            }
        },
    );
}

/// One activation row quantised to Q8_0 once, for several products over Q8_0/Q4_0
/// weights that read the same row — a ModuleFormer layer's router and its chosen experts
/// all read the normalised hidden state. [`linear_row`] with it gives exactly what
/// [`linear`] gives (which would quantise the row on every call).
#[derive(Clone, Debug, Default)]
pub struct QuantizedRow {
    /// Length of the row quantised (0: none).
    k: usize,
    /// The SIMD level it was prepared for.
    isa: Option<Isa>,
    blocks: alloc::vec::Vec<BlockQ8_0>,
    octs: alloc::vec::Vec<Q8Oct>,
    /// The row was finite and whole blocks long (else products fall back to [`linear`]).
    ok: bool,
}

impl QuantizedRow {
    /// An empty row (allocates on the first [`QuantizedRow::set`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A row with its buffers allocated for rows of `k` values (exactly
    /// [`QuantizedRow::heap_bytes`]`(k)`), so that [`QuantizedRow::set`] of such rows
    /// never allocates.
    pub fn with_len(k: usize) -> Self {
        let nb = k / QB;
        let zero = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; QB],
        };
        Self {
            blocks: alloc::vec![zero; nb],
            octs: alloc::vec![Q8Oct::default(); nb.div_ceil(8)],
            ..Self::default()
        }
    }

    /// The heap of [`QuantizedRow::with_len`]`(k)`.
    pub fn heap_bytes(k: usize) -> usize {
        let nb = k / QB;
        nb * core::mem::size_of::<BlockQ8_0>() + nb.div_ceil(8) * core::mem::size_of::<Q8Oct>()
    }

    /// The heap it holds now.
    pub fn capacity_bytes(&self) -> usize {
        self.blocks.capacity() * core::mem::size_of::<BlockQ8_0>()
            + self.octs.capacity() * core::mem::size_of::<Q8Oct>()
    }

    /// Quantise `x` (as [`linear`] would at [`isa::active`], when quantised activations
    /// are on); reuses the buffers.
    pub fn set(&mut self, x: &[f32]) {
        let isa = isa::active();
        let isa = if isa.is_supported() { isa } else { Isa::Scalar };
        let nb = x.len() / QB;
        self.k = x.len();
        self.isa = Some(isa);
        self.ok = quantized_activations() && nb > 0 && x.len().is_multiple_of(QB);
        if !self.ok {
            return;
        }
        let zero = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; QB],
        };
        self.blocks.resize(nb, zero);
        self.ok = quantize_act(isa, x, &mut self.blocks);
        let want_octs = want_octs(isa);
        self.octs.clear();
        if self.ok && want_octs {
            self.octs.resize(nb.div_ceil(8), Q8Oct::default());
            modula_quant::kernels::q8_octs(&self.blocks, &mut self.octs);
        }
    }
}

/// `y = x·Wᵀ (+ bias)` for one activation row `x` that `xq` holds quantised
/// ([`QuantizedRow::set`]`(x)`): the same result as [`linear`]`(x, k, 1, w, bias, y, n)`,
/// without quantising `x` again. Weights that are not Q8_0/Q4_0, a row that could not be
/// quantised, or an `xq` of another length or SIMD level take [`linear`]'s path.
pub fn linear_row(
    x: &[f32],
    xq: &QuantizedRow,
    w: &MatRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let (n, k) = (w.rows, w.cols);
    let active = isa::active();
    let active = if active.is_supported() {
        active
    } else {
        Isa::Scalar
    };
    let usable = xq.ok
        && w.data.is_quantized()
        && xq.k == k
        && x.len() == k
        && xq.isa == Some(active)
        && quantized_activations();
    if !usable {
        return linear(x, k, 1, w, bias, y, n);
    }
    need("linear_row", "y length", n, y.len())?;
    if let Some(b) = bias {
        exactly("linear_row", "bias length", n, b.len())?;
    }
    if n == 0 {
        return Ok(());
    }
    // set() computed the octs exactly when the grouped AVX2 kernels want them
    let octs = want_octs(active).then_some(&xq.octs[..]);
    if n * k >= PAR_MIN_WEIGHTS && par::threads() > 1 {
        let chunk = par::chunk_for(n, 4, 64);
        par::for_each_chunk_mut(&mut y[..n], chunk, |ci, ys| {
            let sub = w.row_block(ci * chunk, ys.len());
            let len = ys.len();
            skinny_prequant(active, &xq.blocks, octs, 1, &sub, ys, len);
        });
    } else {
        skinny_prequant(active, &xq.blocks, octs, 1, w, &mut y[..n], n);
    }
    if let Some(b) = bias {
        for (yv, bv) in y[..n].iter_mut().zip(b) {
            *yv += bv;
        }
    }
    Ok(())
}

/// Many rows: `matrixmultiply::sgemm` on f32 weights; F16/BF16 weights are widened one
/// panel of rows at a time into a scratch buffer first.
fn many_rows(x: &[f32], ldx: usize, m: usize, w: &MatRef<'_>, y: &mut [f32], ldy: usize) {
    let (n, k) = (w.rows, w.cols);
    match w.data {
        WeightData::F32(wd) if m * n * k >= PAR_MIN_FLOPS && par::threads() > 1 => {
            // Training-size products: each thread takes a block of rows of x and y.
            let rows = par::chunk_for(m, 16, 16);
            par::for_each_chunk_mut(&mut y[..(m - 1) * ldy + n], rows * ldy, |ci, ys| {
                let r0 = ci * rows;
                let mr = (m - r0).min(rows);
                sgemm_xwt(&x[r0 * ldx..], ldx, mr, wd, w.ld, n, k, ys, ldy);
            });
        }
        WeightData::F32(wd) => sgemm_xwt(x, ldx, m, wd, w.ld, n, k, y, ldy),
        _ => {
            const PANEL: usize = 64;
            let mut buf = alloc::vec![0f32; PANEL * k];
            let mut j0 = 0;
            while j0 < n {
                let rows = PANEL.min(n - j0);
                for r in 0..rows {
                    widen_row(w, j0 + r, &mut buf[r * k..(r + 1) * k]);
                }
                sgemm_xwt(x, ldx, m, &buf, k, rows, k, &mut y[j0..], ldy);
                j0 += rows;
            }
        }
    }
}

/// `y[m, n] = x[m, k] · w[n, k]ᵀ` with matrixmultiply (w rows `ldw` apart).
#[allow(clippy::too_many_arguments)]
fn sgemm_xwt(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &[f32],
    ldw: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
    ldy: usize,
) {
    debug_assert!(x.len() >= (m - 1) * ldx + k && y.len() >= (m - 1) * ldy + n);
    debug_assert!(n == 0 || w.len() >= (n - 1) * ldw + k);
    // SAFETY: all strides and extents were checked by `linear_with` (x: m rows of k, ldx
    // apart; y: m rows of n, ldy apart; w: n rows of k, ldw apart, read as its transpose
    // with row stride 1 and column stride ldw). beta = 0 means y is only written.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            x.as_ptr(),
            ldx as isize,
            1,
            w.as_ptr(),
            1,
            ldw as isize,
            0.0,
            y.as_mut_ptr(),
            ldy as isize,
            1,
        );
    }
}

/// A quantised row dequantised into `out` (`32 ×` its blocks) with the variant for `isa`
/// (supported): every variant gives the scalar dequantiser's bits (one multiply per value).
fn dequant(isa: Isa, row: &QRow<'_>, out: &mut [f32]) {
    match (isa, row) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F (+ the AVX2 level's FMA, F16C) detected; out holds the row.
        (Isa::Avx2, QRow::Q8(b)) if isa::avx512() != Avx512::Off => unsafe {
            qk::avx512::dequantize_q8_0(b, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q4(b)) if isa::avx512() != Avx512::Off => unsafe {
            qk::avx512::dequantize_q4_0(b, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); out holds the row.
        (Isa::Avx2, QRow::Q8(b)) => unsafe { qk::avx2::dequantize_q8_0(b, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, QRow::Q4(b)) => unsafe { qk::avx2::dequantize_q4_0(b, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); out holds the row.
        (Isa::Neon, QRow::Q8(b)) => unsafe { qk::neon::dequantize_q8_0(b, out) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, QRow::Q4(b)) => unsafe { qk::neon::dequantize_q4_0(b, out) },
        (_, QRow::Q8(b)) => modula_quant::quantize::dequantize_row_q8_0(b, out),
        (_, QRow::Q4(b)) => modula_quant::quantize::dequantize_row_q4_0(b, out),
    }
}

/// Row `j` of `w` widened to f32 into `out` (`out.len() == w.cols()`; a shorter `out`
/// gets the leading values): an embedding lookup, a weight panel for a many-row product.
/// Quantised rows go through the SIMD dequantisers, which give the scalar ones' bits.
pub fn widen_row(w: &MatRef<'_>, j: usize, out: &mut [f32]) {
    widen_row_with(isa::active(), w, j, out)
}

/// [`widen_row`] with an explicit SIMD level (used when supported, else scalar).
pub fn widen_row_with(isa: Isa, w: &MatRef<'_>, j: usize, out: &mut [f32]) {
    let s = j * w.ld;
    match w.data {
        WeightData::F32(d) => out.copy_from_slice(&d[s..s + w.cols]),
        WeightData::F16(d) => {
            for (o, v) in out.iter_mut().zip(&d[s..s + w.cols]) {
                *o = v.to_f32();
            }
        }
        WeightData::BF16(d) => {
            for (o, v) in out.iter_mut().zip(&d[s..s + w.cols]) {
                *o = v.to_f32();
            }
        }
        WeightData::Q8_0(_) | WeightData::Q4_0(_) => {
            let isa = if isa.is_supported() && out.len() >= w.cols {
                isa
            } else {
                Isa::Scalar // (the scalar dequantisers stop at the end of a short `out`)
            };
            let n = w.cols.min(out.len());
            dequant(isa, &qrow(w, j), &mut out[..n])
        }
        WeightData::Q4K(_) | WeightData::Q6K(_) => {
            let mut buf = [0f32; QK_K];
            let n = w.cols.min(out.len());
            for (b, o) in out[..n].chunks_mut(QK_K).enumerate() {
                kblock(w, j, b, &mut buf);
                o.copy_from_slice(&buf[..o.len()]);
            }
        }
    }
}

/// Super-block `b` of row `j` of K-quant weights, dequantised into `out`.
fn kblock(w: &MatRef<'_>, j: usize, b: usize, out: &mut [f32; QK_K]) {
    let i = j * w.ld / QK_K + b;
    match w.data {
        WeightData::Q4K(d) => d[i].dequantize(out),
        WeightData::Q6K(d) => d[i].dequantize(out),
        _ => out.fill(0.0),
    }
}

/// One row's super-blocks of a K-quant matrix.
enum KRow<'a> {
    Q4(&'a [BlockQ4K]),
    Q6(&'a [BlockQ6K]),
}

/// `Σ dequant(row)·dequant(x)` over Q8_K activations with the kernel for `isa`
/// (supported; `x` has the row's super-block count). Every level gives the same bits.
fn kdot(isa: Isa, row: &KRow<'_>, x: &[BlockQ8K]) -> f32 {
    use modula_quant::kernels::kquant as kq;
    match (isa, row) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); lengths as documented.
        (Isa::Avx2, KRow::Q4(r)) => unsafe { kq::avx2::dot_q4_k_q8_k(r, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, KRow::Q6(r)) => unsafe { kq::avx2::dot_q6_k_q8_k(r, x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); lengths as documented.
        (Isa::Neon, KRow::Q4(r)) => unsafe { kq::neon::dot_q4_k_q8_k(r, x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, KRow::Q6(r)) => unsafe { kq::neon::dot_q6_k_q8_k(r, x) },
        (_, KRow::Q4(r)) => kq::dot_q4_k_q8_k(r, x),
        (_, KRow::Q6(r)) => kq::dot_q6_k_q8_k(r, x),
    }
}

/// The skinny product over K-quant weights with quantised activations (the default, as
/// llama.cpp does): each activation row quantised to Q8_K once — on the stack for up to
/// 8,192 values in all, else one heap buffer — then per weight row and activation row the
/// integer super-block dot products of [`modula_quant::kernels::kquant`] (bit-identical at
/// every SIMD level). False, with `y` untouched, when an activation is not finite: the
/// caller then runs the f32 path, which propagates it as f32 arithmetic does.
#[allow(clippy::too_many_arguments)]
fn skinny_kquant_q8k(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) -> bool {
    use modula_quant::kernels::kquant as kq;
    let (k, nb) = (w.cols, w.cols / QK_K);
    const STACK_BLOCKS: usize = 32;
    let mut stack;
    let mut heap = alloc::vec::Vec::new();
    let xq: &mut [BlockQ8K] = if m * nb <= STACK_BLOCKS {
        stack = [BlockQ8K::ZERO; STACK_BLOCKS];
        &mut stack[..m * nb]
    } else {
        heap.resize(m * nb, BlockQ8K::ZERO);
        &mut heap
    };
    for i in 0..m {
        if !kq::quantize_q8_k(&x[i * ldx..i * ldx + k], &mut xq[i * nb..(i + 1) * nb]) {
            return false;
        }
    }
    for j in 0..w.rows {
        let b0 = j * w.ld / QK_K;
        let row = match w.data {
            WeightData::Q4K(d) => KRow::Q4(&d[b0..b0 + nb]),
            WeightData::Q6K(d) => KRow::Q6(&d[b0..b0 + nb]),
            _ => return false,
        };
        for i in 0..m {
            y[i * ldy + j] = kdot(isa, &row, &xq[i * nb..(i + 1) * nb]);
        }
    }
    true
}

/// The skinny product over K-quant weights: each super-block of a weight row is
/// dequantised once (on the stack) and meets every activation row; no allocation.
fn skinny_kquant(x: &[f32], ldx: usize, m: usize, w: &MatRef<'_>, y: &mut [f32], ldy: usize) {
    let (n, k) = (w.rows, w.cols);
    let mut buf = [0f32; QK_K];
    let mut acc = [0f32; SKINNY_MAX_ROWS];
    for j in 0..n {
        acc[..m].fill(0.0);
        for b in 0..k / QK_K {
            kblock(w, j, b, &mut buf);
            for (i, a) in acc[..m].iter_mut().enumerate() {
                let xr = &x[i * ldx + b * QK_K..i * ldx + (b + 1) * QK_K];
                *a += dot8(&buf, xr);
            }
        }
        for (i, a) in acc[..m].iter().enumerate() {
            y[i * ldy + j] = *a;
        }
    }
}

/// `Σ a·b` over equal-length slices in eight lanes (vectorised by the compiler; the lane
/// order is fixed, so the result does not depend on the ISA).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut l = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for t in 0..8 {
            l[t] += ca[t] * cb[t];
        }
    }
    let mut s = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
    let r = a.len() / 8 * 8;
    for (va, vb) in a[r..].iter().zip(&b[r..]) {
        s += va * vb;
    }
    s
}

/// The scalar reference (the oracle every SIMD variant is tested against): f32
/// accumulation in index order.
pub fn linear_scalar(x: &[f32], ldx: usize, m: usize, w: &MatRef<'_>, y: &mut [f32], ldy: usize) {
    let (n, k) = (w.rows, w.cols);
    for i in 0..m {
        let xr = &x[i * ldx..i * ldx + k];
        for j in 0..n {
            let s = j * w.ld;
            let acc = match w.data {
                WeightData::F32(d) => xr.iter().zip(&d[s..s + k]).map(|(a, b)| a * b).sum(),
                WeightData::F16(d) => xr
                    .iter()
                    .zip(&d[s..s + k])
                    .map(|(a, b)| a * b.to_f32())
                    .sum(),
                WeightData::BF16(d) => xr
                    .iter()
                    .zip(&d[s..s + k])
                    .map(|(a, b)| a * b.to_f32())
                    .sum(),
                WeightData::Q8_0(_) | WeightData::Q4_0(_) => qdot(Isa::Scalar, &qrow(w, j), xr),
                WeightData::Q4K(_) | WeightData::Q6K(_) => {
                    let mut buf = [0f32; QK_K];
                    let mut acc = 0f32;
                    for b in 0..k / QK_K {
                        kblock(w, j, b, &mut buf);
                        for (a, v) in buf.iter().zip(&xr[b * QK_K..(b + 1) * QK_K]) {
                            acc += a * v;
                        }
                    }
                    acc
                }
            };
            y[i * ldy + j] = acc;
        }
    }
}

/// `y[i, :] (+)= Σ_f x[i, f] · w[f, :]` — the product with `W` stored `[k, n]` (e.g. an FFN
/// down projection stored transposed, `[hidden, d]`, so a nested hidden width is a prefix
/// of rows). `x: [m, w.rows()]` (ldx), `y: [m, w.cols()]` (ldy); `accumulate` adds into `y`
/// instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    matmul_rows_with(isa::active(), x, ldx, m, w, y, ldy, accumulate)
}

/// [`matmul_rows`] with an explicit SIMD level.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_with(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    let qact = quantized_activations();
    matmul_rows_mode(isa, qact, x, ldx, m, w, y, ldy, accumulate)
}

/// [`matmul_rows_with`] with an explicit activation mode: with `qact`, products over
/// Q4_0 weights run the integer tile kernel ([`modula_quant::kernels::axpy_rows_q4_0`]:
/// the activations times the weight scales rounded to 8 bits per 32 rows and 32
/// columns, the analogue of [`set_quantized_activations`]' Q8_0 activations), tiles it
/// cannot quantise (non-finite or tiny values) in f32; without, every product is f32.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_mode(
    isa: Isa,
    qact: bool,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    let (k, n) = (w.rows, w.cols);
    need("matmul_rows", "ldx (>= k)", k, ldx)?;
    need("matmul_rows", "ldy (>= n)", n, ldy)?;
    if m > 0 {
        need("matmul_rows", "x length", (m - 1) * ldx + k, x.len())?;
        need("matmul_rows", "y length", (m - 1) * ldy + n, y.len())?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if !accumulate {
        for i in 0..m {
            y[i * ldy..i * ldy + n].fill(0.0);
        }
    }
    if k == 0 {
        return Ok(());
    }
    let isa = if isa.is_supported() { isa } else { Isa::Scalar };
    if w.data.is_kquant() {
        // `W` stored [k, n] in K-quant super-blocks: each super-block of a row of W is
        // dequantised once (on the stack) and added, times x[i, f], to every output row
        let mut buf = [0f32; QK_K];
        for f in 0..k {
            for b in 0..n / QK_K {
                kblock(w, f, b, &mut buf);
                for i in 0..m {
                    let a = x[i * ldx + f];
                    let yr = &mut y[i * ldy + b * QK_K..i * ldy + (b + 1) * QK_K];
                    for (yv, wv) in yr.iter_mut().zip(&buf) {
                        *yv += a * wv;
                    }
                }
            }
        }
        return Ok(());
    }
    if let (true, WeightData::F32(wd)) = (m > SKINNY_MAX_ROWS, w.data) {
        let ld = w.ld;
        let gemm = |x: &[f32], m: usize, y: &mut [f32]| {
            debug_assert!(x.len() >= (m - 1) * ldx + k && y.len() >= (m - 1) * ldy + n);
            // SAFETY: extents checked above (and for a row block: x and y start at the
            // block's first row and hold its `m` rows): x m x k (ldx), w k x n (row
            // stride ld), y m x n (ldy); beta = 1 accumulates into y, which was zeroed
            // above if requested.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    x.as_ptr(),
                    ldx as isize,
                    1,
                    wd.as_ptr(),
                    ld as isize,
                    1,
                    1.0,
                    y.as_mut_ptr(),
                    ldy as isize,
                    1,
                );
            }
        };
        if m * n * k >= PAR_MIN_FLOPS && par::threads() > 1 {
            let rows = par::chunk_for(m, 16, 16);
            par::for_each_chunk_mut(&mut y[..(m - 1) * ldy + n], rows * ldy, |ci, ys| {
                let r0 = ci * rows;
                gemm(&x[r0 * ldx..], (m - r0).min(rows), ys);
            });
        } else {
            gemm(x, m, y);
        }
        return Ok(());
    }
    if m > SKINNY_MAX_ROWS {
        // Many rows over F16/BF16/quantised weights (a prompt): widen panels of weight rows
        // to f32 once per call and multiply them with matrixmultiply — the weights are
        // read once for all `m` rows, instead of once per row by the skinny kernels.
        const PANEL: usize = 64;
        let mut buf = alloc::vec![0f32; PANEL.min(k) * n];
        let mut k0 = 0;
        while k0 < k {
            let rows = PANEL.min(k - k0);
            for r in 0..rows {
                widen_row(w, k0 + r, &mut buf[r * n..(r + 1) * n]);
            }
            // SAFETY: extents checked above: x holds m rows of k (ldx apart), so columns
            // k0..k0 + rows of every row are in bounds; buf holds `rows` rows of n; y holds
            // m rows of n (ldy apart); beta = 1 accumulates (y was zeroed if requested).
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    rows,
                    n,
                    1.0,
                    x.as_ptr().add(k0),
                    ldx as isize,
                    1,
                    buf.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                    y.as_mut_ptr(),
                    ldy as isize,
                    1,
                );
            }
            k0 += rows;
        }
        return Ok(());
    }
    if m == 1 && n * k >= PAR_MIN_WEIGHTS {
        // Decode over a large transposed matrix: split its rows — contiguous memory — into
        // a fixed number of groups, each summed into its own partial output, then add the
        // partials in group order. Splitting the columns instead left each thread reading
        // every other piece of every row, and the hardware prefetchers fetched the other
        // thread's pieces as well: on two threads the Q8_0 `ffn_down_t` product was no
        // faster than on one (`docs/results.md`, decode_down). The grouping depends on the
        // shape only, never on the thread count, so results stay bit-identical for any
        // number of threads (one thread runs the same groups in turn).
        let per = k.div_ceil(ROWS_GROUPS);
        let groups = k.div_ceil(per);
        let four = four_rows_pay(w);
        // zeroing a stack buffer is a memset on every call: a small one for outputs up to
        // 1,024 wide, the large one only when needed
        let mut small = [0f32; ROWS_GROUPS * 1024];
        let mut stack;
        let mut heap = alloc::vec::Vec::new();
        let part: &mut [f32] = if groups * n <= small.len() {
            &mut small[..groups * n]
        } else if groups * n <= ROWS_GROUPS_STACK {
            stack = [0f32; ROWS_GROUPS_STACK];
            &mut stack[..groups * n]
        } else {
            heap.resize(groups * n, 0f32);
            &mut heap
        };
        par::for_each_chunk_mut(part, n, |g, p| {
            let r0 = g * per;
            let sub = w.row_block(r0, per.min(k - r0));
            rows_kernel(isa, qact, &x[r0..], ldx, 1, &sub, p, n, four);
        });
        for p in part.chunks_exact(n) {
            for (yv, pv) in y[..n].iter_mut().zip(p) {
                *yv += pv;
            }
        }
    } else {
        rows_kernel(isa, qact, x, ldx, m, w, y, ldy, four_rows_pay(w));
    }
    Ok(())
}

/// Dispatch a checked `matmul_rows` (accumulating) to the variant for `isa`.
/// `four`: use the 4-row kernels (decided on the whole matrix — [`four_rows_pay`] — even
/// when `w` is one group of its rows).
#[allow(clippy::too_many_arguments)]
fn rows_kernel(
    isa: Isa,
    qact: bool,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
    four: bool,
) {
    // Q4_0 only: the same tiles over Q8_0 (`vpmaddwd` on widened weights) were 1.25x
    // faster than the f32 axpy in the cache-resident bench but slower in a memory-bound
    // decode (docs/results.md), so Q8_0 keeps the f32 axpy
    if let (true, WeightData::Q4_0(_)) = (qact, w.data) {
        return rows_tiles(isa, x, ldx, m, w, y, ldy);
    }
    if w.data.is_quantized() {
        let n = w.cols;
        // four rows at a time where a 4-row kernel exists (bit-identical to four one-row
        // calls in order), the rest one by one
        four_then_one(
            w.rows,
            four,
            y,
            |y, f0| {
                let rows = [0, 1, 2, 3].map(|r| qrow(w, f0 + r));
                for i in 0..m {
                    let a = [0, 1, 2, 3].map(|r| x[i * ldx + f0 + r]);
                    if !qaxpy4(isa, a, &rows, &mut y[i * ldy..i * ldy + n]) {
                        return false;
                    }
                }
                true
            },
            |y, f| {
                let row = qrow(w, f);
                for i in 0..m {
                    qaxpy(isa, x[i * ldx + f], &row, &mut y[i * ldy..i * ldy + n]);
                }
            },
        );
        return;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); extents checked.
        Isa::Avx2 => unsafe { super::x86_64::avx2::matmul_rows(x, ldx, m, w, y, ldy) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); extents checked.
        Isa::Neon => unsafe { super::aarch64::neon::matmul_rows(x, ldx, m, w, y, ldy) },
        _ => matmul_rows_scalar(x, ldx, m, w, y, ldy),
    }
}

/// `y[i, :] += Σ_f x[i, f] · w[f, :]` over Q4_0 weights in integer tiles of
/// [`qk::TILE_ROWS`] rows × [`qk::TILE_BLOCKS`] column blocks, each tile for every
/// activation row while its weights are in L1; a tile the integer kernel refuses (see
/// [`qk::axpy_rows_q4_0`]) runs through the f32 kernels instead.
#[allow(clippy::too_many_arguments)]
fn rows_tiles(
    isa: Isa,
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let (k, nb, ldb) = (w.rows, w.cols / QB, w.ld / QB);
    // one tile from block offset b0 (row r0, column block c0); false if refused
    let tile = |xs: &[f32], b0: usize, nbc: usize, ys: &mut [f32]| match (isa, w.data) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA+F16C supported (checked by the caller); the tile is within
        // the kernel's bounds (rows ≤ TILE_ROWS, nbc ≤ TILE_BLOCKS, the blocks hold its
        // rows `ldb` blocks apart, `ys` 32 values per block).
        (Isa::Avx2, WeightData::Q4_0(d)) => unsafe {
            qk::avx2::axpy_rows_q4_0(xs, &d[b0..], ldb, nbc, ys)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON supported (checked by the caller); tile within bounds as above.
        (Isa::Neon, WeightData::Q4_0(d)) => unsafe {
            qk::neon::axpy_rows_q4_0(xs, &d[b0..], ldb, nbc, ys)
        },
        (_, WeightData::Q4_0(d)) => qk::axpy_rows_q4_0(xs, &d[b0..], ldb, nbc, ys),
        _ => false,
    };
    for r0 in (0..k).step_by(qk::TILE_ROWS) {
        let rows = qk::TILE_ROWS.min(k - r0);
        for c0 in (0..nb).step_by(qk::TILE_BLOCKS) {
            let nbc = qk::TILE_BLOCKS.min(nb - c0);
            for i in 0..m {
                let xs = &x[i * ldx + r0..i * ldx + r0 + rows];
                let ys = &mut y[i * ldy + 32 * c0..i * ldy + 32 * (c0 + nbc)];
                if !tile(xs, r0 * ldb + c0, nbc, ys) {
                    for (r, &a) in xs.iter().enumerate() {
                        let row = match qrow(w, r0 + r) {
                            QRow::Q8(b) => QRow::Q8(&b[c0..c0 + nbc]),
                            QRow::Q4(b) => QRow::Q4(&b[c0..c0 + nbc]),
                        };
                        qaxpy(isa, a, &row, ys);
                    }
                }
            }
        }
    }
}

/// Scalar reference of [`matmul_rows`] (accumulating form): `y[i,:] += Σ_f x[i,f] w[f,:]`.
pub fn matmul_rows_scalar(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
) {
    let (k, n) = (w.rows, w.cols);
    let mut row = alloc::vec![0f32; n];
    for f in 0..k {
        widen_row(w, f, &mut row);
        for i in 0..m {
            let a = x[i * ldx + f];
            for (yv, wv) in y[i * ldy..i * ldy + n].iter_mut().zip(&row) {
                *yv += a * wv;
            }
        }
    }
}

/// `c[n, k] += a[m, n]ᵀ · b[m, k]` (row-major, dense): the weight gradient of a linear
/// layer, `dW += dYᵀ X`, summed over the `m` rows of a batch. `matrixmultiply` over
/// blocks of rows of `c` in parallel (bit-identical for any thread count).
pub fn matmul_tn_acc(
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
) -> Result<(), KernelError> {
    exactly("matmul_tn_acc", "a length (m*n)", m * n, a.len())?;
    exactly("matmul_tn_acc", "b length (m*k)", m * k, b.len())?;
    exactly("matmul_tn_acc", "c length (n*k)", n * k, c.len())?;
    if m == 0 || n == 0 || k == 0 {
        return Ok(());
    }
    // Rows j0..j0+nr of c (= columns j0.. of a) are one independent product; each thread
    // takes a block of them, so every element is summed in the same order whatever the
    // thread count.
    let gemm = |j0: usize, nr: usize, c: &mut [f32]| {
        debug_assert!(j0 + nr <= n && c.len() == nr * k);
        // SAFETY: extents checked above: aᵀ's rows j0..j0+nr are columns of a read with
        // row stride 1 and column stride n from a[j0], staying inside a (m x n); b is
        // m x k (row stride k); this c block is nr x k (row stride k); beta = 1
        // accumulates.
        unsafe {
            matrixmultiply::sgemm(
                nr,
                m,
                k,
                1.0,
                a.as_ptr().add(j0),
                1,
                n as isize,
                b.as_ptr(),
                k as isize,
                1,
                1.0,
                c.as_mut_ptr(),
                k as isize,
                1,
            );
        }
    };
    if m * n * k >= PAR_MIN_FLOPS && par::threads() > 1 {
        let rows = par::chunk_for(n, 16, 16);
        par::for_each_chunk_mut(c, rows * k, |ci, cs| {
            gemm(ci * rows, cs.len() / k, cs);
        });
    } else {
        gemm(0, n, c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kernels::isa::available;
    use crate::kernels::testutil::{assert_close, rand_vec};
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn weights(kind: u8, v: &[f32]) -> (Vec<f16>, Vec<bf16>, u8) {
        (
            v.iter().map(|&x| f16::from_f32(x)).collect(),
            v.iter().map(|&x| bf16::from_f32(x)).collect(),
            kind,
        )
    }

    /// Bound on the difference of two f32 summation orders of Σ x·w.
    fn tol<'a>(
        x: &'a [f32],
        ldx: usize,
        w: &MatRef<'_>,
        n: usize,
        k: usize,
    ) -> impl Fn(usize) -> f32 + 'a {
        let mut wf = vec![0f32; n * k];
        for j in 0..n {
            widen_row(w, j, &mut wf[j * k..(j + 1) * k]);
        }
        move |idx| {
            let (i, j) = (idx / n.max(1), idx % n.max(1));
            let s: f32 = (0..k).map(|t| (x[i * ldx + t] * wf[j * k + t]).abs()).sum();
            2e-6 * (k as f32 + 1.0) * s + 1e-6
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn every_variant_matches_scalar(
            m in 0usize..20, n in 0usize..37, k in 0usize..70,
            xpad in 0usize..5, wpad in 0usize..5, ypad in 0usize..3,
            kind in 0u8..3, seed in any::<u64>(), bias in any::<bool>(),
        ) {
            let (ldx, ldw, ldy) = (k + xpad, k + wpad, n + ypad);
            let x = rand_vec(seed, m * ldx);
            let wv = rand_vec(seed ^ 1, n * ldw);
            let (wh, wb, kind) = weights(kind, &wv);
            let data = match kind {
                0 => WeightData::F32(&wv),
                1 => WeightData::F16(&wh),
                _ => WeightData::BF16(&wb),
            };
            let w = MatRef::new(data, n, k, ldw).unwrap();
            let b = rand_vec(seed ^ 2, n);
            let mut want = vec![0f32; m * ldy];
            linear_scalar(&x, ldx, m, &w, &mut want, ldy);
            if bias {
                for i in 0..m { for j in 0..n { want[i * ldy + j] += b[j]; } }
            }
            for isa in available() {
                let mut got = vec![7f32; m * ldy];
                linear_with(isa, &x, ldx, m, &w, bias.then_some(b.as_slice()), &mut got, ldy).unwrap();
                // compare only the written block; padding columns must be untouched
                let t = tol(&x, ldx, &w, n, k);
                for i in 0..m {
                    let (g, e) = (&got[i * ldy..i * ldy + n], &want[i * ldy..i * ldy + n]);
                    assert_close(isa.name(), g, e, |j| t(i * n + j));
                    prop_assert!(got[i * ldy + n..(i + 1) * ldy].iter().all(|&v| v == 7.0));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn matmul_rows_every_variant_matches_scalar(
            m in 0usize..24, k in 0usize..37, n in 0usize..45,
            xpad in 0usize..4, wpad in 0usize..4, ypad in 0usize..3,
            kind in 0u8..3, seed in any::<u64>(), acc in any::<bool>(),
        ) {
            let (ldx, ldw, ldy) = (k + xpad, n + wpad, n + ypad);
            let x = rand_vec(seed, m * ldx);
            let wv = rand_vec(seed ^ 1, k * ldw);
            let (wh, wb, kind) = weights(kind, &wv);
            let data = match kind {
                0 => WeightData::F32(&wv),
                1 => WeightData::F16(&wh),
                _ => WeightData::BF16(&wb),
            };
            let w = MatRef::new(data, k, n, ldw).unwrap();
            let y0 = rand_vec(seed ^ 3, m * ldy);
            let mut want = if acc { y0.clone() } else { vec![0f32; m * ldy] };
            if !acc { for i in 0..m { want[i * ldy + n..(i + 1) * ldy].copy_from_slice(&y0[i * ldy + n..(i + 1) * ldy]); } }
            matmul_rows_scalar(&x, ldx, m, &w, &mut want, ldy);
            for isa in available() {
                let mut got = y0.clone();
                matmul_rows_with(isa, &x, ldx, m, &w, &mut got, ldy, acc).unwrap();
                let tol = 2e-6 * (k as f32 + 2.0) * 2.0 + 1e-6;
                assert_close(isa.name(), &got, &want, |_| tol);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        // Big enough to take the parallel decode path.
        let (n, k) = (2100, 2000);
        assert!(n * k >= PAR_MIN_WEIGHTS);
        let wv = rand_vec(8, n * k);
        let wh: Vec<f16> = wv.iter().map(|&v| f16::from_f32(v)).collect();
        let x = rand_vec(9, k.max(n));
        for data in [WeightData::F32(&wv), WeightData::F16(&wh)] {
            let w = MatRef::new(data, n, k, k).unwrap();
            let wt = MatRef::new(data, k, n, n).unwrap();
            let mut outs = Vec::new();
            for t in [1, 2, 3] {
                crate::kernels::par::set_threads(t);
                let mut y = vec![0f32; n];
                linear(&x, k, 1, &w, None, &mut y, n).unwrap();
                let mut z = vec![0f32; n];
                matmul_rows(&x, k, 1, &wt, &mut z, n, false).unwrap();
                outs.push((y, z));
            }
            crate::kernels::par::set_threads(0);
            assert!(
                outs.windows(2).all(|p| p[0] == p[1]),
                "thread count changed the result"
            );
        }
    }

    /// Quantise `[rows, ld]` f32 values (ld a multiple of 32) to Q8_0 or Q4_0 blocks.
    fn quantised(v: &[f32], q4: bool) -> (Vec<BlockQ8_0>, Vec<BlockQ4_0>) {
        use modula_quant::quantize::{quantize_row_q4_0, quantize_row_q8_0};
        let nb = v.len() / QB;
        let mut b8 = vec![
            BlockQ8_0 {
                d: f16::ZERO,
                qs: [0; 32]
            };
            if q4 { 0 } else { nb }
        ];
        let mut b4 = vec![
            BlockQ4_0 {
                d: f16::ZERO,
                qs: [0; 16]
            };
            if q4 { nb } else { 0 }
        ];
        if q4 {
            quantize_row_q4_0(v, &mut b4).unwrap();
        } else {
            quantize_row_q8_0(v, &mut b8).unwrap();
        }
        (b8, b4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        #[test]
        fn quantised_weights_match_the_dequantised_reference(
            m in 0usize..20, n in 0usize..37, kb in 0usize..5, padb in 0usize..2,
            q4 in any::<bool>(), seed in any::<u64>(), acc in any::<bool>(),
        ) {
            // y = x·Wᵀ with W [n, 32·kb] (row stride 32·(kb + padb)), skinny and many-row
            let (k, ldw) = (QB * kb, QB * (kb + padb));
            let x = rand_vec(seed, m * k);
            let wv = rand_vec(seed ^ 1, n * ldw);
            let (b8, b4) = quantised(&wv, q4);
            let data = if q4 { WeightData::Q4_0(&b4) } else { WeightData::Q8_0(&b8) };
            let w = MatRef::new(data, n, k, ldw).unwrap();
            let mut deq = vec![0f32; n * k];
            for j in 0..n {
                widen_row(&w, j, &mut deq[j * k..(j + 1) * k]);
            }
            let t = |i: usize| {
                let (r, c) = (i / n.max(1), i % n.max(1));
                let s: f32 = (0..k).map(|q| (x[r * k + q] * deq[c * k + q]).abs()).sum();
                4e-6 * (k as f32 + 2.0) * s + 1e-6
            };
            let mut want = vec![0f32; m * n];
            linear_scalar(&x, k, m, &MatRef::f32(&deq, n, k).unwrap(), &mut want, n);
            let mut refq = vec![0f32; m * n];
            linear_scalar(&x, k, m, &w, &mut refq, n);
            assert_close("scalar quantised", &refq, &want, t);
            for isa in available() {
                let mut got = vec![0f32; m * n];
                linear_mode(isa, false, &x, k, m, &w, None, &mut got, n).unwrap();
                assert_close(isa.name(), &got, &want, t);
            }
            // quantised activations: the reference is the product with x rounded to Q8_0
            let mut xq = x.clone();
            for r in xq.chunks_exact_mut(k.max(1)).take(m) {
                let (b8, _) = quantised(r, false);
                modula_quant::quantize::dequantize_row_q8_0(&b8, r);
            }
            let mut want_q = vec![0f32; m * n];
            linear_scalar(&xq, k, m, &MatRef::f32(&deq, n, k).unwrap(), &mut want_q, n);
            for isa in available() {
                let mut got = vec![0f32; m * n];
                linear_mode(isa, true, &x, k, m, &w, None, &mut got, n).unwrap();
                if m <= SKINNY_MAX_ROWS {
                    assert_close(isa.name(), &got, &want_q, t);
                } else {
                    assert_close(isa.name(), &got, &want, t);
                }
            }
            // y (+)= x·W with W [n rows, 32·kb cols] (the transposed-storage product)
            let xr = rand_vec(seed ^ 2, m * n);
            let wt = MatRef::new(data, n, k, ldw).unwrap();
            let y0 = rand_vec(seed ^ 3, m * k);
            let mut want = if acc { y0.clone() } else { vec![0f32; m * k] };
            matmul_rows_scalar(&xr, n, m, &MatRef::f32(&deq, n, k).unwrap(), &mut want, k);
            for isa in available() {
                let mut got = y0.clone();
                matmul_rows_mode(isa, false, &xr, n, m, &wt, &mut got, k, acc).unwrap();
                assert_close(isa.name(), &got, &want, |_| 2e-6 * (n as f32 + 2.0) * 2.0 + 1e-6);
            }
            // quantised activations: Q4_0 runs the integer tiles (from row 0 here), every ISA
            // bit-identical to the scalar one, within the rounding bound of the f32 product
            let mut qref = y0.clone();
            matmul_rows_mode(Isa::Scalar, true, &xr, n, m, &wt, &mut qref, k, acc).unwrap();
            // (Q8_0 stays f32: no rounding bound there)
            let bound = if q4 { tile_bound(&xr, n, m, &wt, |f| f / qk::TILE_ROWS * qk::TILE_ROWS) } else { vec![0f32; m * k] };
            assert_close("scalar tiles", &qref, &want, |i| bound[i] + 2e-6 * (n as f32 + 2.0) * 2.0 + 1e-6);
            for isa in available() {
                let mut got = y0.clone();
                matmul_rows_mode(isa, true, &xr, n, m, &wt, &mut got, k, acc).unwrap();
                if q4 {
                    prop_assert!(got.iter().zip(&qref).all(|(a, b)| a.to_bits() == b.to_bits()), "{} tiles differ from scalar", isa.name());
                } else {
                    assert_close(isa.name(), &got, &qref, |_| 2e-6 * (n as f32 + 2.0) * 2.0 + 1e-6);
                }
            }
        }
    }

    /// Bound on the integer tiles' rounding of `Σ_f x[i, f]·w[f, :]` (quantised `w`; `x`
    /// `m` rows of `w.rows()`, `ldx` apart): per tile of rows (`tile_of(f)` = its first
    /// row) and column block, each term errs by at most `|q| · amax / 254` (q the integer
    /// weight as the kernel sees it, amax = the tile's largest `|x·d|` in that block).
    fn tile_bound(
        x: &[f32],
        ldx: usize,
        m: usize,
        w: &MatRef<'_>,
        tile_of: impl Fn(usize) -> usize,
    ) -> Vec<f32> {
        let (k, n) = (w.rows, w.cols);
        let scale = |f: usize, b: usize| -> f32 {
            let i = f * w.ld / QB + b;
            match w.data {
                WeightData::Q8_0(d) => d[i].d.to_f32(),
                WeightData::Q4_0(d) => d[i].d.to_f32(),
                _ => 0.0,
            }
        };
        let mut out = vec![0f32; m * n];
        let mut row = vec![0f32; n];
        for f in 0..k {
            widen_row(w, f, &mut row);
            let t0 = tile_of(f);
            for i in 0..m {
                for b in 0..n / QB {
                    let c = |g: usize| (x[i * ldx + g] * scale(g, b)).abs();
                    let amax = (t0..k)
                        .take_while(|&g| tile_of(g) == t0)
                        .map(c)
                        .fold(0f32, f32::max);
                    let d = scale(f, b);
                    for j in 0..QB {
                        let q = if d == 0.0 {
                            128.0
                        } else {
                            (row[b * QB + j] / d).abs()
                        };
                        out[i * n + b * QB + j] += q * amax / 254.0 * 1.001;
                    }
                }
            }
        }
        out
    }

    /// The skinny Q4_0 and Q8_0 paths (activation octs precomputed, grouped kernels, four
    /// rows at a time and the rest one by one, the small, stack and heap buffers) give
    /// exactly what the grouped one-row kernels give for every output (the AVX-512 one-row
    /// kernels where the process opted in to them), and that is within rounding of the
    /// one-block-at-a-time kernels. An AVX-512 CPU found that this test assumed the AVX2
    /// kernels (MODULA_SIMD=avx512 on the lent machine, 2026-11-29).
    /// The one-row kernel the dispatch runs for a row on x86-64 (the AVX-512 one where
    /// this process opted in with MODULA_SIMD=avx512*, on a CPU with it, else the AVX2
    /// octets), and the one-block-at-a-time AVX2 kernel.
    #[cfg(target_arch = "x86_64")]
    fn dispatched_and_blockwise(w: QRow<'_>, xq: &[BlockQ8_0], octs: &[Q8Oct]) -> (f32, f32) {
        let level = isa::avx512();
        // SAFETY: AVX2 checked by the caller, AVX-512 by `isa::avx512`; rows of
        // `xq.len()` blocks, xq.len().div_ceil(8) octs.
        unsafe {
            match w {
                QRow::Q4(row) => (
                    match level {
                        Avx512::Vnni => qk::avx512::dot_q4_0_q8_0_vnni(row, xq),
                        Avx512::Bw => qk::avx512::dot_q4_0_q8_0(row, xq),
                        Avx512::Off => qk::avx2::dot_q4_0_q8_0_octs(row, xq, octs),
                    },
                    qk::avx2::dot_q4_0_q8_0(row, xq),
                ),
                QRow::Q8(row) => (
                    match level {
                        Avx512::Vnni => qk::avx512::dot_q8_0_q8_0_vnni(row, xq),
                        Avx512::Bw => qk::avx512::dot_q8_0_q8_0(row, xq),
                        Avx512::Off => qk::avx2::dot_q8_0_q8_0_octs(row, xq, octs),
                    },
                    qk::avx2::dot_q8_0_q8_0(row, xq),
                ),
            }
        }
    }

    /// The one-row kernel the dispatch runs for a row on aarch64 (the NEON octets, with
    /// `SDOT` where the CPU has `dotprod`), and the per-block-group NEON kernel.
    #[cfg(target_arch = "aarch64")]
    fn dispatched_and_blockwise(w: QRow<'_>, xq: &[BlockQ8_0], octs: &[Q8Oct]) -> (f32, f32) {
        let dp = isa::dotprod();
        // SAFETY: NEON checked by the caller, dotprod by `isa::dotprod`; rows of
        // `xq.len()` blocks, xq.len().div_ceil(8) octs; xq from quantize_row_q8_0.
        unsafe {
            match w {
                QRow::Q4(row) => (
                    if dp {
                        qk::neon::dot_q4_0_q8_0_octs_dotprod(row, xq, octs)
                    } else {
                        qk::neon::dot_q4_0_q8_0_octs(row, xq, octs)
                    },
                    qk::neon::dot_q4_0_q8_0(row, xq),
                ),
                QRow::Q8(row) => (
                    if dp {
                        qk::neon::dot_q8_0_q8_0_octs_dotprod(row, xq, octs)
                    } else {
                        qk::neon::dot_q8_0_q8_0_octs(row, xq, octs)
                    },
                    qk::neon::dot_q8_0_q8_0(row, xq),
                ),
            }
        }
    }

    /// The skinny quantised products (quantised activations, octs, four weight rows at a
    /// time and the rest one by one, the small, stack and heap buffers) give exactly what
    /// the octet one-row kernels give for every output (the AVX-512 one-row kernels where
    /// the process opted in to them), and that is within rounding of the
    /// one-block-at-a-time kernels. An AVX-512 CPU found that this test assumed the AVX2
    /// kernels (MODULA_SIMD=avx512 on the lent machine, 2026-11-29).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn quantised_skinny_products_equal_the_grouped_kernels_bit_for_bit() {
        let isa = if cfg!(target_arch = "x86_64") {
            Isa::Avx2
        } else {
            Isa::Neon
        };
        if !isa.is_supported() {
            return;
        }
        for (case, (m, n, kb)) in [
            (1, 1, 1),
            (1, 37, 3),
            (2, 8, 9),
            (5, 5, 9),
            (16, 13, 4),
            (1, 9, 130),
            (3, 6, 97),
            (1, 7, 8),
            (4, 3, 16),
        ]
        .into_iter()
        .enumerate()
        {
            let k = QB * kb;
            let x = rand_vec(case as u64, m * k);
            let wv = rand_vec(case as u64 ^ 9, n * k);
            let ((_, b4), (b8, _)) = (quantised(&wv, true), quantised(&wv, false));
            for q4 in [true, false] {
                let data = if q4 {
                    WeightData::Q4_0(&b4)
                } else {
                    WeightData::Q8_0(&b8)
                };
                let w = MatRef::new(data, n, k, k).unwrap();
                let mut got = vec![0f32; m * n];
                linear_mode(isa, true, &x, k, m, &w, None, &mut got, n).unwrap();
                for i in 0..m {
                    let (xq, _) = quantised(&x[i * k..(i + 1) * k], false);
                    let mut octs = vec![Q8Oct::default(); kb.div_ceil(8)];
                    modula_quant::kernels::q8_octs(&xq, &mut octs);
                    for j in 0..n {
                        let rows = j * kb..(j + 1) * kb;
                        let row = if q4 {
                            QRow::Q4(&b4[rows])
                        } else {
                            QRow::Q8(&b8[rows])
                        };
                        let (want, blockwise) = dispatched_and_blockwise(row, &xq, &octs);
                        assert_eq!(
                            got[i * n + j].to_bits(),
                            want.to_bits(),
                            "q4 {q4}: {m}x{n}x{k} at {i},{j}"
                        );
                        assert!(
                            (want - blockwise).abs() <= 1e-5 * (1.0 + blockwise.abs()),
                            "{want} vs {blockwise}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dequantised_rows_are_the_scalar_bits_at_every_level() {
        for (seed, kb, pad) in [
            (1u64, 1, 0),
            (2, 2, 1),
            (3, 3, 0),
            (4, 5, 2),
            (5, 8, 0),
            (6, 33, 1),
        ] {
            let (n, k, ldw) = (3, QB * kb, QB * (kb + pad));
            let wv = rand_vec(seed, n * ldw);
            for q4 in [false, true] {
                let (mut b8, mut b4) = quantised(&wv, q4);
                // bytes only a hostile file holds: −128, and a negative scale
                if let Some(b) = b8.get_mut(1) {
                    b.qs[5] = -128;
                    b.d = -b.d;
                }
                if let Some(b) = b4.get_mut(1) {
                    b.d = -b.d;
                }
                let data = if q4 {
                    WeightData::Q4_0(&b4)
                } else {
                    WeightData::Q8_0(&b8)
                };
                let w = MatRef::new(data, n, k, ldw).unwrap();
                for j in 0..n {
                    let mut want = vec![0f32; k];
                    widen_row_with(Isa::Scalar, &w, j, &mut want);
                    for isa in available() {
                        let mut got = vec![f32::NAN; k];
                        widen_row_with(isa, &w, j, &mut got);
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{} q4 {q4} blocks {kb} row {j}", isa.name());
                    }
                    // a short output gets the leading values (no panic)
                    let mut short = vec![0f32; k - 7];
                    widen_row_with(isa::active(), &w, j, &mut short);
                    assert_eq!(&short[..k - 32], &want[..k - 32]);
                }
            }
        }
    }

    #[test]
    fn quantised_shapes_must_be_whole_blocks() {
        let b = vec![
            BlockQ8_0 {
                d: f16::ONE,
                qs: [1; 32]
            };
            4
        ];
        assert!(MatRef::new(WeightData::Q8_0(&b), 2, 64, 64).is_ok());
        assert!(MatRef::new(WeightData::Q8_0(&b), 2, 48, 64).is_err());
        assert!(MatRef::new(WeightData::Q8_0(&b), 1, 64, 80).is_err());
        assert!(
            MatRef::new(WeightData::Q8_0(&b), 3, 64, 64).is_err(),
            "too few blocks"
        );
        let w = MatRef::new(WeightData::Q8_0(&b), 2, 64, 64).unwrap();
        assert!(w.prefix(2, 32).is_ok());
        assert!(w.prefix(2, 40).is_err());
        // a nested prefix computes on the first blocks of each row
        let x = vec![1f32; 32];
        let mut y = vec![0f32; 2];
        for qact in [false, true] {
            linear_mode(
                Isa::Scalar,
                qact,
                &x,
                32,
                1,
                &w.prefix(2, 32).unwrap(),
                None,
                &mut y,
                2,
            )
            .unwrap();
            // d = 1 in f16, q = 1: 32 ones (x = 1 quantises exactly to 127 · (1/127))
            assert!((y[0] - 32.0).abs() < 1e-2 && y[0] == y[1], "{y:?}");
        }
    }

    /// A row quantised once ([`QuantizedRow`]) gives exactly [`linear`]'s products, for
    /// Q8_0/Q4_0 weights at 1–3 threads (the parallel path included), ragged block counts,
    /// padded strides and a bias; other weights, rows that are not whole blocks, rows with
    /// a NaN and a row of another length fall back to `linear` (same results again).
    #[test]
    fn a_row_quantised_once_gives_linear_products() {
        let mut xq = QuantizedRow::new();
        for &(n, k, ld) in &[
            (5, 32, 32),
            (37, 96, 100),
            (9, 160, 160),
            (1030, 1024, 1024),
        ] {
            let wv = rand_vec(31 + n as u64, n * ld);
            let wq = rand_vec(3 + k as u64, n * k);
            let x = rand_vec(5 + n as u64, k);
            let b = rand_vec(7, n);
            for q4 in [false, true] {
                let (b8, b4) = quantised(&wq, q4);
                let data = if q4 {
                    WeightData::Q4_0(&b4)
                } else {
                    WeightData::Q8_0(&b8)
                };
                for w in [
                    MatRef::new(data, n, k, k).unwrap(),
                    MatRef::new(WeightData::F32(&wv), n, k, ld).unwrap(),
                ] {
                    for t in [1, 2, 3] {
                        crate::kernels::par::set_threads(t);
                        xq.set(&x);
                        for bias in [None, Some(&b[..])] {
                            let (mut want, mut got) = (vec![0f32; n], vec![1f32; n]);
                            linear(&x, k, 1, &w, bias, &mut want, n).unwrap();
                            linear_row(&x, &xq, &w, bias, &mut got).unwrap();
                            assert_eq!(got, want, "n {n} k {k} q4 {q4} threads {t}");
                        }
                    }
                    crate::kernels::par::set_threads(0);
                }
            }
        }
        // fallbacks: a NaN in the row, a row that is not whole blocks, another row length
        let (b8, _) = quantised(&rand_vec(1, 4 * 64), false);
        let w = MatRef::new(WeightData::Q8_0(&b8), 4, 64, 64).unwrap();
        let mut x = rand_vec(2, 64);
        x[3] = f32::NAN;
        xq.set(&x);
        let (mut want, mut got) = (vec![0f32; 4], vec![0f32; 4]);
        linear(&x, 64, 1, &w, None, &mut want, 4).unwrap();
        linear_row(&x, &xq, &w, None, &mut got).unwrap();
        assert!(got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let other = rand_vec(4, 64);
        linear(&other, 64, 1, &w, None, &mut want, 4).unwrap();
        xq.set(&rand_vec(5, 32));
        linear_row(&other, &xq, &w, None, &mut got).unwrap();
        assert_eq!(got, want);
        xq.set(&rand_vec(6, 33));
        let w33v = rand_vec(9, 66);
        let w33 = MatRef::new(WeightData::F32(&w33v), 2, 33, 33).unwrap();
        let x33 = rand_vec(6, 33);
        let (mut want, mut got) = (vec![0f32; 2], vec![0f32; 2]);
        linear(&x33, 33, 1, &w33, None, &mut want, 2).unwrap();
        linear_row(&x33, &xq, &w33, None, &mut got).unwrap();
        assert_eq!(got, want);
        // a wrong output length is an error, not a panic
        let mut q = QuantizedRow::new();
        q.set(&other);
        assert!(linear_row(&other, &q, &w, None, &mut [0f32; 3]).is_err());
    }

    #[test]
    fn quantised_decode_does_not_depend_on_thread_count() {
        let (n, k) = (2080, 2048);
        assert!(
            n * k >= PAR_MIN_WEIGHTS,
            "exercise the parallel decode path"
        );
        let wv = rand_vec(8, n * k);
        let x = rand_vec(9, n.max(k));
        for q4 in [false, true] {
            let (b8, b4) = quantised(&wv, q4);
            let data = if q4 {
                WeightData::Q4_0(&b4)
            } else {
                WeightData::Q8_0(&b8)
            };
            let w = MatRef::new(data, n, k, k).unwrap();
            let wt = MatRef::new(data, k, n, n).unwrap();
            let mut outs = Vec::new();
            for t in [1, 2, 3] {
                crate::kernels::par::set_threads(t);
                let (mut y, mut z) = (vec![0f32; n], vec![0f32; n]);
                linear(&x, k, 1, &w, None, &mut y, n).unwrap();
                matmul_rows(&x, k, 1, &wt, &mut z, n, false).unwrap();
                outs.push((y, z));
            }
            crate::kernels::par::set_threads(0);
            assert!(
                outs.windows(2).all(|p| p[0] == p[1]),
                "thread count changed the result"
            );
        }
    }

    /// The grouped one-row `matmul_rows` (≥ PAR_MIN_WEIGHTS: rows summed in groups, the
    /// partials added in order) against the scalar reference, for every weight type, a
    /// row count that does not divide into the groups, a padded row stride, and both
    /// accumulate modes.
    #[test]
    fn grouped_decode_rows_match_scalar() {
        let (k, n, ld) = (4099, 1056, 1088);
        assert!(n * k >= PAR_MIN_WEIGHTS && k % ROWS_GROUPS != 0);
        let wv = rand_vec(21, k * ld);
        let wh: Vec<f16> = wv.iter().map(|&v| f16::from_f32(v)).collect();
        let (b8, _) = quantised(&wv, false);
        let (_, b4) = quantised(&wv, true);
        let x = rand_vec(22, k);
        let y0 = rand_vec(23, n);
        for data in [
            WeightData::F32(&wv),
            WeightData::F16(&wh),
            WeightData::Q8_0(&b8),
            WeightData::Q4_0(&b4),
        ] {
            let w = MatRef::new(data, k, n, ld).unwrap();
            let q4 = matches!(data, WeightData::Q4_0(_));
            for acc in [false, true] {
                let mut want = if acc { y0.clone() } else { vec![0f32; n] };
                matmul_rows_scalar(&x, k, 1, &w, &mut want, n);
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                for isa in available() {
                    let mut got = y0.clone();
                    matmul_rows_mode(isa, false, &x, k, 1, &w, &mut got, n, acc).unwrap();
                    assert_close(isa.name(), &got, &want, |_| 1e-5 * scale * 8.0);
                }
                if !q4 {
                    continue;
                }
                // integer tiles: 32-row tiles from each group's first row, every ISA and
                // thread count bit-identical to the scalar ISA, within the rounding bound
                let mut qref = y0.clone();
                matmul_rows_mode(Isa::Scalar, true, &x, k, 1, &w, &mut qref, n, acc).unwrap();
                let per = k.div_ceil(ROWS_GROUPS);
                let bound = tile_bound(&x, k, 1, &w, |f| {
                    f / per * per + (f % per) / qk::TILE_ROWS * qk::TILE_ROWS
                });
                assert_close("scalar tiles", &qref, &want, |i| {
                    bound[i] + 1e-5 * scale * 8.0
                });
                for threads in [1, 2, 3] {
                    crate::kernels::par::set_threads(threads);
                    for isa in available() {
                        let mut got = y0.clone();
                        matmul_rows_mode(isa, true, &x, k, 1, &w, &mut got, n, acc).unwrap();
                        assert!(
                            got.iter()
                                .zip(&qref)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} at {threads} threads differs from scalar",
                            isa.name()
                        );
                    }
                }
                crate::kernels::par::set_threads(0);
            }
        }
    }

    #[test]
    fn many_row_products_do_not_depend_on_thread_count() {
        // Ragged shapes above PAR_MIN_FLOPS: the row blocks end mid-tile.
        let (m, n, k) = (77, 130, 150);
        let x = rand_vec(1, m * k);
        let w = rand_vec(2, n * k);
        let dy = rand_vec(3, m * n);
        let mut outs = Vec::new();
        for t in [1, 2, 3] {
            crate::kernels::par::set_threads(t);
            let mut y = vec![0f32; m * n];
            linear(&x, k, m, &MatRef::f32(&w, n, k).unwrap(), None, &mut y, n).unwrap();
            let mut z = rand_vec(4, m * k);
            matmul_rows(&dy, n, m, &MatRef::f32(&w, n, k).unwrap(), &mut z, k, true).unwrap();
            let mut c = rand_vec(5, n * k);
            matmul_tn_acc(&dy, &x, m, n, k, &mut c).unwrap();
            outs.push((y, z, c));
        }
        crate::kernels::par::set_threads(0);
        assert!(
            outs.windows(2).all(|p| p[0] == p[1]),
            "thread count changed the result"
        );
        // and the blocked products are still the definition
        let (y, z, c) = &outs[2];
        let mut want = vec![0f32; m * n];
        linear_scalar(&x, k, m, &MatRef::f32(&w, n, k).unwrap(), &mut want, n);
        assert_close("linear", y, &want, |_| 1e-4);
        let mut wz = rand_vec(4, m * k);
        matmul_rows_scalar(&dy, n, m, &MatRef::f32(&w, n, k).unwrap(), &mut wz, k);
        assert_close("matmul_rows", z, &wz, |_| 1e-4);
        let mut wc = rand_vec(5, n * k);
        for i in 0..n {
            for j in 0..k {
                wc[i * k + j] += (0..m).map(|r| dy[r * n + i] * x[r * k + j]).sum::<f32>();
            }
        }
        assert_close("matmul_tn_acc", c, &wc, |_| 1e-4);
    }

    #[test]
    fn matmul_tn_acc_matches_definition() {
        let (m, n, k) = (7, 5, 9);
        let (a, b) = (rand_vec(1, m * n), rand_vec(2, m * k));
        let mut c = rand_vec(3, n * k);
        let mut want = c.clone();
        for i in 0..n {
            for j in 0..k {
                want[i * k + j] += (0..m).map(|r| a[r * n + i] * b[r * k + j]).sum::<f32>();
            }
        }
        matmul_tn_acc(&a, &b, m, n, k, &mut c).unwrap();
        assert_close("tn", &c, &want, |_| 1e-5);
        assert!(matmul_tn_acc(&a, &b, m, n, k + 1, &mut c).is_err());
    }

    #[test]
    fn prefix_is_a_nested_view() {
        let (n, k) = (40, 64);
        let wv = rand_vec(3, n * k);
        let x = rand_vec(4, 2 * k);
        let full = MatRef::f32(&wv, n, k).unwrap();
        let sub = full.prefix(24, 48).unwrap();
        let mut y = vec![0f32; 2 * 24];
        linear(&x, k, 2, &sub, None, &mut y, 24).unwrap();
        for i in 0..2 {
            for j in 0..24 {
                let e: f32 = (0..48).map(|t| x[i * k + t] * wv[j * k + t]).sum();
                assert!((y[i * 24 + j] - e).abs() < 1e-4);
            }
        }
        assert!(full.prefix(41, 1).is_err());
        assert!(full.prefix(1, 65).is_err());
    }

    #[test]
    fn shape_errors_are_reported_not_panics() {
        let w = vec![0f32; 12];
        assert!(MatRef::f32(&w, 4, 4).is_err());
        let m = MatRef::f32(&w, 3, 4).unwrap();
        let x = vec![0f32; 4];
        let mut y = vec![0f32; 3];
        assert!(linear(&x, 4, 2, &m, None, &mut y, 3).is_err());
        assert!(linear(&x, 3, 1, &m, None, &mut y, 3).is_err());
        assert!(linear(&x, 4, 1, &m, Some(&[0.0; 2]), &mut y, 3).is_err());
        assert!(linear(&x, 4, 1, &m, None, &mut y, 3).is_ok());
    }

    #[test]
    fn special_values_widen_exactly() {
        // f16 subnormals, infinities and NaN through every variant (8 lanes + tail).
        let specials = [
            f16::from_bits(0x0001),
            f16::from_bits(0x03ff),
            f16::from_bits(0x8001),
            f16::MAX,
            f16::MIN_POSITIVE,
            f16::NEG_INFINITY,
            f16::INFINITY,
            f16::from_f32(-0.0),
            f16::ONE,
        ];
        for (pos, &v) in specials.iter().enumerate() {
            let mut w = vec![f16::ZERO; 9];
            w[pos] = v;
            let mut x = vec![0f32; 9];
            x[pos] = 1.0;
            let m = MatRef::new(WeightData::F16(&w), 1, 9, 9).unwrap();
            for isa in available() {
                let mut y = [0f32];
                linear_with(isa, &x, 9, 1, &m, None, &mut y, 1).unwrap();
                let e = v.to_f32();
                assert!(
                    y[0] == e || (y[0].is_nan() && e.is_nan()),
                    "{} {v:?}: {}",
                    isa.name(),
                    y[0]
                );
            }
        }
    }
}
