//! # modula-train
//!
//! The std-only trainer, built the llm.c way: explicit forward/backward pairs per layer
//! ([`layers`]), every backward checked against finite differences ([`gradcheck`]).
//! Forwards call the same `modula-core` kernels as the on-device engine.
//!
//! What is here: the gradient-check harness, the layers (linear, LayerNorm, activations,
//! softmax attention, cross-entropy), the flat parameter store ([`params`]), AdamW with
//! clipping, warm-up + cosine schedule and gradient accumulation ([`optim`], [`trainer`]),
//! the data sets ([`data`], [`tasks`]), the dense baseline ([`model`]) with GGUF and
//! safetensors I/O, checkpoints ([`checkpoint`]) and a loss-curve plot ([`plot`]).
//! Status and what is not done yet: `docs/training.md`.
#![warn(missing_docs)]

pub mod chat;
pub mod checkpoint;
pub mod compute;
pub mod corpus;
pub mod data;
pub mod emoe;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod gradcheck;
pub mod import;
pub mod layers;
pub mod m2mkd;
pub mod model;
pub mod optim;
pub mod params;
pub mod plot;
pub mod stack;
pub mod tasks;
pub mod tokenizer;
pub mod trainer;

pub use modula_core as core;

/// Keep freed memory in the process instead of returning it to the kernel after every
/// step (glibc only; elsewhere a no-op). Training frees and reallocates the same large
/// activation and packing buffers every step; with glibc's defaults each of them is an
/// `mmap`/`munmap` pair, and with more than one thread every `munmap` stops the other
/// cores for a TLB shootdown. Measured on the 2-core reference machine (d 256, 4 layers,
/// batch 16 x 128): 2 threads went from no faster than 1 thread to 1.35x (system time
/// 1.8 s -> 0.2 s for 8 steps; `docs/results.md`). Call once at program start.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes glibc's allocation thresholds; it is called with
        // valid parameter ids and values and does not touch any allocation.
        unsafe {
            // the largest mmap threshold glibc accepts on 64-bit targets (32 MiB)
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
