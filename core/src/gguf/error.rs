//! Every way a GGUF file (or a request against one) can be refused, with the context a user
//! needs to act on it: which key, which tensor, which offset.

use alloc::string::String;
use core::fmt;

/// An error from reading, validating or writing a GGUF container.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or mapped.
    Io {
        /// Path as given.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// The file ends before a field it promises.
    Truncated {
        /// What was being read.
        what: String,
        /// Byte offset where the field starts.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Total length of the file.
        file_len: u64,
    },
    /// The first four bytes are not `GGUF`.
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A container version other than 3.
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
    /// A count (tensors, metadata entries, array elements) that the file cannot hold.
    CountTooLarge {
        /// What was counted.
        what: String,
        /// The count found.
        count: u64,
        /// The most that the remaining bytes could hold.
        max_possible: u64,
    },
    /// A string that is not UTF-8.
    InvalidUtf8 {
        /// What the string is.
        what: String,
    },
    /// A metadata value-type id that GGUF does not define.
    UnknownValueType {
        /// Key whose value has it.
        key: String,
        /// The id found.
        type_id: u32,
    },
    /// A bool stored as something other than 0 or 1.
    InvalidBool {
        /// Key.
        key: String,
        /// Byte found.
        byte: u8,
    },
    /// Arrays nested deeper than [`super::MAX_ARRAY_DEPTH`].
    ArrayTooDeep {
        /// Key.
        key: String,
    },
    /// Two metadata entries with the same key.
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A metadata key that is empty.
    EmptyKey {
        /// Index of the entry.
        index: u64,
    },
    /// A known key whose value has the wrong type.
    WrongMetadataType {
        /// The key.
        key: String,
        /// Type the format requires.
        expected: &'static str,
        /// Type found.
        found: String,
    },
    /// A known key whose value is out of its allowed range.
    InvalidMetadataValue {
        /// The key.
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// `general.alignment` is zero, not a power of two, or absurdly large.
    BadAlignment {
        /// The value found.
        value: u64,
    },
    /// Two tensors with the same name.
    DuplicateTensor {
        /// The name.
        name: String,
    },
    /// A tensor name that is empty or longer than [`super::MAX_TENSOR_NAME`] bytes.
    BadTensorName {
        /// Index of the tensor-info record.
        index: u64,
        /// The name (lossy) or what is wrong with it.
        name: String,
        /// Length in bytes.
        len: u64,
    },
    /// More than [`super::MAX_DIMS`] dimensions.
    TooManyDims {
        /// Tensor.
        tensor: String,
        /// Dimensions claimed.
        n_dims: u32,
    },
    /// The product of the dimensions (or the byte size) overflows.
    ShapeOverflow {
        /// Tensor.
        tensor: String,
    },
    /// A type id that is no GGML type.
    UnknownTensorType {
        /// Tensor.
        tensor: String,
        /// The id.
        type_id: u32,
    },
    /// A GGML type Modula does not implement.
    UnsupportedTensorType {
        /// Tensor.
        tensor: String,
        /// The id.
        type_id: u32,
        /// Its GGML name.
        type_name: &'static str,
    },
    /// A quantised tensor whose rows are not whole blocks.
    RowNotWholeBlocks {
        /// Tensor.
        tensor: String,
        /// Its type.
        dtype: &'static str,
        /// Row length (innermost dimension).
        row_len: u64,
        /// Elements per block.
        block_len: u64,
    },
    /// A tensor offset that is not a multiple of the file's alignment.
    MisalignedOffset {
        /// Tensor.
        tensor: String,
        /// Offset (relative to the data section).
        offset: u64,
        /// Alignment required.
        alignment: u64,
    },
    /// Tensor data that extend past the end of the file.
    TensorOutOfBounds {
        /// Tensor.
        tensor: String,
        /// Absolute start.
        start: u64,
        /// Absolute end (exclusive).
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// Two tensors whose data overlap.
    TensorOverlap {
        /// Earlier tensor in the file.
        first: String,
        /// The tensor that starts inside it.
        second: String,
    },
    /// The page-group metadata (`modula.page_groups.*`) is inconsistent.
    BadPageGroups {
        /// What is wrong.
        reason: String,
    },
    /// No tensor of that name.
    TensorNotFound {
        /// Name asked for.
        name: String,
    },
    /// A view of the wrong element type was asked for.
    DTypeMismatch {
        /// Tensor.
        tensor: String,
        /// Type asked for.
        expected: &'static str,
        /// Type stored.
        found: &'static str,
    },
    /// The buffer holding the file is not aligned enough for a zero-copy typed view.
    MisalignedBuffer {
        /// Tensor.
        tensor: String,
        /// Alignment the view needs.
        align: usize,
    },
    /// A value handed to the writer is not representable.
    InvalidInput {
        /// What is wrong.
        reason: String,
    },
}

impl GgufError {
    /// The variant's name (`"Truncated"`, `"TensorOverlap"`, ...): stable, for tests,
    /// scripts and machine-readable output.
    pub fn kind(&self) -> &'static str {
        use GgufError::*;
        match self {
            Io { .. } => "Io",
            Truncated { .. } => "Truncated",
            BadMagic { .. } => "BadMagic",
            UnsupportedVersion { .. } => "UnsupportedVersion",
            CountTooLarge { .. } => "CountTooLarge",
            InvalidUtf8 { .. } => "InvalidUtf8",
            UnknownValueType { .. } => "UnknownValueType",
            InvalidBool { .. } => "InvalidBool",
            ArrayTooDeep { .. } => "ArrayTooDeep",
            DuplicateKey { .. } => "DuplicateKey",
            EmptyKey { .. } => "EmptyKey",
            WrongMetadataType { .. } => "WrongMetadataType",
            InvalidMetadataValue { .. } => "InvalidMetadataValue",
            BadAlignment { .. } => "BadAlignment",
            DuplicateTensor { .. } => "DuplicateTensor",
            BadTensorName { .. } => "BadTensorName",
            TooManyDims { .. } => "TooManyDims",
            ShapeOverflow { .. } => "ShapeOverflow",
            UnknownTensorType { .. } => "UnknownTensorType",
            UnsupportedTensorType { .. } => "UnsupportedTensorType",
            RowNotWholeBlocks { .. } => "RowNotWholeBlocks",
            MisalignedOffset { .. } => "MisalignedOffset",
            TensorOutOfBounds { .. } => "TensorOutOfBounds",
            TensorOverlap { .. } => "TensorOverlap",
            BadPageGroups { .. } => "BadPageGroups",
            TensorNotFound { .. } => "TensorNotFound",
            DTypeMismatch { .. } => "DTypeMismatch",
            MisalignedBuffer { .. } => "MisalignedBuffer",
            InvalidInput { .. } => "InvalidInput",
        }
    }
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        match self {
            Io { path, message } => write!(f, "'{path}': {message}"),
            Truncated {
                what,
                offset,
                needed,
                file_len,
            } => write!(
                f,
                "file is truncated: {what} needs {needed} bytes at offset {offset}, \
                 but the file is only {file_len} bytes long"
            ),
            BadMagic { found } => write!(
                f,
                "not a GGUF file: the first bytes are {found:02x?}, expected \"GGUF\" \
                 (47 47 55 46)"
            ),
            UnsupportedVersion { found } if found.swap_bytes() <= 3 => write!(
                f,
                "GGUF version {found} is really {} byte-swapped: this is a big-endian \
                 GGUF file, which Modula does not read",
                found.swap_bytes()
            ),
            UnsupportedVersion { found } => {
                write!(
                    f,
                    "unsupported GGUF version {found}: Modula reads version 3"
                )
            }
            CountTooLarge {
                what,
                count,
                max_possible,
            } => write!(
                f,
                "{what} is {count}, but the rest of the file can hold at most {max_possible} \
                 (the file is truncated or corrupt)"
            ),
            InvalidUtf8 { what } => write!(f, "{what} is not valid UTF-8"),
            UnknownValueType { key, type_id } => write!(
                f,
                "metadata key '{key}' has value type {type_id}, which GGUF does not define \
                 (valid: 0..=12)"
            ),
            InvalidBool { key, byte } => {
                write!(
                    f,
                    "metadata key '{key}' is a bool stored as {byte}, not 0 or 1"
                )
            }
            ArrayTooDeep { key } => write!(
                f,
                "metadata key '{key}' nests arrays deeper than {} levels",
                super::MAX_ARRAY_DEPTH
            ),
            DuplicateKey { key } => write!(f, "metadata key '{key}' appears more than once"),
            EmptyKey { index } => write!(f, "metadata entry #{index} has an empty key"),
            WrongMetadataType {
                key,
                expected,
                found,
            } => write!(
                f,
                "metadata key '{key}' must be {expected}, but the file stores {found}"
            ),
            InvalidMetadataValue { key, reason } => {
                write!(f, "metadata key '{key}' is invalid: {reason}")
            }
            BadAlignment { value } => write!(
                f,
                "general.alignment = {value} is not a power of two between 1 and {}",
                super::MAX_ALIGNMENT
            ),
            DuplicateTensor { name } => write!(f, "tensor '{name}' appears more than once"),
            BadTensorName { index, name, len } => write!(
                f,
                "tensor #{index} has an invalid name '{name}' ({len} bytes; names must be \
                 1..={} bytes)",
                super::MAX_TENSOR_NAME
            ),
            TooManyDims { tensor, n_dims } => write!(
                f,
                "tensor '{tensor}' has {n_dims} dimensions; at most {} are allowed",
                super::MAX_DIMS
            ),
            ShapeOverflow { tensor } => {
                write!(
                    f,
                    "tensor '{tensor}': the product of its dimensions overflows"
                )
            }
            UnknownTensorType { tensor, type_id } => {
                write!(
                    f,
                    "tensor '{tensor}' has type id {type_id}, which is no GGML type"
                )
            }
            UnsupportedTensorType {
                tensor,
                type_id,
                type_name,
            } => write!(
                f,
                "tensor '{tensor}' has GGML type {type_name} (id {type_id}), which Modula \
                 does not support (supported: f32, f16, bf16, q8_0, q4_0); re-quantise it \
                 with `modula quantize`"
            ),
            RowNotWholeBlocks {
                tensor,
                dtype,
                row_len,
                block_len,
            } => write!(
                f,
                "tensor '{tensor}' is {dtype} but its row length {row_len} is not a multiple \
                 of the block length {block_len}"
            ),
            MisalignedOffset {
                tensor,
                offset,
                alignment,
            } => write!(
                f,
                "tensor '{tensor}' starts at data offset {offset}, which is not a multiple of \
                 the file's alignment {alignment}"
            ),
            TensorOutOfBounds {
                tensor,
                start,
                end,
                file_len,
            } => write!(
                f,
                "tensor '{tensor}' occupies bytes {start}..{end}, past the end of the file \
                 ({file_len} bytes)"
            ),
            TensorOverlap { first, second } => {
                write!(f, "tensors '{first}' and '{second}' overlap in the file")
            }
            BadPageGroups { reason } => write!(f, "invalid modula.page_groups metadata: {reason}"),
            TensorNotFound { name } => write!(f, "the model has no tensor named '{name}'"),
            DTypeMismatch {
                tensor,
                expected,
                found,
            } => {
                write!(f, "tensor '{tensor}' is {found}, not {expected}")
            }
            MisalignedBuffer { tensor, align } => write!(
                f,
                "tensor '{tensor}' is not {align}-byte aligned in memory, so it cannot be \
                 viewed without copying; place the model at an aligned address"
            ),
            InvalidInput { reason } => write!(f, "invalid input: {reason}"),
        }
    }
}

impl core::error::Error for GgufError {}
