//! Where training's matrix products run. The layers and models call [`linear`],
//! [`matmul_rows`] and [`matmul_tn_acc`] here (the same signatures as `modula-core`'s
//! kernels); by default, and always in a build without the `gpu` feature, they are
//! `modula-core`'s CPU kernels. With the `gpu` feature and [`select`]`(Device::Gpu | Auto)`
//! finding an adapter, every f32 product of at least [`min_macs`] multiply-adds runs on the
//! GPU (the `gpu` module, built with the feature) — the forward products, and the backward's `dX = dY W` and
//! `dW += dYᵀ X` — and the trainer keeps each step's parameters resident there
//! ([`ParamsOnDevice`]), so weights cross once per optimiser step and only activations
//! cross per product. Everything else (norms, softmax, routing, the scans, the optimiser)
//! stays on the CPU.
//!
//! A product the device cannot take (shape beyond its limits) runs on the CPU; a device
//! failure mid-run is reported once and training continues on the CPU.

use modula_core::kernels::linear::{self as cpu, MatRef};
use modula_core::kernels::KernelError;
use modula_core::Error;

/// Where to train (`modula train --device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU kernels (the default).
    Cpu,
    /// The GPU; falls back to the CPU, saying why, when there is no adapter.
    Gpu,
    /// The GPU when an adapter is found, else the CPU.
    Auto,
}

impl Device {
    /// `cpu`, `gpu` or `auto`.
    pub fn parse(s: &str) -> Result<Device, Error> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            "auto" => Ok(Device::Auto),
            _ => Err(Error::input(format!(
                "unknown device '{s}' (cpu, gpu or auto)"
            ))),
        }
    }
}

/// Products smaller than this (m·n·k multiply-adds) stay on the CPU unless
/// `MODULA_GPU_MIN_MACS` says otherwise: below it a dispatch, upload and read-back cost
/// more than the CPU's product. An estimate (2²¹ multiply-adds ≈ 50–100 µs on a laptop
/// core, the order of one round trip to a GPU), not a measurement: no real GPU has been
/// available to tune it.
pub const DEFAULT_MIN_MACS: usize = 1 << 21;

/// Select the device for training's products; returns the line to show the user. `Gpu`
/// in a build without the `gpu` feature is an error (rebuild with it); `Gpu` or `Auto`
/// with no usable adapter falls back to the CPU and says why.
pub fn select(device: Device) -> Result<String, Error> {
    imp::select(device)
}

/// The products-size threshold in force ([`DEFAULT_MIN_MACS`] or `MODULA_GPU_MIN_MACS`).
pub fn min_macs() -> usize {
    imp::min_macs()
}

/// Set the threshold (tests set 0 to send every product to the device).
pub fn set_min_macs(macs: usize) {
    imp::set_min_macs(macs)
}

/// The GPU products are going to now (for its name and counters).
#[cfg(feature = "gpu")]
pub fn active_gpu() -> Option<std::sync::Arc<crate::gpu::Gpu>> {
    imp::active()
}

/// Whether products are going to a GPU now.
pub fn on_gpu() -> bool {
    imp::on_gpu()
}

/// What the device did so far (adapter, products, bytes each way), `None` on the CPU.
pub fn report() -> Option<String> {
    imp::report()
}

/// A parameter store uploaded to the device for one step: while this lives, products whose
/// weights lie inside the store read them in place. Create it after the optimiser step
/// and drop it before the next (the values must not change while it lives). Does nothing
/// on the CPU.
#[derive(Debug)]
pub struct ParamsOnDevice {
    #[cfg(feature = "gpu")]
    bound: Option<(std::sync::Arc<crate::gpu::Gpu>, u64)>,
}

impl ParamsOnDevice {
    /// Upload `values` (when a GPU is selected).
    pub fn bind(values: &[f32]) -> ParamsOnDevice {
        #[cfg(feature = "gpu")]
        {
            let bound = imp::active().and_then(|g| g.bind(values).map(|id| (g, id)));
            ParamsOnDevice { bound }
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = values;
            ParamsOnDevice {}
        }
    }
}

impl Drop for ParamsOnDevice {
    fn drop(&mut self) {
        #[cfg(feature = "gpu")]
        if let Some((g, id)) = self.bound.take() {
            g.unbind(id);
        }
    }
}

/// `y = x Wᵀ + b` as [`modula_core::kernels::linear::linear`].
pub fn linear(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    bias: Option<&[f32]>,
    y: &mut [f32],
    ldy: usize,
) -> Result<(), KernelError> {
    // W [n, k] read transposed: element (p, j) of the right operand is W[j·ld + p]
    #[cfg(feature = "gpu")]
    if bias.is_none_or(|b| b.len() == w.rows())
        && imp::rows_product(x, ldx, m, w, true, y, ldy, |yr, o| {
            yr.copy_from_slice(o);
            if let Some(b) = bias {
                yr.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        })
    {
        return Ok(());
    }
    cpu::linear(x, ldx, m, w, bias, y, ldy)
}

/// `y (+)= x W` with `W` stored `[k, n]`, as [`modula_core::kernels::linear::matmul_rows`].
pub fn matmul_rows(
    x: &[f32],
    ldx: usize,
    m: usize,
    w: &MatRef<'_>,
    y: &mut [f32],
    ldy: usize,
    accumulate: bool,
) -> Result<(), KernelError> {
    #[cfg(feature = "gpu")]
    if imp::rows_product(x, ldx, m, w, false, y, ldy, |yr, o| {
        if accumulate {
            yr.iter_mut().zip(o).for_each(|(v, o)| *v += o);
        } else {
            yr.copy_from_slice(o);
        }
    }) {
        return Ok(());
    }
    cpu::matmul_rows(x, ldx, m, w, y, ldy, accumulate)
}

/// `c[n, k] += a[m, n]ᵀ · b[m, k]`, as [`modula_core::kernels::linear::matmul_tn_acc`].
pub fn matmul_tn_acc(
    a: &[f32],
    b: &[f32],
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
) -> Result<(), KernelError> {
    #[cfg(feature = "gpu")]
    if a.len() == m * n && b.len() == m * k && c.len() == n * k {
        if let Some(g) = imp::offload(n, k, m) {
            let at = crate::gpu::Operand {
                data: a,
                rs: 1,
                cs: n,
            };
            let bo = crate::gpu::Operand {
                data: b,
                rs: k,
                cs: 1,
            };
            if let Some(out) = imp::run(&g, at, bo, n, k, m) {
                c.iter_mut().zip(&out).for_each(|(v, o)| *v += o);
                return Ok(());
            }
        }
    }
    cpu::matmul_tn_acc(a, b, m, n, k, c)
}

#[cfg(feature = "gpu")]
mod imp {
    use super::{Device, DEFAULT_MIN_MACS};
    use crate::gpu::{Gpu, Operand};
    use modula_core::kernels::linear::MatRef;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock, PoisonError, RwLock};

    static ACTIVE: RwLock<Option<Arc<Gpu>>> = RwLock::new(None);
    static MIN_MACS: AtomicUsize = AtomicUsize::new(usize::MAX);

    pub(super) fn active() -> Option<Arc<Gpu>> {
        ACTIVE
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_active(g: Option<Arc<Gpu>>) {
        *ACTIVE.write().unwrap_or_else(PoisonError::into_inner) = g;
    }

    pub(super) fn min_macs() -> usize {
        match MIN_MACS.load(Ordering::Relaxed) {
            usize::MAX => {
                static ENV: OnceLock<usize> = OnceLock::new();
                *ENV.get_or_init(|| {
                    std::env::var("MODULA_GPU_MIN_MACS")
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(DEFAULT_MIN_MACS)
                })
            }
            v => v,
        }
    }

    pub(super) fn set_min_macs(macs: usize) {
        MIN_MACS.store(macs.min(usize::MAX - 1), Ordering::Relaxed);
    }

    pub(super) fn on_gpu() -> bool {
        active().is_some()
    }

    pub(super) fn select(device: Device) -> Result<String, modula_core::Error> {
        if device == Device::Cpu {
            set_active(None);
            return Ok("device: CPU".into());
        }
        // one device per process: selecting again keeps the open one
        if let Some(g) = active() {
            return Ok(format!("device: GPU {}", g.name()));
        }
        match Gpu::open(None) {
            Ok(g) => {
                let line = format!(
                    "device: GPU {} (products of at least {} multiply-adds; the rest on the CPU)",
                    g.name(),
                    min_macs()
                );
                set_active(Some(Arc::new(g)));
                Ok(line)
            }
            Err(e) => Ok(format!("device: CPU — {e}, so training runs on the CPU")),
        }
    }

    pub(super) fn report() -> Option<String> {
        let g = active()?;
        let s = g.stats();
        Some(format!(
            "GPU {}: {} products, parameters uploaded {} times ({:.1} MiB), weights read in place {} times, activations up {:.1} MiB, results down {:.1} MiB",
            g.name(),
            s.products,
            s.param_uploads,
            s.param_bytes as f64 / 1048576.0,
            s.resident_hits,
            s.bytes_up as f64 / 1048576.0,
            s.bytes_down as f64 / 1048576.0
        ))
    }

    /// The device, when one is active and the product is big enough and fits it.
    pub(super) fn offload(m: usize, n: usize, k: usize) -> Option<Arc<Gpu>> {
        if m == 0 || n == 0 || k == 0 {
            return None;
        }
        let macs = m.saturating_mul(n).saturating_mul(k);
        if macs < min_macs() {
            return None;
        }
        active().filter(|g| g.fits(m, n, k))
    }

    /// `x [m, ·] (ldx)` times an f32 `w`, read transposed (`x Wᵀ`, `W [n, k]`) or not
    /// (`x W`, `W [k, n]`), on the device when one is active, the product is big enough and
    /// the shapes are consistent; each output row goes to `put(y row, result row)`.
    /// `false`: nothing was written (the caller runs the CPU kernel, which also reports
    /// bad shapes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows_product(
        x: &[f32],
        ldx: usize,
        m: usize,
        w: &MatRef<'_>,
        transposed: bool,
        y: &mut [f32],
        ldy: usize,
        mut put: impl FnMut(&mut [f32], &[f32]),
    ) -> bool {
        let (n, k) = if transposed {
            (w.rows(), w.cols())
        } else {
            (w.cols(), w.rows())
        };
        let (Some(g), Some((wd, ld))) = (offload(m, n, k), w.as_f32()) else {
            return false;
        };
        let ok =
            ldx >= k && ldy >= n && x.len() >= (m - 1) * ldx + k && y.len() >= (m - 1) * ldy + n;
        if !ok {
            return false;
        }
        let a = Operand {
            data: x,
            rs: ldx,
            cs: 1,
        };
        let (rs, cs) = if transposed { (1, ld) } else { (ld, 1) };
        let b = Operand { data: wd, rs, cs };
        let Some(out) = run(&g, a, b, m, n, k) else {
            return false;
        };
        for (yr, o) in y.chunks_mut(ldy).zip(out.chunks_exact(n)) {
            put(&mut yr[..n], o);
        }
        true
    }

    /// The product on the device; on a failure, say so once, stop using the device and
    /// return `None` (the caller computes it on the CPU).
    pub(super) fn run(
        g: &Gpu,
        a: Operand<'_>,
        b: Operand<'_>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Option<Vec<f32>> {
        let mut out = vec![0f32; m * n];
        match g.matmul(a, b, m, n, k, &mut out) {
            Ok(()) => Some(out),
            Err(e) => {
                if active().is_some() {
                    set_active(None);
                    eprintln!("modula: GPU product failed ({e}); training continues on the CPU");
                }
                None
            }
        }
    }
}

#[cfg(not(feature = "gpu"))]
mod imp {
    use super::Device;

    pub(super) fn min_macs() -> usize {
        super::DEFAULT_MIN_MACS
    }
    pub(super) fn set_min_macs(_macs: usize) {}
    pub(super) fn on_gpu() -> bool {
        false
    }
    pub(super) fn report() -> Option<String> {
        None
    }
    pub(super) fn select(device: Device) -> Result<String, modula_core::Error> {
        match device {
            Device::Cpu => Ok("device: CPU".into()),
            Device::Auto => Ok("device: CPU (this build has no `gpu` feature)".into()),
            Device::Gpu => Err(modula_core::Error::unsupported(
                "--device gpu: this build has no GPU support; rebuild with \
                 `cargo build --release -p edge-demo --features gpu` (wgpu: Vulkan, Metal, DX12)",
            )),
        }
    }
}
