//! Byte-level text data: any file (or bytes) split into training and validation parts, and
//! random windows of `t + 1` bytes as (input, next-byte target) batches. Deterministic in
//! the RNG state.

use modula_core::rng::SplitMix64;
use std::path::Path;

/// Why data could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataError {
    /// The file could not be read.
    Io {
        /// Path.
        path: String,
        /// OS message.
        message: String,
    },
    /// A split is too short for one window.
    TooShort {
        /// Which split.
        split: &'static str,
        /// Bytes needed (`t + 1`).
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The validation fraction is not in (0, 1).
    BadFraction(String),
    /// Malformed or unusable data (wrong magic, label out of range, impossible settings).
    Invalid(String),
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataError::Io { path, message } => {
                write!(f, "cannot read data file '{path}': {message}")
            }
            DataError::TooShort { split, need, have } => write!(
                f,
                "the {split} split has {have} bytes, fewer than one window of {need}; use a longer \
                 text or a shorter --seq"
            ),
            DataError::BadFraction(v) => write!(f, "validation fraction {v} must be in (0, 1)"),
            DataError::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for DataError {}

impl From<DataError> for modula_core::Error {
    fn from(e: DataError) -> Self {
        match e {
            DataError::Io { .. } => modula_core::Error::io(e.to_string()),
            _ => modula_core::Error::input(e.to_string()),
        }
    }
}

/// Which part of the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training bytes.
    Train,
    /// Validation bytes (the tail of the text).
    Val,
}

/// A byte text split into training and validation parts (the last `val_fraction`).
#[derive(Clone, Debug)]
pub struct ByteText {
    train: Vec<u8>,
    val: Vec<u8>,
}

impl ByteText {
    /// From bytes in memory.
    pub fn from_bytes(bytes: Vec<u8>, val_fraction: f64) -> Result<Self, DataError> {
        if !(val_fraction > 0.0 && val_fraction < 1.0) {
            return Err(DataError::BadFraction(val_fraction.to_string()));
        }
        let cut = ((bytes.len() as f64) * (1.0 - val_fraction)).round() as usize;
        let mut train = bytes;
        let val = train.split_off(cut.min(train.len()));
        Ok(ByteText { train, val })
    }

    /// From a file.
    pub fn from_file(path: &Path, val_fraction: f64) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(bytes, val_fraction)
    }

    /// Bytes of a split.
    pub fn split(&self, s: Split) -> &[u8] {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
        }
    }

    /// Check both splits hold at least one window of `t + 1` bytes.
    pub fn check_window(&self, t: usize) -> Result<(), DataError> {
        for (s, name) in [(Split::Train, "training"), (Split::Val, "validation")] {
            let have = self.split(s).len();
            if have < t + 1 {
                return Err(DataError::TooShort {
                    split: name,
                    need: t + 1,
                    have,
                });
            }
        }
        Ok(())
    }

    /// `b` random windows of the split: tokens `[b, t]` and next-byte targets `[b, t]`.
    pub fn batch(
        &self,
        s: Split,
        b: usize,
        t: usize,
        rng: &mut SplitMix64,
    ) -> Result<(Vec<u32>, Vec<u32>), DataError> {
        let data = self.split(s);
        if data.len() < t + 1 {
            let split = if s == Split::Train {
                "training"
            } else {
                "validation"
            };
            return Err(DataError::TooShort {
                split,
                need: t + 1,
                have: data.len(),
            });
        }
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let start = rng.below((data.len() - t) as u64) as usize;
            x.extend(data[start..start + t].iter().map(|&v| u32::from(v)));
            y.extend(data[start + 1..start + t + 1].iter().map(|&v| u32::from(v)));
        }
        Ok((x, y))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splits_windows_and_errors() {
        let d = ByteText::from_bytes((0u8..100).collect(), 0.2).unwrap();
        assert_eq!(d.split(Split::Train).len(), 80);
        assert_eq!(d.split(Split::Val)[0], 80);
        let mut r = SplitMix64(1);
        let (x, y) = d.batch(Split::Train, 3, 10, &mut r).unwrap();
        for i in 0..30 {
            assert_eq!(y[i], x[i] + 1, "target is the next byte");
        }
        assert!(d.check_window(19).is_ok());
        assert!(matches!(
            d.check_window(20),
            Err(DataError::TooShort {
                split: "validation",
                ..
            })
        ));
        assert!(ByteText::from_bytes(vec![1, 2, 3], 1.5).is_err());
        let e = ByteText::from_file(Path::new("/nonexistent/modula.txt"), 0.1).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/modula.txt"));
        let empty = ByteText::from_bytes(Vec::new(), 0.1).unwrap();
        assert!(empty.check_window(1).is_err());
    }
}
