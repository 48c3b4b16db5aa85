//! One error type for everything built on a model file: the container, the kernels, the
//! model description and the decoders. A caller can branch on the kind ("tensor missing",
//! "shape mismatch", "metadata key wrong", "context full"); the message a user reads is the
//! [`Display`](core::fmt::Display) form, and strings appear only at the command-line edge.

use crate::gguf::GgufError;
use crate::kernels::KernelError;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Why a model could not be described, bound or run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The container refused the file or a request against it (missing tensor, wrong type,
    /// truncated file, …).
    Container(GgufError),
    /// A kernel was called with inconsistent sizes (a bug, or a file whose shapes lie).
    Kernel(KernelError),
    /// A tensor exists but has another shape than the description needs.
    Shape {
        /// Tensor name.
        tensor: String,
        /// The shape the description needs (rows first).
        expected: Vec<usize>,
        /// The shape the file holds.
        got: Vec<usize>,
    },
    /// A metadata key is missing, has a value Modula does not know, or disagrees with
    /// another key.
    Metadata {
        /// The key at fault.
        key: String,
        /// The whole message (names the key and the value).
        message: String,
    },
    /// A well-formed model or request that this build does not run (a feature of the
    /// architecture that is not implemented, a nested size the layout cannot express).
    Unsupported {
        /// What, in a sentence.
        message: String,
    },
    /// A request outside what the model accepts: a token outside the vocabulary, a nested
    /// size outside the model, an empty prompt, an impossible budget.
    Input {
        /// What, in a sentence.
        message: String,
    },
    /// The context (the positions planned for the KV caches) is full.
    ContextFull {
        /// Positions the engine was planned for.
        capacity: usize,
        /// Positions used before the request.
        used: usize,
        /// Positions the request needed.
        needed: usize,
    },
    /// Weights or activations that are not finite (NaN or infinite).
    NonFinite {
        /// Where.
        message: String,
    },
    /// The operating system refused a file operation (open, read, write, rename), or a
    /// file of another format was not what it claims to be (safetensors, JSON).
    Io {
        /// What, with the path.
        message: String,
    },
}

impl Error {
    /// A [`Error::Metadata`] for `key` with a message.
    pub fn metadata(key: &str, message: impl Into<String>) -> Self {
        Error::Metadata {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A [`Error::Input`].
    pub fn input(message: impl Into<String>) -> Self {
        Error::Input {
            message: message.into(),
        }
    }

    /// A [`Error::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::Unsupported {
            message: message.into(),
        }
    }

    /// A [`Error::NonFinite`].
    pub fn non_finite(message: impl Into<String>) -> Self {
        Error::NonFinite {
            message: message.into(),
        }
    }

    /// A [`Error::Io`].
    pub fn io(message: impl Into<String>) -> Self {
        Error::Io {
            message: message.into(),
        }
    }

    /// True for a tensor the file does not hold.
    pub fn is_missing_tensor(&self) -> bool {
        matches!(self, Error::Container(GgufError::TensorNotFound { .. }))
    }
}

fn dims(f: &mut fmt::Formatter<'_>, v: &[usize]) -> fmt::Result {
    f.write_str("[")?;
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{x}")?;
    }
    f.write_str("]")
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Container(e) => write!(f, "{e}"),
            Error::Kernel(e) => write!(f, "{e}"),
            Error::Shape {
                tensor,
                expected,
                got,
            } => {
                if expected.len() == 1 {
                    let n: usize = got.iter().product();
                    write!(
                        f,
                        "tensor '{tensor}' has {n} values, expected {}",
                        expected[0]
                    )
                } else {
                    write!(f, "tensor '{tensor}' is ")?;
                    dims(f, got)?;
                    f.write_str(", expected ")?;
                    dims(f, expected)
                }
            }
            Error::Metadata { message, .. } => f.write_str(message),
            Error::Unsupported { message } => f.write_str(message),
            Error::Input { message } => f.write_str(message),
            Error::ContextFull {
                capacity,
                used,
                needed,
            } => {
                if *needed <= 1 {
                    write!(f, "the context of {capacity} positions is full")
                } else {
                    write!(
                        f,
                        "{needed} tokens do not fit: {used} of {capacity} positions are used"
                    )
                }
            }
            Error::NonFinite { message } => f.write_str(message),
            Error::Io { message } => f.write_str(message),
        }
    }
}

impl core::error::Error for Error {}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        Error::Container(e)
    }
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Self {
        Error::Kernel(e)
    }
}

/// The message, for callers that still speak in strings (the command line).
impl From<Error> for String {
    fn from(e: Error) -> Self {
        use alloc::string::ToString;
        e.to_string()
    }
}

/// Results of this crate's model-level APIs.
pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn messages_read_as_before() {
        let e = Error::Shape {
            tensor: "blk.0.ffn_up.weight".into(),
            expected: vec![128, 64],
            got: vec![64, 64],
        };
        assert_eq!(
            e.to_string(),
            "tensor 'blk.0.ffn_up.weight' is [64, 64], expected [128, 64]"
        );
        let v = Error::Shape {
            tensor: "b".into(),
            expected: vec![3],
            got: vec![4],
        };
        assert_eq!(v.to_string(), "tensor 'b' has 4 values, expected 3");
        let c = Error::ContextFull {
            capacity: 8,
            used: 8,
            needed: 1,
        };
        assert_eq!(c.to_string(), "the context of 8 positions is full");
        let s: String = Error::input("x").into();
        assert_eq!(s, "x");
    }
}
