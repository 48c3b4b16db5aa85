//! A bounds-checked little-endian reader over a byte slice. Every read either returns the
//! bytes it promises or a [`GgufError::Truncated`] naming what was being read.

use super::GgufError;
use alloc::string::{String, ToString};

/// Reads little-endian fields from `buf`, starting at `pos`.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Self {
        Cursor { buf, pos }
    }

    pub(crate) fn buffer(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// `n` bytes, or a truncation error whose message is built by `what` (only on failure).
    pub(crate) fn take(
        &mut self,
        n: u64,
        what: impl FnOnce() -> String,
    ) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.buf.len() as u64,
            });
        }
        let n = n as usize; // n <= remaining, which is a usize
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// A GGUF string (u64 length + bytes), validated as UTF-8; returns its byte range.
    pub(crate) fn string_range(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<core::ops::Range<usize>, GgufError> {
        let len = self.u64(|| what() + " (length)")?;
        if len > self.remaining() as u64 {
            return Err(GgufError::CountTooLarge {
                what: what() + " length",
                count: len,
                max_possible: self.remaining() as u64,
            });
        }
        let start = self.pos;
        let bytes = self.take(len, what)?;
        if core::str::from_utf8(bytes).is_err() {
            return Err(GgufError::InvalidUtf8 { what: what() });
        }
        Ok(start..start + bytes.len())
    }
}

/// Lossy text of a byte range for error messages (at most 80 characters).
pub(crate) fn lossy(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).to_string();
    if bytes.len() > 80 {
        s + "…"
    } else {
        s
    }
}
