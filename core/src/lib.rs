//! # modula-core
//!
//! The on-device half of Modula: it reads a model from one GGUF file without copying a
//! weight (a `memmap2` map under `std`, a `&'static [u8]` in flash without it), and hands
//! out typed views of its tensors. Kernels, routing, the SeqBoat scan and nested sub-model
//! selection build on these views.
//!
//! `#![no_std]` + `alloc`. The default `std` feature adds [`Model::open`] (memory map),
//! the container writer ([`gguf::GgufWriter`]) and atomic file writes ([`io`]).
//!
//! Under `std` it also quantises whole model files ([`quantize`]; the block formats and
//! their kernels live in `modula-quant`). What it deliberately does not do: training (see
//! `modula-train`), or any allocation per token in the inference loop.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod arch;
pub mod engine;
pub mod error;
pub mod gguf;
#[cfg(feature = "std")]
pub mod io;
pub mod kernels;
pub mod model;
#[cfg(feature = "std")]
pub mod quantize;
pub mod rng;

pub use arch::{Family, ModelDesc};
pub use error::Error;
pub use gguf::{GgufError, MetaValue, Value, ValueType};
pub use model::{Model, NestedSpec, PageGroup, SubModel, TensorView};
/// A model file mapped read-only from disk (what [`Model::open`] returns).
#[cfg(feature = "std")]
pub type MappedModel = Model<memmap2::Mmap>;
pub use modula_quant::DType;
