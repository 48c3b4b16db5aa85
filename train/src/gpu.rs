//! The `gpu` feature's device: one `wgpu` adapter (Vulkan, Metal or DX12 — the GPUs that
//! laptops have), one WGSL kernel for every matrix product of training, and the parameter
//! stores that are resident on it.
//!
//! One kernel serves all three products ([`crate::compute`]): `C[M, N] = A[M, K] · B[K, N]`
//! with each operand read through an offset and a row and a column stride, so `x Wᵀ`
//! (`W` read transposed), `x W` and `dYᵀ X` are the same dispatch with different strides
//! and nothing is transposed on the host. A 16 × 16 workgroup computes a 16 × 16 tile of `C`
//! through shared-memory tiles of `A` and `B`; every element of `C` is one thread's sum in
//! increasing `K` order, so the result does not depend on scheduling (it is deterministic,
//! and equal to the CPU's up to the order of rounding).
//!
//! Parameters stay on the device: a parameter store is uploaded once per optimiser step
//! ([`Gpu::bind`]) and a product whose weight operand lies inside it reads it in place;
//! only activations (and the products' results) cross per product. Buffers are pooled by
//! power-of-two size, so a step allocates no device memory once the pools are warm.

use modula_core::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
pub use wgpu;

const TILE: u32 = 16;

const SHADER: &str = r#"
struct Dims {
    m: u32, n: u32, k: u32, a_off: u32,
    a_rs: u32, a_cs: u32, b_off: u32, b_rs: u32,
    b_cs: u32, p0: u32, p1: u32, p2: u32,
};
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> d: Dims;
var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

fn load_a(r: u32, p: u32) -> f32 {
    if (r < d.m && p < d.k) { return a[d.a_off + r * d.a_rs + p * d.a_cs]; }
    return 0.0;
}
fn load_b(p: u32, j: u32) -> f32 {
    if (p < d.k && j < d.n) { return b[d.b_off + p * d.b_rs + j * d.b_cs]; }
    return 0.0;
}

@compute @workgroup_size(16, 16)
fn main(@builtin(local_invocation_id) l: vec3<u32>, @builtin(workgroup_id) g: vec3<u32>) {
    let r0 = g.y * 16u;
    let j0 = g.x * 16u;
    var acc = 0.0;
    for (var p0 = 0u; p0 < d.k; p0 = p0 + 16u) {
        // Neighbouring threads (l.x) read neighbouring addresses: along K when the
        // operand's columns are contiguous, along the other axis when its rows are.
        if (d.a_cs == 1u) {
            ta[l.y][l.x] = load_a(r0 + l.y, p0 + l.x);
        } else {
            ta[l.x][l.y] = load_a(r0 + l.x, p0 + l.y);
        }
        if (d.b_rs == 1u) {
            tb[l.x][l.y] = load_b(p0 + l.x, j0 + l.y);
        } else {
            tb[l.y][l.x] = load_b(p0 + l.y, j0 + l.x);
        }
        workgroupBarrier();
        for (var q = 0u; q < 16u; q = q + 1u) {
            acc = acc + ta[l.y][q] * tb[q][l.x];
        }
        workgroupBarrier();
    }
    let r = r0 + l.y;
    let j = j0 + l.x;
    if (r < d.m && j < d.n) {
        c[r * d.n + j] = acc;
    }
}
"#;

/// An operand as the kernel reads it: element `(i, j)` is `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    /// The elements (from the operand's first element's storage onwards).
    pub data: &'a [f32],
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl Operand<'_> {
    /// Elements spanned by a `rows × cols` operand (the last one read, plus one).
    fn extent(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.rs + (cols - 1) * self.cs + 1
    }
}

/// Counters since the device was opened (for reports and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// Products run on the device.
    pub products: u64,
    /// Bytes of activations uploaded.
    pub bytes_up: u64,
    /// Bytes of results read back.
    pub bytes_down: u64,
    /// Parameter-store uploads ([`Gpu::bind`]).
    pub param_uploads: u64,
    /// Bytes of those uploads.
    pub param_bytes: u64,
    /// Weight operands read in place from a resident parameter store.
    pub resident_hits: u64,
}

#[derive(Default)]
struct Counters {
    products: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    param_uploads: AtomicU64,
    param_bytes: AtomicU64,
    resident_hits: AtomicU64,
}

/// A parameter store on the device: host address range → device buffer.
struct Resident {
    id: u64,
    start: usize,
    len: usize,
    buf: wgpu::Buffer,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Input,
    Output,
    Staging,
    Uniform,
}

/// An open device and the matrix-product kernel.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    name: String,
    max_binding: u64,
    max_groups: u32,
    pool: Mutex<HashMap<(Kind, u64), Vec<wgpu::Buffer>>>,
    resident: Mutex<Vec<Resident>>,
    next_id: AtomicU64,
    counters: Counters,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("adapter", &self.name).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gpu {
    /// Open the first adapter of `backends` (`None`: `WGPU_BACKEND` from the environment,
    /// else every native backend), preferring a high-performance one. The error says
    /// why there is none.
    pub fn open(backends: Option<wgpu::Backends>) -> Result<Gpu, Error> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if let Some(b) = backends {
            desc.backends = b;
        }
        let instance = wgpu::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| Error::input(format!("no GPU adapter found ({e})")))?;
        let info = adapter.get_info();
        let name = format!("{} ({:?}, {:?})", info.name, info.device_type, info.backend);
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("modula"),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::input(format!("GPU adapter {name}: cannot open a device ({e})")))?;
        // Errors are caught per product by error scopes; anything else is reported
        // instead of wgpu's default panic.
        device.on_uncaptured_error(Arc::new(|e| eprintln!("modula: GPU error: {e}")));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("modula matmul"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("modula matmul"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::input(format!(
                "GPU adapter {name}: the matmul kernel does not build: {e}"
            )));
        }
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Gpu {
            device,
            queue,
            pipeline,
            layout,
            name,
            max_binding: limits
                .max_storage_buffer_binding_size
                .min(limits.max_buffer_size),
            max_groups: limits.max_compute_workgroups_per_dimension,
            pool: Mutex::new(HashMap::new()),
            resident: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
        })
    }

    /// The adapter, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Cpu, Vulkan)`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters since the device was opened.
    pub fn stats(&self) -> GpuStats {
        let c = &self.counters;
        GpuStats {
            products: c.products.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            param_uploads: c.param_uploads.load(Ordering::Relaxed),
            param_bytes: c.param_bytes.load(Ordering::Relaxed),
            resident_hits: c.resident_hits.load(Ordering::Relaxed),
        }
    }

    fn take(&self, kind: Kind, bytes: u64) -> wgpu::Buffer {
        let size = match bytes.max(16).next_power_of_two() {
            s if s <= self.max_binding => s,
            _ => bytes.next_multiple_of(4),
        };
        if let Some(b) = lock(&self.pool).get_mut(&(kind, size)).and_then(Vec::pop) {
            return b;
        }
        let usage = match kind {
            Kind::Input => wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            Kind::Output => wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            Kind::Staging => wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            Kind::Uniform => wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        };
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    fn give(&self, kind: Kind, b: wgpu::Buffer) {
        lock(&self.pool)
            .entry((kind, b.size()))
            .or_default()
            .push(b);
    }

    /// Upload a parameter store; until the returned id is passed to [`Gpu::unbind`], a
    /// product whose operand lies inside `values` reads it from the device. The caller
    /// must not change `values` in between (the trainer binds after the optimiser step
    /// and unbinds before the next). `None` when the store exceeds one binding.
    pub fn bind(&self, values: &[f32]) -> Option<u64> {
        let bytes = std::mem::size_of_val(values) as u64;
        if values.is_empty() || bytes > self.max_binding {
            return None;
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modula parameters"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue
            .write_buffer(&buf, 0, bytemuck::cast_slice::<f32, u8>(values));
        self.counters.param_uploads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .param_bytes
            .fetch_add(bytes, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.resident).push(Resident {
            id,
            start: values.as_ptr() as usize,
            len: values.len(),
            buf,
        });
        Some(id)
    }

    /// Forget a bound parameter store (its device buffer is freed).
    pub fn unbind(&self, id: u64) {
        lock(&self.resident).retain(|r| r.id != id);
    }

    /// The resident buffer holding `s` and the element offset of `s` in it.
    fn resident_of(&self, s: &[f32]) -> Option<(wgpu::Buffer, usize)> {
        let p = s.as_ptr() as usize;
        let end = p + std::mem::size_of_val(s);
        lock(&self.resident).iter().find_map(|r| {
            let r_end = r.start + r.len * 4;
            (p >= r.start && end <= r_end).then(|| (r.buf.clone(), (p - r.start) / 4))
        })
    }

    /// Whether a product of this shape fits the device's limits (else the caller runs it on
    /// the CPU).
    pub fn fits(&self, m: usize, n: usize, k: usize) -> bool {
        let groups = |x: usize| x.div_ceil(TILE as usize) as u64;
        let elems_ok = |e: usize| (e as u64).saturating_mul(4) <= self.max_binding;
        m > 0
            && n > 0
            && k > 0
            && groups(m) <= u64::from(self.max_groups)
            && groups(n) <= u64::from(self.max_groups)
            && elems_ok(m.saturating_mul(n))
            && elems_ok(m.saturating_mul(k))
            && elems_ok(n.saturating_mul(k))
    }

    /// `out[M, N] = A[M, K] · B[K, N]` (compact, row-major), `A` and `B` read through their
    /// strides. Errors (a device lost, a binding too large) leave `out` unspecified; the
    /// caller then computes the product on the CPU.
    pub fn matmul(
        &self,
        a: Operand<'_>,
        b: Operand<'_>,
        m: usize,
        n: usize,
        k: usize,
        out: &mut [f32],
    ) -> Result<(), Error> {
        if !self.fits(m, n, k) || out.len() < m * n {
            return Err(Error::input(format!(
                "product {m}x{k} by {k}x{n} does not fit the device"
            )));
        }
        let (ea, eb) = (a.extent(m, k), b.extent(k, n));
        if ea > a.data.len() || eb > b.data.len() {
            return Err(Error::input("operand shorter than its strides"));
        }
        let too_big = |e: usize| (e as u64) * 4 > self.max_binding;
        if too_big(ea) || too_big(eb) {
            return Err(Error::input("operand larger than one device binding"));
        }
        let u32_of = |v: usize| u32::try_from(v).map_err(|_| Error::input("index beyond 32 bits"));
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut taken = Vec::new();
        let mut operand = |o: Operand<'_>, extent: usize| -> (wgpu::Buffer, usize) {
            if let Some((buf, off)) = self.resident_of(&o.data[..extent]) {
                self.counters.resident_hits.fetch_add(1, Ordering::Relaxed);
                return (buf, off);
            }
            let bytes = (extent * 4) as u64;
            let buf = self.take(Kind::Input, bytes);
            self.queue
                .write_buffer(&buf, 0, bytemuck::cast_slice(&o.data[..extent]));
            self.counters.bytes_up.fetch_add(bytes, Ordering::Relaxed);
            taken.push((Kind::Input, buf.clone()));
            (buf, 0)
        };
        let (abuf, aoff) = operand(a, ea);
        let (bbuf, boff) = operand(b, eb);
        let dims = [
            u32_of(m)?,
            u32_of(n)?,
            u32_of(k)?,
            u32_of(aoff)?,
            u32_of(a.rs)?,
            u32_of(a.cs)?,
            u32_of(boff)?,
            u32_of(b.rs)?,
            u32_of(b.cs)?,
            0,
            0,
            0,
        ];
        let out_bytes = (m * n * 4) as u64;
        let uni = self.take(Kind::Uniform, 48);
        self.queue
            .write_buffer(&uni, 0, bytemuck::cast_slice(&dims));
        let cbuf = self.take(Kind::Output, out_bytes);
        let stage = self.take(Kind::Staging, out_bytes);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: abuf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: bbuf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: cbuf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: uni.as_entire_binding(),
                },
            ],
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(
                n.div_ceil(TILE as usize) as u32,
                m.div_ceil(TILE as usize) as u32,
                1,
            );
        }
        enc.copy_buffer_to_buffer(&cbuf, 0, &stage, 0, out_bytes);
        let index = self.queue.submit([enc.finish()]);
        let (tx, rx) = mpsc::channel();
        stage
            .slice(..out_bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        let polled = self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        });
        let scoped = pollster::block_on(scope.pop());
        let result = (|| {
            if let Some(e) = scoped {
                return Err(Error::input(format!("GPU validation: {e}")));
            }
            polled.map_err(|e| Error::input(format!("GPU wait: {e}")))?;
            rx.recv()
                .map_err(|e| Error::input(format!("GPU read-back: {e}")))?
                .map_err(|e| Error::input(format!("GPU read-back: {e}")))?;
            {
                let view = stage
                    .slice(..out_bytes)
                    .get_mapped_range()
                    .map_err(|e| Error::input(format!("GPU read-back: {e}")))?;
                // (byte-wise: a mapped range need not be aligned for f32)
                for (o, ch) in out[..m * n].iter_mut().zip(view.chunks_exact(4)) {
                    *o = f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
                }
            }
            stage.unmap();
            Ok(())
        })();
        self.counters
            .bytes_down
            .fetch_add(out_bytes, Ordering::Relaxed);
        self.counters.products.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            for (kind, buf) in taken {
                self.give(kind, buf);
            }
            self.give(Kind::Uniform, uni);
            self.give(Kind::Output, cbuf);
            self.give(Kind::Staging, stage);
        }
        result
    }
}
