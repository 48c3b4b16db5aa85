//! The GGUF v3 container (llama.cpp's model file format), as Modula reads and writes it.
//!
//! One idea: parse and *validate everything once* into an owned [`GgufIndex`] of byte
//! ranges, then hand out borrowed views of the original buffer. Nothing in a file can make
//! the reader panic, loop without consuming input, allocate more than the file's size, or
//! read out of bounds: every count, length and offset is checked against the bytes that
//! remain before it is used. Layout and every `modula.*` key: `docs/format.md`.
//!
//! Not here: interpreting the architecture (the layers do that from the metadata) and
//! quantising (`modula-quant`).

mod cursor;
mod error;
mod index;
pub mod schema;
mod value;
#[cfg(feature = "std")]
mod writer;

pub use error::GgufError;
pub use index::{GgufIndex, KvEntry, PageGroupInfo, TensorInfo};
pub use value::{ArrayValue, MetaValue, Value, ValueType};
#[cfg(feature = "std")]
pub use writer::GgufWriter;

/// `"GGUF"` as the first four bytes of a file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The only container version Modula reads and writes.
pub const VERSION: u32 = 3;
/// The alignment Modula writes by default (a cache line; more than any SIMD load needs).
pub const DEFAULT_ALIGNMENT: u32 = 64;
/// Alignment of tensor data when a file has no `general.alignment` (the GGUF rule).
pub const GGUF_DEFAULT_ALIGNMENT: u32 = 32;
/// Page size used for page-aligned tensor groups (covers 4 KiB and 16 KiB page systems).
pub const DEFAULT_PAGE_SIZE: u32 = 16 * 1024;
/// Most dimensions a tensor may have (GGML's limit).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name in bytes (GGML keeps names in a 64-byte, NUL-terminated field).
pub const MAX_TENSOR_NAME: usize = 63;
/// Deepest nesting of metadata arrays the reader accepts.
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Largest `general.alignment` accepted (1 MiB): bigger values only waste the file.
pub const MAX_ALIGNMENT: u64 = 1 << 20;

pub(crate) fn cursor_at(buf: &[u8], pos: usize) -> cursor::Cursor<'_> {
    cursor::Cursor::at(buf, pos)
}

pub(crate) fn read_value_pub<'a>(
    cur: &mut cursor::Cursor<'a>,
    ty: ValueType,
    key: &str,
) -> Option<Value<'a>> {
    value::read_value(cur, ty, key, 1).ok()
}
